// The config journal: records round-trip, a torn or corrupted tail is ignored (never half
// applied) and cut off before the next append, and a saved snapshot plus its journal load as the
// config the worker last published.
#include "config/journal.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>

#include "common/crypto.hpp"
#include "common/files.hpp"
#include "common/time.hpp"
#include "config/snapshot.hpp"
#include "config/sync.hpp"
#include "config/context.hpp"

// The context this file builds snapshots with (config/context.hpp).
static ag::config::BuildContext test_ctx;

namespace ag::config {
namespace {

std::string key_hash(int i) { return crypto::sha256_hex("jkey-" + std::to_string(i)); }
KeyDigest digest(int i) { return crypto::sha256("jkey-" + std::to_string(i)); }

std::string full_doc(int version, int keys) {
  std::string d = R"({"version":)" + std::to_string(version) +
                  R"(,"projects":[{"id":"jp1","upstream_base_url":"http://127.0.0.1:9/a","keys":[)";
  for (int i = 0; i < keys; ++i) {
    if (i) d += ',';
    d += R"({"id":"k)" + std::to_string(i) + R"(","hash":")" + key_hash(i) + R"(","expires_at":null})";
  }
  return d + "]}]}";
}

std::string revoke(int since, int key) {
  std::string v = std::to_string(since + 1);
  return R"({"full":false,"since":)" + std::to_string(since) + R"(,"version":)" + v + R"(,"changes":[{"version":)" + v +
         R"(,"op":"key.delete","project_id":"jp1","key_id":"k)" + std::to_string(key) + R"(","hash":")" + key_hash(key) +
         R"("}]})";
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

class JournalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    crypto::init();
    dir_ = ::testing::TempDir() + "/ag_journal_" + std::to_string(::getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    ::mkdir(dir_.c_str(), 0700);
    snap_ = dir_ + "/snap.json";
    jpath_ = snap_ + ".journal";
    std::remove(snap_.c_str());
    std::remove((snap_ + ".meta").c_str());
    std::remove(jpath_.c_str());
  }
  void TearDown() override {
    for (const std::string& f : {snap_, snap_ + ".meta", jpath_}) std::remove(f.c_str());
    ::rmdir(dir_.c_str());
  }
  // Journals the revocation of keys 1..n as versions 11..10+n, one record each.
  void journal_revocations(int n) {
    Journal j(jpath_, false);
    for (int i = 0; i < n; ++i) ASSERT_TRUE(j.append({JournalKind::kDelta, 11 + i, now_ms(), revoke(10 + i, 1 + i)}));
  }
  // A snapshot of version 10 with keys 0..4, saved now.
  void save_base() {
    auto base = build_snapshot(full_doc(10, 5), test_ctx);
    ASSERT_TRUE(base.snapshot) << base.error;
    ASSERT_TRUE(files::save_private_atomically(snap_, serialize_snapshot(*base.snapshot, now_ms())));
  }
  std::string dir_, snap_, jpath_;
};

TEST_F(JournalTest, RecordsRoundTrip) {
  {
    Journal j(jpath_, false);
    ASSERT_TRUE(j.ok());
    ASSERT_TRUE(j.append({JournalKind::kDelta, 11, 1234, revoke(10, 1)}));
    ASSERT_TRUE(j.append({JournalKind::kFull, 40, 5678, full_doc(40, 2)}));
  }
  auto c = read_journal(jpath_);
  ASSERT_EQ(c.records.size(), 2u);
  EXPECT_EQ(c.valid_bytes, c.file_bytes);
  EXPECT_EQ(c.records[0].kind, JournalKind::kDelta);
  EXPECT_EQ(c.records[0].version, 11);
  EXPECT_EQ(c.records[0].at_ms, 1234);
  EXPECT_EQ(c.records[0].document, revoke(10, 1));
  EXPECT_EQ(c.records[1].kind, JournalKind::kFull);
  EXPECT_EQ(c.records[1].document, full_doc(40, 2));
  struct stat st {};
  ASSERT_EQ(::stat(jpath_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);  // it holds key hashes, like the snapshot
}

TEST_F(JournalTest, ReplayAppliesRecordsNewerThanTheSnapshot) {
  save_base();
  journal_revocations(2);
  auto loaded = load_saved_snapshot(test_ctx, snap_, std::chrono::hours(1));
  ASSERT_TRUE(loaded.snapshot) << loaded.problem;
  EXPECT_EQ(loaded.snapshot->version, 12);
  EXPECT_EQ(loaded.saved_version, 10);
  EXPECT_EQ(loaded.replayed, 2u);
  EXPECT_TRUE(loaded.journal_note.empty()) << loaded.journal_note;
  EXPECT_EQ(loaded.snapshot->find_key(digest(1)), nullptr);  // revoked stays revoked
  EXPECT_EQ(loaded.snapshot->find_key(digest(2)), nullptr);
  EXPECT_NE(loaded.snapshot->find_key(digest(3)), nullptr);
}

TEST_F(JournalTest, RecordsAlreadyInTheSnapshotAreSkipped) {
  // A crash between the snapshot's rename and the journal's truncation leaves old records.
  auto base = build_snapshot(full_doc(10, 5), test_ctx);
  ASSERT_TRUE(base.snapshot);
  auto v11 = apply_delta(base.snapshot, revoke(10, 1), test_ctx);
  ASSERT_TRUE(v11.snapshot) << v11.error;
  ASSERT_TRUE(files::save_private_atomically(snap_, serialize_snapshot(*v11.snapshot, now_ms())));
  journal_revocations(2);
  auto loaded = load_saved_snapshot(test_ctx, snap_, std::chrono::hours(1));
  ASSERT_TRUE(loaded.snapshot) << loaded.problem;
  EXPECT_EQ(loaded.snapshot->version, 12);
  EXPECT_EQ(loaded.replayed, 1u);
  EXPECT_TRUE(loaded.journal_note.empty()) << loaded.journal_note;
}

TEST_F(JournalTest, TruncatedTailIsIgnoredNeverHalfApplied) {
  save_base();
  journal_revocations(1);
  // The second record cut anywhere inside: the header, the document, its last byte.
  std::string second = encode_journal_record({JournalKind::kDelta, 12, now_ms(), revoke(11, 2)});
  const std::string intact = slurp(jpath_);
  for (std::size_t cut : {std::size_t{1}, std::size_t{20}, std::size_t{40}, second.size() - 1}) {
    { std::ofstream(jpath_, std::ios::binary | std::ios::trunc) << intact << second.substr(0, cut); }
    auto loaded = load_saved_snapshot(test_ctx, snap_, std::chrono::hours(1));
    ASSERT_TRUE(loaded.snapshot) << loaded.problem;
    EXPECT_EQ(loaded.snapshot->version, 11) << cut;
    EXPECT_EQ(loaded.replayed, 1u) << cut;
    EXPECT_EQ(loaded.snapshot->find_key(digest(1)), nullptr) << cut;
    EXPECT_NE(loaded.snapshot->find_key(digest(2)), nullptr) << cut;
    EXPECT_NE(loaded.journal_note.find("torn or corrupt"), std::string::npos) << loaded.journal_note;
  }
}

TEST_F(JournalTest, CorruptedRecordEndsTheReplay) {
  save_base();
  journal_revocations(3);
  std::string data = slurp(jpath_);
  std::size_t second = encode_journal_record({JournalKind::kDelta, 11, 0, revoke(10, 1)}).size();
  // One flipped bit in the second record's document: it and everything after are ignored.
  data[second + 40] = static_cast<char>(data[second + 40] ^ 0x01);
  { std::ofstream(jpath_, std::ios::binary | std::ios::trunc) << data; }
  auto c = read_journal(jpath_);
  EXPECT_EQ(c.records.size(), 1u);
  EXPECT_EQ(c.valid_bytes, second);
  auto loaded = load_saved_snapshot(test_ctx, snap_, std::chrono::hours(1));
  ASSERT_TRUE(loaded.snapshot) << loaded.problem;
  EXPECT_EQ(loaded.snapshot->version, 11);
  EXPECT_NE(loaded.snapshot->find_key(digest(2)), nullptr);
  EXPECT_NE(loaded.snapshot->find_key(digest(3)), nullptr);
  // Opening the journal for appending cuts the bad tail off, so the next record is readable.
  {
    Journal j(jpath_, false);
    ASSERT_TRUE(j.ok());
    ASSERT_TRUE(j.append({JournalKind::kDelta, 12, now_ms(), revoke(11, 4)}));
  }
  auto again = load_saved_snapshot(test_ctx, snap_, std::chrono::hours(1));
  ASSERT_TRUE(again.snapshot) << again.problem;
  EXPECT_EQ(again.snapshot->version, 12);
  EXPECT_EQ(again.snapshot->find_key(digest(4)), nullptr);
  EXPECT_TRUE(again.journal_note.empty()) << again.journal_note;
}

TEST_F(JournalTest, AFullDocumentRecordStandsWithoutASnapshot) {
  {
    Journal j(jpath_, true);  // the fdatasync path too
    ASSERT_TRUE(j.append({JournalKind::kFull, 30, now_ms(), full_doc(30, 3)}));
    ASSERT_TRUE(j.append({JournalKind::kDelta, 31, now_ms(), revoke(30, 0)}));
  }
  auto loaded = load_saved_snapshot(test_ctx, snap_, std::chrono::hours(1));
  ASSERT_TRUE(loaded.snapshot) << loaded.problem;
  EXPECT_EQ(loaded.snapshot->version, 31);
  EXPECT_EQ(loaded.snapshot->find_key(digest(0)), nullptr);
  EXPECT_NE(loaded.snapshot->find_key(digest(1)), nullptr);
  // A delta with nothing to apply it to is not applied.
  std::remove(jpath_.c_str());
  {
    Journal j(jpath_, false);
    ASSERT_TRUE(j.append({JournalKind::kDelta, 31, now_ms(), revoke(30, 0)}));
  }
  EXPECT_FALSE(load_saved_snapshot(test_ctx, snap_, std::chrono::hours(1)).snapshot);
}

TEST_F(JournalTest, JournalRecordsRenewTheSnapshotsAge) {
  // A snapshot saved two hours ago, with a revocation journaled a minute ago: the journal's
  // record is the latest word of the control plane, so the config is not too old.
  auto base = build_snapshot(full_doc(10, 5), test_ctx);
  ASSERT_TRUE(base.snapshot);
  ASSERT_TRUE(files::save_private_atomically(snap_, serialize_snapshot(*base.snapshot, now_ms() - 7200 * 1000)));
  EXPECT_FALSE(load_saved_snapshot(test_ctx, snap_, std::chrono::hours(1)).snapshot);
  {
    Journal j(jpath_, false);
    ASSERT_TRUE(j.append({JournalKind::kDelta, 11, now_ms() - 60 * 1000, revoke(10, 1)}));
  }
  auto loaded = load_saved_snapshot(test_ctx, snap_, std::chrono::hours(1));
  ASSERT_TRUE(loaded.snapshot) << loaded.problem;
  EXPECT_EQ(loaded.snapshot->find_key(digest(1)), nullptr);
}

TEST_F(JournalTest, ClearEmptiesAndAppendsContinue) {
  Journal j(jpath_, false);
  ASSERT_TRUE(j.append({JournalKind::kDelta, 11, 1, revoke(10, 1)}));
  ASSERT_TRUE(j.clear());
  EXPECT_EQ(read_journal(jpath_).file_bytes, 0u);
  ASSERT_TRUE(j.append({JournalKind::kDelta, 12, 2, revoke(11, 2)}));
  auto c = read_journal(jpath_);
  ASSERT_EQ(c.records.size(), 1u);
  EXPECT_EQ(c.records[0].version, 12);
  EXPECT_EQ(c.valid_bytes, c.file_bytes);
}

TEST_F(JournalTest, AppendFailsCleanlyWhenTheFileCannotBeOpened) {
  Journal j(dir_ + "/no-such-dir/snap.json.journal", false);
  EXPECT_FALSE(j.ok());
  EXPECT_FALSE(j.append({JournalKind::kDelta, 11, 1, revoke(10, 1)}));
  EXPECT_FALSE(j.clear());
}

}  // namespace
}  // namespace ag::config
