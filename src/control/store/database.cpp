#include "control/store/database.hpp"

#include <charconv>

namespace ag::store {

Value opt(const std::optional<std::string>& v) {
  if (v) return *v;
  return nullptr;
}
Value opt(const std::optional<std::int64_t>& v) {
  if (v) return *v;
  return nullptr;
}

const std::string& Row::text(std::size_t i) const {
  const auto& c = cols_.at(i);
  if (!c) throw DatabaseError("unexpected NULL in column " + std::to_string(i));
  return *c;
}

std::int64_t Row::integer(std::size_t i) const {
  const std::string& s = text(i);
  std::int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || p != s.data() + s.size())
    throw DatabaseError("column " + std::to_string(i) + " is not an integer");
  return v;
}

std::optional<std::int64_t> Row::opt_integer(std::size_t i) const {
  if (is_null(i)) return std::nullopt;
  return integer(i);
}

void Database::with_connection(const std::function<void(Connection&)>& fn) {
  Lease lease = acquire();
  struct Releaser {
    Lease& l;
    ~Releaser() { l.release(); }
  } releaser{lease};
  fn(*lease.conn);
}

void Database::transaction(const std::function<void(Connection&)>& fn) {
  with_connection([&](Connection& c) {
    c.begin();
    try {
      fn(c);
    } catch (...) {
      try {
        c.rollback();
      } catch (...) {
      }
      throw;
    }
    c.commit();
  });
}

std::unique_ptr<Database> open_database(const std::string& url, int pool_size) {
  auto starts = [&](std::string_view p) { return url.rfind(p, 0) == 0; };
  if (starts("postgresql://") || starts("postgres://")) return open_postgres(url, pool_size);
  if (url == "sqlite::memory:" || url == "sqlite://:memory:") return open_sqlite(":memory:");
  if (starts("sqlite:///")) return open_sqlite(url.substr(9));  // keeps the leading '/'
  if (starts("sqlite://")) return open_sqlite(url.substr(9));
  if (starts("sqlite:")) return open_sqlite(url.substr(7));
  throw std::invalid_argument("DATABASE_URL must start with sqlite:// or postgresql:// (got '" +
                              url.substr(0, url.find(':')) + ":...')");
}

}  // namespace ag::store
