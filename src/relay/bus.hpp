#pragma once
// What carries relay traffic between control-plane replicas (docs/relay.md, "Several
// replicas"). The hub publishes small JSON envelopes; the bus delivers every envelope published
// by any replica to every replica's Hub::on_remote, in the order each replica published them.
// The control plane's implementation is PostgreSQL LISTEN/NOTIFY (control/app.cpp).
#include <string>

namespace ag::relay {

class Bus {
 public:
  virtual ~Bus() = default;
  // Must not block: queues the envelope for sending.
  virtual void publish(std::string envelope) = 0;
};

// PostgreSQL's NOTIFY payload limit is 8,000 bytes; an envelope stays under this.
inline constexpr std::size_t kMaxEnvelopeBytes = 7900;

}  // namespace ag::relay
