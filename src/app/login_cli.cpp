#include "app/login_cli.hpp"

#include <nlohmann/json.hpp>

#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/env.hpp"
#include "common/files.hpp"
#include "common/http_url.hpp"
#include "common/time.hpp"
#include "http/client.hpp"

namespace ag::cli {

using json = nlohmann::json;

struct LoginCommands {
  CLI::App* login = nullptr;
  CLI::App* logout = nullptr;
  std::string control;
  std::string credentials;
  std::string client_id = "antigravity-cli";
  bool no_wait = false;
};

LoginCommands* add_login_commands(CLI::App& app) {
  static LoginCommands l;
  l.login = app.add_subcommand("login", "Sign in to a control plane with a device code; the tokens are kept in a file only you can read.");
  l.login->add_option("--control", l.control, "the control plane's base URL, e.g. https://control.example.com")->required();
  l.login->add_option("--credentials", l.credentials,
                      "where to keep the tokens (env ANTIGRAVITY_CREDENTIALS, default ~/.config/antigravity/credentials.json)");
  l.login->add_option("--client-id", l.client_id, "the client id shown with the code")->capture_default_str();
  l.login->footer(
      "Prints a URL and a code: open the URL in a browser where you are signed in and approve the code.\n"
      "The CLI polls at the interval the control plane asks for, and stops when the code expires.");
  l.logout = app.add_subcommand("logout", "End the session `antigravity login` started and delete its credentials file.");
  l.logout->add_option("--credentials", l.credentials, "the credentials file (as for login)");
  return &l;
}

bool login_command_selected(const LoginCommands* l) { return l && (*l->login || *l->logout); }

namespace {

std::string credentials_path(const LoginCommands& l) {
  if (!l.credentials.empty()) return l.credentials;
  if (auto p = env::get("ANTIGRAVITY_CREDENTIALS")) return *p;
  std::string base;
  if (auto x = env::get("XDG_CONFIG_HOME"); x && !x->empty()) base = *x;
  else if (const char* home = std::getenv("HOME")) base = std::string(home) + "/.config";
  else base = ".";
  return base + "/antigravity/credentials.json";
}

http::ClientResult post_json(const std::string& url, const json& body, const std::string& bearer = {}) {
  std::vector<http::Header> headers{{"content-type", "application/json"}, {"accept", "application/json"}};
  if (!bearer.empty()) headers.push_back({"authorization", "Bearer " + bearer});
  return http::fetch("POST", url, headers, body.dump(), std::chrono::seconds(15), 1 << 20);
}

// The control plane's {"detail": ...}, or what went wrong on the way.
std::string why(const http::ClientResult& r) {
  if (!r.ok) return r.error;
  auto j = json::parse(r.body, nullptr, false);
  if (j.is_object() && j.contains("detail") && j["detail"].is_string())
    return "HTTP " + std::to_string(r.status) + ": " + j["detail"].get<std::string>();
  return "HTTP " + std::to_string(r.status);
}

int login(const LoginCommands& l) {
  std::string base = l.control;
  while (!base.empty() && base.back() == '/') base.pop_back();
  HttpUrl u;
  if (auto e = parse_http_url(base, u); !e.empty()) {
    std::fprintf(stderr, "--control: %s\n", e.c_str());
    return 2;
  }
  auto started = post_json(base + "/auth/device/code", {{"clientId", l.client_id}});
  auto code = json::parse(started.body, nullptr, false);
  if (!started.ok || started.status != 200 || !code.is_object() || !code.contains("deviceCode")) {
    std::fprintf(stderr, "could not start the sign-in: %s\n", why(started).c_str());
    return 1;
  }
  std::string device_code = code["deviceCode"].get<std::string>();
  std::int64_t interval = code.value("interval", 5);
  const std::int64_t deadline = now_ms() + code.value("expiresIn", 600) * 1000;
  std::printf("To sign in, open %s\nand approve the code: %s\n", code.value("verification_uri_complete", code.value("verificationUrl", "")).c_str(),
              code.value("userCode", "").c_str());
  std::printf("Code: %s\n", code.value("userCode", "").c_str());
  std::fflush(stdout);
  json tokens;
  for (;;) {
    std::this_thread::sleep_for(std::chrono::seconds(interval));
    if (now_ms() > deadline) {
      std::fprintf(stderr, "the code expired before it was approved; run `antigravity login` again\n");
      return 1;
    }
    auto r = post_json(base + "/auth/device/token", {{"deviceCode", device_code}});
    auto j = json::parse(r.body, nullptr, false);
    if (!r.ok || r.status == 429 || r.status >= 500) continue;  // transient: keep polling until the deadline
    std::string status = j.is_object() ? j.value("status", "") : "";
    if (r.status != 200 || status.empty()) {
      std::fprintf(stderr, "sign-in failed: %s\n", why(r).c_str());
      return 1;
    }
    if (status == "pending") continue;
    if (status == "slow_down") {
      interval = j.value("interval", interval + 5);
      continue;
    }
    if (status == "authorised") {
      tokens = j;
      break;
    }
    std::fprintf(stderr, "sign-in ended: the code was %s\n", status.c_str());
    return 1;
  }
  json saved = {{"control_url", base},
                {"user_id", tokens.value("userId", "")},
                {"access_token", tokens.value("anchorAccessToken", "")},
                {"refresh_token", tokens.value("anchorRefreshToken", "")},
                {"access_expires_at_ms", now_ms() + tokens.value("anchorAccessExpiresIn", 0) * 1000}};
  std::string path = credentials_path(l);
  std::error_code ec;
  auto dir = std::filesystem::path(path).parent_path();
  if (!dir.empty()) {
    std::filesystem::create_directories(dir, ec);
    ::chmod(dir.c_str(), 0700);
  }
  if (!files::save_private_atomically(path, saved.dump(2) + "\n")) {
    std::fprintf(stderr, "signed in, but could not write %s: %s\n", path.c_str(), std::strerror(errno));
    return 1;
  }
  std::string who;
  auto s = http::fetch("GET", base + "/auth/session", {{"authorization", "Bearer " + saved["access_token"].get<std::string>()}}, "",
                       std::chrono::seconds(15), 1 << 20);
  auto sj = json::parse(s.body, nullptr, false);
  if (s.ok && sj.is_object() && sj["user"].is_object()) who = sj["user"].value("email", "");
  std::printf("Signed in%s%s. Credentials saved to %s\n", who.empty() ? "" : " as ", who.c_str(), path.c_str());
  return 0;
}

int logout(const LoginCommands& l) {
  std::string path = credentials_path(l);
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "not signed in (no %s)\n", path.c_str());
    return 1;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  auto j = json::parse(ss.str(), nullptr, false);
  if (!j.is_object() || !j.contains("control_url") || !j.contains("refresh_token")) {
    std::fprintf(stderr, "%s is not a credentials file\n", path.c_str());
    return 1;
  }
  // The refresh token names the session even after the access token has expired.
  auto r = post_json(j["control_url"].get<std::string>() + "/auth/logout", {{"refreshToken", j["refresh_token"]}});
  bool ended = r.ok && r.status == 204;
  bool gone = r.ok && r.status == 401;  // already revoked or expired: nothing left to end
  if (!ended && !gone) {
    std::fprintf(stderr, "could not end the session: %s (the file is kept)\n", why(r).c_str());
    return 1;
  }
  std::filesystem::remove(path);
  std::printf(ended ? "Signed out.\n" : "The session had already ended; credentials removed.\n");
  return 0;
}

}  // namespace

int run_login_command(const LoginCommands* l) { return *l->login ? login(*l) : logout(*l); }

}  // namespace ag::cli
