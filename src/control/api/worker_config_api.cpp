// GET /internal/worker/config: everything a worker needs to serve traffic, authorised by the
// shared worker secret. The schema is documented in docs/api.md ("Worker config").
#include <charconv>
#include <limits>
#include <optional>
#include <unordered_map>

#include "common/crypto.hpp"
#include "common/json_string.hpp"
#include "common/time.hpp"
#include "control/api/config_changes.hpp"
#include "control/api/context.hpp"
#include "control/api/routes.hpp"

namespace ag::control {

namespace {

constexpr std::int64_t kMaxDeltaChanges = 10000;

// The full document, written straight into one string: with a million keys, building a JSON
// tree first cost several seconds and gigabytes; this is one pass over the rows.
// `compact`: for Antigravity workers (they identify themselves with worker_id), which read
// `keys` only, the seed's duplicate `api_keys` list is left out (a quarter of the document).
http::Response full_document(AppState& app, const http::Request& req, bool compact) {
  std::string body;
  std::shared_ptr<const std::string> cached;
  std::int64_t version = 0;
  std::int64_t valid_until = 0;
  std::int64_t now = now_ms();
  const std::string if_none_match(req.header("if-none-match"));
  bool unchanged = false;
  auto& cache = app.full_document_cache;
  app.db->transaction([&](store::Connection& c) {
    version = c.exec("SELECT version FROM config_state WHERE id = 1", {}).rows.at(0).integer(0);
    if (if_none_match == "\"" + std::to_string(version) + "\"") {
      unchanged = true;
      return;
    }
    {
      std::lock_guard lock(cache.mutex);
      if (cache.body && cache.version == version && cache.compact == compact && now < cache.valid_until_ms) {
        cached = cache.body;
        return;
      }
    }
    // Projects and keys both in project-id order, so the keys can be streamed (a million rows
    // are never held at once) and merged into their projects in one pass.
    // Byte order on both engines (PostgreSQL's default collation may not be), so the merge below
    // and std::string comparisons agree.
    const char* by_id = app.db->engine() == store::Engine::kPostgres ? " COLLATE \"C\"" : "";
    auto pr = c.exec(std::string("SELECT ") + kWorkerProjectColumns + " FROM projects ORDER BY id" + by_id, {});
    body.reserve(256 + pr.rows.size() * 300);
    // Services (few per project) by project id, in worker form.
    std::unordered_map<std::string, std::string> services;
    c.exec_each("SELECT project_id, spec FROM services ORDER BY project_id, name", {}, [&](const store::Row& r) {
      auto& s = services[r.text(0)];
      s += s.empty() ? "" : ",";
      s += r.text(1);
    });
    body += "{\"schema\":1,\"full\":true,\"version\":" + std::to_string(version) + ",\"generated_at\":\"" +
            iso_time(now) + "\",\"jwt_keys\":" + worker_jwt_keys_json(c).dump() + ",\"revoked_tokens\":[";
    bool first_rev = true;
    c.exec_each("SELECT jti, expires_at FROM gateway_tokens_revoked WHERE expires_at > $1 ORDER BY jti", {now},
                [&](const store::Row& r) {
                  if (!first_rev) body += ',';
                  first_rev = false;
                  body += "{\"jti\":";
                  json_text::append_json_string(body, r.text(0));
                  body += ",\"expires_at\":\"" + iso_time(r.integer(1)) + "\"}";
                });
    body += "],\"projects\":[";
    std::size_t next_project = 0;
    std::string hashes, keys;  // the open project's two key arrays
    valid_until = std::numeric_limits<std::int64_t>::max();
    bool keys_open = false;
    auto open_project = [&](const store::Row& p) {
      if (next_project > 0) body += ',';
      body += "{\"id\":";
      json_text::append_json_string(body, p.text(0));
      body += ",\"name\":";
      json_text::append_json_string(body, p.text(1));
      body += ",\"slug\":";
      if (p.is_null(7)) body += "null";
      else json_text::append_json_string(body, p.text(7));
      body += ",\"risk\":";
      body += p.is_null(8) ? std::string("null") : p.text(8);
      auto svc = services.find(p.text(0));
      body += ",\"services\":[" + (svc == services.end() ? std::string() : svc->second) + "]";
      body += ",\"upstream_url\":";
      json_text::append_json_string(body, p.text(2));
      body += ",\"upstream_base_url\":";
      json_text::append_json_string(body, p.text(2));
      body += ",\"domains\":[],\"rate_limit\":{\"requests_per_minute\":" + p.text(3) + ",\"burst\":" + p.text(4) +
              "},\"key_policy\":";
      json_text::append_json_string(body, p.text(5));
      body += ",\"max_body_bytes\":" + p.text(6);
      hashes.clear();
      keys.clear();
      keys_open = true;
    };
    auto close_project = [&] {
      if (!keys_open) return;
      if (!compact) body += ",\"api_keys\":[" + hashes + "]";
      body += ",\"keys\":[" + keys + "]}";
      keys_open = false;
      ++next_project;
    };
    c.exec_each(std::string("SELECT project_id, ") + kWorkerKeyColumns +
                    " FROM api_keys WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1) "
                    "ORDER BY project_id" + std::string(by_id) + ", seq",
                {now}, [&](const store::Row& k) {  // project_id, id, public_id, key_hash, expires_at, rpm, burst
                  const std::string& pid = k.text(0);
                  // Close projects before this key's; open its own (projects without keys get empty arrays).
                  while (keys_open || next_project < pr.rows.size()) {
                    if (keys_open && pr.rows[next_project].text(0) == pid) break;
                    if (keys_open) {
                      close_project();
                      continue;
                    }
                    if (pr.rows[next_project].text(0) > pid) return;  // key of a project being deleted
                    open_project(pr.rows[next_project]);
                  }
                  if (!keys_open) return;
                  if (!hashes.empty()) {
                    hashes += ',';
                    keys += ',';
                  }
                  hashes += '"' + k.text(3) + '"';
                  keys += "{\"id\":\"" + k.text(1) + "\",\"public_id\":\"" + k.text(2) + "\",\"hash\":\"" + k.text(3) +
                          "\",\"expires_at\":";
                  keys += k.is_null(4) ? std::string("null") : "\"" + iso_time(k.integer(4)) + "\"";
                  if (!k.is_null(4)) valid_until = std::min(valid_until, k.integer(4));
                  if (!k.is_null(5) && !k.is_null(6))
                    keys += ",\"rate_limit\":{\"requests_per_minute\":" + k.text(5) + ",\"burst\":" + k.text(6) + "}";
                  keys += '}';
                });
    close_project();
    while (next_project < pr.rows.size()) {
      open_project(pr.rows[next_project]);
      close_project();
    }
    body += "]}";
  });
  auto etag = "\"" + std::to_string(version) + "\"";
  http::Response r;
  if (unchanged) {
    r.status = 304;
    r.set_header("ETag", etag);
    return r;
  }
  if (cached) {
    r.body = *cached;
  } else {
    auto shared = std::make_shared<const std::string>(std::move(body));
    {
      std::lock_guard lock(cache.mutex);
      if (version >= cache.version) {
        cache.version = version;
        cache.compact = compact;
        cache.valid_until_ms = valid_until;
        cache.body = shared;
      }
    }
    r.body = *shared;
  }
  r.set_header("Content-Type", "application/json");
  r.set_header("ETag", etag);
  r.set_header("Cache-Control", "no-store");
  return r;
}

// The changes after `since`, or nullopt when only a full document can bring the worker up to
// date (log compacted, too many changes, or `since` ahead of the database).
std::optional<http::Response> delta_document(AppState& app, std::int64_t since, bool* empty) {
  std::optional<http::Response> out;
  app.db->transaction([&](store::Connection& c) {
    std::int64_t version = c.exec("SELECT version FROM config_state WHERE id = 1", {}).rows.at(0).integer(0);
    if (since > version) return;
    std::string body;
    if (since < version) {
      auto stats = c.exec("SELECT MIN(version), COUNT(*) FROM config_changes WHERE version > $1", {since});
      auto min_after = stats.rows.at(0).opt_integer(0);
      std::int64_t count = stats.rows.at(0).integer(1);
      if (!min_after || *min_after != since + 1 || count > kMaxDeltaChanges) {
        // The log does not start right after `since`: changes are missing (compacted or older
        // than the log). Only versions that produced no change records could explain a gap, and
        // every version bump writes at least one, so a gap always means "send everything".
        return;
      }
      auto rows = c.exec("SELECT payload FROM config_changes WHERE version > $1 ORDER BY seq", {since});
      for (const auto& row : rows.rows) {
        if (!body.empty()) body += ',';
        body += row.text(0);
      }
    }
    *empty = body.empty();
    std::string doc = "{\"schema\":1,\"full\":false,\"since\":" + std::to_string(since) +
                      ",\"version\":" + std::to_string(version) + ",\"generated_at\":\"" + iso_time(now_ms()) +
                      "\",\"changes\":[" + body + "]}";
    http::Response r;
    r.body = std::move(doc);
    r.set_header("Content-Type", "application/json");
    r.set_header("Cache-Control", "no-store");
    out = std::move(r);
  });
  return out;
}

// A worker identifies itself on every config request (worker_id, address, applied, uptime,
// requests): that is its heartbeat. Bad values are ignored rather than failing the config fetch.
void record_heartbeat(AppState& app, const http::Request& req) {
  std::string id, address, applied, uptime, requests;
  if (!http::query_param(req.query, "worker_id", id) || id.empty() || id.size() > 128) return;
  http::query_param(req.query, "address", address);
  http::query_param(req.query, "applied", applied);
  http::query_param(req.query, "uptime", uptime);
  http::query_param(req.query, "requests", requests);
  auto num = [](const std::string& s) -> std::int64_t {
    std::int64_t v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    return ec == std::errc{} && p == s.data() + s.size() && v >= 0 ? v : 0;
  };
  std::int64_t now = now_ms();
  app.db->with_connection([&](store::Connection& c) {
    c.exec("INSERT INTO gateways (id, address, version_applied, uptime_sec, requests, first_seen, last_seen) "
           "VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (id) DO UPDATE SET address = excluded.address, "
           "version_applied = excluded.version_applied, uptime_sec = excluded.uptime_sec, "
           "requests = excluded.requests, last_seen = excluded.last_seen",
           {id, address.substr(0, 256), num(applied), num(uptime), num(requests), now});
  });
}

// A long poll at `since`: held until a change commits, then answered with the delta. A wake-up
// that brings nothing new for this poll (a change another process had already sent, the PostgreSQL
// listener's catch-up wake-up) holds it again for the rest of its time instead of answering an
// empty delta early.
http::Response hold_for_changes(AppState& app, std::int64_t since, bool compact,
                                std::chrono::steady_clock::time_point deadline) {
  http::Response held;
  held.defer_for = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
  held.deferred = [&app, since, compact, deadline] {
    bool empty = false;
    auto d = delta_document(app, since, &empty);
    if (!d) return full_document(app, http::Request{}, compact);
    if (empty && std::chrono::steady_clock::now() + std::chrono::milliseconds(5) < deadline)
      return hold_for_changes(app, since, compact, deadline);
    return std::move(*d);
  };
  return held;
}

http::Response config(AppState& app, const Call& call) {
  const http::Request& req = call.req;
  record_heartbeat(app, req);
  std::string since_s, wait_s;
  std::string worker_id;
  const bool compact = http::query_param(req.query, "worker_id", worker_id) && !worker_id.empty();
  if (!http::query_param(req.query, "since", since_s)) return full_document(app, req, compact);
  std::int64_t since = 0, wait = 0;
  auto parse = [](const std::string& s, std::int64_t& v) {
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    return ec == std::errc{} && p == s.data() + s.size() && !s.empty();
  };
  if (!parse(since_s, since) || since < 0) throw validation_error("since", "must be an integer >= 0");
  if (http::query_param(req.query, "wait", wait_s) && (!parse(wait_s, wait) || wait < 0 || wait > 60))
    throw validation_error("wait", "must be an integer between 0 and 60 (seconds)");
  bool empty = false;
  auto delta = delta_document(app, since, &empty);
  if (!delta) return full_document(app, http::Request{}, compact);
  if (!empty || wait == 0) return std::move(*delta);
  // Nothing new: hold the request until a change commits or the wait ends (long poll).
  return hold_for_changes(app, since, compact, std::chrono::steady_clock::now() + std::chrono::seconds(wait));
}

constexpr std::int64_t kLiveWindowMs = 90'000;  // a worker polls at least every ~25 s

// The worker registry. Operators see everything; an organisation's admins (`/organizations/{id}/
// gateways`) see the workers that serve its projects — every worker serves every project — without
// their addresses and request counts, which describe the whole installation.
http::Response gateways(AppState& app, bool operator_view) {
  json list = json::array();
  std::int64_t version = 0, now = now_ms();
  app.db->with_connection([&](store::Connection& c) {
    version = c.exec("SELECT version FROM config_state WHERE id = 1", {}).rows.at(0).integer(0);
    auto r = c.exec("SELECT id, address, version_applied, uptime_sec, requests, first_seen, last_seen FROM gateways "
                    "WHERE last_seen > $1 ORDER BY id",
                    {now - 24LL * 3600 * 1000});
    for (const auto& row : r.rows) {
      bool live = now - row.integer(6) <= kLiveWindowMs;
      json g = {{"id", row.text(0)},
                {"version_applied", row.integer(2)},
                {"lag", version - row.integer(2)},
                {"uptime_sec", row.integer(3)},
                {"first_seen", iso_time(row.integer(5))},
                {"last_seen", iso_time(row.integer(6))},
                {"live", live}};
      if (operator_view) {
        g["address"] = row.opt_text(1) ? json(*row.opt_text(1)) : json(nullptr);
        g["requests"] = row.integer(4);
      }
      list.push_back(g);
    }
  });
  return json_response(200, {{"config_version", version}, {"gateways", list}});
}

// Has every live worker applied `version` (default: the current one)?
http::Response propagation(AppState& app, const Call& call) {
  const http::Request& req = call.req;
  std::int64_t version = -1, current = 0, now = now_ms();
  std::string v;
  if (http::query_param(req.query, "version", v)) {
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), version);
    if (ec != std::errc{} || p != v.data() + v.size() || version < 0)
      throw validation_error("version", "must be an integer >= 0");
  }
  json pending = json::array();
  std::int64_t live = 0;
  app.db->with_connection([&](store::Connection& c) {
    current = c.exec("SELECT version FROM config_state WHERE id = 1", {}).rows.at(0).integer(0);
    if (version < 0) version = current;
    auto r = c.exec("SELECT id, version_applied FROM gateways WHERE last_seen > $1 ORDER BY id", {now - kLiveWindowMs});
    for (const auto& row : r.rows) {
      ++live;
      if (row.integer(1) < version) pending.push_back({{"id", row.text(0)}, {"version_applied", row.integer(1)}});
    }
  });
  return json_response(200, {{"version", version},
                              {"config_version", current},
                              {"live_gateways", live},
                              {"applied", live - static_cast<std::int64_t>(pending.size())},
                              {"pending", pending},
                              {"complete", pending.empty()}});
}

// POST /internal/worker/token-usage {"tokens": [{"jti", "last_used_at"}]}: a worker's batched
// report of the service tokens it saw; last_used_at only moves forward.
http::Response token_usage(AppState& app, const Call& call) {
  const http::Request& req = call.req;
  json body = parse_object_body(req);
  reject_unknown_fields(body, {"tokens"});
  auto it = body.find("tokens");
  if (it == body.end() || !it->is_array()) throw validation_error("tokens", "must be an array");
  if (it->size() > 10000) throw validation_error("tokens", "at most 10000 entries per report");
  std::vector<std::pair<std::string, std::int64_t>> seen;
  for (const auto& t : *it) {
    if (!t.is_object() || !t.contains("jti") || !t["jti"].is_string() || !t.contains("last_used_at") ||
        !t["last_used_at"].is_string())
      throw validation_error("tokens", "entries must be {\"jti\": string, \"last_used_at\": RFC 3339 time}");
    std::int64_t ms = parse_rfc3339(t["last_used_at"].get<std::string>());
    if (ms < 0) throw validation_error("tokens", "last_used_at must be an RFC 3339 UTC time");
    seen.emplace_back(t["jti"].get<std::string>(), std::min(ms, now_ms()));
  }
  if (!seen.empty())
    app.db->transaction([&](store::Connection& c) {
      for (const auto& [jti, ms] : seen)
        c.exec("UPDATE gateway_tokens SET last_used_at = $1 WHERE jti = $2 AND (last_used_at IS NULL OR last_used_at < $1)",
               {ms, jti});
    });
  return no_content();
}

}  // namespace

void register_worker_config_routes(RouteTable& r, AppState& app) {
  r.add("POST", "/internal/worker/token-usage", Access::kWorker, [&app](const Call& c) { return token_usage(app, c); });
  r.add("GET", "/gateways", Access::kOperator, [&app](const Call&) { return gateways(app, true); });
  r.add("GET", "/organizations/{id}/gateways", or_agent(Access::kOrgAdmin), [&app](const Call&) { return gateways(app, false); });
  r.add("GET", "/gateways/propagation", Access::kOperator, [&app](const Call& c) { return propagation(app, c); });
  r.add("GET", "/internal/worker/config", Access::kWorker, [&app](const Call& c) { return config(app, c); });
}

}  // namespace ag::control
