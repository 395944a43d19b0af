// Model opening for the inference commands.
#include "infer_cli.h"

#include <filesystem>

#include <forge/core/error.h>
#include <forge/formats/gguf.h>
#include <forge/formats/gguf_model.h>
#include <forge/models/loader.h>
#include <forge/models/transformer.h>

namespace forge::cli {

std::unique_ptr<infer::QuantLM> load_engine(const std::string& path, infer::EngineOptions opts) {
    return infer::QuantLM::from_gguf(path, opts);
}

EngineAndTokenizer open_engine(const std::string& path, quant::GgmlType type,
                               infer::EngineOptions opts) {
    if (std::filesystem::is_directory(path)) {
        LoadedModel m = load_model_dir(path);
        auto lm = infer::QuantLM::from_transformer(*m.model, type, opts);
        return {std::move(lm), std::move(*m.tokenizer)};
    }
    auto lm = infer::QuantLM::from_gguf(path, opts);
    std::optional<Tokenizer> tok = formats::gguf_tokenizer(formats::GgufFile::open(path));
    if (!tok) throw NotFound(path + " has no tokenizer (no tokenizer.ggml.* metadata)");
    return {std::move(lm), std::move(*tok)};
}

ModelConfig bench_shape(const std::string& name) {
    ModelConfig c;
    c.family = ModelFamily::llama;
    c.vocab_size = 32000;
    c.n_ctx = 2048;
    c.tie_embeddings = false;
    c.norm_eps = 1e-5f;
    if (name == "llama-120m") {
        c.n_layer = 12, c.n_embd = 768, c.n_head = 12, c.n_head_kv = 12, c.n_ff = 2048;
    } else if (name == "llama-320m") {
        c.n_layer = 20, c.n_embd = 1024, c.n_head = 16, c.n_head_kv = 16, c.n_ff = 2816;
    } else {
        return ModelConfig::preset(name);
    }
    return c;
}

} // namespace forge::cli
