// HF normalizers (see normalizers.h). They work on whole strings; offsets are not tracked.
#include "normalizers.h"

#include <cstdlib>

#include <nlohmann/json.hpp>
#include <utf8proc.h>

#include "json_util.h"
#include "regex.h"
#include "unicode.h"

namespace forge::tok {

std::string unicode_normalize(std::string_view s, std::string_view form) {
    int opts = UTF8PROC_STABLE;
    if (form == "NFC")
        opts |= UTF8PROC_COMPOSE;
    else if (form == "NFD")
        opts |= UTF8PROC_DECOMPOSE;
    else if (form == "NFKC")
        opts |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
    else if (form == "NFKD")
        opts |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
    utf8proc_uint8_t* out = nullptr;
    auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                          utf8proc_ssize_t(s.size()), &out, utf8proc_option_t(opts));
    if (n < 0)
        throw InvalidArgument(detail::str_cat("[tokenizer] ", form, " normalization failed: ",
                                              utf8proc_errmsg(n)));
    std::string r(reinterpret_cast<char*>(out), std::size_t(n));
    std::free(out);
    return r;
}

namespace {

std::string lowercase(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    std::size_t i = 0;
    while (i < s.size()) {
        char32_t cp = utf8_next(s, i);
        if (cp < 0x80) {
            out.push_back(char(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp));
        } else if (cp == 0x130) { // İ lowercases to i + combining dot (Rust's to_lowercase)
            out += "i\xCC\x87";
        } else {
            utf8_append(out, char32_t(utf8proc_tolower(utf8proc_int32_t(cp))));
        }
    }
    return out;
}

class FormNorm : public Normalizer {
  public:
    explicit FormNorm(std::string form) : form_(std::move(form)) {}
    std::string normalize(std::string_view s) const override { return unicode_normalize(s, form_); }

  private:
    std::string form_;
};

class LowercaseNorm : public Normalizer {
  public:
    std::string normalize(std::string_view s) const override { return lowercase(s); }
};

class StripNorm : public Normalizer {
  public:
    StripNorm(bool left, bool right) : left_(left), right_(right) {}
    std::string normalize(std::string_view s) const override {
        std::size_t b = 0, e = s.size();
        if (left_) {
            while (b < e) {
                std::size_t i = b;
                if (!is_whitespace(utf8_next(s, i)))
                    break;
                b = i;
            }
        }
        if (right_) {
            while (e > b) {
                std::size_t k = e - 1;
                while (k > b && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80)
                    --k;
                std::size_t i = k;
                if (!is_whitespace(utf8_next(s, i)))
                    break;
                e = k;
            }
        }
        return std::string(s.substr(b, e - b));
    }

  private:
    bool left_, right_;
};

class StripAccentsNorm : public Normalizer {
  public:
    std::string normalize(std::string_view s) const override {
        std::string out;
        out.reserve(s.size());
        std::size_t i = 0;
        while (i < s.size()) {
            std::size_t b = i;
            char32_t cp = utf8_next(s, i);
            if (!is_combining_mark(cp))
                out.append(s.substr(b, i - b));
        }
        return out;
    }
};

class ReplaceNorm : public Normalizer {
  public:
    ReplaceNorm(std::string pattern, bool is_regex, std::string content, std::string_view origin)
        : literal_(is_regex ? "" : pattern), content_(std::move(content)) {
        if (is_regex)
            re_ = std::make_unique<Regex>(pattern, origin);
    }
    std::string normalize(std::string_view s) const override {
        std::string out;
        out.reserve(s.size());
        std::size_t last = 0;
        auto on = [&](std::size_t b, std::size_t e) {
            out.append(s.substr(last, b - last));
            out += content_;
            last = e;
        };
        if (re_) {
            re_->for_each_match(s, on);
        } else if (!literal_.empty()) {
            std::size_t pos = 0;
            while ((pos = s.find(literal_, pos)) != std::string_view::npos) {
                on(pos, pos + literal_.size());
                pos += literal_.size();
            }
        }
        out.append(s.substr(last));
        return out;
    }

  private:
    std::unique_ptr<Regex> re_;
    std::string literal_, content_;
};

class PrependNorm : public Normalizer {
  public:
    explicit PrependNorm(std::string p) : p_(std::move(p)) {}
    std::string normalize(std::string_view s) const override {
        if (s.empty())
            return {};
        return p_ + std::string(s);
    }

  private:
    std::string p_;
};

class BertNorm : public Normalizer {
  public:
    BertNorm(bool clean, bool chinese, bool strip_accents, bool lower)
        : clean_(clean), chinese_(chinese), strip_(strip_accents), lower_(lower) {}
    std::string normalize(std::string_view s) const override {
        std::string out;
        out.reserve(s.size() + 8);
        std::size_t i = 0;
        while (i < s.size()) {
            std::size_t b = i;
            char32_t cp = utf8_next(s, i);
            if (clean_) {
                if (cp == 0 || cp == 0xFFFD || is_control(cp))
                    continue;
                if (is_whitespace(cp)) {
                    out.push_back(' ');
                    continue;
                }
            }
            if (chinese_ && is_cjk(cp)) {
                out.push_back(' ');
                out.append(s.substr(b, i - b));
                out.push_back(' ');
                continue;
            }
            out.append(s.substr(b, i - b));
        }
        if (strip_) {
            out = unicode_normalize(out, "NFD");
            out = StripAccentsNorm().normalize(out);
        }
        if (lower_)
            out = lowercase(out);
        return out;
    }

  private:
    bool clean_, chinese_, strip_, lower_;
};

// SentencePiece's nmt_nfkc pre-step: drop some control characters, map others to a space.
class NmtNorm : public Normalizer {
  public:
    std::string normalize(std::string_view s) const override {
        std::string out;
        out.reserve(s.size());
        std::size_t i = 0;
        while (i < s.size()) {
            std::size_t b = i;
            char32_t cp = utf8_next(s, i);
            if ((cp >= 0x1 && cp <= 0x8) || cp == 0xB || (cp >= 0xE && cp <= 0x1F) || cp == 0x7F ||
                cp == 0x8F || cp == 0x9F)
                continue;
            if (cp == 0x9 || cp == 0xA || cp == 0xC || cp == 0xD || cp == 0x1680 ||
                (cp >= 0x200B && cp <= 0x200F) || cp == 0x2028 || cp == 0x2029 || cp == 0x2581 ||
                cp == 0xFEFF || cp == 0xFFFD) {
                out.push_back(' ');
                continue;
            }
            out.append(s.substr(b, i - b));
        }
        return out;
    }
};

// SentencePiece's precompiled charsmap: a Darts double-array trie over UTF-8 bytes whose values
// index NUL-terminated replacement strings. Longest match wins; unmatched characters pass.
class PrecompiledNorm : public Normalizer {
  public:
    PrecompiledNorm(std::string blob, std::string_view origin) : blob_(std::move(blob)) {
        if (blob_.size() < 4)
            json_fail(origin, "normalizer", "Precompiled.precompiled_charsmap is too short");
        std::uint32_t trie_bytes;
        std::memcpy(&trie_bytes, blob_.data(), 4);
        if (trie_bytes % 4 != 0 || 4 + std::size_t(trie_bytes) > blob_.size())
            json_fail(origin, "normalizer", "Precompiled.precompiled_charsmap is malformed");
        units_.resize(trie_bytes / 4);
        std::memcpy(units_.data(), blob_.data() + 4, trie_bytes);
        normalized_ = blob_.substr(4 + trie_bytes);
    }
    std::string normalize(std::string_view s) const override {
        std::string out;
        out.reserve(s.size());
        std::size_t i = 0;
        while (i < s.size()) {
            std::size_t match_len = 0;
            std::uint32_t value = 0;
            longest_prefix(s.substr(i), match_len, value);
            if (match_len > 0 && value < normalized_.size()) {
                out.append(normalized_.c_str() + value);
                i += match_len;
                continue;
            }
            std::size_t len = utf8_char_len(s, i);
            if (len == 0)
                len = 1;
            out.append(s.substr(i, len));
            i += len;
        }
        return out;
    }

  private:
    // Darts-clone unit layout: bits of each 32-bit unit hold has_leaf, value, label, offset.
    static bool has_leaf(std::uint32_t u) { return (u >> 8) & 1; }
    static std::uint32_t value_of(std::uint32_t u) { return u & ((1u << 31) - 1); }
    static std::uint32_t label_of(std::uint32_t u) { return u & ((1u << 31) | 0xFF); }
    static std::uint32_t offset_of(std::uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); }
    void longest_prefix(std::string_view key, std::size_t& len, std::uint32_t& value) const {
        if (units_.empty())
            return;
        std::size_t node = 0;
        std::uint32_t unit = units_[0];
        node ^= offset_of(unit);
        for (std::size_t i = 0; i < key.size(); ++i) {
            auto c = static_cast<unsigned char>(key[i]);
            if (c == 0)
                break;
            node ^= c;
            if (node >= units_.size())
                return;
            unit = units_[node];
            if (label_of(unit) != c)
                return;
            node ^= offset_of(unit);
            if (has_leaf(unit)) {
                if (node >= units_.size())
                    return;
                len = i + 1;
                value = value_of(units_[node]);
            }
        }
    }
    std::string blob_;
    std::vector<std::uint32_t> units_;
    std::string normalized_;
};

class SequenceNorm : public Normalizer {
  public:
    explicit SequenceNorm(std::vector<std::unique_ptr<Normalizer>> steps) : steps_(std::move(steps)) {}
    std::string normalize(std::string_view s) const override {
        std::string cur(s);
        for (const auto& n : steps_)
            cur = n->normalize(cur);
        return cur;
    }

  private:
    std::vector<std::unique_ptr<Normalizer>> steps_;
};

std::string base64_decode(std::string_view in, std::string_view origin) {
    static const auto table = [] {
        std::array<int, 256> t{};
        t.fill(-1);
        const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for (int i = 0; i < 64; ++i)
            t[static_cast<unsigned char>(a[i])] = i;
        return t;
    }();
    std::string out;
    int val = 0, bits = -8;
    for (unsigned char c : in) {
        if (c == '=')
            break;
        if (table[c] < 0)
            json_fail(origin, "normalizer", "precompiled_charsmap is not valid base64");
        val = (val << 6) + table[c];
        bits += 6;
        if (bits >= 0) {
            out.push_back(char((val >> bits) & 0xFF));
            bits -= 8;
        }
    }
    return out;
}

} // namespace

std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j, std::string_view origin) {
    const std::string where = "normalizer";
    std::string type = json_type(j, origin, where);
    if (type == "Sequence") {
        const auto& arr = json_at(j, "normalizers", origin, where);
        if (!arr.is_array())
            json_fail(origin, where, "Sequence.normalizers must be an array");
        std::vector<std::unique_ptr<Normalizer>> steps;
        for (const auto& s : arr)
            steps.push_back(make_normalizer(s, origin));
        return std::make_unique<SequenceNorm>(std::move(steps));
    }
    if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD")
        return std::make_unique<FormNorm>(type);
    if (type == "Lowercase")
        return std::make_unique<LowercaseNorm>();
    if (type == "Strip")
        return std::make_unique<StripNorm>(json_bool_or(j, "strip_left", true, origin, where),
                                           json_bool_or(j, "strip_right", true, origin, where));
    if (type == "StripAccents")
        return std::make_unique<StripAccentsNorm>();
    if (type == "Replace") {
        bool is_regex = false;
        std::string pat = json_pattern(json_at(j, "pattern", origin, where), origin, where, is_regex);
        return std::make_unique<ReplaceNorm>(pat, is_regex, json_string(j, "content", origin, where), origin);
    }
    if (type == "Prepend")
        return std::make_unique<PrependNorm>(json_string(j, "prepend", origin, where));
    if (type == "BertNormalizer") {
        bool lower = json_bool_or(j, "lowercase", true, origin, where);
        bool strip = json_bool_or(j, "strip_accents", lower, origin, where);
        return std::make_unique<BertNorm>(json_bool_or(j, "clean_text", true, origin, where),
                                          json_bool_or(j, "handle_chinese_chars", true, origin, where),
                                          strip, lower);
    }
    if (type == "Nmt")
        return std::make_unique<NmtNorm>();
    if (type == "Precompiled") {
        std::string b64 = json_string(j, "precompiled_charsmap", origin, where);
        return std::make_unique<PrecompiledNorm>(base64_decode(b64, origin), origin);
    }
    json_fail(origin, where, "unsupported normalizer type \"" + type + "\"");
}

} // namespace forge::tok
