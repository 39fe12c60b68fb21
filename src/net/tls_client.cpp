#include "net/tls_client.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <boost/asio/ip/address.hpp>
#include <boost/asio/ssl/context.hpp>
#include <memory>
#include <mutex>
#include <stdexcept>

namespace ag::tls {
namespace asio = boost::asio;

namespace {

std::mutex g_mutex;
std::unique_ptr<asio::ssl::context> g_context;

std::string openssl_error() {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "no certificate found";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

std::unique_ptr<asio::ssl::context> build(const std::string& extra_ca_file, const std::string& what) {
  auto c = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_client);
  SSL_CTX* n = c->native_handle();
  SSL_CTX_set_min_proto_version(n, TLS1_2_VERSION);
  SSL_CTX_set_verify(n, SSL_VERIFY_PEER, nullptr);
  // Idle pooled connections hand their read/write buffers back (about 34 KB each otherwise).
  SSL_CTX_set_mode(n, SSL_MODE_RELEASE_BUFFERS);
  // The system store (Debian: /etc/ssl/certs, from ca-certificates). A machine without one
  // still starts; every handshake then fails verification unless a bundle is given.
  if (SSL_CTX_set_default_verify_paths(n) != 1) ERR_clear_error();
  if (!extra_ca_file.empty()) {
    ERR_clear_error();
    if (SSL_CTX_load_verify_locations(n, extra_ca_file.c_str(), nullptr) != 1)
      throw std::runtime_error(what + ": cannot load trusted certificates from " + extra_ca_file + " (" +
                               openssl_error() + ")");
  }
  return c;
}

}  // namespace

void configure_client(const std::string& extra_ca_file, const std::string& what) {
  auto c = build(extra_ca_file, what);
  std::lock_guard lock(g_mutex);
  if (!g_context) g_context = std::move(c);
}

asio::ssl::context& client_context() {
  std::lock_guard lock(g_mutex);
  if (!g_context) g_context = build("", "");
  return *g_context;
}

bool prepare_client(ssl_st* ssl, const std::string& host) {
  boost::system::error_code ec;
  asio::ip::make_address(host, ec);
  if (!ec) {  // an address: checked against the certificate's IP address entries; no SNI
    return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host.c_str()) == 1;
  }
  SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  return SSL_set_tlsext_host_name(ssl, host.c_str()) == 1 && SSL_set1_host(ssl, host.c_str()) == 1;
}

}  // namespace ag::tls
