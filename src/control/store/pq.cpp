#include "control/store/pq.hpp"

#include <dlfcn.h>

#include <stdexcept>
#include <string>

namespace ag::pq {

namespace {
Api load() {
  void* lib = ::dlopen("libpq.so.5", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* err = ::dlerror();
    throw std::runtime_error(std::string("PostgreSQL client library not available (install libpq5): ") +
                             (err ? err : "libpq.so.5"));
  }
  Api a;
#define AG_PQ_LOAD(name)                                                                 \
  a.name = reinterpret_cast<decltype(a.name)>(::dlsym(lib, #name));                      \
  if (a.name == nullptr) throw std::runtime_error("libpq.so.5 lacks " #name);
  AG_PQ_FUNCTIONS(AG_PQ_LOAD)
#undef AG_PQ_LOAD
  return a;  // the library stays loaded for the life of the process
}
}  // namespace

const Api& api() {
  static const Api a = load();
  return a;
}

}  // namespace ag::pq
