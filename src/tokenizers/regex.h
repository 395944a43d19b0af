// PCRE2 (with JIT) behind a small interface, for pre-tokenizer patterns such as GPT-2's and
// cl100k's. Patterns are rewritten so `\s`/`\S` mean Unicode White_Space exactly as in Rust's
// regex (tiktoken) and Oniguruma (HF tokenizers) (PCRE2's own \s also matches U+180E), and `\w`
// means Oniguruma's L|M|N|Pc (PCRE2 10.42's leaves out marks).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace forge::tok {

/// Whose meaning of \w to follow: Oniguruma's (HF Split/Replace patterns) or Rust's regex
/// crate (HF's built-in Whitespace pre-tokenizer; tiktoken).
enum class RegexFlavor { onig, rust };

class Regex {
  public:
    /// Compiles `pattern` (UTF, UCP, JIT). `origin` names the file in error messages.
    /// Throws InvalidArgument when it does not compile.
    Regex(std::string pattern, std::string_view origin, RegexFlavor flavor = RegexFlavor::onig);
    Regex(const Regex&) = delete;
    Regex& operator=(const Regex&) = delete;
    ~Regex();

    const std::string& pattern() const { return pattern_; }

    /// The first match in subject[start..] (subject must be valid UTF-8, `start` on a character
    /// boundary): sets [b, e) and returns true, or returns false when there is none. Lookbehind
    /// and lookahead see the whole subject.
    bool find(std::string_view subject, std::size_t start, std::size_t& b, std::size_t& e) const;

    /// Calls f(begin, end) for each successive non-overlapping match; empty matches advance by
    /// one character.
    template <typename F> void for_each_match(std::string_view subject, F&& f) const {
        std::size_t pos = 0, b = 0, e = 0;
        while (pos <= subject.size() && find(subject, pos, b, e)) {
            if (e == b) { // empty match: skip a character
                if (b >= subject.size())
                    break;
                pos = b + 1;
                while (pos < subject.size() && (static_cast<unsigned char>(subject[pos]) & 0xC0) == 0x80)
                    ++pos;
                continue;
            }
            f(b, e);
            pos = e;
        }
    }

  private:
    std::string pattern_;
    void* code_ = nullptr; // pcre2_code_8*
    bool jit_ = false;
};

/// The pattern with \s, \S, \w, \W spelled as explicit sets (see above).
std::string rewrite_whitespace_classes(std::string_view pattern,
                                       RegexFlavor flavor = RegexFlavor::onig);

} // namespace forge::tok
