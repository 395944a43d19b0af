// HF pre-tokenizers (Split, ByteLevel, Metaspace, Whitespace, WhitespaceSplit, BertPreTokenizer,
// Punctuation, Digits, CharDelimiterSplit, Sequence) and the plain regex split that tiktoken
// uses. Built from tokenizer.json by make_pre_tokenizer.
#pragma once

#include <memory>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "impl.h"
#include "regex.h"

namespace forge::tok {

enum class SplitBehavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

/// The pieces are the regex's matches (tiktoken: text between matches is dropped).
std::unique_ptr<PreTokenizer> make_regex_pieces(const std::string& pattern, std::string_view origin);

/// From a tokenizer.json "pre_tokenizer" object; throws InvalidArgument for unknown types.
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& j, std::string_view origin);

/// True if the pre-tokenizer (or one in its Sequence) is ByteLevel.
bool has_byte_level(const nlohmann::json& j);

/// The single regex a byte-level pre-tokenizer splits with: GPT-2's for ByteLevel(use_regex,
/// no prefix space), P for Sequence[Split(Regex P, Isolated), ByteLevel(no regex)]; else "".
std::string byte_level_split_pattern(const nlohmann::json& j);

/// GPT-2's regex, the one ByteLevel(use_regex=true) uses.
inline constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

} // namespace forge::tok
