// UTF-8 helpers for the tokenizers: validation, code point iteration, GPT-2's byte <-> unicode
// alphabet, and the small Unicode queries (categories, case) the normalizers need via utf8proc.
// Not a general Unicode library.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace forge::tok {

/// Length of the valid UTF-8 character starting at s[i], or 0 if the bytes there are not a
/// complete, valid character (overlong forms, surrogates and > U+10FFFF are invalid).
std::size_t utf8_char_len(std::string_view s, std::size_t i);

/// Length of the longest prefix of s that is valid UTF-8.
std::size_t utf8_valid_prefix(std::string_view s);

/// True when s is entirely valid UTF-8.
inline bool utf8_valid(std::string_view s) { return utf8_valid_prefix(s) == s.size(); }

/// s with every byte that is not part of a valid character replaced by U+FFFD.
std::string utf8_replace_invalid(std::string_view s);

/// Decodes the valid character at s[i] (caller checked it), advancing i.
char32_t utf8_next(std::string_view s, std::size_t& i);

/// Appends the UTF-8 encoding of cp.
void utf8_append(std::string& out, char32_t cp);

/// For streaming: how many bytes at the end of s are the start of a character that is still
/// incomplete (0..3). Bytes before that are complete characters or invalid bytes.
std::size_t utf8_incomplete_tail(std::string_view s);

/// GPT-2's reversible byte -> printable code point map (bytes_to_unicode in encoder.py).
char32_t byte_to_unicode(std::uint8_t b);
/// The inverse: code point -> byte, or -1 when cp is not in the alphabet.
int unicode_to_byte(char32_t cp);
/// Maps a byte-level token string (e.g. "Ġthe") to raw bytes; false if a character is outside
/// the alphabet.
bool byte_level_to_bytes(std::string_view s, std::string& out);
/// Raw bytes -> GPT-2 alphabet string.
std::string bytes_to_byte_level(std::string_view bytes);

/// utf8proc-backed queries.
bool is_whitespace(char32_t cp);   // Unicode White_Space
bool is_punctuation(char32_t cp);  // P* categories and ASCII symbols (BERT's rule)
bool is_control(char32_t cp);      // Cc/Cf except \t \n \r (BERT's rule)
bool is_combining_mark(char32_t cp); // Mn
bool is_cjk(char32_t cp);          // BERT's CJK ranges
bool is_alphanumeric(char32_t cp); // L* or N*
bool is_digit(char32_t cp);        // Nd

} // namespace forge::tok
