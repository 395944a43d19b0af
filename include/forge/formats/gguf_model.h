// A Transformer and its tokenizer <-> a GGUF file with llama.cpp's names: the `llama` and `gpt2`
// architectures' keys and tensors, and the tokenizer.ggml.* vocabulary (byte-level BPE as model
// "gpt2", SentencePiece as model "llama"). Reading dequantizes every tensor to f32 for Forge's
// Transformer; the quantized-weight engine (include/forge/infer) reads GgufFile directly.
// docs/formats.md has the full mapping and the type fallback rules.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include <forge/formats/gguf.h>
#include <forge/models/config.h>
#include <forge/models/loader.h>
#include <forge/quant/ggml_types.h>
#include <forge/tokenizers/tokenizer.h>

namespace forge {
class Transformer;
}

namespace forge::formats {

/// Loads a .gguf model: the config from its metadata, every weight dequantized to f32 and
/// un-permuted/transposed into Forge's (HF) layout, and its tokenizer when it has one.
/// Throws NotFound, or InvalidArgument naming the file and the key or tensor at fault.
LoadedModel load_gguf_model(const std::filesystem::path& path);
/// The same over a parsed file (tests, fuzzing).
LoadedModel gguf_to_model(const GgufFile& file);
/// The ModelConfig its metadata describes (validated).
ModelConfig gguf_config(const GgufFile& file);
/// The tokenizer its tokenizer.ggml.* metadata describes; nullopt when it has none.
std::optional<Tokenizer> gguf_tokenizer(const GgufFile& file);
/// The same vocabulary as a file a model folder holds: "tokenizer.json" (byte-level BPE, an HF
/// tokenizer.json) or "tokenizer.model" (a SentencePiece ModelProto); nullopt when it has none.
struct GgufTokenizerFile {
    std::string name;
    std::string bytes;
};
std::optional<GgufTokenizerFile> gguf_tokenizer_file(const GgufFile& file);

/// Writes `model` (and the vocabulary of `tok`, if given) as a GGUF v3 file llama.cpp loads.
/// 2-D weights are stored as `type` (see gguf_tensor_type for the fallback rule); norms,
/// biases and other 1-D tensors stay F32. `name` becomes general.name.
void save_gguf(const Transformer& model, const Tokenizer* tok, const std::filesystem::path& path,
               quant::GgmlType type, const std::string& name = "forge");
/// The writer save_gguf fills (tests, fuzz seeds).
GgufWriter gguf_writer(const Transformer& model, const Tokenizer* tok, quant::GgmlType type,
                       const std::string& name = "forge");

/// Rewrites `in` with every 2-D weight re-quantized to `type` (through f32; the rule of
/// gguf_tensor_type applies), keeping all metadata except general.file_type, which is updated.
void requantize_gguf(const std::filesystem::path& in, const std::filesystem::path& out,
                     quant::GgmlType type);

/// The type the GGUF tensor `name` of `n_dims` dimensions with rows of `ne0` values is stored as
/// when `requested` is asked for, by llama.cpp's rules (convert_hf_to_gguf.py, llama-quantize):
/// 1-D tensors and GPT-2's position table (position_embd.weight) are F32; a row length that is
/// not a multiple of the block size falls back to Q8_0 for Q4_K (if it is a multiple of 32),
/// else to F16.
quant::GgmlType gguf_tensor_type(std::string_view name, int64_t ne0, size_t n_dims,
                                 quant::GgmlType requested);
/// llama.cpp's general.file_type (llama_ftype) for a file whose weights are `type`.
uint32_t gguf_file_type(quant::GgmlType type);

} // namespace forge::formats
