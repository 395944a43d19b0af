// HF normalizers: NFC/NFD/NFKC/NFKD (utf8proc), Lowercase, Strip, StripAccents, Replace, Prepend,
// BertNormalizer, Precompiled (SentencePiece charsmap), Nmt, Sequence.
#pragma once

#include <memory>

#include <nlohmann/json_fwd.hpp>

#include "impl.h"

namespace forge::tok {

/// From a tokenizer.json "normalizer" object; throws InvalidArgument for unknown types.
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j, std::string_view origin);

/// utf8proc normal forms; `form` is "NFC", "NFD", "NFKC" or "NFKD".
std::string unicode_normalize(std::string_view s, std::string_view form);

} // namespace forge::tok
