// libFuzzer target for the relay's message handling (src/relay/protocol.hpp, hub.hpp): what
// clients and anchors send over their WebSockets. Seed corpus: fuzz/corpus/relay_message/.
//
// Input: frames separated by '\n'; each frame's first byte picks its sender (0 first client,
// 1 second client, 2 first anchor, 3 second anchor, 4 a client of another user; 5 closes and
// reopens the first anchor), the rest is the frame's text. Every frame the hub sends must be a
// JSON object, and nothing may reach the other user's client.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "relay/hub.hpp"

namespace {

using ag::relay::Hub;
using ag::relay::Peer;
using ag::relay::Role;

class Fake : public Peer {
 public:
  using Peer::Peer;
  void send(std::shared_ptr<const std::string> text) override {
    if (!nlohmann::json::accept(*text)) std::abort();
    ++received;
  }
  void close(std::uint16_t, std::string) override {}
  std::size_t received = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Hub hub;
  std::vector<std::shared_ptr<Fake>> peers = {
      std::make_shared<Fake>(Role::kClient, "u1", "c1"), std::make_shared<Fake>(Role::kClient, "u1", "c2"),
      std::make_shared<Fake>(Role::kAnchor, "u1", "a1"), std::make_shared<Fake>(Role::kAnchor, "u1", "a2"),
      std::make_shared<Fake>(Role::kClient, "u2", "c1")};
  for (auto& p : peers) hub.on_open(p, 1);
  const std::size_t stranger_hello = peers[4]->received;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  std::int64_t now = 2;
  std::size_t stranger_frames = 0;
  while (!in.empty()) {
    auto nl = in.find('\n');
    std::string_view frame = in.substr(0, nl);
    in = nl == std::string_view::npos ? std::string_view{} : in.substr(nl + 1);
    if (frame.empty()) continue;
    unsigned who = static_cast<unsigned char>(frame[0]) % 6;
    frame.remove_prefix(1);
    if (who == 5) {
      hub.on_close(peers[2]);
      hub.on_open(peers[2], now++);
      continue;
    }
    if (who == 4) ++stranger_frames;
    hub.on_message(peers[who], frame, now++);
  }
  // The other user's client hears at most one answer per frame it sent itself, never u1's traffic.
  if (peers[4]->received > stranger_hello + stranger_frames) std::abort();
  for (auto& p : peers) hub.on_close(p);
  return 0;
}
