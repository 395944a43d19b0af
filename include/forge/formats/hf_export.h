// Export to a Hugging Face transformers model folder: config.json in transformers' schema for
// GPT2LMHeadModel / LlamaForCausalLM, weights under HF's tensor names in safetensors (one file
// or shards with model.safetensors.index.json) at f32, f16 or bf16, and the tokenizer files.
// `AutoModelForCausalLM.from_pretrained(dir)` loads the result; tools/golden/hf_load_check.py
// checks it. Reading such folders back is load_model_dir (models/loader.h).
#pragma once

#include <cstdint>
#include <filesystem>

#include <forge/core/dtype.h>

namespace forge {
class Transformer;
class Tokenizer;
} // namespace forge

namespace forge::formats {

struct HfExportOptions {
    /// Weight dtype: f32, f16 or bf16 (config.json's torch_dtype says which).
    DType dtype = DType::f32;
    /// Shard size limit in tensor bytes (HF's default "5GB").
    uint64_t max_shard_bytes = 5'000'000'000ull;
    /// The file the tokenizer was loaded from (LoadedModel::tokenizer_file, a checkpoint's
    /// tokenizer.json): a `tokenizer.json` is copied as is, a SentencePiece `tokenizer.model`
    /// as tokenizer.model, a GPT-2 folder (encoder.json + vocab.bpe) as vocab.json +
    /// merges.txt. Needed when a tokenizer is given: Forge's Tokenizer keeps no serialisable
    /// copy of its definition.
    std::filesystem::path tokenizer_file;
};

/// Writes `model` to folder `dir` (created if needed): config.json, model.safetensors (or
/// shards + index), and with a tokenizer its files plus tokenizer_config.json, with
/// bos/eos ids in config.json and generation_config.json. Throws InvalidArgument for a dtype
/// other than f32/f16/bf16, a tokenizer without tokenizer_file, a tokenizer file of a kind HF
/// cannot load (.tiktoken) or one that does not match `tokenizer` (vocabulary size) or is
/// larger than the model's vocabulary; NotFound when tokenizer_file does not exist.
void export_hf(const Transformer& model, const Tokenizer* tokenizer,
               const std::filesystem::path& dir, const HfExportOptions& opts = {});

} // namespace forge::formats
