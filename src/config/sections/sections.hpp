#pragma once
// The worker-config document's sections (docs/api.md "Worker config"), one parser each, in the
// file named after it: project.cpp (a project and its API keys), service.cpp (a service and its
// targets), risk.cpp (a risk policy), tokens.cpp (JWT public keys and revocations). build.cpp,
// delta.cpp and serialize.cpp put them together. Each returns false with `p.error` set.
#include <cstdint>
#include <memory>
#include <string>

#include "config/sections/fields.hpp"

namespace ag::config::sections {

// A project object without its keys (they are read by the build, into the key table).
bool parse_project(simdjson::dom::object po, const std::string& where, Project& proj, Parser& p);
// One entry of a project's "keys" list; `slot` is the project's.
bool parse_key(simdjson::dom::object ko, const std::string& where, std::uint32_t slot, KeyDigest& d, KeyEntry& k,
               Parser& p);
// One service (docs/services-and-tokens.md); the same shape as the control API's service record.
bool parse_service(simdjson::dom::object so, const std::string& where, const std::string& project_id, Service& svc,
                   Parser& p);
// A project's "risk" object (docs/risk.md).
bool parse_risk(simdjson::dom::object ro, const std::string& where, RiskPolicy& r, Parser& p);
// The policy of a project without a "risk" object (one shared instance).
const std::shared_ptr<const RiskPolicy>& default_risk();
// Public keys and revocations (top level of a full document). Missing lists are empty.
bool parse_tokens(simdjson::dom::object root, TokenState& ts, Parser& p);
bool parse_jwt_keys(simdjson::dom::array keys, const std::string& where, TokenState& ts, Parser& p);
bool parse_revocation(simdjson::dom::object ro, const std::string& where, TokenState& ts, Parser& p);


}  // namespace ag::config::sections
