// Shared by `forge bench`, `forge eval` and `forge generate`: opening a model for the inference
// engine, and the benchmark shapes.
#pragma once

#include <memory>
#include <string>

#include <forge/infer/quant_lm.h>
#include <forge/models/config.h>
#include <forge/tokenizers/tokenizer.h>

namespace forge::cli {

/// The inference engine over a GGUF file.
std::unique_ptr<infer::QuantLM> load_engine(const std::string& path, infer::EngineOptions opts);

struct EngineAndTokenizer {
    std::unique_ptr<infer::QuantLM> lm;
    Tokenizer tokenizer;
};
/// A GGUF file (its own weight types; `type` ignored) or a Forge model folder (weights converted
/// to `type`), with its tokenizer. Throws NotFound when the model has no tokenizer.
EngineAndTokenizer open_engine(const std::string& path, quant::GgmlType type,
                               infer::EngineOptions opts);

/// Llama shapes of about 120M and 320M parameters (vocab 32000, untied head), or any preset.
ModelConfig bench_shape(const std::string& name);

} // namespace forge::cli
