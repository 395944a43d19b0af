// UTF-8 helpers and GPT-2's byte-level alphabet (see unicode.h).
#include "unicode.h"

#include <array>

#include <utf8proc.h>

namespace forge::tok {

std::size_t utf8_char_len(std::string_view s, std::size_t i) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
    std::size_t left = s.size() - i;
    unsigned char c = p[0];
    if (c < 0x80)
        return 1;
    if (c < 0xC2)
        return 0;
    if (c < 0xE0) {
        if (left < 2 || (p[1] & 0xC0) != 0x80)
            return 0;
        return 2;
    }
    if (c < 0xF0) {
        if (left < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80)
            return 0;
        if (c == 0xE0 && p[1] < 0xA0) // overlong
            return 0;
        if (c == 0xED && p[1] >= 0xA0) // surrogate
            return 0;
        return 3;
    }
    if (c < 0xF5) {
        if (left < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
            return 0;
        if (c == 0xF0 && p[1] < 0x90) // overlong
            return 0;
        if (c == 0xF4 && p[1] >= 0x90) // > U+10FFFF
            return 0;
        return 4;
    }
    return 0;
}

std::size_t utf8_valid_prefix(std::string_view s) {
    std::size_t i = 0, n = s.size();
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    while (i < n) {
        // ASCII fast path, 8 bytes at a time.
        while (i + 8 <= n) {
            std::uint64_t w;
            __builtin_memcpy(&w, p + i, 8);
            if (w & 0x8080808080808080ULL)
                break;
            i += 8;
        }
        if (i >= n)
            break;
        if (p[i] < 0x80) {
            ++i;
            continue;
        }
        std::size_t len = utf8_char_len(s, i);
        if (len == 0)
            return i;
        i += len;
    }
    return n;
}

std::string utf8_replace_invalid(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    std::size_t i = 0;
    while (i < s.size()) {
        std::size_t valid = utf8_valid_prefix(s.substr(i));
        out.append(s.substr(i, valid));
        i += valid;
        if (i < s.size()) {
            out.append("\xEF\xBF\xBD");
            ++i;
        }
    }
    return out;
}

char32_t utf8_next(std::string_view s, std::size_t& i) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
    unsigned char c = p[0];
    if (c < 0x80) {
        i += 1;
        return c;
    }
    if (c < 0xE0) {
        i += 2;
        return (char32_t(c & 0x1F) << 6) | (p[1] & 0x3F);
    }
    if (c < 0xF0) {
        i += 3;
        return (char32_t(c & 0x0F) << 12) | (char32_t(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    }
    i += 4;
    return (char32_t(c & 0x07) << 18) | (char32_t(p[1] & 0x3F) << 12) |
           (char32_t(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}

void utf8_append(std::string& out, char32_t cp) {
    if (cp < 0x80) {
        out.push_back(char(cp));
    } else if (cp < 0x800) {
        out.push_back(char(0xC0 | (cp >> 6)));
        out.push_back(char(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out.push_back(char(0xE0 | (cp >> 12)));
        out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(char(0x80 | (cp & 0x3F)));
    } else {
        out.push_back(char(0xF0 | (cp >> 18)));
        out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(char(0x80 | (cp & 0x3F)));
    }
}

std::size_t utf8_incomplete_tail(std::string_view s) {
    // Look back at most 3 bytes for a lead byte whose character runs past the end and whose
    // present bytes are a valid start of a character.
    std::size_t n = s.size();
    for (std::size_t back = 1; back <= 3 && back <= n; ++back) {
        auto c = static_cast<unsigned char>(s[n - back]);
        if ((c & 0xC0) == 0x80)
            continue; // continuation byte: keep looking for the lead
        std::size_t need = c >= 0xF5 ? 0 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
        if (need <= back)
            return 0;
        if (back >= 2) {
            auto c1 = static_cast<unsigned char>(s[n - back + 1]);
            unsigned char lo = 0x80, hi = 0xBF;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
            if (c1 < lo || c1 > hi)
                return 0;
        }
        return back;
    }
    return 0;
}

namespace {
struct ByteLevelTables {
    std::array<char32_t, 256> to_cp{};
    std::array<int, 324> to_byte{};
    ByteLevelTables() {
        to_byte.fill(-1);
        int n = 0;
        for (int b = 0; b < 256; ++b) {
            bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
            char32_t cp = printable ? char32_t(b) : char32_t(256 + n++);
            to_cp[b] = cp;
            to_byte[cp] = b;
        }
    }
};
const ByteLevelTables& tables() {
    static const ByteLevelTables t;
    return t;
}
} // namespace

char32_t byte_to_unicode(std::uint8_t b) { return tables().to_cp[b]; }

int unicode_to_byte(char32_t cp) { return cp < 324 ? tables().to_byte[cp] : -1; }

bool byte_level_to_bytes(std::string_view s, std::string& out) {
    std::size_t i = 0;
    while (i < s.size()) {
        if (utf8_char_len(s, i) == 0)
            return false;
        int b = unicode_to_byte(utf8_next(s, i));
        if (b < 0)
            return false;
        out.push_back(char(b));
    }
    return true;
}

std::string bytes_to_byte_level(std::string_view bytes) {
    std::string out;
    out.reserve(bytes.size() * 2);
    for (unsigned char b : bytes)
        utf8_append(out, byte_to_unicode(b));
    return out;
}

bool is_whitespace(char32_t cp) {
    switch (cp) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0x85: case 0xA0:
    case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
        return true;
    default:
        return cp >= 0x2000 && cp <= 0x200A;
    }
}

bool is_punctuation(char32_t cp) {
    if ((cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) ||
        (cp >= 123 && cp <= 126))
        return true;
    auto cat = utf8proc_category(utf8proc_int32_t(cp));
    return cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO;
}

bool is_control(char32_t cp) {
    if (cp == '\t' || cp == '\n' || cp == '\r')
        return false;
    auto cat = utf8proc_category(utf8proc_int32_t(cp));
    return cat == UTF8PROC_CATEGORY_CC || cat == UTF8PROC_CATEGORY_CF;
}

bool is_combining_mark(char32_t cp) {
    return utf8proc_category(utf8proc_int32_t(cp)) == UTF8PROC_CATEGORY_MN;
}

bool is_cjk(char32_t cp) {
    return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
           (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
           (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
           (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

bool is_alphanumeric(char32_t cp) {
    auto cat = utf8proc_category(utf8proc_int32_t(cp));
    return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
           (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

bool is_digit(char32_t cp) { return utf8proc_category(utf8proc_int32_t(cp)) == UTF8PROC_CATEGORY_ND; }

} // namespace forge::tok
