#pragma once
// The store interface: one SQL dialect-neutral API over SQLite and PostgreSQL.
//
// Statements use PostgreSQL-style numbered placeholders ($1, $2, ...) in both engines and are
// always executed as prepared statements with bound parameters; user data is never spliced into
// SQL text. Results come back as text (NULL = nullopt), which both engines produce cheaply and
// which keeps the two implementations identical for callers.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace ag::store {

using Value = std::variant<std::nullptr_t, std::int64_t, std::string>;
using Params = std::vector<Value>;

Value opt(const std::optional<std::string>& v);
Value opt(const std::optional<std::int64_t>& v);

class Row {
 public:
  Row() = default;
  explicit Row(std::vector<std::optional<std::string>> cols) : cols_(std::move(cols)) {}
  // For engines filling one reused row (Connection::exec_each): keeps string capacity.
  void resize(std::size_t n) { cols_.resize(n); }
  void set(std::size_t i, const char* p, std::size_t n) {
    if (!cols_[i]) cols_[i].emplace();
    cols_[i]->assign(p, n);
  }
  void set_null(std::size_t i) { cols_[i].reset(); }
  bool is_null(std::size_t i) const { return !cols_.at(i).has_value(); }
  const std::string& text(std::size_t i) const;
  std::int64_t integer(std::size_t i) const;
  std::optional<std::string> opt_text(std::size_t i) const { return cols_.at(i); }
  std::optional<std::int64_t> opt_integer(std::size_t i) const;

 private:
  std::vector<std::optional<std::string>> cols_;
};

struct Result {
  std::vector<Row> rows;
  std::int64_t affected = 0;
  bool empty() const { return rows.empty(); }
};

enum class Engine { kSqlite, kPostgres };

// Thrown for unique-constraint violations so callers can answer 409.
class UniqueViolation : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// Thrown when the database cannot be reached or a statement fails for a server-side reason.
class DatabaseError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// One connection, used by one thread at a time (obtained through Database::transaction).
class Connection {
 public:
  virtual ~Connection() = default;
  virtual Result exec(std::string_view sql, const Params& params) = 0;
  // Like exec, but hands each row to `fn` as it is read (one Row reused for all rows): for
  // results too large to hold as a vector of rows.
  virtual void exec_each(std::string_view sql, const Params& params, const std::function<void(const Row&)>& fn) = 0;
  // Runs constant DDL (migrations); several statements allowed; no parameters.
  virtual void exec_script(std::string_view sql) = 0;
  virtual void begin() = 0;
  virtual void commit() = 0;
  virtual void rollback() = 0;
};

class Database {
 public:
  virtual ~Database() = default;
  virtual Engine engine() const = 0;
  std::string_view engine_name() const {
    return engine() == Engine::kSqlite ? "sqlite" : "postgresql";
  }

  // Runs `fn` inside one transaction on a connection of its own. Commits when `fn` returns,
  // rolls back (and rethrows) when it throws. Blocks while every connection is busy.
  void transaction(const std::function<void(Connection&)>& fn);
  // Same without an explicit transaction (single statements, autocommit).
  void with_connection(const std::function<void(Connection&)>& fn);

 protected:
  struct Lease {
    Connection* conn;
    std::function<void()> release;
  };
  virtual Lease acquire() = 0;
};

// Opens the database named by `url`: "sqlite:///abs/path", "sqlite://rel/path", "sqlite::memory:",
// "postgresql://..." or "postgres://...". `pool_size` applies to PostgreSQL.
std::unique_ptr<Database> open_database(const std::string& url, int pool_size);

std::unique_ptr<Database> open_sqlite(const std::string& path);
std::unique_ptr<Database> open_postgres(const std::string& conninfo, int pool_size);

}  // namespace ag::store
