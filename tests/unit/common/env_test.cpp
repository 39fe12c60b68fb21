#include "common/env.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

namespace ag::env {
namespace {

TEST(Dotenv, ParsesCommentsQuotesAndExport) {
  std::string errors;
  auto m = parse_dotenv(
      "# comment\nA=1\nexport B = two \nC=\"quoted # not comment\"\nD='single'\nE=x # trailing\n"
      "bad line\n1X=no\nEMPTY=\n",
      &errors);
  EXPECT_EQ(m["A"], "1");
  EXPECT_EQ(m["B"], "two");
  EXPECT_EQ(m["C"], "quoted # not comment");
  EXPECT_EQ(m["D"], "single");
  EXPECT_EQ(m["E"], "x");
  EXPECT_EQ(m["EMPTY"], "");
  EXPECT_EQ(m.count("1X"), 0u);
  EXPECT_NE(errors.find("line 7"), std::string::npos);
  EXPECT_NE(errors.find("line 8"), std::string::npos);
}

TEST(Dotenv, RealEnvironmentWins) {
  auto path = ::testing::TempDir() + "/ag_env_test.env";
  std::ofstream(path) << "AG_TEST_DOTENV_A=file\nAG_TEST_DOTENV_B=file\n";
  ::setenv("AG_TEST_DOTENV_A", "real", 1);
  ::unsetenv("AG_TEST_DOTENV_B");
  EXPECT_EQ(load_dotenv_file(path), 1);
  EXPECT_EQ(get_or("AG_TEST_DOTENV_A", ""), "real");
  EXPECT_EQ(get_or("AG_TEST_DOTENV_B", ""), "file");
  EXPECT_EQ(load_dotenv_file(path + ".missing"), 0);
}

}  // namespace
}  // namespace ag::env
