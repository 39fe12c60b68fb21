// Linked into the fuzz targets that build worker-config snapshots. config::build_snapshot resolves
// upstream hosts with getaddrinfo(); a fuzzed document names arbitrary hosts, and real lookups
// would send DNS queries and make each execution as slow as the resolver. This definition takes
// precedence over the C library's (and over the sanitizer runtime's weak interceptor) in the fuzz
// executables only: IP literals resolve as usual, any other name fails at once, as an
// unresolvable host does (the upstream is kept with no endpoints).
#include <dlfcn.h>
#include <netdb.h>

extern "C" int getaddrinfo(const char* node, const char* service, const struct addrinfo* hints,
                           struct addrinfo** res) {
  using Fn = int (*)(const char*, const char*, const struct addrinfo*, struct addrinfo**);
  static const Fn real = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, "getaddrinfo"));
  if (!real) return EAI_FAIL;
  struct addrinfo h = {};
  if (hints) h = *hints;
  h.ai_flags |= AI_NUMERICHOST;
  return real(node, service, &h, res);
}
