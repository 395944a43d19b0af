// Internal to src/serve: the nlohmann::json behind a JsonView, and URL helpers shared by the
// router and the transport. Not a public header.
#pragma once

#include <map>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include <forge/serve/http.h>

namespace forge::serve {
/// The node a view points at (a null json for a null view).
const nlohmann::json& detail_json(const JsonView& v);
/// "a=1&b=x%20y" -> {a: 1, b: "x y"} ('+' is a space).
std::multimap<std::string, std::string> parse_query(std::string_view q);
/// Percent-decodes a path.
std::string decode_path(std::string_view p);
} // namespace forge::serve
