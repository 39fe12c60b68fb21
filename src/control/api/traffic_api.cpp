// Traffic rollups (docs/metrics.md, "Traffic rollups"): workers report each project's requests per
// hour (POST /internal/worker/traffic, in batches, each counted once however often it is sent);
// members read the hourly series of a project or of their organisation.
#include <cmath>
#include <map>

#include "common/time.hpp"
#include "common/traffic.hpp"
#include "control/api/routes.hpp"

namespace ag::control {

namespace {

constexpr std::int64_t kBatchMemoryMs = 2 * 24 * traffic::kHourMs;  // a batch id is remembered this long
constexpr std::size_t kMaxEntries = 10'000;

std::int64_t count_field(const json& e, const char* name) {
  auto it = e.find(name);
  if (it == e.end() || !it->is_number_integer() || it->get<std::int64_t>() < 0)
    throw validation_error(std::string("hours[].") + name, "must be an integer >= 0");
  return it->get<std::int64_t>();
}

std::string short_string(const json& body, const char* name) {
  auto v = get_string(body, name);
  if (!v || v->empty() || v->size() > 128) throw validation_error(name, "must be a string of 1 to 128 characters");
  return *v;
}

struct Entry {
  std::string project_id;
  std::int64_t hour = 0;
  std::int64_t requests = 0, errors = 0, throttled = 0, blocked = 0;
  std::vector<std::int64_t> buckets;
};

// Drops rollups past the retention and batch ids past their memory, at most once an hour.
void sweep(AppState& app, store::Connection& c, std::int64_t now) {
  std::int64_t last = app.traffic_swept_at.load();
  if (now - last < traffic::kHourMs || !app.traffic_swept_at.compare_exchange_strong(last, now)) return;
  const std::int64_t keep_from = traffic::hour_of(now) - app.settings.metrics_retention_days * 24 * traffic::kHourMs;
  c.exec("DELETE FROM traffic_hourly WHERE hour < $1", {keep_from});
  c.exec("DELETE FROM traffic_latency WHERE hour < $1", {keep_from});
  c.exec("DELETE FROM traffic_batches WHERE received_at < $1", {now - kBatchMemoryMs});
}

// POST /internal/worker/traffic {worker_id, batch_id, hours: [{project_id, hour, requests, errors,
// throttled, blocked, latency_buckets}]}. A batch already counted answers 200 {"duplicate": true}.
http::Response report(AppState& app, const Call& call) {
  json body = parse_object_body(call.req);
  reject_unknown_fields(body, {"worker_id", "batch_id", "hours"});
  const std::string worker = short_string(body, "worker_id");
  const std::string batch = short_string(body, "batch_id");
  auto it = body.find("hours");
  if (it == body.end() || !it->is_array()) throw validation_error("hours", "must be an array");
  if (it->size() > kMaxEntries) throw validation_error("hours", "at most 10000 entries per batch");
  std::vector<Entry> entries;
  for (const auto& e : *it) {
    if (!e.is_object()) throw validation_error("hours", "entries must be objects");
    reject_unknown_fields(e, {"project_id", "hour", "requests", "errors", "throttled", "blocked", "latency_buckets"});
    Entry x;
    x.project_id = short_string(e, "project_id");
    auto hour = get_string(e, "hour");
    x.hour = hour ? parse_rfc3339(*hour) : -1;
    if (x.hour < 0 || x.hour % traffic::kHourMs != 0) throw validation_error("hours[].hour", "must be an RFC 3339 UTC time on the hour");
    x.requests = count_field(e, "requests");
    x.errors = count_field(e, "errors");
    x.throttled = count_field(e, "throttled");
    x.blocked = count_field(e, "blocked");
    auto b = e.find("latency_buckets");
    if (b == e.end() || !b->is_array() || b->size() != traffic::kBuckets)
      throw validation_error("hours[].latency_buckets", "must be an array of " + std::to_string(traffic::kBuckets) + " counts");
    std::int64_t sum = 0;
    for (const auto& n : *b) {
      if (!n.is_number_integer() || n.get<std::int64_t>() < 0)
        throw validation_error("hours[].latency_buckets", "counts must be integers >= 0");
      x.buckets.push_back(n.get<std::int64_t>());
      sum += x.buckets.back();
    }
    if (sum != x.requests || x.errors + x.throttled + x.blocked > x.requests)
      throw validation_error("hours[]", "latency_buckets must add up to requests, and errors + throttled + blocked must not exceed it");
    entries.push_back(std::move(x));
  }
  const std::int64_t now = now_ms();
  bool duplicate = false;
  try {
    app.db->transaction([&](store::Connection& c) {
      if (!c.exec("SELECT 1 FROM traffic_batches WHERE worker_id = $1 AND batch_id = $2", {worker, batch}).empty()) {
        duplicate = true;
        return;
      }
      c.exec("INSERT INTO traffic_batches (worker_id, batch_id, received_at) VALUES ($1, $2, $3)", {worker, batch, now});
      for (const auto& x : entries) {
        // Counts for a project deleted since are dropped.
        if (c.exec("SELECT 1 FROM projects WHERE id = $1", {x.project_id}).empty()) continue;
        c.exec("INSERT INTO traffic_hourly (project_id, hour, requests, errors, throttled, blocked) "
               "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (project_id, hour) DO UPDATE SET "
               "requests = traffic_hourly.requests + excluded.requests, errors = traffic_hourly.errors + excluded.errors, "
               "throttled = traffic_hourly.throttled + excluded.throttled, blocked = traffic_hourly.blocked + excluded.blocked",
               {x.project_id, x.hour, x.requests, x.errors, x.throttled, x.blocked});
        for (std::size_t i = 0; i < x.buckets.size(); ++i)
          if (x.buckets[i] > 0)
            c.exec("INSERT INTO traffic_latency (project_id, hour, bucket, count) VALUES ($1, $2, $3, $4) "
                   "ON CONFLICT (project_id, hour, bucket) DO UPDATE SET count = traffic_latency.count + excluded.count",
                   {x.project_id, x.hour, static_cast<std::int64_t>(i), x.buckets[i]});
      }
      sweep(app, c, now);
    });
  } catch (const store::UniqueViolation&) {
    duplicate = true;  // the same batch, sent twice at once: the other request counted it
  }
  return json_response(200, {{"duplicate", duplicate}, {"hours", entries.size()}});
}

// ?from=&to= (RFC 3339); default the last 24 hours. Whole hours: from rounds down, to up.
std::pair<std::int64_t, std::int64_t> range(AppState& app, const Call& call) {
  auto time = [&](const char* name, std::int64_t fallback) {
    std::string v;
    if (!http::query_param(call.req.query, name, v)) return fallback;
    std::int64_t ms = parse_rfc3339(v);
    if (ms < 0) throw validation_error(name, "must be an RFC 3339 UTC time, e.g. 2026-01-31T12:00:00Z");
    return ms;
  };
  const std::int64_t now = now_ms();
  std::int64_t to = time("to", now);
  to = traffic::hour_of(to + traffic::kHourMs - 1);
  std::int64_t from = traffic::hour_of(time("from", to - 24 * traffic::kHourMs));
  if (from >= to) throw validation_error("from", "must be before to");
  if (to - from > app.settings.metrics_retention_days * 24 * traffic::kHourMs)
    throw validation_error("from", "the range is longer than the " + std::to_string(app.settings.metrics_retention_days) +
                                       " days rollups are kept (METRICS_RETENTION_DAYS)");
  return {from, to};
}

json tally_json(const traffic::Tally& t) {
  auto pct = [&](double q) {
    auto v = traffic::percentile(t.latency, q);
    return v ? json(std::round(*v * 1000) / 1000) : json(nullptr);
  };
  return {{"requests", t.requests}, {"errors", t.errors}, {"throttled", t.throttled}, {"blocked", t.blocked},
          {"p50_ms", pct(0.5)},     {"p99_ms", pct(0.99)}};
}

// Rollups of the projects `where` selects (a clause on `project_id` with $1), per hour and per
// project, in [from, to).
void load(store::Connection& c, const std::string& where, const std::string& arg, std::int64_t from, std::int64_t to,
          std::map<std::int64_t, traffic::Tally>& by_hour, std::map<std::string, traffic::Tally>& by_project) {
  auto r = c.exec("SELECT project_id, hour, requests, errors, throttled, blocked FROM traffic_hourly WHERE " + where +
                      " AND hour >= $2 AND hour < $3",
                  {arg, from, to});
  for (const auto& row : r.rows) {
    traffic::Tally t;
    t.requests = static_cast<std::uint64_t>(row.integer(2));
    t.errors = static_cast<std::uint64_t>(row.integer(3));
    t.throttled = static_cast<std::uint64_t>(row.integer(4));
    t.blocked = static_cast<std::uint64_t>(row.integer(5));
    by_hour[row.integer(1)].add(t);
    by_project[row.text(0)].add(t);
  }
  auto l = c.exec("SELECT project_id, hour, bucket, count FROM traffic_latency WHERE " + where + " AND hour >= $2 AND hour < $3",
                  {arg, from, to});
  for (const auto& row : l.rows) {
    auto b = static_cast<std::size_t>(row.integer(2));
    if (b >= traffic::kBuckets) continue;
    by_hour[row.integer(1)].latency[b] += static_cast<std::uint64_t>(row.integer(3));
    by_project[row.text(0)].latency[b] += static_cast<std::uint64_t>(row.integer(3));
  }
}

json series_json(const std::map<std::int64_t, traffic::Tally>& by_hour, traffic::Tally& total) {
  json series = json::array();
  for (const auto& [hour, t] : by_hour) {
    json j = tally_json(t);
    j["hour"] = iso_time(hour);
    series.push_back(j);
    total.add(t);
  }
  return series;
}

http::Response project_metrics(AppState& app, const Call& call) {
  const auto span = range(app, call);
  const std::int64_t from = span.first, to = span.second;
  std::map<std::int64_t, traffic::Tally> by_hour;
  std::map<std::string, traffic::Tally> by_project;
  app.db->with_connection([&](store::Connection& c) { load(c, "project_id = $1", *call.project_id, from, to, by_hour, by_project); });
  traffic::Tally total;
  json series = series_json(by_hour, total);
  return json_response(200, {{"project_id", *call.project_id},
                              {"from", iso_time(from)},
                              {"to", iso_time(to)},
                              {"series", series},
                              {"totals", tally_json(total)}});
}

http::Response org_metrics(AppState& app, const Call& call) {
  const auto span = range(app, call);
  const std::int64_t from = span.first, to = span.second;
  std::map<std::int64_t, traffic::Tally> by_hour;
  std::map<std::string, traffic::Tally> by_project;
  json projects = json::array();
  app.db->with_connection([&](store::Connection& c) {
    load(c, "project_id IN (SELECT id FROM projects WHERE org_id = $1)", *call.org_id, from, to, by_hour, by_project);
    auto r = c.exec("SELECT id, name FROM projects WHERE org_id = $1 ORDER BY seq", {*call.org_id});
    for (const auto& row : r.rows) {
      auto it = by_project.find(row.text(0));
      json j = tally_json(it == by_project.end() ? traffic::Tally{} : it->second);
      j["project_id"] = row.text(0);
      j["name"] = row.text(1);
      projects.push_back(j);
    }
  });
  traffic::Tally total;
  json series = series_json(by_hour, total);
  return json_response(200, {{"organization_id", *call.org_id},
                              {"from", iso_time(from)},
                              {"to", iso_time(to)},
                              {"series", series},
                              {"totals", tally_json(total)},
                              {"projects", projects}});
}

}  // namespace

void register_traffic_routes(RouteTable& r, AppState& app) {
  r.add("POST", "/internal/worker/traffic", Access::kWorker, [&app](const Call& c) { return report(app, c); });
  r.add("GET", "/projects/{id}/metrics", or_agent(Access::kProjectMember), [&app](const Call& c) { return project_metrics(app, c); });
  r.add("GET", "/organizations/{id}/metrics", or_agent(Access::kOrgMember), [&app](const Call& c) { return org_metrics(app, c); });
}

}  // namespace ag::control
