// Transformer <-> GGUF tensors with llama.cpp's names (gguf-py's constants for the `llama` and
// `gpt2` architectures). Layout differences are undone exactly: GPT-2's Conv1D weights are
// (in, out) in Forge and (out, in) rows in GGUF; Llama's q/k rows are permuted in GGUF so that
// ggml's adjacent-pair RoPE equals the HF rotate-half RoPE Forge runs. Keys and the tokenizer
// are gguf_meta.cpp's; the byte format is gguf.cpp's.
#include <forge/formats/gguf_model.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>

#include <forge/core/error.h>
#include <forge/models/transformer.h>

#include "formats/gguf_internal.h"

namespace forge::formats {

namespace fs = std::filesystem;
using quant::GgmlType;
using namespace gguf_detail;

namespace {

// How a Forge tensor's data becomes the GGUF tensor's rows.
enum class Layout { same, transpose, permute_heads };

struct TensorMap {
    std::string forge, gguf;
    Layout layout = Layout::same;
    int64_t n_heads = 0; // permute_heads
};

const char* arch_name(ModelFamily f) { return f == ModelFamily::llama ? "llama" : "gpt2"; }

// Forge's (HF's) parameter name -> llama.cpp's, for every parameter of `cfg`'s model.
std::vector<TensorMap> tensor_maps(const ModelConfig& cfg, const std::map<std::string, Tensor>& sd) {
    std::vector<TensorMap> out;
    const bool llama = cfg.family == ModelFamily::llama;
    const std::string layers = llama ? "model.layers." : "transformer.h.";
    static const std::vector<std::tuple<const char*, const char*, Layout>> kLlamaBlock = {
        {"input_layernorm.weight", "attn_norm.weight", Layout::same},
        {"self_attn.q_proj.weight", "attn_q.weight", Layout::permute_heads},
        {"self_attn.k_proj.weight", "attn_k.weight", Layout::permute_heads},
        {"self_attn.v_proj.weight", "attn_v.weight", Layout::same},
        {"self_attn.o_proj.weight", "attn_output.weight", Layout::same},
        {"post_attention_layernorm.weight", "ffn_norm.weight", Layout::same},
        {"mlp.gate_proj.weight", "ffn_gate.weight", Layout::same},
        {"mlp.up_proj.weight", "ffn_up.weight", Layout::same},
        {"mlp.down_proj.weight", "ffn_down.weight", Layout::same},
    };
    static const std::vector<std::tuple<const char*, const char*, Layout>> kGpt2Block = {
        {"ln_1.weight", "attn_norm.weight", Layout::same},
        {"ln_1.bias", "attn_norm.bias", Layout::same},
        {"attn.c_attn.weight", "attn_qkv.weight", Layout::transpose},
        {"attn.c_attn.bias", "attn_qkv.bias", Layout::same},
        {"attn.c_proj.weight", "attn_output.weight", Layout::transpose},
        {"attn.c_proj.bias", "attn_output.bias", Layout::same},
        {"ln_2.weight", "ffn_norm.weight", Layout::same},
        {"ln_2.bias", "ffn_norm.bias", Layout::same},
        {"mlp.c_fc.weight", "ffn_up.weight", Layout::transpose},
        {"mlp.c_fc.bias", "ffn_up.bias", Layout::same},
        {"mlp.c_proj.weight", "ffn_down.weight", Layout::transpose},
        {"mlp.c_proj.bias", "ffn_down.bias", Layout::same},
    };
    static const std::map<std::string, std::string> kGlobal = {
        {"model.embed_tokens.weight", "token_embd.weight"},
        {"model.norm.weight", "output_norm.weight"},
        {"transformer.wte.weight", "token_embd.weight"},
        {"transformer.wpe.weight", "position_embd.weight"},
        {"transformer.ln_f.weight", "output_norm.weight"},
        {"transformer.ln_f.bias", "output_norm.bias"},
        {"lm_head.weight", "output.weight"},
    };
    for (const auto& [name, t] : sd) {
        if (auto it = kGlobal.find(name); it != kGlobal.end()) {
            out.push_back({name, it->second});
            continue;
        }
        FORGE_ASSERT(name.rfind(layers, 0) == 0);
        const size_t dot = name.find('.', layers.size());
        const std::string layer = name.substr(layers.size(), dot - layers.size());
        const std::string rest = name.substr(dot + 1);
        bool found = false;
        for (const auto& [hf, gg, lay] : llama ? kLlamaBlock : kGpt2Block)
            if (rest == hf) {
                TensorMap m{name, "blk." + layer + "." + gg, lay};
                if (lay == Layout::permute_heads)
                    m.n_heads = rest.find("q_proj") != std::string::npos ? cfg.n_head : cfg.n_head_kv;
                out.push_back(m);
                found = true;
            }
        FORGE_ASSERT(found);
    }
    return out;
}

// Row-major (R, C) f32 in Forge's layout -> the GGUF tensor's rows, and back.
std::vector<float> to_gguf_layout(const TensorMap& m, const float* x, int64_t R, int64_t C) {
    std::vector<float> y(size_t(R * C));
    if (m.layout == Layout::same) {
        std::memcpy(y.data(), x, y.size() * sizeof(float));
    } else if (m.layout == Layout::transpose) { // (in=R, out=C) -> (out, in)
        for (int64_t r = 0; r < R; ++r)
            for (int64_t c = 0; c < C; ++c) y[size_t(c * R + r)] = x[r * C + c];
    } else { // rows (h, j, i) with j in {0,1}, i < D/2 -> (h, i, j)
        const int64_t D = R / m.n_heads, half = D / 2;
        for (int64_t h = 0; h < m.n_heads; ++h)
            for (int64_t j = 0; j < 2; ++j)
                for (int64_t i = 0; i < half; ++i)
                    std::memcpy(&y[size_t((h * D + i * 2 + j) * C)], x + (h * D + j * half + i) * C,
                                size_t(C) * sizeof(float));
    }
    return y;
}

void from_gguf_layout(const TensorMap& m, const float* y, float* x, int64_t R, int64_t C) {
    if (m.layout == Layout::same) {
        std::memcpy(x, y, size_t(R * C) * sizeof(float));
    } else if (m.layout == Layout::transpose) {
        for (int64_t r = 0; r < R; ++r)
            for (int64_t c = 0; c < C; ++c) x[r * C + c] = y[c * R + r];
    } else {
        const int64_t D = R / m.n_heads, half = D / 2;
        for (int64_t h = 0; h < m.n_heads; ++h)
            for (int64_t j = 0; j < 2; ++j)
                for (int64_t i = 0; i < half; ++i)
                    std::memcpy(x + (h * D + j * half + i) * C, &y[size_t((h * D + i * 2 + j) * C)],
                                size_t(C) * sizeof(float));
    }
}

} // namespace

LoadedModel gguf_to_model(const GgufFile& f) {
    const std::string& o = f.origin();
    LoadedModel out;
    out.config = gguf_config(f);
    out.dir = o;
    out.tokenizer_file = o;
    // Forge (HF) tensor shapes come from the model itself.
    out.model = std::make_shared<Transformer>(out.config);
    const std::map<std::string, Tensor> want = out.model->state_dict();
    std::map<std::string, Tensor> loaded;
    std::set<std::string> used;
    for (const TensorMap& m : tensor_maps(out.config, want)) {
        const GgufTensorInfo* t = f.find_tensor(m.gguf);
        FORGE_CHECK(t, o, ": tensor '", m.gguf, "' is missing (Forge's ", m.forge, ")");
        const Tensor& w = want.at(m.forge);
        const int64_t R = w.size(0), C = w.dim() == 2 ? w.size(1) : 1;
        std::vector<int64_t> ne = w.dim() == 2 ? std::vector<int64_t>{C, R} : std::vector<int64_t>{R};
        if (m.layout == Layout::transpose) ne = {R, C};
        FORGE_CHECK(t->ne == ne, o, ": tensor '", m.gguf, "' has ", t->ne.size(), "-D shape ne=[",
                    t->ne.empty() ? 0 : t->ne[0], t->ne.size() > 1 ? ", " + std::to_string(t->ne[1]) : "",
                    "], the model's ", m.forge, " ", shape_str(w.shape()), " needs ne=[", ne[0],
                    ne.size() > 1 ? ", " + std::to_string(ne[1]) : "", "]");
        const std::vector<float> rows = dequantize(*t);
        Tensor x = Tensor::empty(w.shape(), DType::f32);
        if (m.layout == Layout::transpose)
            from_gguf_layout(m, rows.data(), x.data<float>(), R, C);
        else
            from_gguf_layout(m, rows.data(), x.data<float>(), w.dim() == 2 ? R : 1, w.dim() == 2 ? C : R);
        loaded[m.forge] = x;
        used.insert(m.gguf);
    }
    if (f.find_tensor("rope_freqs.weight")) used.insert("rope_freqs.weight");
    for (const auto& t : f.tensors())
        FORGE_CHECK(used.count(t.name), o, ": tensor '", t.name, "' has no place in a ",
                    arch_name(out.config.family), " model of this config");
    out.model->load_state_dict(loaded, /*strict=*/true);
    // The file's RoPE factors as stored (gguf_config checked them against Llama 3's rule to
    // 1e-3), as QuantLM and CudaLM's decode apply them.
    if (const GgufTensorInfo* rf = f.find_tensor("rope_freqs.weight"))
        out.model->set_rope_freq_factors(dequantize(*rf));
    out.model->requires_grad(false);
    out.model->eval();
    out.tokenizer = gguf_tokenizer(f);
    if (out.tokenizer)
        FORGE_CHECK(int64_t(out.tokenizer->vocab_size()) <= out.config.vocab_size, o, ": the tokenizer has ",
                    out.tokenizer->vocab_size(), " tokens but token_embd.weight only ",
                    out.config.vocab_size, " rows");
    return out;
}

LoadedModel load_gguf_model(const fs::path& path) { return gguf_to_model(GgufFile::open(path)); }

GgufWriter gguf_writer(const Transformer& model, const Tokenizer* tok, GgmlType type,
                       const std::string& name) {
    const ModelConfig& c = model.config();
    check_writable(type);
    const std::string arch = arch_name(c.family);
    GgufWriter w;
    auto key = [&](const std::string& k) { return arch + "." + k; };
    auto u32 = [](int64_t x) { return GgufValue::u32(uint32_t(x)); };
    w.set("general.architecture", GgufValue::str(arch));
    w.set("general.name", GgufValue::str(name));
    w.set("general.file_type", GgufValue::u32(gguf_file_type(type)));
    w.set("general.quantization_version", GgufValue::u32(2));
    w.set(key("vocab_size"), u32(c.vocab_size));
    w.set(key("context_length"), u32(c.n_ctx));
    w.set(key("embedding_length"), u32(c.n_embd));
    w.set(key("block_count"), u32(c.n_layer));
    w.set(key("feed_forward_length"), u32(c.n_ff));
    w.set(key("attention.head_count"), u32(c.n_head));
    if (c.family == ModelFamily::llama) {
        w.set(key("attention.head_count_kv"), u32(c.n_head_kv));
        w.set(key("attention.layer_norm_rms_epsilon"), GgufValue::f32(c.norm_eps));
        w.set(key("rope.freq_base"), GgufValue::f32(c.rope_theta));
        w.set(key("rope.dimension_count"), u32(c.dim_head()));
        if (c.head_dim && c.head_dim * c.n_head != c.n_embd) {
            w.set(key("attention.key_length"), u32(c.head_dim));
            w.set(key("attention.value_length"), u32(c.head_dim));
        }
        if (c.rope_scaling_factor > 0) {
            w.set("forge.rope.llama3.factor", GgufValue::f32(c.rope_scaling_factor));
            w.set("forge.rope.llama3.low_freq_factor", GgufValue::f32(c.rope_low_freq_factor));
            w.set("forge.rope.llama3.high_freq_factor", GgufValue::f32(c.rope_high_freq_factor));
            w.set("forge.rope.llama3.original_context_length", u32(c.rope_original_max_pos));
        }
    } else {
        w.set(key("attention.layer_norm_epsilon"), GgufValue::f32(c.norm_eps));
    }
    if (tok) put_tokenizer(w, *tok, c.vocab_size);

    const std::map<std::string, Tensor> sd = model.state_dict();
    // llama.cpp's order: token_embd, (position_embd,) blocks in order, output_norm, output.
    std::vector<TensorMap> maps = tensor_maps(c, sd);
    auto rank = [](const std::string& g) -> std::pair<int, int> {
        if (g.rfind("token_embd", 0) == 0) return {0, 0};
        if (g.rfind("position_embd", 0) == 0) return {1, 0};
        if (g.rfind("blk.", 0) == 0) return {2, std::stoi(g.substr(4))};
        return {3, 0};
    };
    std::stable_sort(maps.begin(), maps.end(), [&](const TensorMap& a, const TensorMap& b) {
        return std::make_pair(rank(a.gguf), a.gguf) < std::make_pair(rank(b.gguf), b.gguf);
    });
    for (const TensorMap& m : maps) {
        Tensor t = sd.at(m.forge).detach().to(Device::cpu()).to(DType::f32).contiguous();
        const int64_t R = t.size(0), C = t.dim() == 2 ? t.size(1) : 1;
        std::vector<int64_t> ne;
        std::vector<float> rows;
        if (t.dim() == 1) {
            ne = {R};
            rows.assign(t.data<float>(), t.data<float>() + R);
        } else {
            rows = to_gguf_layout(m, t.data<float>(), R, C);
            ne = m.layout == Layout::transpose ? std::vector<int64_t>{R, C} : std::vector<int64_t>{C, R};
        }
        const GgmlType tt = gguf_tensor_type(m.gguf, ne[0], ne.size(), type);
        w.add_tensor(m.gguf, ne, tt, quantize(rows, ne[0], tt));
    }
    if (c.family == ModelFamily::llama && c.rope_scaling_factor > 0) {
        std::vector<float> fac = llama3_rope_factors(c);
        w.add_tensor("rope_freqs.weight", {int64_t(fac.size())}, GgmlType::f32,
                     {reinterpret_cast<const uint8_t*>(fac.data()), fac.size() * sizeof(float)});
    }
    return w;
}

void save_gguf(const Transformer& model, const Tokenizer* tok, const fs::path& path, GgmlType type,
               const std::string& name) {
    gguf_writer(model, tok, type, name).write(path);
}

void requantize_gguf(const fs::path& in, const fs::path& out, GgmlType type) {
    check_writable(type);
    const GgufFile f = GgufFile::open(in);
    (void)arch_of(f);
    GgufWriter w(f.alignment());
    for (const auto& [k, v] : f.metadata()) {
        if (k == "general.alignment") continue; // the writer sets it
        w.set(k, k == "general.file_type" ? GgufValue::u32(gguf_file_type(type)) : v);
    }
    if (!f.find("general.file_type")) w.set("general.file_type", GgufValue::u32(gguf_file_type(type)));
    for (const auto& t : f.tensors()) {
        const bool matrix = t.ne.size() >= 2 && t.name != "rope_freqs.weight";
        const GgmlType tt = matrix ? gguf_tensor_type(t.name, t.ne[0], t.ne.size(), type) : t.type;
        if (tt == t.type) {
            w.add_tensor(t.name, t.ne, t.type, {t.data, size_t(t.nbytes)});
            continue;
        }
        w.add_tensor(t.name, t.ne, tt, quantize(dequantize(t), t.ne[0], tt));
    }
    w.write(out);
}

} // namespace forge::formats
