// Shared between gguf_meta.cpp (keys, tokenizer) and gguf_model.cpp (tensors); internal.
#pragma once

#include <string>
#include <vector>

#include <forge/formats/gguf.h>
#include <forge/tokenizers/tokenizer.h>

namespace forge::formats::gguf_detail {

/// Writes tok's vocabulary as tokenizer.ggml.* for a model of n_vocab ids.
void put_tokenizer(GgufWriter& w, const Tokenizer& tok, int64_t n_vocab);
/// A tensor's values as f32 rows (ggml order: ne[0] values a row).
std::vector<float> dequantize(const GgufTensorInfo& t);
/// Rows of ne0 f32 values -> `type` blocks.
std::vector<uint8_t> quantize(const std::vector<float>& x, int64_t ne0, quant::GgmlType type);
/// Throws unless Forge writes `type` (F32, F16, BF16, Q8_0, Q4_0, Q4_K).
void check_writable(quant::GgmlType type);
/// general.architecture, checked to be llama or gpt2.
std::string arch_of(const GgufFile& f);

} // namespace forge::formats::gguf_detail
