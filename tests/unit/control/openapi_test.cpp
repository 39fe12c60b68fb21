// The OpenAPI document must describe every route the control plane serves, with the method.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>

#include "common/crypto.hpp"
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

}  // namespace
}  // namespace ag::control
