// The organisation's activity feed (docs/organizations.md, "Activity"): the audit records that
// belong to it, newest first, each naming the user or agent that acted. Filters by actor, action,
// project and time; pages with an opaque cursor.
#include <charconv>

#include "common/crypto.hpp"
#include "common/time.hpp"
#include "control/api/routes.hpp"

namespace ag::control {

namespace {

std::optional<std::string> query(const Call& call, const char* name) {
  std::string v;
  if (!http::query_param(call.req.query, name, v)) return std::nullopt;
  return v;
}

std::int64_t time_param(const Call& call, const char* name) {
  auto v = query(call, name);
  if (!v) return -1;
  std::int64_t ms = parse_rfc3339(*v);
  if (ms < 0) throw validation_error(name, "must be an RFC 3339 UTC time, e.g. 2026-01-31T12:00:00Z");
  return ms;
}

std::int64_t int_param(const Call& call, const char* name, std::int64_t fallback, std::int64_t lo, std::int64_t hi) {
  auto v = query(call, name);
  if (!v) return fallback;
  std::int64_t n = 0;
  auto [p, ec] = std::from_chars(v->data(), v->data() + v->size(), n);
  if (ec != std::errc{} || p != v->data() + v->size() || n < lo || n > hi)
    throw validation_error(name, "must be an integer between " + std::to_string(lo) + " and " + std::to_string(hi));
  return n;
}

http::Response feed(AppState& app, const Call& call) {
  static constexpr std::string_view kKnown[] = {"actor_id", "actor_type", "action", "project_id", "since",
                                                "until",    "cursor",     "limit"};
  for (std::string_view rest = call.req.query; !rest.empty();) {
    auto amp = rest.find('&');
    std::string_view part = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view{} : rest.substr(amp + 1);
    if (part.empty()) continue;
    auto name = part.substr(0, part.find('='));
    bool known = false;
    for (auto k : kKnown) known |= name == k;
    if (!known) throw validation_error(name, "unknown query parameter");
  }
  const std::int64_t limit = int_param(call, "limit", 50, 1, 200);
  std::string sql =
      "SELECT a.id, a.action, a.actor_type, a.actor_id, a.target_type, a.target_id, a.project_id, a.detail, "
      "a.request_id, a.created_at, COALESCE(u.name, g.name) FROM audit_log a "
      "LEFT JOIN users u ON a.actor_type = 'user' AND u.id = a.actor_id "
      "LEFT JOIN agents g ON a.actor_type = 'agent' AND g.id = a.actor_id WHERE a.org_id = $1";
  std::vector<store::Value> args{*call.org_id};
  auto where = [&](const std::string& clause, store::Value v) {
    args.push_back(std::move(v));
    sql += " AND " + clause + " $" + std::to_string(args.size());
  };
  if (auto v = query(call, "actor_id")) where("a.actor_id =", *v);
  if (auto v = query(call, "actor_type")) {
    if (*v != "user" && *v != "agent") throw validation_error("actor_type", "must be user or agent");
    where("a.actor_type =", *v);
  }
  if (auto v = query(call, "action")) {
    // "key.*" matches every key action; anything else is exact.
    if (v->size() >= 2 && v->substr(v->size() - 2) == ".*") where("substr(a.action, 1, " + std::to_string(v->size() - 1) + ") =", v->substr(0, v->size() - 1));
    else where("a.action =", *v);
  }
  if (auto v = query(call, "project_id")) where("a.project_id =", *v);
  if (auto since = time_param(call, "since"); since >= 0) where("a.created_at >=", since);
  if (auto until = time_param(call, "until"); until >= 0) where("a.created_at <", until);
  if (auto v = query(call, "cursor")) {
    // The cursor is the last id of the previous page, base64url-encoded.
    auto raw = crypto::base64url_decode(*v);
    std::int64_t id = 0;
    if (!raw || raw->empty() || std::from_chars(raw->data(), raw->data() + raw->size(), id).ptr != raw->data() + raw->size() ||
        id < 1)
      throw validation_error("cursor", "not a cursor this feed gave out");
    where("a.id <", id);
  }
  args.push_back(limit + 1);
  sql += " ORDER BY a.id DESC LIMIT $" + std::to_string(args.size());
  json items = json::array();
  std::optional<std::string> next;
  app.db->with_connection([&](store::Connection& c) {
    auto r = c.exec(sql, args);
    for (std::size_t i = 0; i < r.rows.size(); ++i) {
      const auto& row = r.rows[i];
      if (static_cast<std::int64_t>(i) == limit) {
        next = crypto::base64url_encode(std::to_string(r.rows[i - 1].integer(0)));
        break;
      }
      json actor = nullptr;
      if (row.opt_text(3))
        actor = {{"type", row.opt_text(2).value_or("user")},
                 {"id", *row.opt_text(3)},
                 {"name", row.opt_text(10) ? json(*row.opt_text(10)) : json(nullptr)}};
      json detail = row.is_null(7) ? json(nullptr) : json::parse(row.text(7), nullptr, false);
      if (detail.is_discarded()) detail = nullptr;
      auto text_or_null = [&](std::size_t k) { return row.opt_text(k) ? json(*row.opt_text(k)) : json(nullptr); };
      items.push_back({{"id", row.integer(0)},
                       {"action", row.text(1)},
                       {"actor", actor},
                       {"target_type", text_or_null(4)},
                       {"target_id", text_or_null(5)},
                       {"project_id", text_or_null(6)},
                       {"detail", detail},
                       {"request_id", text_or_null(8)},
                       {"created_at", iso_time(row.integer(9))}});
    }
  });
  return json_response(200, {{"items", items}, {"next_cursor", next ? json(*next) : json(nullptr)}});
}

}  // namespace

void register_activity_routes(RouteTable& r, AppState& app) {
  r.add("GET", "/organizations/{id}/activity", or_agent(Access::kOrgMember), [&app](const Call& c) { return feed(app, c); });
}

}  // namespace ag::control
