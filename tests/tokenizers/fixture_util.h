// Helpers shared by the tokenizer tests: where the vocabularies and fixtures are, the recipe for
// generated texts (the same as tools/tokenizers/cases.mjs) and the id-sequence hash.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <forge/tokenizers/tokenizer.h>

namespace forge::test {

inline std::filesystem::path shared_data() {
    return std::filesystem::path(FORGE_SOURCE_DIR) / ".." / "shared" / "data";
}
inline std::filesystem::path vocab_dir() { return shared_data() / "tokenizers"; }
inline std::filesystem::path fixture_dir() {
    return std::filesystem::path(FORGE_SOURCE_DIR) / "tests" / "tokenizers" / "fixtures";
}
inline bool have_vocabs() { return std::filesystem::exists(vocab_dir() / "MANIFEST.json"); }

inline std::string read_all(const std::filesystem::path& p) {
    std::ifstream f(p, std::ios::binary);
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

inline nlohmann::json read_fixture(const std::string& name) {
    return nlohmann::json::parse(read_all(fixture_dir() / (name + ".json")));
}

/// The text of a fixture case: "text", or built from "gen" as cases.mjs builds it.
inline std::string case_text(const nlohmann::json& c) {
    if (c.contains("text"))
        return c["text"].get<std::string>();
    const auto& g = c["gen"];
    std::string kind = g["kind"];
    if (kind == "lcg_letters") {
        std::uint32_t x = g["seed"].get<std::uint32_t>();
        std::size_t n = g["n"].get<std::size_t>();
        std::string s(n, ' ');
        for (std::size_t i = 0; i < n; ++i) {
            x = x * 1103515245u + 12345u;
            s[i] = char('a' + ((x >> 16) % 26));
        }
        return s;
    }
    std::string unit = g["unit"];
    std::string s;
    for (std::size_t i = 0, n = g["times"].get<std::size_t>(); i < n; ++i)
        s += unit;
    if (kind == "repeat_then")
        s += g["tail"].get<std::string>();
    return s;
}

/// FNV-1a 64 over each id as 4 little-endian bytes, as 16 hex digits.
inline std::string fnv_ids(const std::vector<TokenId>& ids) {
    std::uint64_t h = 0xcbf29ce484222325ULL;
    for (TokenId id : ids) {
        auto v = static_cast<std::uint32_t>(id);
        for (int k = 0; k < 4; ++k) {
            h ^= v & 0xff;
            h *= 0x100000001b3ULL;
            v >>= 8;
        }
    }
    char buf[17];
    std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
    return buf;
}

/// Number of positions where two id sequences differ (plus the length difference).
inline std::size_t mismatches(const std::vector<TokenId>& a, const std::vector<TokenId>& b) {
    std::size_t n = std::min(a.size(), b.size()), d = std::max(a.size(), b.size()) - n;
    for (std::size_t i = 0; i < n; ++i)
        d += a[i] != b[i];
    return d;
}

/// The fixtures: name -> vocabulary path under shared/data/tokenizers.
inline const std::vector<std::string>& fixture_names() {
    static const std::vector<std::string> names = {
        "r50k_base",      "cl100k_base",   "o200k_base", "gpt2_folder",
        "gpt2_tokenizer_json", "hf_cl100k_base", "hf_o200k_base", "hf_mistral",
        "albert_sentencepiece"};
    return names;
}

} // namespace forge::test
