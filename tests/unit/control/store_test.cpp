// Store behaviour against a real SQLite database (in memory); the integration suite runs the same
// paths against PostgreSQL through the binary.
#include <gtest/gtest.h>

#include "control/store/database.hpp"
#include "control/store/migrations.hpp"

namespace ag::store {
namespace {

TEST(Store, MigrateIsIdempotent) {
  auto db = open_database("sqlite::memory:", 1);
  auto first = migrate(*db);
  EXPECT_EQ(first.current, latest_schema_version());
  EXPECT_FALSE(first.applied_now.empty());
  auto second = migrate(*db);
  EXPECT_TRUE(second.applied_now.empty());
  EXPECT_EQ(second.current, first.current);
}

TEST(Store, TransactionRollsBackOnThrow) {
  auto db = open_database("sqlite::memory:", 1);
  migrate(*db);
  EXPECT_THROW(db->transaction([](Connection& c) {
    c.exec("UPDATE config_state SET version = version + 1 WHERE id = 1", {});
    throw std::runtime_error("boom");
  }),
               std::runtime_error);
  std::int64_t v = -1;
  db->with_connection([&](Connection& c) {
    v = c.exec("SELECT version FROM config_state WHERE id = 1", {}).rows.at(0).integer(0);
  });
  EXPECT_EQ(v, 0);
}

TEST(Store, ParamsBindByNumberAndUniqueViolationIsTyped) {
  auto db = open_database("sqlite::memory:", 1);
  migrate(*db);
  db->transaction([](Connection& c) {
    // $2 before $1 in the text: binding must follow the numbers, not the order.
    c.exec("INSERT INTO users (name, id, email, password_hash, created_at) VALUES ($2, $1, $3, 'h', $4)",
           {std::string("id-1"), std::string("Ann"), std::string("a@b.co"), std::int64_t{5}});
  });
  db->with_connection([](Connection& c) {
    auto r = c.exec("SELECT id, name, created_at, NULL FROM users WHERE email = $1", {std::string("a@b.co")});
    ASSERT_EQ(r.rows.size(), 1u);
    EXPECT_EQ(r.rows[0].text(0), "id-1");
    EXPECT_EQ(r.rows[0].text(1), "Ann");
    EXPECT_EQ(r.rows[0].integer(2), 5);
    EXPECT_TRUE(r.rows[0].is_null(3));
    EXPECT_THROW(c.exec("INSERT INTO users (id, email, name, password_hash, created_at) VALUES ($1, $2, 'x', 'h', 1)",
                        {std::string("id-2"), std::string("a@b.co")}),
                 UniqueViolation);
  });
}

TEST(Store, RejectsUnknownUrlScheme) {
  EXPECT_THROW(open_database("mysql://x", 1), std::invalid_argument);
}

}  // namespace
}  // namespace ag::store
