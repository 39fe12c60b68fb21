// Google Benchmark for the worker's per-request functions and the control plane's agent-token check
// (run: build/bench/micro/ag_micro_bench).
#include <benchmark/benchmark.h>
#include <sodium.h>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>

#include <cstdio>
#include <ctime>
#include <vector>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "common/crypto.hpp"
#include "common/service_token.hpp"
#include "config/snapshot.hpp"
#include "common/api_key.hpp"
#include "http/h1/http1.hpp"
#include "gateway/pipeline/context.hpp"
#include "gateway/stages/accept/client.hpp"
#include "gateway/stages/identify/credentials.hpp"
#include "gateway/stages/log/log_line.hpp"
#include "gateway/stages/log/traffic.hpp"
#include "gateway/stages/proxy/headers.hpp"
#include "gateway/stages/risk/endpoint.hpp"
#include "gateway/stages/risk/risk.hpp"
#include "ratelimit/local_store.hpp"
#include "config/context.hpp"
#include "control/service/agent_tokens.hpp"

// The context this file builds snapshots with (config/context.hpp).
static ag::config::BuildContext bench_ctx;

namespace {

using namespace ag;

struct Fixture {
  Fixture() {
    crypto::init();
    std::string doc = R"({"version":1,"projects":[{"id":"bench","upstream_base_url":"http://127.0.0.1:9","keys":[)";
    for (int i = 0; i < 10000; ++i) {
      auto g = generate_api_key();
      if (i == 5000) key = g.key;
      if (i) doc += ',';
      doc += R"({"id":"k)" + std::to_string(i) + R"(","hash":")" + g.hash_hex + R"(","expires_at":null})";
    }
    doc += "]}]}";
    snapshot = config::build_snapshot(doc, bench_ctx).snapshot;
  }
  std::string key;
  std::shared_ptr<const config::Snapshot> snapshot;
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

// Checksum check + SHA-256 + lookup of a valid key among 10,000.
void BM_IdentifyValidKey(benchmark::State& state) {
  auto& f = fixture();
  for (auto _ : state) {
    gateway::Context ctx;
    ctx.snapshot = f.snapshot;
    gateway::LocalReply reply;
    benchmark::DoNotOptimize(gateway::identify(ctx, f.key, true, 0, reply));
  }
}
BENCHMARK(BM_IdentifyValidKey);

// A made-up key is refused by its checksum alone.
void BM_IdentifyMalformedKey(benchmark::State& state) {
  auto& f = fixture();
  std::string bad = f.key;
  bad[20] = bad[20] == 'a' ? 'b' : 'a';
  for (auto _ : state) {
    gateway::Context ctx;
    ctx.snapshot = f.snapshot;
    gateway::LocalReply reply;
    benchmark::DoNotOptimize(gateway::identify(ctx, bad, true, 0, reply));
  }
}
BENCHMARK(BM_IdentifyMalformedKey);

void BM_Sha256ApiKey(benchmark::State& state) {
  auto& f = fixture();
  for (auto _ : state) benchmark::DoNotOptimize(crypto::sha256(f.key));
}
BENCHMARK(BM_Sha256ApiKey);

void BM_GcraLocal(benchmark::State& state) {
  ratelimit::LocalStore store;
  ratelimit::Policy policy{100000000, 100000000};
  std::int64_t now = 1'000'000'000;
  for (auto _ : state) benchmark::DoNotOptimize(store.check(12345, policy, now += 1000));
}
BENCHMARK(BM_GcraLocal);

void BM_AccessLogLine(benchmark::State& state) {
  gateway::Context ctx;
  ctx.request_id = "AbCdEfGh-1x2";
  ctx.client_ip = "127.0.0.1";
  ctx.status = 200;
  ctx.upstream_ns = 150000;
  std::string out;
  for (auto _ : state) {
    out.clear();
    gateway::append_log_line(out, ctx, gateway::LogFields{"GET", "/v1/users/12345/orders", "wrk/4.2"}, 420000);
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(BM_AccessLogLine);

// A one-key delta against a snapshot of 10,000 keys (copies one shard).
void BM_ApplyOneKeyDelta(benchmark::State& state) {
  auto& f = fixture();
  auto g = generate_api_key();
  std::string delta = R"({"since":1,"version":2,"changes":[{"version":2,"op":"key.upsert","project_id":"bench","key":{"id":"new","hash":")" +
                      g.hash_hex + R"(","expires_at":null}}]})";
  for (auto _ : state) benchmark::DoNotOptimize(config::apply_delta(f.snapshot, delta, bench_ctx).snapshot);
}
BENCHMARK(BM_ApplyOneKeyDelta);

// The log stage's per-project traffic tally (a worker with a control plane counts every request
// this way): one project, a 200 answered in ~0.4 ms, handed over every 4,096 requests (the sweep
// does it every 250 ms on a real thread).
void BM_TrafficTally(benchmark::State& state) {
  auto& f = fixture();
  const config::Project* project = nullptr;
  for (const auto& p : f.snapshot->projects)
    if (p) project = p.get();
  gateway::stages::TrafficShard shard;
  gateway::stages::TrafficByHour into;
  std::int64_t n = 0;
  for (auto _ : state) {
    shard.count(*project, 200, gateway::Reason::kNone, 420000);
    if ((++n & 4095) == 0) {
      shard.hand_over(1'780'000'000'000);
      shard.take(into);
    }
  }
  benchmark::DoNotOptimize(into.size());
}
BENCHMARK(BM_TrafficTally);

// Service tokens as the worker sees them: {"jti":uuid,"project","service","iat","exp"}.
struct TokenFixture {
  TokenFixture() {
    crypto::init();
    now = static_cast<std::int64_t>(std::time(nullptr));
    hs = jwt::ServiceKey::hmac(crypto::random_bytes(32));
    es = jwt::ServiceKey::from_pem("es-bench", jwt::KeyAlg::kES256,
                                   jwt::generate_key_pair(jwt::KeyAlg::kES256).private_pem);
    ed = jwt::ServiceKey::from_pem("ed-bench", jwt::KeyAlg::kEdDSA,
                                   jwt::generate_key_pair(jwt::KeyAlg::kEdDSA).private_pem);
    keys.hmac = hs;
    keys.keys = {jwt::ServiceKey::from_pem("es-bench", jwt::KeyAlg::kES256, es->public_pem()),
                 jwt::ServiceKey::from_pem("ed-bench", jwt::KeyAlg::kEdDSA, ed->public_pem())};
    payload = R"({"jti":")" + crypto::uuid_v4() + R"(","project":"captionacc","service":"prefect","iat":)" +
              std::to_string(now) + R"(,"exp":)" + std::to_string(now + 90 * 86400) + "}";
    hs_token = jwt::sign_service_token(*hs, payload);
    es_token = jwt::sign_service_token(*es, payload);
    ed_token = jwt::sign_service_token(*ed, payload);
    options.now_s = now;
  }
  std::int64_t now = 0;
  std::shared_ptr<const jwt::ServiceKey> hs, es, ed;
  jwt::KeySet keys;
  jwt::ClaimsOptions options;
  std::string payload, hs_token, es_token, ed_token;
};

TokenFixture& token_fixture() {
  static TokenFixture f;
  return f;
}

void verify_token_loop(benchmark::State& state, const std::string& token) {
  auto& f = token_fixture();
  jwt::ServiceClaims claims;
  for (auto _ : state) {
    auto e = jwt::verify_service_token(f.keys, token, f.options, claims);
    if (e != jwt::TokenError::kNone) {
      state.SkipWithError("token refused");
      break;
    }
    benchmark::DoNotOptimize(claims.jti.data());
  }
}

void BM_VerifyHS256(benchmark::State& state) { verify_token_loop(state, token_fixture().hs_token); }
BENCHMARK(BM_VerifyHS256);

void BM_VerifyES256(benchmark::State& state) { verify_token_loop(state, token_fixture().es_token); }
BENCHMARK(BM_VerifyES256);

void BM_VerifyEdDSA(benchmark::State& state) { verify_token_loop(state, token_fixture().ed_token); }
BENCHMARK(BM_VerifyEdDSA);

void BM_SignES256(benchmark::State& state) {
  auto& f = token_fixture();
  for (auto _ : state) benchmark::DoNotOptimize(jwt::sign_service_token(*f.es, f.payload));
}
BENCHMARK(BM_SignES256);

// A repeat ES256 token on the worker: per-thread cache hit (hash + compare of the token), expiry
// and revocation checks against the snapshot, claims copied into the request context.
void BM_TokenCacheHit(benchmark::State& state) {
  auto& f = token_fixture();
  nlohmann::json doc = {{"version", 1},
                        {"projects", nlohmann::json::array()},
                        {"jwt_keys", {{{"kid", "es-bench"}, {"alg", "ES256"}, {"public_key", f.es->public_pem()}}}},
                        {"revoked_tokens", {{{"jti", "some-other-token"}, {"expires_at", nullptr}}}}};
  auto snap = config::build_snapshot(doc.dump(), bench_ctx).snapshot;
  gateway::TokenCache cache;
  gateway::TokenCheck check;
  const std::string authz = "Bearer " + f.es_token;
  std::string project, service;
  for (auto _ : state) {
    gateway::Context ctx;
    ctx.snapshot = snap;
    gateway::LocalReply reply;
    if (!gateway::identify_token(ctx, cache, authz, check, f.now, project, service, reply)) {
      state.SkipWithError("token refused");
      break;
    }
    benchmark::DoNotOptimize(ctx.jti.data());
  }
}
BENCHMARK(BM_TokenCacheHit);

// The risk engine's added cost per request: one (caller, IP) scoring with the default policy,
// over a working set of 10,000 callers (tables of 65,536 slots, shared by the threads).
void BM_RiskEvaluate(benchmark::State& state) {
  static gateway::RiskEngine engine;
  config::RiskPolicy policy;
  std::vector<std::string> ips;
  for (int i = 0; i < 256; ++i) ips.push_back("10.1." + std::to_string(i) + ".7");
  const char* endpoints[] = {"/orders", "/orders/:id", "/users/:id/cart", "/search"};
  std::uint64_t i = 0;
  std::int64_t now = 1'000'000'000'000;
  for (auto _ : state) {
    gateway::RiskInput in;
    in.caller = (i % 10000) * 0x9e3779b97f4a7c15ull;
    in.ip = ips[i & 255];
    in.endpoint = endpoints[i & 3];
    in.method = "GET";
    in.user_agent = "client/1.0";
    in.user_agent_present = true;
    benchmark::DoNotOptimize(engine.evaluate(policy, in, now += 1000));
    ++i;
  }
}
BENCHMARK(BM_RiskEvaluate);

// A flood of distinct addresses: each request a new IP (the tables evict; memory is fixed).
void BM_RiskFloodDistinctIps(benchmark::State& state) {
  static gateway::RiskEngine engine;
  config::RiskPolicy policy;
  char ip[32];
  std::uint32_t n = 0;
  std::int64_t now = 1'000'000'000'000;
  for (auto _ : state) {
    ++n;
    int len = std::snprintf(ip, sizeof ip, "%u.%u.%u.%u", n >> 24 & 255, n >> 16 & 255, n >> 8 & 255, n & 255);
    gateway::RiskInput in;
    in.caller = n;
    in.ip = std::string_view(ip, static_cast<std::size_t>(len));
    in.endpoint = "/x";
    in.method = "GET";
    in.user_agent_present = true;
    in.user_agent = "flood";
    benchmark::DoNotOptimize(engine.evaluate(policy, in, now += 1000));
    engine.auth_failed(in.ip, now);
  }
  state.counters["table_bytes"] = static_cast<double>(engine.memory_bytes());
}
BENCHMARK(BM_RiskFloodDistinctIps)->Iterations(1000000);

}  // namespace

// ---- HTTP/1 heads: Beast's parser (with its field container) against the lean parser, on the
// request and the upstream response the load benchmark exchanges.
namespace {
constexpr std::string_view kRequestHead =
    "GET /v1/orders?limit=10 HTTP/1.1\r\nHost: 127.0.0.1:18083\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n"
    "X-API-Key: agk_Ab3dEf7h_0123456789abcdefghijABCDEFGHIJklmnopqrstuvw1A2b3C\r\n\r\n";
constexpr std::string_view kResponseHead =
    "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 23 Nov 2026 00:22:40 GMT\r\nContent-Type: text/plain\r\n"
    "Content-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n";

template <bool isRequest>
void beast_head(benchmark::State& state, std::string_view head) {
  namespace http = boost::beast::http;
  for (auto _ : state) {
    http::parser<isRequest, http::empty_body> p;
    p.eager(false);
    boost::system::error_code ec;
    p.put(boost::asio::buffer(head.data(), head.size()), ec);
    if (ec || !p.is_header_done()) state.SkipWithError("beast did not parse the head");
    std::size_t n = 0;
    for (const auto& f : p.get()) n += f.value().size();
    benchmark::DoNotOptimize(n);
  }
}
template <bool isRequest>
void lean_head(benchmark::State& state, std::string_view head) {
  ag::http1::Head h;
  for (auto _ : state) {
    auto r = isRequest ? ag::http1::parse_request(head, h) : ag::http1::parse_response(head, h);
    if (r != ag::http1::Result::kComplete) state.SkipWithError("lean parser did not complete the head");
    std::size_t n = 0;
    for (const auto& f : h) n += f.value.size();
    benchmark::DoNotOptimize(n);
  }
}
}  // namespace

static void BM_ParseRequestHeadBeast(benchmark::State& s) { beast_head<true>(s, kRequestHead); }
static void BM_ParseRequestHeadLean(benchmark::State& s) { lean_head<true>(s, kRequestHead); }
static void BM_ParseResponseHeadBeast(benchmark::State& s) { beast_head<false>(s, kResponseHead); }
static void BM_ParseResponseHeadLean(benchmark::State& s) { lean_head<false>(s, kResponseHead); }
BENCHMARK(BM_ParseRequestHeadBeast);
BENCHMARK(BM_ParseRequestHeadLean);
BENCHMARK(BM_ParseResponseHeadBeast);
BENCHMARK(BM_ParseResponseHeadLean);

// ---- Agent tokens (control/service/agent_tokens.hpp): one verification of a token against its
// stored hash, PBKDF2-SHA256 at 200,000 iterations (what the control plane stores) against
// libsodium's argon2id with the password limits (OPSLIMIT/MEMLIMIT_INTERACTIVE: 2 passes, 64 MiB
// per verification), and the in-memory check a repeat token takes instead.
namespace {
struct AgentTokenFixture {
  AgentTokenFixture() {
    ag::crypto::init();
    token = ag::control::agents::new_token().token;
    stored = ag::control::agents::hash_token(token);
    char out[crypto_pwhash_STRBYTES];
    if (crypto_pwhash_str(out, token.data(), token.size(), crypto_pwhash_OPSLIMIT_INTERACTIVE,
                          crypto_pwhash_MEMLIMIT_INTERACTIVE) != 0)
      throw std::runtime_error("crypto_pwhash_str failed");
    argon2 = out;
  }
  std::string token, stored, argon2;
};

AgentTokenFixture& agent_token_fixture() {
  static AgentTokenFixture f;
  return f;
}
}  // namespace

static void BM_AgentTokenPbkdf2(benchmark::State& state) {
  auto& f = agent_token_fixture();
  for (auto _ : state) {
    if (!ag::control::agents::verify_token(f.token, f.stored)) {
      state.SkipWithError("token refused");
      break;
    }
  }
}
BENCHMARK(BM_AgentTokenPbkdf2)->Unit(benchmark::kMillisecond)->Iterations(20);

static void BM_AgentTokenArgon2id(benchmark::State& state) {
  auto& f = agent_token_fixture();
  for (auto _ : state) {
    if (crypto_pwhash_str_verify(f.argon2.c_str(), f.token.data(), f.token.size()) != 0) {
      state.SkipWithError("token refused");
      break;
    }
  }
  state.counters["mem_MiB"] = static_cast<double>(crypto_pwhash_MEMLIMIT_INTERACTIVE) / (1024 * 1024);
}
BENCHMARK(BM_AgentTokenArgon2id)->Unit(benchmark::kMillisecond)->Iterations(20);

static void BM_AgentTokenCachedCheck(benchmark::State& state) {
  auto& f = agent_token_fixture();
  ag::control::agents::VerifiedTokens cache;
  std::int64_t now_ms = 1'000'000'000'000;
  cache.remember(f.token, f.stored, now_ms);
  for (auto _ : state) {
    if (!cache.seen(f.token, f.stored, now_ms)) {
      state.SkipWithError("token not remembered");
      break;
    }
  }
}
BENCHMARK(BM_AgentTokenCachedCheck);
