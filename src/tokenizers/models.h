// WordPiece (BERT) and Unigram (T5, ALBERT-style tokenizer.json) models; BPE is in bpe.h.
#pragma once

#include <memory>

#include <nlohmann/json_fwd.hpp>

#include "impl.h"

namespace forge::tok {

std::unique_ptr<Model> make_wordpiece(const nlohmann::json& model, std::string_view origin);
std::unique_ptr<Model> make_unigram(const nlohmann::json& model, std::string_view origin);

} // namespace forge::tok
