// File mode with a directory of YAML files (docs/services-and-tokens.md, "File mode"): every
// *.yml / *.yaml in the directory is read, merged and turned into a full worker-config document,
// which goes through the same build as documents from the control plane.
#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/time.hpp"
#include "config/sync.hpp"

namespace ag::config {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct YamlError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Scalars keep their YAML meaning: quoted text stays a string; plain 42 / true / null are typed.
json to_json(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined: return nullptr;
    case YAML::NodeType::Sequence: {
      json a = json::array();
      for (const auto& e : n) a.push_back(to_json(e));
      return a;
    }
    case YAML::NodeType::Map: {
      json o = json::object();
      for (const auto& kv : n) o[kv.first.as<std::string>()] = to_json(kv.second);
      return o;
    }
    case YAML::NodeType::Scalar: break;
  }
  const std::string& s = n.Scalar();
  if (n.Tag() == "!") return s;  // quoted
  std::int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec == std::errc{} && p == s.data() + s.size() && !s.empty()) return v;
  if (s == "true" || s == "True" || s == "yes") return true;
  if (s == "false" || s == "False" || s == "no") return false;
  if (s == "~" || s == "null") return nullptr;
  return s;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw YamlError("cannot read " + p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void only_fields(const json& o, const std::string& where, std::initializer_list<std::string_view> allowed) {
  for (auto it = o.begin(); it != o.end(); ++it)
    if (std::find(allowed.begin(), allowed.end(), it.key()) == allowed.end())
      throw YamlError(where + "." + it.key() + ": unknown field");
}

// One file's contribution, added to `doc` (a full worker-config document being assembled).
void add_file(const fs::path& file, json& doc, std::unordered_map<std::string, std::string>& slugs) {
  json y;
  try {
    y = to_json(YAML::LoadFile(file.string()));
  } catch (const YAML::Exception& e) {
    throw YamlError(file.filename().string() + ": " + e.what());
  }
  const std::string name = file.filename().string();
  if (y.is_null()) return;  // empty file
  if (!y.is_object()) throw YamlError(name + ": must be a mapping");
  only_fields(y, name, {"projects", "jwt_keys", "revoked_tokens"});
  if (y.contains("projects")) {
    if (!y["projects"].is_array()) throw YamlError(name + ": projects must be a list");
    std::size_t i = 0;
    for (const auto& p : y["projects"]) {
      std::string where = name + ": projects[" + std::to_string(i++) + "]";
      if (!p.is_object()) throw YamlError(where + " must be a mapping");
      only_fields(p, where, {"id", "slug", "name", "upstream", "rate_limit", "max_body_bytes", "services", "api_keys", "risk"});
      if (!p.contains("slug") || !p["slug"].is_string()) throw YamlError(where + ".slug: required (a string)");
      std::string slug = p["slug"];
      if (auto seen = slugs.find(slug); seen != slugs.end())
        throw YamlError(where + ".slug: '" + slug + "' is also defined in " + seen->second);
      slugs.emplace(slug, name);
      json proj = {{"id", p.value("id", json(slug))}, {"name", p.value("name", json(slug))}, {"slug", slug}};
      if (p.contains("upstream")) proj["upstream_base_url"] = p["upstream"];
      if (p.contains("rate_limit")) proj["rate_limit"] = p["rate_limit"];
      if (p.contains("max_body_bytes")) proj["max_body_bytes"] = p["max_body_bytes"];
      if (p.contains("risk")) proj["risk"] = p["risk"];
      json services = json::array();
      if (p.contains("services") && !p["services"].is_null()) {
        if (!p["services"].is_object()) throw YamlError(where + ".services: must be a mapping of name -> service");
        for (auto it = p["services"].begin(); it != p["services"].end(); ++it) {
          if (!it.value().is_object()) throw YamlError(where + ".services." + it.key() + ": must be a mapping");
          only_fields(it.value(), where + ".services." + it.key(), {"targets", "balancer", "health_check", "ejection"});
          json svc = it.value();
          svc["name"] = it.key();
          services.push_back(std::move(svc));
        }
      }
      proj["services"] = std::move(services);
      json keys = json::array();
      if (p.contains("api_keys") && !p["api_keys"].is_null()) {
        if (!p["api_keys"].is_array()) throw YamlError(where + ".api_keys: must be a list");
        std::size_t k = 0;
        for (const auto& key : p["api_keys"]) {
          std::string kw = where + ".api_keys[" + std::to_string(k++) + "]";
          json entry;
          if (key.is_string()) {
            entry = {{"hash", key}};
          } else if (key.is_object()) {
            only_fields(key, kw, {"id", "hash", "expires_at", "rate_limit"});
            entry = key;
          } else {
            throw YamlError(kw + ": a SHA-256 hex string or {id, hash}");
          }
          if (!entry.contains("id")) entry["id"] = "";
          entry["public_id"] = "";
          if (!entry.contains("expires_at")) entry["expires_at"] = nullptr;
          keys.push_back(std::move(entry));
        }
      }
      proj["keys"] = std::move(keys);
      doc["projects"].push_back(std::move(proj));
    }
  }
  if (y.contains("jwt_keys")) {
    if (!y["jwt_keys"].is_array()) throw YamlError(name + ": jwt_keys must be a list");
    std::size_t i = 0;
    for (const auto& k : y["jwt_keys"]) {
      std::string where = name + ": jwt_keys[" + std::to_string(i++) + "]";
      if (!k.is_object()) throw YamlError(where + " must be a mapping");
      only_fields(k, where, {"kid", "alg", "public_key", "public_key_file"});
      json entry = {{"kid", k.value("kid", json(nullptr))}, {"alg", k.value("alg", json(nullptr))}};
      if (k.contains("public_key_file") && k["public_key_file"].is_string()) {
        fs::path pem = k["public_key_file"].get<std::string>();
        if (pem.is_relative()) pem = file.parent_path() / pem;
        entry["public_key"] = read_text(pem);
      } else if (k.contains("public_key")) {
        entry["public_key"] = k["public_key"];
      } else {
        throw YamlError(where + ": public_key_file or public_key required");
      }
      doc["jwt_keys"].push_back(std::move(entry));
    }
  }
  if (y.contains("revoked_tokens")) {
    if (!y["revoked_tokens"].is_array()) throw YamlError(name + ": revoked_tokens must be a list");
    for (const auto& r : y["revoked_tokens"]) {
      if (r.is_string()) {
        doc["revoked_tokens"].push_back({{"jti", r}, {"expires_at", nullptr}});
      } else if (r.is_object()) {
        only_fields(r, name + ": revoked_tokens[]", {"jti", "expires_at"});
        doc["revoked_tokens"].push_back({{"jti", r.value("jti", json(nullptr))}, {"expires_at", r.value("expires_at", json(nullptr))}});
      } else {
        throw YamlError(name + ": revoked_tokens entries are a jti or {jti, expires_at}");
      }
    }
  }
}

struct DirState {
  std::vector<std::pair<std::string, std::pair<std::int64_t, std::uintmax_t>>> files;  // name -> (mtime, size)
  bool operator==(const DirState&) const = default;
};

DirState scan(const fs::path& dir) {
  DirState s;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    auto ext = e.path().extension().string();
    if (ext != ".yml" && ext != ".yaml") continue;
    std::error_code fe;
    auto mtime = fs::last_write_time(e.path(), fe).time_since_epoch().count();
    auto size = fs::file_size(e.path(), fe);
    s.files.push_back({e.path().filename().string(), {static_cast<std::int64_t>(mtime), size}});
  }
  std::sort(s.files.begin(), s.files.end());
  return s;
}

class YamlDirSource final : public ConfigSource {
 public:
  YamlDirSource(BuildContext& ctx, std::string dir, std::chrono::milliseconds poll, PublishFn publish)
      : ctx_(ctx), dir_(std::move(dir)), poll_(poll), publish_(std::move(publish)) {}
  ~YamlDirSource() override { stop(); }

  void start() override {
    load_once();
    thread_ = std::thread([this] { run(); });
  }
  void stop() override {
    {
      std::lock_guard lock(m_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void run() {
    std::unique_lock lock(m_);
    while (!cv_.wait_for(lock, poll_, [this] { return stop_; })) {
      lock.unlock();
      load_once();
      lock.lock();
    }
  }

  void load_once() {
    DirState now = scan(dir_);
    if (loaded_ && now == state_) return;
    state_ = now;
    loaded_ = true;
    auto started = std::chrono::steady_clock::now();
    json doc = {{"schema", 1}, {"full", true}, {"version", version_ + 1}, {"projects", json::array()},
                {"jwt_keys", json::array()}, {"revoked_tokens", json::array()}};
    std::string text;
    try {
      std::unordered_map<std::string, std::string> slugs;
      for (const auto& [name, sig] : now.files) add_file(fs::path(dir_) / name, doc, slugs);
      text = doc.dump();  // throws on text that is not UTF-8
    } catch (const std::exception& e) {
      stats.errors.fetch_add(1);
      spdlog::error("config dir {}: {}; keeping the previous config", dir_, e.what());
      return;
    }
    auto built = build_snapshot(text, ctx_);
    if (!built.snapshot) {
      stats.errors.fetch_add(1);
      spdlog::error("config dir {}: {}; keeping the previous config", dir_, built.error);
      return;
    }
    ++version_;
    stats.last_ok_ms.store(now_ms());
    stats.last_apply_us.store(std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - started).count());
    spdlog::info("config dir {}: loaded {} file(s), {} project(s), {} key(s) (version {})", dir_, now.files.size(),
                 built.snapshot->project_count, built.snapshot->key_count, version_);
    publish_(built.snapshot);
  }

  BuildContext& ctx_;
  std::string dir_;
  std::chrono::milliseconds poll_;
  PublishFn publish_;
  std::thread thread_;
  std::mutex m_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool loaded_ = false;
  DirState state_;
  std::int64_t version_ = 0;
};

}  // namespace

std::unique_ptr<ConfigSource> make_yaml_dir_source(BuildContext& ctx, std::string dir, std::chrono::milliseconds poll,
                                                  PublishFn publish) {
  if (!std::filesystem::is_directory(dir)) throw std::runtime_error("--config-dir: '" + dir + "' is not a directory");
  return std::make_unique<YamlDirSource>(ctx, std::move(dir), poll, std::move(publish));
}

}  // namespace ag::config
