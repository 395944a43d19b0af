// The project config file `forge new` writes and `forge train` reads (forge.toml): a TOML
// subset of `key = value` lines, # comments, [section] headers (for readability only), strings
// ("..." with escapes, '...' literal), numbers, booleans and arrays (which may span lines).
// Not a general TOML parser: no tables of tables, dates or inline tables.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace forge {

struct ConfigEntry {
    std::string key;                 ///< as written, '_' turned into '-' ("n_layer" -> "n-layer")
    std::vector<std::string> values; ///< one value, or an array's items, unquoted
    bool is_array = false;
    int line = 0; ///< 1-based line of the key
};

/// Parses config text; `origin` names it in errors ("forge.toml:12: ..."). Throws
/// InvalidArgument for malformed lines and keys given twice.
std::vector<ConfigEntry> parse_config(std::string_view text, const std::string& origin);
/// Reads and parses a file (NotFound if it does not exist).
std::vector<ConfigEntry> parse_config_file(const std::filesystem::path& path);

} // namespace forge
