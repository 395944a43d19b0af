// PCRE2 wrapper (see regex.h). Match data and the JIT stack are per thread, so one compiled
// Regex serves any number of threads.
#include "regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <forge/core/error.h>

namespace forge::tok {

namespace {

// Unicode White_Space (the same in Rust's regex, Oniguruma and Unicode 15).
constexpr std::string_view kWhiteSpace =
    R"(\x{9}-\x{d}\x{20}\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000})";

struct ThreadMatchState {
    pcre2_match_data* md = nullptr;
    pcre2_match_context* mc = nullptr;
    pcre2_jit_stack* js = nullptr;
    ThreadMatchState() {
        md = pcre2_match_data_create(4, nullptr);
        mc = pcre2_match_context_create(nullptr);
        js = pcre2_jit_stack_create(64 * 1024, 16 * 1024 * 1024, nullptr);
        if (mc && js)
            pcre2_jit_stack_assign(mc, nullptr, js);
    }
    ~ThreadMatchState() {
        pcre2_match_data_free(md);
        pcre2_match_context_free(mc);
        pcre2_jit_stack_free(js);
    }
};

ThreadMatchState& thread_state() {
    thread_local ThreadMatchState st;
    return st;
}

} // namespace

std::string rewrite_whitespace_classes(std::string_view p, RegexFlavor flavor) {
    std::string out;
    out.reserve(p.size() + 64);
    bool in_class = false;
    for (std::size_t i = 0; i < p.size(); ++i) {
        char c = p[i];
        if (c == '\\' && i + 1 < p.size()) {
            char n = p[i + 1];
            if (n == 's') {
                if (in_class)
                    out += kWhiteSpace;
                else
                    out += "[" + std::string(kWhiteSpace) + "]";
                ++i;
                continue;
            }
            if (n == 'w' || n == 'W') {
                // Oniguruma's Unicode \w: Letter | Mark | Number | Connector_Punctuation.
                // Rust's: Alphabetic | Mark | Decimal_Number | Connector_Punctuation |
                // Join_Control. PCRE2 10.42's own \w leaves out marks.
                std::string_view kWord = flavor == RegexFlavor::onig
                                             ? R"(\p{L}\p{M}\p{N}\p{Pc})"
                                             : R"(\p{Alpha}\p{M}\p{Nd}\p{Pc}\x{200c}\x{200d})";
                if (in_class && n == 'w')
                    out += kWord;
                else if (in_class) // [\W...]: no plain spelling inside a class; keep PCRE2's
                    out += "\\W";
                else
                    out += (n == 'w' ? "[" : "[^") + std::string(kWord) + "]";
                ++i;
                continue;
            }
            if (n == 'S') {
                if (in_class) // [\S...] has no plain spelling; keep PCRE2's (differs only at U+180E)
                    out += "\\S";
                else
                    out += "[^" + std::string(kWhiteSpace) + "]";
                ++i;
                continue;
            }
            out += c;
            out += n;
            ++i;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            out += c;
            // A ']' right after '[' or '[^' is a literal.
            if (i + 1 < p.size() && p[i + 1] == '^') {
                out += '^';
                ++i;
            }
            if (i + 1 < p.size() && p[i + 1] == ']') {
                out += ']';
                ++i;
            }
            continue;
        }
        if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {
            // POSIX class [:alpha:]: copy through its closing ":]".
            auto close = p.find(":]", i + 2);
            if (close != std::string_view::npos) {
                out.append(p.substr(i, close + 2 - i));
                i = close + 1;
                continue;
            }
        }
        if (in_class && c == ']')
            in_class = false;
        out += c;
    }
    return out;
}

Regex::Regex(std::string pattern, std::string_view origin, RegexFlavor flavor)
    : pattern_(std::move(pattern)) {
    std::string rewritten = rewrite_whitespace_classes(pattern_, flavor);
    int err = 0;
    PCRE2_SIZE erroff = 0;
    auto* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(rewritten.data()), rewritten.size(),
                               PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &erroff, nullptr);
    if (!code) {
        PCRE2_UCHAR buf[256];
        pcre2_get_error_message(err, buf, sizeof(buf));
        throw InvalidArgument(detail::str_cat("[tokenizer] ", origin, ": regex '", pattern_,
                                              "' does not compile at offset ", erroff, ": ",
                                              reinterpret_cast<const char*>(buf)));
    }
    code_ = code;
    jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

bool Regex::find(std::string_view subject, std::size_t start, std::size_t& b,
                 std::size_t& e) const {
    auto& st = thread_state();
    auto* code = static_cast<pcre2_code*>(code_);
    auto* s = reinterpret_cast<PCRE2_SPTR>(subject.data());
    int rc = jit_ ? pcre2_jit_match(code, s, subject.size(), start, 0, st.md, st.mc)
                  : pcre2_match(code, s, subject.size(), start, PCRE2_NO_UTF_CHECK, st.md, st.mc);
    if (rc == PCRE2_ERROR_NOMATCH)
        return false;
    if (rc < 0) {
        PCRE2_UCHAR buf[256];
        pcre2_get_error_message(rc, buf, sizeof(buf));
        throw InvalidArgument(detail::str_cat("[tokenizer] regex '", pattern_,
                                              "' failed to match: ",
                                              reinterpret_cast<const char*>(buf)));
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.md);
    b = ov[0];
    e = ov[1];
    return true;
}

} // namespace forge::tok
