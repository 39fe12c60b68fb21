// Snapshots and deltas: structural sharing, version checks, and the saved-file round trip.
#include "config/snapshot.hpp"

#include <gtest/gtest.h>

#include <map>
#include <string>

#include "common/crypto.hpp"
#include "common/files.hpp"
#include "common/time.hpp"
#include "config/sync.hpp"
#include "config/context.hpp"

// The context this file builds snapshots with (config/context.hpp).
static ag::config::BuildContext test_ctx;

namespace ag::config {
namespace {

std::string key_hash(int i) { return crypto::sha256_hex("key-" + std::to_string(i)); }

KeyDigest digest(int i) { return crypto::sha256("key-" + std::to_string(i)); }

std::string full_doc(int keys) {
  std::string d = R"({"version":10,"projects":[{"id":"snap-p1","upstream_base_url":"http://127.0.0.1:9/a","keys":[)";
  for (int i = 0; i < keys; ++i) {
    if (i) d += ',';
    d += R"({"id":"k)" + std::to_string(i) + R"(","hash":")" + key_hash(i) + R"(","expires_at":null})";
  }
  return d + "]}]}";
}

TEST(Delta, TouchesOnlyTheShardsItChanges) {
  auto base = build_snapshot(full_doc(5000), test_ctx);
  ASSERT_TRUE(base.snapshot) << base.error;
  EXPECT_EQ(base.snapshot->key_count, 5000u);
  std::string delta = R"({"since":10,"version":11,"changes":[
      {"version":11,"op":"key.delete","project_id":"snap-p1","key_id":"k7","hash":")" + key_hash(7) + R"("},
      {"version":11,"op":"key.upsert","project_id":"snap-p1","key":{"id":"new","hash":")" + key_hash(99999) +
                      R"(","expires_at":null,"rate_limit":{"requests_per_minute":5,"burst":1}}}]})";
  auto next = apply_delta(base.snapshot, delta, test_ctx);
  ASSERT_TRUE(next.snapshot) << next.error;
  const auto& a = *base.snapshot;
  const auto& b = *next.snapshot;
  EXPECT_EQ(b.version, 11);
  EXPECT_EQ(b.key_count, 5000u);
  EXPECT_EQ(b.find_key(digest(7)), nullptr);
  EXPECT_NE(a.find_key(digest(7)), nullptr);  // the old snapshot is untouched
  const KeyEntry* added = b.find_key(digest(99999));
  ASSERT_NE(added, nullptr);
  EXPECT_TRUE(added->has_rate_override);
  EXPECT_EQ(b.rate_for(*added, *b.project(added->project_slot)).requests_per_minute, 5);
  std::size_t shared = 0;
  for (std::size_t i = 0; i < kKeyShards; ++i) shared += a.shards[i] == b.shards[i];
  std::size_t touched = Snapshot::shard_of(digest(7)) == Snapshot::shard_of(digest(99999)) ? 1 : 2;
  EXPECT_EQ(shared, kKeyShards - touched);
  EXPECT_EQ(a.projects, b.projects);  // projects shared too
}

TEST(Snapshot, LargeDocumentsBuildInParallelWithTheSameResult) {
  // 60,000 keys takes the two-thread path; every key must land in its shard exactly once.
  auto big = build_snapshot(full_doc(60000), test_ctx);
  ASSERT_TRUE(big.snapshot) << big.error;
  EXPECT_EQ(big.snapshot->key_count, 60000u);
  for (int i = 0; i < 60000; i += 997) {
    const KeyEntry* k = big.snapshot->find_key(digest(i));
    ASSERT_NE(k, nullptr) << i;
    EXPECT_EQ(k->id.view(), "k" + std::to_string(i));
  }
  std::string bad = full_doc(60000);
  bad.replace(bad.rfind(key_hash(59999)), 64, std::string(64, 'z'));
  auto rejected = build_snapshot(bad, test_ctx);
  EXPECT_FALSE(rejected.snapshot);
  EXPECT_NE(rejected.error.find("projects[0].keys[59999]"), std::string::npos) << rejected.error;
}

TEST(Delta, ProjectChangesAndDeletes) {
  auto base = build_snapshot(full_doc(3), test_ctx);
  ASSERT_TRUE(base.snapshot);
  auto slot = test_ctx.slots.slot_for("snap-p1");
  auto up = apply_delta(base.snapshot, R"({"since":10,"version":12,"changes":[{"version":12,"op":"project.upsert",
      "project":{"id":"snap-p1","upstream_base_url":"http://127.0.0.1:9/b","rate_limit":{"requests_per_minute":7,"burst":0}}}]})", test_ctx);
  ASSERT_TRUE(up.snapshot) << up.error;
  EXPECT_EQ(up.snapshot->project(slot)->upstream.base_path, "/b");
  // The keys keep working and pick up the project's new policy.
  const KeyEntry* k = up.snapshot->find_key(digest(1));
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(up.snapshot->rate_for(*k, *up.snapshot->project(slot)).requests_per_minute, 7);
  auto del = apply_delta(up.snapshot, R"({"since":12,"version":13,"changes":[{"version":13,"op":"project.delete","project_id":"snap-p1"}]})", test_ctx);
  ASSERT_TRUE(del.snapshot) << del.error;
  EXPECT_EQ(del.snapshot->project(slot), nullptr);
  EXPECT_EQ(del.snapshot->project_count, 0u);
}

TEST(Delta, RejectsGapsAndGarbageWithoutTouchingTheBase) {
  auto base = build_snapshot(full_doc(3), test_ctx);
  ASSERT_TRUE(base.snapshot);
  EXPECT_NE(apply_delta(base.snapshot, R"({"since":9,"version":11,"changes":[]})", test_ctx).error.find("version gap"), std::string::npos);
  EXPECT_FALSE(apply_delta(base.snapshot, R"({"since":10,"version":11,"changes":[{"op":"key.delete","hash":"zz"}]})", test_ctx).snapshot);
  EXPECT_FALSE(apply_delta(base.snapshot, "{\"since\":10,", test_ctx).snapshot);
  EXPECT_FALSE(apply_delta(base.snapshot, R"({"since":10,"version":9,"changes":[]})", test_ctx).snapshot);
  EXPECT_NE(base.snapshot->find_key(digest(1)), nullptr);
  EXPECT_EQ(base.snapshot->version, 10);
}

TEST(SavedSnapshot, RoundTripsThroughTheFileAndRespectsMaxAge) {
  crypto::init();
  auto base = build_snapshot(full_doc(50), test_ctx);
  ASSERT_TRUE(base.snapshot);
  std::string path = ::testing::TempDir() + "/ag_snapshot_test.json";
  ASSERT_TRUE(files::save_private_atomically(path, serialize_snapshot(*base.snapshot, now_ms())));
  auto loaded = load_saved_snapshot(test_ctx, path, std::chrono::hours(1));
  ASSERT_TRUE(loaded.snapshot) << loaded.problem;
  EXPECT_EQ(loaded.snapshot->version, 10);
  EXPECT_EQ(loaded.snapshot->key_count, 50u);
  EXPECT_NE(loaded.snapshot->find_key(digest(49)), nullptr);
  ASSERT_TRUE(files::save_private_atomically(path, serialize_snapshot(*base.snapshot, now_ms() - 7200 * 1000)));
  auto stale = load_saved_snapshot(test_ctx, path, std::chrono::hours(1));
  EXPECT_FALSE(stale.snapshot);
  EXPECT_NE(stale.problem.find("older"), std::string::npos);
  ASSERT_TRUE(files::save_private_atomically(path, "garbage"));
  EXPECT_FALSE(load_saved_snapshot(test_ctx, path, std::chrono::hours(1)).snapshot);
  EXPECT_FALSE(files::save_private_atomically("/nonexistent-dir/x.json", "data"));
}

}  // namespace
}  // namespace ag::config

namespace ag::config {
namespace {

// The key table against a reference map, through inserts, replacements and deletions that
// exercise wrap-around and backward-shift deletion in a small table.
TEST(KeyTable, BehavesLikeAMap) {
  KeyTable t;
  std::map<std::string, std::uint32_t> ref;
  std::uint64_t x = 88172645463325252ULL;
  auto rnd = [&] {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  };
  auto digest_of = [](int i) { return crypto::sha256("t" + std::to_string(i)); };
  for (int step = 0; step < 20000; ++step) {
    int i = static_cast<int>(rnd() % 300);
    auto d = digest_of(i);
    std::string key(reinterpret_cast<const char*>(d.data()), d.size());
    switch (rnd() % 3) {
      case 0: {
        KeyEntry e;
        e.project_slot = static_cast<std::uint32_t>(step);
        bool inserted = t.insert_or_assign(d, std::move(e));
        EXPECT_EQ(inserted, ref.count(key) == 0);
        ref[key] = static_cast<std::uint32_t>(step);
        break;
      }
      case 1: {
        KeyEntry e;
        e.project_slot = static_cast<std::uint32_t>(step);
        bool inserted = t.try_emplace(d, std::move(e));
        EXPECT_EQ(inserted, ref.count(key) == 0);
        if (inserted) ref[key] = static_cast<std::uint32_t>(step);
        break;
      }
      default:
        EXPECT_EQ(t.erase(d), ref.erase(key));
    }
    ASSERT_EQ(t.size(), ref.size());
  }
  for (int i = 0; i < 300; ++i) {
    auto d = digest_of(i);
    std::string key(reinterpret_cast<const char*>(d.data()), d.size());
    const KeyEntry* e = t.find(d);
    if (ref.count(key)) {
      ASSERT_NE(e, nullptr) << i;
      EXPECT_EQ(e->project_slot, ref[key]);
    } else {
      EXPECT_EQ(e, nullptr) << i;
    }
  }
  std::size_t seen = 0;
  t.for_each([&](const KeyDigest&, const KeyEntry&) { ++seen; });
  EXPECT_EQ(seen, ref.size());
}

}  // namespace
TEST(Snapshot, HttpsUpstreams) {
  auto r = build_snapshot(R"({"version":1,"projects":[
      {"id":"p-tls","upstream_base_url":"https://127.0.0.1/v1","keys":[]},
      {"id":"p-tls-port","upstream_base_url":"https://127.0.0.1:8443","keys":[]},
      {"id":"p-plain","upstream_base_url":"http://127.0.0.1:8443","keys":[]}]})", test_ctx);
  ASSERT_TRUE(r.snapshot) << r.error;
  std::map<std::string, const Upstream*> up;
  for (const auto& p : r.snapshot->projects)
    if (p) up[p->id] = &p->upstream;
  ASSERT_EQ(up.size(), 3u);
  EXPECT_TRUE(up["p-tls"]->tls);
  EXPECT_EQ(up["p-tls"]->port, 443);
  EXPECT_EQ(up["p-tls"]->host, "127.0.0.1");
  EXPECT_EQ(up["p-tls"]->base_path, "/v1");
  EXPECT_EQ(up["p-tls"]->host_header, "127.0.0.1");
  EXPECT_FALSE(up["p-tls"]->endpoints.empty());
  EXPECT_TRUE(up["p-tls-port"]->tls);
  EXPECT_EQ(up["p-tls-port"]->port, 8443);
  EXPECT_FALSE(up["p-plain"]->tls);
  // Same authority, different scheme: never the same keep-alive pool.
  EXPECT_NE(up["p-tls-port"]->pool_key, up["p-plain"]->pool_key);
  EXPECT_FALSE(build_snapshot(R"({"version":1,"projects":[{"id":"x","upstream_base_url":"ftp://h","keys":[]}]})", test_ctx).snapshot);
}

}  // namespace ag::config
