#include "common/files.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace ag::files {
namespace {

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

mode_t mode_of(const std::string& path) {
  struct stat st{};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 0777;
}

class FilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("ag-files-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    old_umask_ = ::umask(0);  // the most permissive: the file's mode must not depend on it
  }
  void TearDown() override {
    ::umask(old_umask_);
    std::filesystem::remove_all(dir_);
  }
  std::filesystem::path dir_;
  mode_t old_umask_ = 022;
};

TEST_F(FilesTest, OwnerOnlyWholeAndReplacing) {
  const std::string path = (dir_ / "secrets.env").string();
  ASSERT_TRUE(save_private_atomically(path, "A=1\n"));
  EXPECT_EQ(mode_of(path), 0600u);
  EXPECT_EQ(read_all(path), "A=1\n");
  ASSERT_TRUE(save_private_atomically(path, "A=2\nB=3\n"));
  EXPECT_EQ(read_all(path), "A=2\nB=3\n");
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

TEST_F(FilesTest, LeftoverTemporaryDoesNotLendItsMode) {
  // A temporary left world-readable (a crash, another tool): reopening it keeps its mode, so the
  // writer must set 0600 itself.
  const std::string path = (dir_ / "secrets.env").string();
  { std::ofstream(path + ".tmp") << "old"; }
  ASSERT_EQ(::chmod((path + ".tmp").c_str(), 0666), 0);
  ASSERT_TRUE(save_private_atomically(path, "K=v\n"));
  EXPECT_EQ(mode_of(path), 0600u);
  EXPECT_EQ(read_all(path), "K=v\n");
}

TEST_F(FilesTest, FailureKeepsTheOldFileAndSaysWhy) {
  const std::string path = (dir_ / "secrets.env").string();
  ASSERT_TRUE(save_private_atomically(path, "old\n"));
  std::filesystem::create_directory(path + ".tmp");  // the temporary cannot be opened for writing
  errno = 0;
  EXPECT_FALSE(save_private_atomically(path, "new\n"));
  EXPECT_EQ(errno, EISDIR);
  EXPECT_EQ(read_all(path), "old\n");
  errno = 0;
  EXPECT_FALSE(save_private_atomically((dir_ / "missing" / "x").string(), "data"));
  EXPECT_EQ(errno, ENOENT);
}

}  // namespace
}  // namespace ag::files
