#pragma once
// The relay's bus between control-plane replicas on one PostgreSQL (docs/relay.md, "Several
// replicas"): envelopes go out with NOTIFY ag_relay from one connection, in order, and come in
// through LISTEN ag_relay on another; the listening thread also runs the relay's heartbeat.
//
// Why PostgreSQL and not Redis: the control plane already needs it for more than one replica
// (SQLite is one process), and already listens on it for the config stream, so replicas need
// nothing more. Its limits, documented: a NOTIFY payload is under 8,000 bytes (larger messages
// do not cross replicas), notifications are delivered in commit order per sending connection
// (so per replica), and a listener that reconnects has missed what was sent meanwhile (anchor
// presence heals with the next heartbeat, 5 s).
#include <memory>
#include <string>

#include "relay/relay.hpp"

namespace ag::control {

class PgRelayBus : public relay::Bus {
 public:
  // Starts both connections' threads and attaches itself to `relay`.
  PgRelayBus(std::string conninfo, relay::Relay& relay);
  ~PgRelayBus() override;
  void publish(std::string envelope) override;
  const std::string& replica_id() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace ag::control
