#pragma once
// Endpoint normalisation for the risk engine's per-endpoint counters.
#include <string>
#include <string_view>

namespace ag::gateway {

// "/users/123/orders/5f2b…" -> "/users/:id/orders/:id": numbers, UUIDs and long hex collapse.
std::string normalise_endpoint(std::string_view path);
bool needs_normalising(std::string_view path);

}  // namespace ag::gateway
