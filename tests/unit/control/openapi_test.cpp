// The OpenAPI document must describe every route the control plane serves, with the method, and
// the document the server serves must name every route's declared authorisation rule.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>

#include "common/crypto.hpp"
#include "control/api/routes.hpp"
#include "control/app.hpp"
#include "control/settings.hpp"

namespace ag::assets {
std::string_view openapi_json();
}

namespace ag::control {
namespace {

TEST(OpenApi, CoversEveryRoute) {
  crypto::init();
  Settings s;
  s.database_url = "sqlite::memory:";
  s.jwt_secret = "unit-test-secret-unit-test-secret-0123";
  s.worker_secrets = {"w"};
  s.threads = 1;
  ControlApp app(s);
  auto doc = nlohmann::json::parse(assets::openapi_json());
  ASSERT_TRUE(doc.contains("paths"));
  auto routes = app.routes();
  ASSERT_GE(routes.size(), 18u);
  for (const auto& r : routes) {
    std::string method = r.method;
    std::transform(method.begin(), method.end(), method.begin(), ::tolower);
    ASSERT_TRUE(doc["paths"].contains(r.pattern)) << r.pattern;
    EXPECT_TRUE(doc["paths"][r.pattern].contains(method)) << r.method << " " << r.pattern;
  }
}

TEST(OpenApi, ServedDocumentNamesEachRoutesRule) {
  crypto::init();
  Settings s;
  s.database_url = "sqlite::memory:";
  s.jwt_secret = "unit-test-secret-unit-test-secret-0123";
  s.worker_secrets = {"w"};
  s.threads = 1;
  ControlApp app(s);
  auto doc = nlohmann::json::parse(app.state().openapi_document);
  std::size_t operations = 0;
  for (const auto& [path, ops] : doc["paths"].items())
    for (const auto& [method, op] : ops.items())
      if (method != "parameters") ++operations;
  auto routes = app.routes();
  EXPECT_EQ(operations, routes.size()) << "every documented operation is a route, and back";
  for (const auto& r : routes) {
    std::string method = r.method;
    std::transform(method.begin(), method.end(), method.begin(), ::tolower);
    EXPECT_NE(access_name(r.access), "unknown") << r.pattern;
    const auto& op = doc["paths"][r.pattern][method];
    EXPECT_EQ(op.value("x-antigravity-access", ""), access_name(r.access)) << r.method << " " << r.pattern;
    EXPECT_EQ(op.value("x-antigravity-agents", false), r.agents) << r.method << " " << r.pattern;
    if (r.agents) {
      EXPECT_NE(op["security"].dump().find("agentToken"), std::string::npos) << r.method << " " << r.pattern;
    }
  }
}

}  // namespace
}  // namespace ag::control
