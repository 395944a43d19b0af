// Small helpers for reading tokenizer.json with errors that name the file and the field.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include <forge/core/error.h>

namespace forge::tok {

[[noreturn]] inline void json_fail(std::string_view origin, std::string_view where,
                                   std::string_view what) {
    throw InvalidArgument(detail::str_cat("[tokenizer] ", origin, ": ", where, ": ", what));
}

inline const nlohmann::json& json_at(const nlohmann::json& j, const char* key,
                                     std::string_view origin, std::string_view where) {
    if (!j.is_object())
        json_fail(origin, where, "expected a JSON object");
    auto it = j.find(key);
    if (it == j.end())
        json_fail(origin, where, detail::str_cat("missing field \"", key, "\""));
    return *it;
}

inline std::string json_string(const nlohmann::json& j, const char* key, std::string_view origin,
                               std::string_view where) {
    const auto& v = json_at(j, key, origin, where);
    if (!v.is_string())
        json_fail(origin, where, detail::str_cat("field \"", key, "\" must be a string"));
    return v.get<std::string>();
}

/// Optional string field: `def` when absent or null.
inline std::string json_string_or(const nlohmann::json& j, const char* key, std::string def,
                                  std::string_view origin, std::string_view where) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null())
        return def;
    if (!it->is_string())
        json_fail(origin, where, detail::str_cat("field \"", key, "\" must be a string"));
    return it->get<std::string>();
}

inline bool json_bool_or(const nlohmann::json& j, const char* key, bool def,
                         std::string_view origin, std::string_view where) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null())
        return def;
    if (!it->is_boolean())
        json_fail(origin, where, detail::str_cat("field \"", key, "\" must be true or false"));
    return it->get<bool>();
}

inline long long json_int_or(const nlohmann::json& j, const char* key, long long def,
                             std::string_view origin, std::string_view where) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null())
        return def;
    if (!it->is_number_integer())
        json_fail(origin, where, detail::str_cat("field \"", key, "\" must be an integer"));
    return it->get<long long>();
}

inline std::string json_type(const nlohmann::json& j, std::string_view origin,
                             std::string_view where) {
    return json_string(j, "type", origin, where);
}

/// HF pattern objects: {"String": "x"} or {"Regex": "x"}. Returns a regex source either way
/// (a String is escaped) and sets is_regex.
std::string json_pattern(const nlohmann::json& j, std::string_view origin, std::string_view where,
                         bool& is_regex);

/// Escapes regex metacharacters.
std::string regex_escape(std::string_view s);

} // namespace forge::tok
