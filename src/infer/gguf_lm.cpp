// QuantLM over a GGUF file: the model config from llama.cpp's metadata keys, the tensors in
// place in the file's mapping (the file stays mapped while the engine lives).
#include <forge/infer/quant_lm.h>

#include <forge/core/error.h>
#include <forge/formats/gguf.h>

namespace forge::infer {

namespace {

int64_t get_int(const formats::GgufFile& f, const std::string& key, std::optional<int64_t> def = {}) {
    if (const formats::GgufValue* v = f.find(key)) return v->as_int();
    FORGE_CHECK(def.has_value(), "[infer] ", f.origin(), ": metadata key '", key, "' is missing");
    return *def;
}
double get_float(const formats::GgufFile& f, const std::string& key, double def) {
    const formats::GgufValue* v = f.find(key);
    return v ? v->as_float() : def;
}

} // namespace

ModelConfig gguf_model_config(const formats::GgufFile& f) {
    const std::string arch = f.at("general.architecture").as_string();
    ModelConfig c;
    if (arch == "llama") c.family = ModelFamily::llama;
    else if (arch == "gpt2") c.family = ModelFamily::gpt2;
    else
        throw InvalidArgument("[infer] " + f.origin() + ": architecture '" + arch +
                              "' is not supported (llama, gpt2)");
    const std::string p = arch + ".";
    c.n_ctx = get_int(f, p + "context_length");
    c.n_embd = get_int(f, p + "embedding_length");
    c.n_layer = get_int(f, p + "block_count");
    c.n_ff = get_int(f, p + "feed_forward_length");
    c.n_head = get_int(f, p + "attention.head_count");
    c.n_head_kv = get_int(f, p + "attention.head_count_kv", c.n_head);
    const int64_t key_len = get_int(f, p + "attention.key_length", c.n_embd / c.n_head);
    c.head_dim = key_len == c.n_embd / c.n_head ? 0 : key_len;
    c.norm_eps = float(c.family == ModelFamily::llama
                           ? get_float(f, p + "attention.layer_norm_rms_epsilon", 1e-5)
                           : get_float(f, p + "attention.layer_norm_epsilon", 1e-5));
    c.rope_theta = float(get_float(f, p + "rope.freq_base", 10000.0));
    const formats::GgufTensorInfo* emb = f.find_tensor("token_embd.weight");
    FORGE_CHECK(emb && emb->ne.size() == 2, "[infer] ", f.origin(), ": no 2-D token_embd.weight");
    c.vocab_size = emb->ne[1];
    c.tie_embeddings = f.find_tensor("output.weight") == nullptr;
    c.validate();
    return c;
}

std::unique_ptr<QuantLM> QuantLM::from_gguf(const std::filesystem::path& path, EngineOptions opts) {
    auto file = std::make_shared<formats::GgufFile>(formats::GgufFile::open(path));
    const ModelConfig cfg = gguf_model_config(*file);
    Lookup lookup = [f = file.get()](const std::string& name) -> std::optional<TensorRef> {
        const formats::GgufTensorInfo* t = f->find_tensor(name);
        if (!t) return std::nullopt;
        return TensorRef{t->type, t->ne, t->data};
    };
    return std::make_unique<QuantLM>(cfg, lookup, file, opts);
}

} // namespace forge::infer
