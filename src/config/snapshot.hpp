#pragma once
// The worker's configuration: an immutable snapshot built from a worker-config document
// (docs/api.md "Worker config") off the request path, then shared read-only by every thread.
// Nothing here is ever mutated after build(); a change produces a new snapshot.
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/cidr.hpp"
#include "common/service_token.hpp"

namespace ag::config {

using KeyDigest = std::array<unsigned char, 32>;  // SHA-256 of the raw API key

struct KeyDigestHash {
  // SHA-256 output is uniformly distributed: its first 8 bytes are a perfect hash already.
  std::size_t operator()(const KeyDigest& d) const noexcept {
    std::size_t h;
    std::memcpy(&h, d.data(), sizeof h);
    return h;
  }
};

// Hashes std::string and std::string_view alike, for lookups by view without a copy.
struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

struct RatePolicy {
  std::int64_t requests_per_minute = 60;
  std::int64_t burst = 20;
};

// A resolved upstream address, kept as raw sockaddr bytes so this header stays free of Asio.
struct Endpoint {
  alignas(8) unsigned char addr[28] = {};  // sockaddr_in or sockaddr_in6
  std::uint8_t len = 0;
};

struct Upstream {
  std::string url;          // as configured
  bool tls = false;         // https://: TLS with certificate and host name verification
  std::string host_header;  // "host" or "host:port", sent as Host
  std::string base_path;    // "" or "/api" (no trailing slash)
  std::string host;
  std::uint16_t port = 80;
  std::vector<Endpoint> endpoints;  // resolved at build time; empty = unresolvable
  std::string pool_key;             // identifies the keep-alive pool ("http://host:port")
};

// Health of one target of a service, shared by every snapshot that has the same target (so a
// reload keeps it) and by the worker's threads; written by the health checker and the proxy.
struct TargetState {
  std::atomic<bool> healthy{true};               // the last active check passed (or none yet)
  std::atomic<std::int32_t> failures{0};         // consecutive failed exchanges
  std::atomic<std::int64_t> ejected_until_ns{0}; // passive ejection (steady clock)
  std::atomic<std::int32_t> in_flight{0};        // requests being proxied to it now
  bool available(std::int64_t now_ns) const {
    return healthy.load(std::memory_order_relaxed) && ejected_until_ns.load(std::memory_order_relaxed) <= now_ns;
  }
};

struct ServiceTarget {
  Upstream upstream;
  std::shared_ptr<TargetState> state;
};

// A named backend of a project, reached at /{slug}/{name}/* (docs/services-and-tokens.md).
struct Service {
  std::string name;
  std::vector<ServiceTarget> targets;
  bool least_request = false;
  std::string health_path;            // empty: no active checks
  std::int64_t health_interval_ms = 10000;
  std::int64_t health_timeout_ms = 2000;
  std::int32_t eject_failures = 5;
  std::int64_t eject_cooldown_ms = 30000;
  std::string spec_json;  // the service as configured (written back when the snapshot is saved)
};

// A project's risk policy (docs/risk.md): signal weights, thresholds and lists. A signal scores
// 0 at or below its limit and rises to 1 at twice the limit; the score is the weighted sum, capped
// at 1.
struct RiskPolicy {
  bool enabled = true;
  bool shadow = true;  // compute and log, block nothing
  double w_velocity = 0.4, w_burst = 0.3, w_drift = 0.3, w_user_agent = 0.2, w_method = 0.6, w_size = 0.3;
  double throttle_at = 0.6, block_at = 0.9;
  std::int64_t velocity_per_min = 600;  // requests per (caller, IP) per minute
  std::int64_t burst_per_sec = 50;      // requests per (caller, IP) per second
  std::int64_t drift_endpoints = 30;    // distinct endpoints per (caller, IP) per minute
  std::int64_t max_request_bytes = 0;   // 0 = no size signal
  std::vector<std::string> allowed_methods;  // empty = any
  std::vector<Cidr> ip_allow, ip_deny;       // checked before anything else for the project
  std::vector<std::string> country_allow, country_deny;  // ISO 3166-1 alpha-2; need WORKER_GEOIP_DB
  bool throttle_delay = true;                // THROTTLE: delay, or a tighter limit
  std::int64_t throttle_delay_ms = 250;
  double throttle_limit_factor = 0.1;
  std::string spec_json;  // as configured ("" = defaults)
};
// Parses a risk object (docs/risk.md) into `out`; an error message naming the field, or "".
std::string parse_risk_policy(std::string_view json_text, RiskPolicy& out);

struct Project {
  std::string id;
  std::string name;
  std::string slug;           // empty: no service routes
  Upstream upstream;          // url empty: no default upstream (service routes only)
  std::vector<Service> services;
  RatePolicy rate;
  std::int64_t max_body_bytes = 10 * 1024 * 1024;
  std::uint32_t metrics_slot = 0;  // stable index for per-project counters
  std::shared_ptr<const RiskPolicy> risk;  // never null in a built snapshot
  const Service* find_service(std::string_view name) const {
    for (const auto& s : services)
      if (s.name == name) return &s;
    return nullptr;
  }
};

// Public keys for service tokens, as configured (kept to write the snapshot back).
struct JwtKeySpec {
  std::string kid, alg, public_pem;
};

// Service-token verification state: keys and the revocation list (jti -> expiry, ms).
struct TokenState {
  std::vector<JwtKeySpec> key_specs;
  jwt::KeySet keys;
  std::uint64_t keys_generation = 0;  // changes whenever `keys` does (verified-token caches key on it)
  std::unordered_map<std::string, std::int64_t, StringHash, std::equal_to<>> revoked;
  bool is_revoked(std::string_view jti) const { return !revoked.empty() && revoked.find(jti) != revoked.end(); }
};

// A short identifier stored inline: a million keys with heap-allocated ids cost a million
// allocations to build and ~50 MB more to hold.
template <std::size_t N>
class ShortId {
 public:
  void assign(std::string_view v) {
    len_ = static_cast<std::uint8_t>(std::min(v.size(), N));
    // Never cut a UTF-8 sequence in two (the snapshot is written back as JSON).
    while (len_ > 0 && len_ < v.size() && (static_cast<unsigned char>(v[len_]) & 0xC0) == 0x80) --len_;
    std::memcpy(data_, v.data(), len_);
  }
  std::string_view view() const { return {data_, len_}; }
  bool empty() const { return len_ == 0; }

 private:
  char data_[N];
  std::uint8_t len_ = 0;
};

struct KeyEntry {
  std::uint32_t project_slot = 0;  // index into Snapshot::projects (the project's metrics slot)
  ShortId<36> id;        // a UUID
  ShortId<15> public_id;  // 8 base62 characters
  std::int64_t expires_at_ms = 0;  // 0 = no expiry
  bool has_rate_override = false;
  RatePolicy rate_override;        // used instead of the project's policy when set
};

// An open-addressing hash table of keys (linear probing, backward-shift deletion, load ≤ 0.7),
// written for the key index: one flat array instead of a node per key, so building a million
// keys is a few large allocations, copying a shard for a delta is one copy of an array, and a
// lookup touches one or two cache lines. Measured against std::unordered_map on a 1M-key
// document: see docs/benchmarks.md.
class KeyTable {
 public:
  void reserve(std::size_t n) {
    if (capacity_for(n) > slots_.size()) rehash(capacity_for(n));
  }
  // Inserts unless present; true when inserted.
  bool try_emplace(const KeyDigest& d, KeyEntry&& e) {
    grow_for_one_more();
    std::size_t i = probe(d);
    if (slots_[i].used) return false;
    slots_[i] = Slot{d, std::move(e), true};
    ++size_;
    return true;
  }
  // Inserts or replaces; true when inserted.
  bool insert_or_assign(const KeyDigest& d, KeyEntry&& e) {
    grow_for_one_more();
    std::size_t i = probe(d);
    bool inserted = !slots_[i].used;
    slots_[i] = Slot{d, std::move(e), true};
    size_ += inserted;
    return inserted;
  }
  const KeyEntry* find(const KeyDigest& d) const {
    if (size_ == 0) return nullptr;
    const Slot& s = slots_[probe(d)];
    return s.used ? &s.entry : nullptr;
  }
  std::size_t erase(const KeyDigest& d) {
    if (size_ == 0) return 0;
    std::size_t hole = probe(d);
    if (!slots_[hole].used) return 0;
    // Backward shift: move later members of the probe run into the hole when that keeps them
    // reachable from their home slot.
    const std::size_t cap = slots_.size();
    for (std::size_t j = next(hole);; j = next(j)) {
      if (!slots_[j].used) break;
      std::size_t home = home_of(slots_[j].digest);
      if ((j + cap - home) % cap >= (j + cap - hole) % cap) {
        slots_[hole] = slots_[j];
        hole = j;
      }
    }
    slots_[hole].used = false;
    --size_;
    return 1;
  }
  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  template <class F>
  void for_each(F&& f) const {
    for (const auto& s : slots_)
      if (s.used) f(s.digest, s.entry);
  }

 private:
  struct Slot {
    KeyDigest digest{};
    KeyEntry entry;
    bool used = false;
  };
  static std::size_t capacity_for(std::size_t n) { return n * 10 / 7 + 8; }
  // Multiply-shift maps the hash onto any capacity (not only powers of two) without a division.
  std::size_t home_of(const KeyDigest& d) const {
    std::uint64_t h;
    std::memcpy(&h, d.data(), sizeof h);
    return static_cast<std::size_t>(((h >> 32) * static_cast<std::uint64_t>(slots_.size())) >> 32);
  }
  std::size_t next(std::size_t i) const { return i + 1 == slots_.size() ? 0 : i + 1; }
  std::size_t probe(const KeyDigest& d) const {
    std::size_t i = home_of(d);
    while (slots_[i].used && slots_[i].digest != d) i = next(i);
    return i;
  }
  void grow_for_one_more() {
    if ((size_ + 1) * 10 > slots_.size() * 7) rehash(capacity_for((size_ + 1) * 2));
  }
  void rehash(std::size_t cap) {
    std::vector<Slot> old;
    old.swap(slots_);
    slots_.resize(cap);
    size_ = 0;
    for (auto& s : old)
      if (s.used) {
        std::size_t i = probe(s.digest);
        slots_[i] = std::move(s);
        ++size_;
      }
  }
  std::vector<Slot> slots_;
  std::size_t size_ = 0;
};

// The key index is split into shards by key hash so that a delta copies only the shards it
// touches; untouched shards are shared between consecutive snapshots.
inline constexpr std::size_t kKeyShards = 1024;
struct KeyShard {
  KeyTable keys;
};

struct Snapshot {
  std::int64_t version = 0;
  std::int64_t loaded_at_ms = 0;
  // Indexed by project metrics slot; null where no project (deleted or never seen).
  std::vector<std::shared_ptr<const Project>> projects;
  std::array<std::shared_ptr<const KeyShard>, kKeyShards> shards;
  std::size_t key_count = 0;
  std::size_t project_count = 0;
  // slug -> project slot; rebuilt when projects change.
  std::shared_ptr<const std::unordered_map<std::string, std::uint32_t, StringHash, std::equal_to<>>> slugs;
  std::shared_ptr<const TokenState> tokens;  // never null in a built snapshot

  const Project* project_by_slug(std::string_view slug) const {
    if (!slugs || slugs->empty()) return nullptr;
    auto it = slugs->find(slug);
    return it == slugs->end() ? nullptr : project(it->second);
  }

  static std::size_t shard_of(const KeyDigest& d) {
    // Bytes 8-9: independent of the bytes the in-shard hash map uses (0-7).
    return (static_cast<std::size_t>(d[8]) | static_cast<std::size_t>(d[9]) << 8) & (kKeyShards - 1);
  }
  const KeyEntry* find_key(const KeyDigest& d) const { return shards[shard_of(d)]->keys.find(d); }
  const Project* project(std::uint32_t slot) const {
    return slot < projects.size() ? projects[slot].get() : nullptr;
  }
  RatePolicy rate_for(const KeyEntry& k, const Project& p) const { return k.has_rate_override ? k.rate_override : p.rate; }
};

struct BuildResult {
  std::shared_ptr<const Snapshot> snapshot;  // null on error
  std::string error;                         // names the field, e.g. "projects[3].keys[0].hash: ..."
};

struct BuildContext;  // context.hpp: the resolver, slots and key state that outlive a snapshot

// Parses and validates a full worker-config document (sections/, build.cpp) and resolves
// upstream hosts with ctx's resolver (blocking DNS: call it off the request path).
BuildResult build_snapshot(std::string_view json_text, BuildContext& ctx);

// Applies a delta document (docs/config-stream.md) to `base`, sharing every shard and project it
// does not touch. Fails (leaving `base` as it is) on a version gap or an invalid change.
BuildResult apply_delta(const std::shared_ptr<const Snapshot>& base, std::string_view json_text, BuildContext& ctx);

// The snapshot as a full worker-config document (what the worker saves to disk; serialize.cpp).
std::string serialize_snapshot(const Snapshot& s, std::int64_t saved_at_ms);

}  // namespace ag::config
