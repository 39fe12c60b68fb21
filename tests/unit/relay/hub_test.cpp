// The relay's routing (relay/hub.hpp) with recording peers, and two hubs joined by an in-memory
// bus standing in for PostgreSQL (the real one: tests/integration/test_relay.py).
#include "relay/hub.hpp"

#include <gtest/gtest.h>

#include <deque>

namespace ag::relay {
namespace {

using json = nlohmann::json;

class Recorder : public Peer {
 public:
  using Peer::Peer;
  void send(std::shared_ptr<const std::string> text) override { got.push_back(json::parse(*text)); }
  void close(std::uint16_t code, std::string) override { closed = code; }
  json take() {
    if (got.empty()) return nullptr;
    json j = got.front();
    got.pop_front();
    return j;
  }
  std::deque<json> got;
  int closed = 0;
};

std::shared_ptr<Recorder> open(Hub& hub, Role role, const std::string& user, const std::string& id) {
  auto p = std::make_shared<Recorder>(role, user, id);
  hub.on_open(p, 1);
  EXPECT_EQ(p->take()["type"], "orbit.hello");
  return p;
}

void hello(Hub& hub, const std::shared_ptr<Recorder>& anchor, const std::string& id, std::int64_t now = 2) {
  hub.on_message(anchor, json{{"type", "anchor.hello"}, {"anchorId", id}, {"hostname", "h"}, {"platform", "linux"}}.dump(), now);
}

TEST(RelayHub, AnswersGoOnlyToTheirRequesterWhateverTheIds) {
  Hub hub;
  auto c1 = open(hub, Role::kClient, "u", "c1"), c2 = open(hub, Role::kClient, "u", "c2");
  auto a = open(hub, Role::kAnchor, "u", "dev");
  hello(hub, a, "box");
  EXPECT_EQ(c1->take()["type"], "orbit.anchor-connected");
  c2->take();
  hub.on_message(c1, R"({"id":1,"method":"m","params":{"threadId":"t"}})", 3);
  hub.on_message(c2, R"({"id":1,"method":"m","params":{"threadId":"t"}})", 3);
  json r1 = a->take(), r2 = a->take();
  ASSERT_NE(r1["id"], r2["id"]);
  hub.on_message(a, json{{"id", r2["id"]}, {"result", {{"who", 2}}}}.dump(), 4);
  hub.on_message(a, json{{"id", r1["id"]}, {"result", {{"who", 1}}}}.dump(), 4);
  EXPECT_EQ(c1->take(), (json{{"id", 1}, {"result", {{"who", 1}}}}));
  EXPECT_EQ(c2->take(), (json{{"id", 1}, {"result", {{"who", 2}}}}));
  EXPECT_TRUE(c1->got.empty());
  EXPECT_TRUE(c2->got.empty());
  // A second answer to the same request reaches nobody.
  hub.on_message(a, json{{"id", r1["id"]}, {"result", {}}}.dump(), 5);
  EXPECT_TRUE(c1->got.empty());
}

// Delivers every envelope published by one hub to the other, at once.
class Wire : public Bus {
 public:
  Hub* to = nullptr;
  std::int64_t now = 10;
  std::vector<std::string> sent;
  void publish(std::string envelope) override {
    sent.push_back(envelope);
    if (to) to->on_remote(envelope, now);
  }
};

// Hubs "A" and "B", each publishing to the other.
struct TwoReplicas {
  TwoReplicas() {
    ab.to = &b;
    ba.to = &a;
    a.attach(&ab, "A");
    b.attach(&ba, "B");
  }
  Hub a, b;
  Wire ab, ba;
};

TEST(RelayHub, AThreadAcrossTwoReplicas) {
  TwoReplicas r;
  Hub &a = r.a, &b = r.b;
  auto client = open(a, Role::kClient, "u", "c");
  auto stranger = open(a, Role::kClient, "v", "s");
  auto anchor = open(b, Role::kAnchor, "u", "dev");
  hello(b, anchor, "far");
  EXPECT_EQ(client->take()["anchor"]["id"], "far");
  EXPECT_TRUE(stranger->got.empty()) << "another user hears nothing of it";
  a.on_message(client, R"({"type":"orbit.subscribe","threadId":"t"})", 11);
  EXPECT_EQ(client->take()["type"], "orbit.subscribed");
  EXPECT_EQ(anchor->take()["type"], "orbit.client-subscribed");
  a.on_message(client, R"({"id":"q","method":"run","params":{"threadId":"t"}})", 12);
  json req = anchor->take();
  EXPECT_EQ(req["method"], "run");
  EXPECT_EQ(req["id"].get<std::string>().rfind("A:", 0), 0u) << "the relay id names the asking replica";
  b.on_message(anchor, json{{"id", req["id"]}, {"result", {{"threadId", "t"}}}}.dump(), 13);
  EXPECT_EQ(client->take(), (json{{"id", "q"}, {"result", {{"threadId", "t"}}}}));
  b.on_message(anchor, R"({"method":"out","params":{"threadId":"t","n":1}})", 14);
  EXPECT_EQ(client->take()["params"]["n"], 1);
  // Too large for the bus: refused, not lost silently.
  a.on_message(client, json{{"id", 9}, {"method", "m"}, {"params", {{"threadId", "t"}, {"pad", std::string(9000, 'x')}}}}.dump(), 15);
  EXPECT_EQ(client->take()["error"]["data"]["code"], "message_too_large");
  EXPECT_TRUE(stranger->got.empty());
}

TEST(RelayHub, ASilentReplicasAnchorsExpire) {
  TwoReplicas r;
  Hub &a = r.a, &b = r.b;
  Wire& ba = r.ba;
  auto client = open(a, Role::kClient, "u", "c");
  auto anchor = open(b, Role::kAnchor, "u", "dev");
  hello(b, anchor, "far");
  client->take();
  ba.now = 1000;
  b.heartbeat(1000);  // "far" is on B, as of t = 1000
  ba.to = nullptr;    // B goes silent
  a.sweep(1000 + Hub::kRemoteAnchorTtlMs - 1);
  EXPECT_TRUE(client->got.empty());
  a.sweep(1000 + Hub::kRemoteAnchorTtlMs + 1);
  EXPECT_EQ(client->take(), (json{{"type", "orbit.anchor-disconnected"}, {"anchorId", "far"}}));
  a.on_message(client, R"({"type":"orbit.list-anchors"})", 1000 + Hub::kRemoteAnchorTtlMs + 2);
  EXPECT_EQ(client->take()["anchors"], json::array());
}

}  // namespace
}  // namespace ag::relay
