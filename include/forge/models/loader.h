// Loading a saved model folder for inference: config.json (HF style), model.safetensors (HF
// tensor names; sharded model-0000N-of-0000M.safetensors with an index also read) and the
// tokenizer file, as `forge train` writes them and HF hub folders hold them. Not training state
// (optimizer, data cursor): train/trainer.h resumes those.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>

#include <forge/models/config.h>
#include <forge/tokenizers/tokenizer.h>

namespace forge {

class Transformer;

struct LoadModelOptions {
    /// Throw NotFound when the folder has no tokenizer file (else `tokenizer` is left empty).
    bool require_tokenizer = true;
};

struct LoadedModel {
    ModelConfig config;
    std::shared_ptr<Transformer> model; ///< weights loaded, in eval mode
    std::optional<Tokenizer> tokenizer;
    std::filesystem::path dir;
    std::filesystem::path tokenizer_file; ///< the file the tokenizer came from
};

/// Loads `dir`, or a `.gguf` file (formats/gguf_model.h: llama.cpp's names, weights
/// dequantized to f32). Throws NotFound naming the missing folder or file, InvalidArgument naming the
/// file and what is wrong in it (bad JSON, a tensor missing, unexpected or of the wrong shape,
/// a tokenizer larger than the model's vocabulary). Tensor names may also be HF's base-model
/// ones (GPT-2's without "transformer."); HF's non-persistent buffers (attn.bias,
/// rotary_emb.inv_freq) and a tied model's lm_head.weight are ignored.
LoadedModel load_model_dir(const std::filesystem::path& dir, const LoadModelOptions& opts = {});

/// The tokenizer file of a model folder: tokenizer.json, else a single *.tiktoken, else
/// tokenizer.model (SentencePiece), else a GPT-2 vocab (the folder itself, holding
/// encoder.json + vocab.bpe). None if there is none.
std::optional<std::filesystem::path> find_tokenizer_file(const std::filesystem::path& dir);

} // namespace forge
