#pragma once
// TLS for outgoing connections: https:// upstreams, their health checks, and a control plane
// reached over https://. One client context per process: TLS 1.2 or later, the peer's
// certificate chain verified against the system trust store (plus an optional PEM bundle), and
// the certificate checked against the host name (or IP address) the URL names.
#include <string>

struct ssl_st;
namespace boost::asio::ssl {
class context;
}

namespace ag::tls {

// Sets the extra trusted certificates (a PEM bundle; "" = the system store only). Throws
// std::runtime_error naming `what` (the setting) when the file cannot be read or holds no
// certificate. Call before the first client_context(); it builds the context.
void configure_client(const std::string& extra_ca_file, const std::string& what);

// The process's client context (built with the system store alone if configure_client() was
// not called). Thread-safe.
boost::asio::ssl::context& client_context();

// Per connection to `host` (a name, or an IPv4/IPv6 literal without brackets): sends SNI for a
// name and makes the handshake fail unless the certificate matches `host`.
bool prepare_client(ssl_st* ssl, const std::string& host);

}  // namespace ag::tls
