// PostgreSQL behind the store interface through libpq: a fixed pool of connections, each with
// its own cache of server-side prepared statements (PQprepare once, PQexecPrepared after).
// A broken connection is re-opened on its next use.
#include "control/store/pq.hpp"

#include <condition_variable>
#include <mutex>
#include <unordered_map>

#include "control/store/database.hpp"

namespace ag::store {

namespace {

class PgConnection final : public Connection {
 public:
  explicit PgConnection(std::string conninfo) : conninfo_(std::move(conninfo)) { connect(); }
  ~PgConnection() override {
    if (conn_) ag::pq::api().PQfinish(conn_);
  }

  void ensure_open() {
    if (conn_ && ag::pq::api().PQstatus(conn_) == CONNECTION_OK) return;
    if (conn_) {
      ag::pq::api().PQreset(conn_);
      statements_.clear();
      if (ag::pq::api().PQstatus(conn_) == CONNECTION_OK) return;
    }
    connect();
  }

  void exec_each(std::string_view sql, const Params& params, const std::function<void(const Row&)>& fn) override {
    PGresult* r = run(sql, params);
    Row row;
    int nrows = ag::pq::api().PQntuples(r), ncols = ag::pq::api().PQnfields(r);
    row.resize(static_cast<std::size_t>(ncols));
    try {
      for (int i = 0; i < nrows; ++i) {
        for (int c = 0; c < ncols; ++c) {
          if (ag::pq::api().PQgetisnull(r, i, c)) row.set_null(static_cast<std::size_t>(c));
          else row.set(static_cast<std::size_t>(c), ag::pq::api().PQgetvalue(r, i, c), static_cast<std::size_t>(ag::pq::api().PQgetlength(r, i, c)));
        }
        fn(row);
      }
    } catch (...) {
      ag::pq::api().PQclear(r);
      throw;
    }
    ag::pq::api().PQclear(r);
  }

  Result exec(std::string_view sql, const Params& params) override {
    PGresult* r = run(sql, params);
    Result result;
    int nrows = ag::pq::api().PQntuples(r), ncols = ag::pq::api().PQnfields(r);
    result.rows.reserve(nrows);
    for (int row = 0; row < nrows; ++row) {
      std::vector<std::optional<std::string>> cols;
      cols.reserve(ncols);
      for (int c = 0; c < ncols; ++c) {
        if (ag::pq::api().PQgetisnull(r, row, c)) {
          cols.emplace_back(std::nullopt);
        } else {
          cols.emplace_back(std::string(ag::pq::api().PQgetvalue(r, row, c), ag::pq::api().PQgetlength(r, row, c)));
        }
      }
      result.rows.emplace_back(std::move(cols));
    }
    const char* affected = ag::pq::api().PQcmdTuples(r);
    if (affected && *affected) result.affected = std::stoll(affected);
    ag::pq::api().PQclear(r);
    return result;
  }

  // Runs a prepared statement (prepared once per connection); the caller owns the result.
  PGresult* run(std::string_view sql, const Params& params) {
    std::string key(sql);
    auto it = statements_.find(key);
    if (it == statements_.end()) {
      std::string name = "s" + std::to_string(statements_.size() + 1);
      PGresult* r = ag::pq::api().PQprepare(conn_, name.c_str(), key.c_str(), 0, nullptr);
      check(r, "prepare");
      ag::pq::api().PQclear(r);
      it = statements_.emplace(std::move(key), std::move(name)).first;
    }
    std::vector<std::string> storage(params.size());
    std::vector<const char*> values(params.size(), nullptr);
    for (std::size_t i = 0; i < params.size(); ++i) {
      if (auto* n = std::get_if<std::int64_t>(&params[i])) {
        storage[i] = std::to_string(*n);
        values[i] = storage[i].c_str();
      } else if (auto* s = std::get_if<std::string>(&params[i])) {
        values[i] = s->c_str();
      }
    }
    PGresult* r = ag::pq::api().PQexecPrepared(conn_, it->second.c_str(), static_cast<int>(values.size()),
                                 values.data(), nullptr, nullptr, 0);
    check(r, "query");
    return r;
  }

  void exec_script(std::string_view sql) override {
    std::string s(sql);
    PGresult* r = ag::pq::api().PQexec(conn_, s.c_str());
    check(r, "script");
    ag::pq::api().PQclear(r);
  }
  void begin() override {
    ensure_open();
    exec_script("BEGIN");
  }
  void commit() override { exec_script("COMMIT"); }
  void rollback() override { exec_script("ROLLBACK"); }

 private:
  void connect() {
    if (conn_) ag::pq::api().PQfinish(conn_);
    statements_.clear();
    conn_ = ag::pq::api().PQconnectdb(conninfo_.c_str());
    if (ag::pq::api().PQstatus(conn_) != CONNECTION_OK) {
      // The message names the host and database, never the password.
      std::string msg = ag::pq::api().PQerrorMessage(conn_);
      ag::pq::api().PQfinish(conn_);
      conn_ = nullptr;
      while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
      throw DatabaseError("cannot connect to PostgreSQL: " + msg);
    }
    PGresult* r = ag::pq::api().PQexec(conn_, "SET client_min_messages TO warning");
    ag::pq::api().PQclear(r);
  }

  void check(PGresult* r, const char* what) {
    auto st = ag::pq::api().PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return;
    const char* state = ag::pq::api().PQresultErrorField(r, PG_DIAG_SQLSTATE);
    std::string code = state ? state : "";
    std::string msg = ag::pq::api().PQresultErrorMessage(r);
    ag::pq::api().PQclear(r);
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    if (code == "23505") throw UniqueViolation(msg);
    if (ag::pq::api().PQstatus(conn_) != CONNECTION_OK) statements_.clear();
    throw DatabaseError(std::string("PostgreSQL ") + what + ": " + msg);
  }

  std::string conninfo_;
  PGconn* conn_ = nullptr;
  std::unordered_map<std::string, std::string> statements_;
};

class PgDatabase final : public Database {
 public:
  PgDatabase(const std::string& conninfo, int pool_size) {
    if (pool_size < 1) pool_size = 1;
    // The first connection is opened now so a wrong URL fails at start-up with a clear error.
    for (int i = 0; i < pool_size; ++i) {
      all_.push_back(std::make_unique<PgConnection>(conninfo));
      free_.push_back(all_.back().get());
    }
  }
  Engine engine() const override { return Engine::kPostgres; }

 protected:
  Lease acquire() override {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [this] { return !free_.empty(); });
    PgConnection* c = free_.back();
    free_.pop_back();
    lock.unlock();
    try {
      c->ensure_open();
    } catch (...) {
      release(c);
      throw;
    }
    return Lease{c, [this, c] { release(c); }};
  }

 private:
  void release(PgConnection* c) {
    {
      std::lock_guard lock(mutex_);
      free_.push_back(c);
    }
    cv_.notify_one();
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<PgConnection>> all_;
  std::vector<PgConnection*> free_;
};

}  // namespace

std::unique_ptr<Database> open_postgres(const std::string& conninfo, int pool_size) {
  return std::make_unique<PgDatabase>(conninfo, pool_size);
}

}  // namespace ag::store
