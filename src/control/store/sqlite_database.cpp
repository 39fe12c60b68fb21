// SQLite behind the store interface: one connection guarded by a mutex (SQLite serialises
// writers anyway), WAL journal, foreign keys on, prepared statements cached by SQL text.
#include <sqlite3.h>

#include <filesystem>
#include <mutex>
#include <unordered_map>

#include "control/store/database.hpp"

namespace ag::store {

namespace {

class SqliteConnection final : public Connection {
 public:
  explicit SqliteConnection(const std::string& path) {
    if (path != ":memory:") {
      auto parent = std::filesystem::path(path).parent_path();
      std::error_code ec;
      if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    }
    int rc = sqlite3_open_v2(path.c_str(), &db_,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
    if (rc != SQLITE_OK) {
      std::string msg = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
      sqlite3_close(db_);
      db_ = nullptr;
      throw DatabaseError("cannot open SQLite database '" + path + "': " + msg);
    }
    sqlite3_busy_timeout(db_, 5000);
    exec_script("PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL;");
  }
  ~SqliteConnection() override {
    for (auto& [_, stmt] : cache_) sqlite3_finalize(stmt);
    sqlite3_close(db_);
  }

  void exec_each(std::string_view sql, const Params& params, const std::function<void(const Row&)>& fn) override {
    sqlite3_stmt* stmt = bind(sql, params);
    Row row;
    for (;;) {
      int rc = sqlite3_step(stmt);
      if (rc == SQLITE_ROW) {
        int n = sqlite3_column_count(stmt);
        row.resize(static_cast<std::size_t>(n));
        for (int c = 0; c < n; ++c) {
          if (sqlite3_column_type(stmt, c) == SQLITE_NULL) {
            row.set_null(static_cast<std::size_t>(c));
          } else {
            auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt, c));
            row.set(static_cast<std::size_t>(c), p, static_cast<std::size_t>(sqlite3_column_bytes(stmt, c)));
          }
        }
        fn(row);
      } else if (rc == SQLITE_DONE) {
        break;
      } else {
        std::string msg = sqlite3_errmsg(db_);
        sqlite3_reset(stmt);
        throw DatabaseError("SQLite: " + msg);
      }
    }
    sqlite3_reset(stmt);
  }

  Result exec(std::string_view sql, const Params& params) override {
    sqlite3_stmt* stmt = bind(sql, params);
    Result result;
    for (;;) {
      int rc = sqlite3_step(stmt);
      if (rc == SQLITE_ROW) {
        int n = sqlite3_column_count(stmt);
        std::vector<std::optional<std::string>> cols;
        cols.reserve(n);
        for (int c = 0; c < n; ++c) {
          if (sqlite3_column_type(stmt, c) == SQLITE_NULL) {
            cols.emplace_back(std::nullopt);
          } else {
            auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt, c));
            cols.emplace_back(std::string(p, sqlite3_column_bytes(stmt, c)));
          }
        }
        result.rows.emplace_back(std::move(cols));
      } else if (rc == SQLITE_DONE) {
        break;
      } else {
        int ext = sqlite3_extended_errcode(db_);
        std::string msg = sqlite3_errmsg(db_);
        sqlite3_reset(stmt);
        if (ext == SQLITE_CONSTRAINT_UNIQUE || ext == SQLITE_CONSTRAINT_PRIMARYKEY)
          throw UniqueViolation(msg);
        throw DatabaseError("SQLite: " + msg);
      }
    }
    result.affected = sqlite3_changes(db_);
    sqlite3_reset(stmt);
    return result;
  }

  // Prepares (cached) and binds $1..$n by name.
  sqlite3_stmt* bind(std::string_view sql, const Params& params) {
    sqlite3_stmt* stmt = prepare(sql);
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    for (std::size_t i = 0; i < params.size(); ++i) {
      std::string name = "$" + std::to_string(i + 1);
      int idx = sqlite3_bind_parameter_index(stmt, name.c_str());
      if (idx == 0) continue;  // parameter not used by this statement
      const Value& v = params[i];
      int rc = SQLITE_OK;
      if (std::holds_alternative<std::nullptr_t>(v)) {
        rc = sqlite3_bind_null(stmt, idx);
      } else if (auto* n = std::get_if<std::int64_t>(&v)) {
        rc = sqlite3_bind_int64(stmt, idx, *n);
      } else {
        const auto& s = std::get<std::string>(v);
        rc = sqlite3_bind_text(stmt, idx, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
      }
      if (rc != SQLITE_OK) fail("bind");
    }
    return stmt;
  }

  void exec_script(std::string_view sql) override {
    std::string s(sql);
    char* err = nullptr;
    if (sqlite3_exec(db_, s.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
      std::string msg = err ? err : "unknown error";
      sqlite3_free(err);
      throw DatabaseError("SQLite: " + msg);
    }
  }

  void begin() override { exec_script("BEGIN IMMEDIATE"); }
  void commit() override { exec_script("COMMIT"); }
  void rollback() override { exec_script("ROLLBACK"); }

 private:
  sqlite3_stmt* prepare(std::string_view sql) {
    std::string key(sql);
    if (auto it = cache_.find(key); it != cache_.end()) return it->second;
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v3(db_, key.c_str(), static_cast<int>(key.size()), SQLITE_PREPARE_PERSISTENT,
                           &stmt, nullptr) != SQLITE_OK)
      fail("prepare");
    cache_.emplace(std::move(key), stmt);
    return stmt;
  }
  [[noreturn]] void fail(const char* what) {
    throw DatabaseError(std::string("SQLite ") + what + ": " + sqlite3_errmsg(db_));
  }

  sqlite3* db_ = nullptr;
  std::unordered_map<std::string, sqlite3_stmt*> cache_;
};

class SqliteDatabase final : public Database {
 public:
  explicit SqliteDatabase(const std::string& path) : conn_(path) {}
  Engine engine() const override { return Engine::kSqlite; }

 protected:
  Lease acquire() override {
    mutex_.lock();
    return Lease{&conn_, [this] { mutex_.unlock(); }};
  }

 private:
  std::mutex mutex_;
  SqliteConnection conn_;
};

}  // namespace

std::unique_ptr<Database> open_sqlite(const std::string& path) {
  return std::make_unique<SqliteDatabase>(path);
}

}  // namespace ag::store
