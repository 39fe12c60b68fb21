#include "gateway/pipeline/context.hpp"
#include "gateway/stages/accept/client.hpp"
#include "gateway/stages/identify/credentials.hpp"
#include "gateway/stages/log/log_line.hpp"
#include "gateway/stages/proxy/headers.hpp"
#include "gateway/stages/risk/endpoint.hpp"

#include <gtest/gtest.h>

#include <limits>
#include <nlohmann/json.hpp>

#include "common/crypto.hpp"
#include "config/snapshot.hpp"
#include "common/api_key.hpp"
#include "gateway/stages/risk/risk.hpp"
#include "config/context.hpp"

// The context this file builds snapshots with (config/context.hpp).
static ag::config::BuildContext test_ctx;

namespace ag::gateway {
namespace {

TEST(Pipeline, ClientIpHonoursOnlyTrustedProxies) {
  auto trusted = parse_cidrs("10.0.0.0/8, ::1/128");
  EXPECT_EQ(client_ip("203.0.113.9", "1.2.3.4", trusted), "203.0.113.9");  // peer not trusted
  EXPECT_EQ(client_ip("10.1.2.3", "1.2.3.4", trusted), "1.2.3.4");
  EXPECT_EQ(client_ip("10.1.2.3", "6.6.6.6, 1.2.3.4, 10.9.9.9", trusted), "1.2.3.4");
  EXPECT_EQ(client_ip("::1", "garbage", trusted), "::1");
  EXPECT_EQ(client_ip("10.1.2.3", "", trusted), "10.1.2.3");
  EXPECT_TRUE(cidr_contains(parse_cidrs("192.168.1.0/24"), "192.168.1.77"));
  EXPECT_FALSE(cidr_contains(parse_cidrs("192.168.1.0/24"), "192.168.2.1"));
  EXPECT_TRUE(cidr_contains(parse_cidrs("0.0.0.0/0"), "8.8.8.8"));
  EXPECT_THROW(parse_cidrs("10.0.0.0/33"), std::invalid_argument);
  EXPECT_THROW(parse_cidrs("not-an-ip"), std::invalid_argument);
}

TEST(Pipeline, EndpointNormalisation) {
  EXPECT_EQ(normalise_endpoint("/users/123/orders"), "/users/:id/orders");
  EXPECT_EQ(normalise_endpoint("/o/3f2504e0-4f89-11d3-9a0c-0305e82c3301"), "/o/:id");
  EXPECT_EQ(normalise_endpoint("/blob/deadbeefdeadbeef00"), "/blob/:id");
  EXPECT_EQ(normalise_endpoint("/v1/users"), "/v1/users");
  EXPECT_EQ(normalise_endpoint(""), "/");
  // The fast path (no copy) is taken only when normalising would change nothing.
  for (std::string_view p : {"/", "/v1/users", "/a/b/c", "/users/123/orders", "/o/3f2504e0-4f89-11d3-9a0c-0305e82c3301",
                             "/blob/deadbeefdeadbeef00", "/x/abcdefabcdefabcdefab", ""})
    if (!needs_normalising(p)) {
      EXPECT_EQ(normalise_endpoint(p), p) << p;
    }
  EXPECT_TRUE(needs_normalising("/users/123"));
  EXPECT_FALSE(needs_normalising("/v1/users"));
}

TEST(Pipeline, RequestIdValidation) {
  EXPECT_TRUE(valid_request_id("abc-123_x.y"));
  EXPECT_FALSE(valid_request_id(""));
  EXPECT_FALSE(valid_request_id("a b"));
  EXPECT_FALSE(valid_request_id(std::string(129, 'a')));
}

TEST(Pipeline, IdentifyChecksFormatHashAndExpiry) {
  crypto::init();
  auto good = generate_api_key();
  auto expired = generate_api_key();
  std::string doc = R"({"version":3,"projects":[{"id":"p1","upstream_base_url":"http://127.0.0.1:9/x",
    "rate_limit":{"requests_per_minute":60,"burst":20},"max_body_bytes":5,
    "keys":[{"id":"k1","hash":")" + good.hash_hex + R"(","expires_at":null},
            {"id":"k2","hash":")" + expired.hash_hex + R"(","expires_at":"2020-01-01T00:00:00Z"}]}]})";
  auto built = config::build_snapshot(doc, test_ctx);
  ASSERT_TRUE(built.snapshot) << built.error;
  Context ctx;
  ctx.snapshot = built.snapshot;
  LocalReply r;
  EXPECT_TRUE(identify(ctx, good.key, true, 1'700'000'000'000, r));
  EXPECT_EQ(ctx.project->id, "p1");
  EXPECT_EQ(ctx.key->id.view(), "k1");
  EXPECT_NE(ctx.key_tag, 0u);
  Context c2;
  c2.snapshot = built.snapshot;
  EXPECT_FALSE(identify(c2, "", false, 0, r));
  EXPECT_EQ(r.reason, Reason::kKeyMissing);
  EXPECT_FALSE(identify(c2, expired.key, true, 1'700'000'000'000, r));
  EXPECT_EQ(r.reason, Reason::kKeyInvalid);
  EXPECT_FALSE(identify(c2, generate_api_key().key, true, 0, r));  // well-formed, unknown
  std::string tampered = good.key;
  tampered[20] = tampered[20] == 'a' ? 'b' : 'a';
  EXPECT_FALSE(identify(c2, tampered, true, 0, r));
  EXPECT_EQ(r.status, 401);
}

// The cache picks a slot from a token's tail and must still tell apart tokens that share it: a
// token differing anywhere, or only in length, is a miss; so is any entry of an older key set.
TEST(Pipeline, TokenCacheMatchesWholeTokenOnly) {
  TokenCache cache;
  jwt::ServiceClaims claims;
  claims.jti = "jti-1";
  claims.project = "p1";
  claims.service = "svc";
  claims.exp = 2'000'000'000;
  const std::string token = "eyJhbGciOiJFUzI1NiJ9.eyJqdGkiOiJqdGktMSJ9." + std::string(86, 'S') + "tailTAIL12345678";
  cache.insert(token, 7, claims);
  const TokenCache::Entry* hit = cache.find(token, 7);
  ASSERT_NE(hit, nullptr);
  EXPECT_EQ(hit->jti, "jti-1");
  EXPECT_EQ(hit->project, "p1");
  EXPECT_EQ(hit->exp, 2'000'000'000);
  EXPECT_EQ(cache.find(token, 8), nullptr);  // the signing keys changed since it was verified
  for (std::size_t at : {std::size_t{0}, std::size_t{8}, std::size_t{40}, token.size() - 20, token.size() - 17}) {
    std::string other = token;
    other[at] = other[at] == 'x' ? 'y' : 'x';  // same tail: the same slot
    EXPECT_EQ(cache.find(other, 7), nullptr) << "byte " << at;
  }
  std::string last = token;
  last.back() = '9';
  EXPECT_EQ(cache.find(last, 7), nullptr);
  EXPECT_EQ(cache.find(token.substr(1), 7), nullptr);  // shorter, same tail
  EXPECT_EQ(cache.find("x" + token, 7), nullptr);      // longer, same tail
  EXPECT_EQ(cache.find("", 7), nullptr);
  // A longer token that starts with the cached one and lands in its slot (found by trying
  // suffixes: a second insert into the same slot evicts the first) is still a miss.
  std::string longer;
  {
    TokenCache probe;
    for (int i = 0; i < 200000 && longer.empty(); ++i) {
      std::string candidate = token + std::to_string(i);
      probe.insert(token, 7, claims);
      probe.insert(candidate, 7, claims);
      if (probe.find(token, 7) == nullptr) longer = candidate;
    }
  }
  ASSERT_FALSE(longer.empty()) << "no suffix shares the slot";
  EXPECT_EQ(cache.find(longer, 7), nullptr);
  // Short strings (no 16-character tail) still work, both ways.
  cache.insert("abc", 7, claims);
  EXPECT_NE(cache.find("abc", 7), nullptr);
  EXPECT_EQ(cache.find("abd", 7), nullptr);
  EXPECT_NE(cache.find(token, 7), nullptr);
}

TEST(Pipeline, LogLineIsOneJsonLineWithoutTheKey) {
  Context ctx;
  ctx.request_id = "r\"1";
  ctx.client_ip = "1.2.3.4";
  ctx.status = 401;
  ctx.reason = Reason::kKeyInvalid;
  std::string out;
  append_log_line(out, ctx, LogFields{"GET", "/a/1\n", "ua\x01"}, 0);
  EXPECT_EQ(out.back(), '\n');
  EXPECT_EQ(out.find('\n'), out.size() - 1);
  EXPECT_NE(out.find(R"("request_id":"r\"1")"), std::string::npos);
  EXPECT_NE(out.find(R"("reason":"key_invalid")"), std::string::npos);
  EXPECT_NE(out.find(R"("decision":"block")"), std::string::npos);
  EXPECT_NE(out.find(R"(\u0001)"), std::string::npos);
}

TEST(Pipeline, LogLineWorstCaseFitsAndParses) {
  // Every string at its longest and made of bytes that expand most when escaped, every optional
  // part present, every number at its widest: the line must fit the room reserved for it (the
  // sanitizer build checks the writes) and parse back to the same values.
  config::Project proj;
  proj.id = std::string(36, '\x7f');
  config::Service svc;
  svc.name = std::string(63, '"');
  Context ctx;
  ctx.project = &proj;
  ctx.service = &svc;
  ctx.jwt = true;
  ctx.request_id = std::string(128, '\x01');
  ctx.client_ip = std::string(45, '\\');
  ctx.jti = std::string(200, '\xff');
  ctx.status = 504;
  ctx.reason = Reason::kUpstreamTimeout;
  ctx.risk_evaluated = true;
  ctx.risk_shadow = true;
  ctx.risk_rules = (1u << kRiskRuleCount) - 1;
  ctx.risk_decision = 2;
  ctx.risk_score = 1e9;
  ctx.upstream_ns = std::numeric_limits<std::int64_t>::max();
  ctx.bytes_in = ctx.bytes_out = std::numeric_limits<std::uint64_t>::max();
  const std::string method(20, '\t'), path(3000, '\x02'), ua(600, '\n');
  std::string out = "before";
  append_log_line(out, ctx, LogFields{method, path, ua}, std::numeric_limits<std::int64_t>::max());
  ASSERT_EQ(out.rfind("before", 0), 0u);
  ASSERT_EQ(out.back(), '\n');
  ASSERT_EQ(out.find('\n'), out.size() - 1);
  auto j = nlohmann::json::parse(out.substr(6));
  EXPECT_EQ(j["request_id"], ctx.request_id);
  EXPECT_EQ(j["project_id"], proj.id);
  EXPECT_EQ(j["service"], svc.name);
  EXPECT_EQ(j["ip"], ctx.client_ip);
  EXPECT_EQ(j["method"], method);
  EXPECT_EQ(j["path"], path.substr(0, 2048));
  EXPECT_EQ(j["user_agent"], ua.substr(0, 512));
  std::string replacement;
  for (int i = 0; i < 200; ++i) replacement += "\xef\xbf\xbd";  // U+FFFD for each byte that is not UTF-8
  EXPECT_EQ(j["jti"], replacement);
  EXPECT_EQ(j["reason"], "upstream_timeout");
  EXPECT_EQ(j["rules"].size(), kRiskRuleCount);
  EXPECT_EQ(j["shadow"], true);
  EXPECT_EQ(j["status"], 504);
  EXPECT_EQ(j["bytes_in"].get<std::uint64_t>(), std::numeric_limits<std::uint64_t>::max());
  EXPECT_EQ(j["bytes_out"].get<std::uint64_t>(), std::numeric_limits<std::uint64_t>::max());
  EXPECT_DOUBLE_EQ(j["risk_score"].get<double>(), 1e9);
}

TEST(Pipeline, LogLineTypicalRequest) {
  config::Project proj;
  proj.id = "p-1";
  Context ctx;
  ctx.project = &proj;
  ctx.request_id = "req-1";
  ctx.client_ip = "10.0.0.1";
  ctx.status = 200;
  ctx.start_ns = 1'000'000;
  ctx.upstream_ns = 1'234'567;
  ctx.bytes_in = 0;
  ctx.bytes_out = 3;
  std::string out;
  // No User-Agent: an empty view with no data behind it (the sanitizer build checks the copy).
  append_log_line(out, ctx, LogFields{"GET", "/users/42/orders", std::string_view{}}, 3'500'000);
  // Everything after the timestamp ("2026-11-23T03:50:00.123Z"), byte for byte.
  ASSERT_GT(out.size(), 32u);
  EXPECT_EQ(out.substr(0, 7), "{\"ts\":\"");
  EXPECT_EQ(out.substr(32),
            R"(,"request_id":"req-1","project_id":"p-1","key_id":null,"method":"GET","path":"/users/42/orders",)"
            R"("endpoint":"/users/:id/orders","ip":"10.0.0.1","user_agent":"","decision":"allow","reason":"",)"
            R"("risk_score":0.000,"status":200,"latency_ms":2.500,"upstream_latency_ms":1.234,"bytes_in":0,"bytes_out":3})"
            "\n");
}

TEST(Snapshot, RejectsBadDocumentsWithTheField) {
  EXPECT_NE(config::build_snapshot("{", test_ctx).error, "");
  EXPECT_NE(config::build_snapshot("[]", test_ctx).error, "");
  auto e = config::build_snapshot(R"({"version":1,"projects":[{"id":"p","upstream_base_url":"ftp://x","api_keys":[]}]})", test_ctx);
  EXPECT_EQ(e.error.rfind("projects[0].upstream_base_url", 0), 0u) << e.error;
  e = config::build_snapshot(R"({"version":1,"projects":[{"id":"p","upstream_base_url":"http://x","api_keys":["zz"]}]})", test_ctx);
  EXPECT_EQ(e.error.rfind("projects[0].api_keys[0]", 0), 0u) << e.error;
  auto ok = config::build_snapshot(R"({"version":1,"projects":[{"id":"p","upstream_url":"http://127.0.0.1:1","api_keys":[]}]})", test_ctx);
  ASSERT_TRUE(ok.snapshot) << ok.error;
  const auto* proj = ok.snapshot->project(test_ctx.slots.slot_for("p"));
  ASSERT_NE(proj, nullptr);
  EXPECT_EQ(proj->upstream.port, 1);
  EXPECT_FALSE(proj->upstream.endpoints.empty());
}

}  // namespace
}  // namespace ag::gateway

namespace ag::gateway {
namespace {
TEST(AccessLogJson, InvalidUtf8BecomesReplacementCharacter) {
  std::string out;
  append_json_string(out, std::string("a\xff" "b\xc3\xa9" "c\xe2\x82" "d\xed\xa0\x80" "\xf0\x9f\x98\x80\x7f", 17));
  EXPECT_EQ(out, "\"a\\ufffdb\xc3\xa9" "c\\ufffd\\ufffdd\\ufffd\\ufffd\\ufffd\xf0\x9f\x98\x80\\u007f\"");
}
}  // namespace
}  // namespace ag::gateway
