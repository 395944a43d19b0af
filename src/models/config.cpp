// Presets with their published shapes, validation, HF config.json mapping and size arithmetic.
#include <forge/models/config.h>

#include <cmath>

#include <nlohmann/json.hpp>

#include <forge/core/error.h>

namespace forge {

using json = nlohmann::json;

void ModelConfig::validate() const {
    FORGE_CHECK(vocab_size > 0, "[config] vocab_size must be > 0, got ", vocab_size);
    FORGE_CHECK(n_ctx > 0, "[config] n_ctx must be > 0, got ", n_ctx);
    FORGE_CHECK(n_layer > 0, "[config] n_layer must be > 0, got ", n_layer);
    FORGE_CHECK(n_head > 0 && n_head_kv > 0, "[config] n_head and n_head_kv must be > 0");
    FORGE_CHECK(n_head % n_head_kv == 0, "[config] n_head (", n_head,
                ") must be a multiple of n_head_kv (", n_head_kv, ")");
    FORGE_CHECK(n_embd > 0 && n_ff > 0, "[config] n_embd and n_ff must be > 0");
    FORGE_CHECK(head_dim != 0 || n_embd % n_head == 0, "[config] n_embd (", n_embd,
                ") must be divisible by n_head (", n_head, ")");
    FORGE_CHECK(family == ModelFamily::llama || dim_head() * n_head == n_embd,
                "[config] GPT-2 needs head_dim * n_head == n_embd");
    FORGE_CHECK(family == ModelFamily::gpt2 || dim_head() % 2 == 0,
                "[config] RoPE needs an even head_dim, got ", dim_head());
    FORGE_CHECK(family == ModelFamily::llama || n_head_kv == n_head,
                "[config] GPT-2 has no grouped-query attention: n_head_kv must equal n_head");
    FORGE_CHECK(dropout >= 0 && dropout < 1, "[config] dropout must be in [0, 1), got ", dropout);
}

std::vector<std::string> ModelConfig::preset_names() {
    return {"tiny",     "gpt2",     "gpt2-medium", "llama-1b", "llama-3b",
            "llama-7b", "llama-8b", "llama-13b",   "llama-70b"};
}

namespace {
ModelConfig gpt2_shape(int64_t layers, int64_t heads, int64_t embd, int64_t ctx) {
    ModelConfig c;
    c.family = ModelFamily::gpt2;
    c.vocab_size = 50257;
    c.n_ctx = ctx;
    c.n_layer = layers;
    c.n_head = c.n_head_kv = heads;
    c.n_embd = embd;
    c.n_ff = 4 * embd;
    c.norm_eps = 1e-5f;
    c.tie_embeddings = true;
    return c;
}

ModelConfig llama_shape(int64_t vocab, int64_t embd, int64_t ff, int64_t layers, int64_t heads,
                        int64_t kv_heads, int64_t ctx, float theta, bool tied) {
    ModelConfig c;
    c.family = ModelFamily::llama;
    c.vocab_size = vocab;
    c.n_embd = embd;
    c.n_ff = ff;
    c.n_layer = layers;
    c.n_head = heads;
    c.n_head_kv = kv_heads;
    c.n_ctx = ctx;
    c.rope_theta = theta;
    c.norm_eps = 1e-5f;
    c.tie_embeddings = tied;
    return c;
}
} // namespace

ModelConfig ModelConfig::preset(const std::string& name) {
    // Shapes from the published HF config.json of each model.
    if (name == "tiny") return gpt2_shape(4, 4, 128, 256); // ~0.8M + embeddings; minutes on 2 cores
    if (name == "gpt2") return gpt2_shape(12, 12, 768, 1024);        // 124M
    if (name == "gpt2-medium") return gpt2_shape(24, 16, 1024, 1024); // 355M
    if (name == "llama-1b" || name == "llama-3b") { // Llama 3.2: tied, llama3 RoPE scaling x32
        ModelConfig c = name == "llama-1b"
                            ? llama_shape(128256, 2048, 8192, 16, 32, 8, 131072, 500000.f, true)
                            : llama_shape(128256, 3072, 8192, 28, 24, 8, 131072, 500000.f, true);
        c.head_dim = name == "llama-1b" ? 64 : 128;
        c.rope_scaling_factor = 32.f;
        c.rope_low_freq_factor = 1.f;
        c.rope_high_freq_factor = 4.f;
        c.rope_original_max_pos = 8192;
        return c;
    }
    if (name == "llama-7b") return llama_shape(32000, 4096, 11008, 32, 32, 32, 4096, 10000.f, false);
    if (name == "llama-8b") return llama_shape(128256, 4096, 14336, 32, 32, 8, 8192, 500000.f, false);
    if (name == "llama-13b") return llama_shape(32000, 5120, 13824, 40, 40, 40, 4096, 10000.f, false);
    if (name == "llama-70b") return llama_shape(128256, 8192, 28672, 80, 64, 8, 8192, 500000.f, false);
    std::string names;
    for (auto& n : preset_names())
        names += (names.empty() ? "" : ", ") + n;
    throw InvalidArgument("unknown preset '" + name + "'", "known presets: " + names);
}

int64_t ModelConfig::num_parameters() const {
    const int64_t C = n_embd, D = dim_head(), V = vocab_size;
    int64_t n = V * C; // token embedding
    if (family == ModelFamily::gpt2) {
        n += n_ctx * C;                              // learned positions
        int64_t layer = 2 * C                        // ln_1
                        + C * 3 * C + 3 * C          // c_attn
                        + C * C + C                  // attn.c_proj
                        + 2 * C                      // ln_2
                        + C * n_ff + n_ff            // mlp.c_fc
                        + n_ff * C + C;              // mlp.c_proj
        n += n_layer * layer + 2 * C;                // ln_f
    } else {
        int64_t layer = C * n_head * D               // q_proj
                        + 2 * C * n_head_kv * D      // k_proj, v_proj
                        + n_head * D * C             // o_proj
                        + 3 * C * n_ff               // gate, up, down
                        + 2 * C;                     // two RMSNorms
        n += n_layer * layer + C;                    // final norm
    }
    if (!tie_embeddings) n += V * C; // lm_head
    return n;
}

int64_t ModelConfig::kv_cache_bytes_per_token(DType dtype) const {
    return 2 * n_layer * n_head_kv * dim_head() * int64_t(dtype_size(dtype));
}

// ------------------------------------------------------------------ HF config.json

ModelConfig ModelConfig::from_hf_json(const std::string& text) {
    json j;
    try {
        j = json::parse(text);
    } catch (const json::exception& e) {
        throw InvalidArgument(std::string("[config.json] not valid JSON: ") + e.what());
    }
    FORGE_CHECK(j.is_object(), "[config.json] expected a JSON object");
    std::string type = j.value("model_type", "");
    auto get = [&](const char* key, auto fallback) {
        using T = decltype(fallback);
        if (!j.contains(key) || j[key].is_null()) return fallback;
        try {
            return j[key].get<T>();
        } catch (const json::exception&) {
            throw InvalidArgument(std::string("[config.json] field '") + key +
                                  "' has the wrong type");
        }
    };
    ModelConfig c;
    if (type == "gpt2") {
        c = gpt2_shape(get("n_layer", int64_t(12)), get("n_head", int64_t(12)),
                       get("n_embd", int64_t(768)), get("n_positions", int64_t(1024)));
        c.vocab_size = get("vocab_size", int64_t(50257));
        c.n_ff = get("n_inner", int64_t(4 * c.n_embd));
        c.norm_eps = float(get("layer_norm_epsilon", 1e-5));
        c.tie_embeddings = get("tie_word_embeddings", true);
        c.dropout = float(get("resid_pdrop", 0.0));
        std::string act = get("activation_function", std::string("gelu_new"));
        FORGE_CHECK(act == "gelu_new" || act == "gelu_pytorch_tanh",
                    "[config.json] activation_function '", act,
                    "' is not supported (GPT-2 uses gelu_new)");
    } else if (type == "llama") {
        c.family = ModelFamily::llama;
        c.vocab_size = get("vocab_size", int64_t(32000));
        c.n_embd = get("hidden_size", int64_t(4096));
        c.n_ff = get("intermediate_size", int64_t(11008));
        c.n_layer = get("num_hidden_layers", int64_t(32));
        c.n_head = get("num_attention_heads", int64_t(32));
        c.n_head_kv = get("num_key_value_heads", c.n_head);
        c.head_dim = get("head_dim", int64_t(0));
        if (c.head_dim == c.n_embd / c.n_head) c.head_dim = 0;
        c.n_ctx = get("max_position_embeddings", int64_t(2048));
        c.norm_eps = float(get("rms_norm_eps", 1e-6));
        c.rope_theta = float(get("rope_theta", 10000.0));
        c.tie_embeddings = get("tie_word_embeddings", false);
        if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) {
            const json& rs = j["rope_scaling"];
            std::string rt = rs.value("rope_type", rs.value("type", ""));
            FORGE_CHECK(rt == "llama3", "[config.json] rope_scaling type '", rt,
                        "' is not supported (only llama3)");
            c.rope_scaling_factor = rs.value("factor", 8.0f);
            c.rope_low_freq_factor = rs.value("low_freq_factor", 1.0f);
            c.rope_high_freq_factor = rs.value("high_freq_factor", 4.0f);
            c.rope_original_max_pos = rs.value("original_max_position_embeddings", int64_t(8192));
        }
        std::string act = get("hidden_act", std::string("silu"));
        FORGE_CHECK(act == "silu", "[config.json] hidden_act '", act, "' is not supported");
    } else {
        throw InvalidArgument("[config.json] model_type '" + type +
                              "' is not supported (expected gpt2 or llama)");
    }
    c.validate();
    return c;
}

std::string ModelConfig::to_hf_json() const {
    json j;
    if (family == ModelFamily::gpt2) {
        j = {{"model_type", "gpt2"},
             {"architectures", {"GPT2LMHeadModel"}},
             {"vocab_size", vocab_size},
             {"n_positions", n_ctx},
             {"n_ctx", n_ctx},
             {"n_embd", n_embd},
             {"n_layer", n_layer},
             {"n_head", n_head},
             {"n_inner", n_ff},
             {"layer_norm_epsilon", norm_eps},
             {"activation_function", "gelu_new"},
             {"resid_pdrop", dropout},
             {"embd_pdrop", dropout},
             {"attn_pdrop", 0.0},
             {"tie_word_embeddings", tie_embeddings},
             {"torch_dtype", "float32"}};
    } else {
        j = {{"model_type", "llama"},
             {"architectures", {"LlamaForCausalLM"}},
             {"vocab_size", vocab_size},
             {"hidden_size", n_embd},
             {"intermediate_size", n_ff},
             {"num_hidden_layers", n_layer},
             {"num_attention_heads", n_head},
             {"num_key_value_heads", n_head_kv},
             {"head_dim", dim_head()},
             {"max_position_embeddings", n_ctx},
             {"rms_norm_eps", norm_eps},
             {"rope_theta", rope_theta},
             {"hidden_act", "silu"},
             {"attention_bias", false},
             {"mlp_bias", false},
             {"tie_word_embeddings", tie_embeddings},
             {"torch_dtype", "float32"}};
        if (rope_scaling_factor > 0)
            j["rope_scaling"] = {{"rope_type", "llama3"},
                                 {"factor", rope_scaling_factor},
                                 {"low_freq_factor", rope_low_freq_factor},
                                 {"high_freq_factor", rope_high_freq_factor},
                                 {"original_max_position_embeddings", rope_original_max_pos}};
        else
            j["rope_scaling"] = nullptr;
    }
    return j.dump(2);
}

// Llama 3 RoPE scaling (the "llama3" rope_type): long wavelengths are slowed by `factor`,
// short ones kept, and the band between interpolated smoothly. Returns, per rotated pair,
// the divisor of its base frequency.
std::vector<float> llama3_rope_factors(const ModelConfig& c) {
    const int64_t half = c.dim_head() / 2;
    std::vector<float> f(size_t(half), 1.0f);
    if (c.rope_scaling_factor <= 0) return f;
    const double low_wavelen = c.rope_original_max_pos / c.rope_low_freq_factor;
    const double high_wavelen = c.rope_original_max_pos / c.rope_high_freq_factor;
    for (int64_t i = 0; i < half; ++i) {
        double inv_freq = std::pow(double(c.rope_theta), -2.0 * double(i) / double(c.dim_head()));
        double wavelen = 2 * M_PI / inv_freq, scaled;
        if (wavelen < high_wavelen) scaled = inv_freq;
        else if (wavelen > low_wavelen) scaled = inv_freq / c.rope_scaling_factor;
        else {
            double smooth = (c.rope_original_max_pos / wavelen - c.rope_low_freq_factor) /
                            (c.rope_high_freq_factor - c.rope_low_freq_factor);
            scaled = (1 - smooth) * inv_freq / c.rope_scaling_factor + smooth * inv_freq;
        }
        f[size_t(i)] = float(inv_freq / scaled);
    }
    return f;
}

} // namespace forge
