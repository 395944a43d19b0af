// The decoder-only Transformer for both families. Tensor names are HF's:
//   GPT-2: transformer.{wte,wpe}, transformer.h.N.{ln_1,attn.c_attn,attn.c_proj,ln_2,mlp.c_fc,
//          mlp.c_proj}, transformer.ln_f. Linear weights are HF Conv1D layout (in, out): y = x W + b.
//   Llama: model.embed_tokens, model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj,
//          post_attention_layernorm, mlp.{gate,up,down}_proj}, model.norm, lm_head.
//          Linear weights are nn.Linear layout (out, in): y = x W^T.
#include <forge/models/transformer.h>

#include <cmath>
#include <map>

#include "core/op_helpers.h"
#include <forge/autograd/autograd.h>
#include <forge/core/ops.h>

namespace forge {

struct LayerWeights {
    // GPT-2
    Tensor ln1_w, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, fc2_w, fc2_b;
    // Llama
    Tensor in_norm, q_w, k_w, v_w, o_w, post_norm, gate_w, up_w, down_w;
};

struct Transformer::Impl {
    Tensor wte, wpe, lnf_w, lnf_b, head; // head undefined when tied
    std::vector<LayerWeights> layers;
    uint64_t dropout_seed = 0;
    std::vector<float> rope_freq_factors; // Llama 3 scaling: per-pair divisor of the frequency
};

int64_t KVCache::nbytes() const {
    int64_t n = 0;
    for (size_t i = 0; i < k.size(); ++i)
        n += int64_t(k[i].nbytes() + v[i].nbytes());
    return n;
}

KVCache KVCache::create(const ModelConfig& cfg, int64_t batch, int64_t capacity, DType dtype,
                        Device device) {
    FORGE_CHECK(batch > 0 && capacity > 0, "[KVCache] batch and capacity must be > 0");
    FORGE_CHECK(capacity <= cfg.n_ctx, "[KVCache] capacity ", capacity,
                " exceeds the model's context of ", cfg.n_ctx, " positions");
    KVCache c;
    c.capacity = capacity;
    for (int64_t l = 0; l < cfg.n_layer; ++l) {
        c.k.push_back(Tensor::zeros({batch, cfg.n_head_kv, capacity, cfg.dim_head()}, dtype, device));
        c.v.push_back(Tensor::zeros({batch, cfg.n_head_kv, capacity, cfg.dim_head()}, dtype, device));
    }
    return c;
}


namespace {


// RoPE (NeoX layout) through public ops with explicit per-pair frequencies: the path for
// scaled frequencies, which the fused kernel does not take. x: (B, H, T, D).
Tensor rope_with_factors(const Tensor& x, const ModelConfig& c, int64_t pos0,
                         const std::vector<float>& factors) {
    const int64_t T = x.size(2), D = x.size(3), half = D / 2;
    std::vector<double> cs(size_t(T * half)), sn(size_t(T * half));
    for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < half; ++i) {
            double inv = std::pow(double(c.rope_theta), -2.0 * double(i) / double(D)) /
                         factors[size_t(i)];
            cs[size_t(t * half + i)] = std::cos(double(pos0 + t) * inv);
            sn[size_t(t * half + i)] = std::sin(double(pos0 + t) * inv);
        }
    Tensor cos_t = Tensor::from_vector(cs, {T, half}, x.dtype()).to(x.device());
    Tensor sin_t = Tensor::from_vector(sn, {T, half}, x.dtype()).to(x.device());
    Tensor x1 = x.narrow(3, 0, half), x2 = x.narrow(3, half, half);
    return concat({sub(mul(x1, cos_t), mul(x2, sin_t)), add(mul(x2, cos_t), mul(x1, sin_t))}, 3);
}

// Runs `f(x)` without keeping its activations; the backward pass runs it again with gradients
// on and backpropagates through the recomputation (activation checkpointing). Parameters that
// f uses accumulate their gradients during that inner backward.
Tensor checkpointed(const std::function<Tensor(const Tensor&)>& f, const Tensor& x) {
    if (!autograd::needs_grad({x})) return f(x);
    Tensor out;
    {
        NoGradGuard ng;
        out = f(x.detach());
    }
    autograd::record("checkpoint", out, {x}, [f, xd = x.detach()](const Tensor& g) {
        Tensor xi = xd.detach();
        xi.set_requires_grad(true);
        Tensor y;
        {
            set_grad_enabled(true);
            y = f(xi);
            set_grad_enabled(false);
        }
        y.backward(g);
        return std::vector<Tensor>{xi.grad()};
    });
    return out;
}

} // namespace

Transformer::Transformer(const ModelConfig& cfg, uint64_t seed) : cfg_(cfg), impl_(new Impl) {
    cfg_.validate();
    const int64_t C = cfg_.n_embd, D = cfg_.dim_head(), H = cfg_.n_head, Hkv = cfg_.n_head_kv;
    const int64_t F = cfg_.n_ff, V = cfg_.vocab_size;
    const double std_ = 0.02, proj_std = 0.02 / std::sqrt(2.0 * double(cfg_.n_layer));
    uint64_t s = seed * 1000003ull;
    auto normal = [&](const std::string& name, Shape shape, double sd) -> Tensor& {
        return register_parameter(name, Tensor::randn(shape, ++s, DType::f32, 0.0, sd));
    };
    auto fill = [&](const std::string& name, Shape shape, double v) -> Tensor& {
        return register_parameter(name, Tensor::full(shape, v));
    };
    Impl& m = *impl_;
    if (cfg_.family == ModelFamily::gpt2) {
        m.wte = normal("transformer.wte.weight", {V, C}, std_);
        m.wpe = normal("transformer.wpe.weight", {cfg_.n_ctx, C}, 0.01);
        for (int64_t l = 0; l < cfg_.n_layer; ++l) {
            std::string p = "transformer.h." + std::to_string(l) + ".";
            LayerWeights w;
            w.ln1_w = fill(p + "ln_1.weight", {C}, 1);
            w.ln1_b = fill(p + "ln_1.bias", {C}, 0);
            w.attn_w = normal(p + "attn.c_attn.weight", {C, 3 * C}, std_);
            w.attn_b = fill(p + "attn.c_attn.bias", {3 * C}, 0);
            w.proj_w = normal(p + "attn.c_proj.weight", {C, C}, proj_std);
            w.proj_b = fill(p + "attn.c_proj.bias", {C}, 0);
            w.ln2_w = fill(p + "ln_2.weight", {C}, 1);
            w.ln2_b = fill(p + "ln_2.bias", {C}, 0);
            w.fc_w = normal(p + "mlp.c_fc.weight", {C, F}, std_);
            w.fc_b = fill(p + "mlp.c_fc.bias", {F}, 0);
            w.fc2_w = normal(p + "mlp.c_proj.weight", {F, C}, proj_std);
            w.fc2_b = fill(p + "mlp.c_proj.bias", {C}, 0);
            m.layers.push_back(w);
        }
        m.lnf_w = fill("transformer.ln_f.weight", {C}, 1);
        m.lnf_b = fill("transformer.ln_f.bias", {C}, 0);
        if (!cfg_.tie_embeddings) m.head = normal("lm_head.weight", {V, C}, std_);
    } else {
        m.wte = normal("model.embed_tokens.weight", {V, C}, std_);
        for (int64_t l = 0; l < cfg_.n_layer; ++l) {
            std::string p = "model.layers." + std::to_string(l) + ".";
            LayerWeights w;
            w.in_norm = fill(p + "input_layernorm.weight", {C}, 1);
            w.q_w = normal(p + "self_attn.q_proj.weight", {H * D, C}, std_);
            w.k_w = normal(p + "self_attn.k_proj.weight", {Hkv * D, C}, std_);
            w.v_w = normal(p + "self_attn.v_proj.weight", {Hkv * D, C}, std_);
            w.o_w = normal(p + "self_attn.o_proj.weight", {C, H * D}, proj_std);
            w.post_norm = fill(p + "post_attention_layernorm.weight", {C}, 1);
            w.gate_w = normal(p + "mlp.gate_proj.weight", {F, C}, std_);
            w.up_w = normal(p + "mlp.up_proj.weight", {F, C}, std_);
            w.down_w = normal(p + "mlp.down_proj.weight", {C, F}, proj_std);
            m.layers.push_back(w);
        }
        m.lnf_w = fill("model.norm.weight", {C}, 1);
        if (!cfg_.tie_embeddings) m.head = normal("lm_head.weight", {V, C}, std_);
        if (cfg_.rope_scaling_factor > 0) m.rope_freq_factors = llama3_rope_factors(cfg_);
    }
}

Transformer::~Transformer() = default;

namespace {
template <typename F> void for_each_weight(LayerWeights& w, F f) {
    for (Tensor* t : {&w.ln1_w, &w.ln1_b, &w.attn_w, &w.attn_b, &w.proj_w, &w.proj_b, &w.ln2_w,
                      &w.ln2_b, &w.fc_w, &w.fc_b, &w.fc2_w, &w.fc2_b, &w.in_norm, &w.q_w, &w.k_w,
                      &w.v_w, &w.o_w, &w.post_norm, &w.gate_w, &w.up_w, &w.down_w})
        f(*t);
}
} // namespace

Transformer::Transformer(const Transformer& src, SharedWeights)
    : cfg_(src.cfg_), impl_(new Impl(*src.impl_)) {
    // One alias per source tensor, so tied weights (wte as the head) stay one parameter.
    std::map<const TensorImpl*, Tensor> aliases;
    auto alias = [&](Tensor& t) {
        if (!t.defined()) return;
        auto [it, fresh] = aliases.try_emplace(t.impl().get());
        if (fresh) {
            it->second = t.detach();
            it->second.set_requires_grad(t.requires_grad());
        }
        t = it->second;
    };
    Impl& m = *impl_;
    for (Tensor* t : {&m.wte, &m.wpe, &m.lnf_w, &m.lnf_b, &m.head}) alias(*t);
    for (LayerWeights& w : m.layers) for_each_weight(w, alias);
    for (auto [name, t] : src.named_parameters()) {
        alias(t);
        register_parameter(name, t);
    }
    FORGE_CHECK(src.named_buffers().empty(), "[transformer] share_weights: buffers unsupported");
    train(src.is_training());
}

std::unique_ptr<Transformer> Transformer::share_weights() const {
    return std::unique_ptr<Transformer>(new Transformer(*this, SharedWeights{}));
}

void Transformer::set_rope_freq_factors(std::vector<float> factors) {
    FORGE_CHECK(cfg_.family == ModelFamily::llama,
                "[transformer] RoPE frequency factors apply to Llama models only");
    FORGE_CHECK(int64_t(factors.size()) * 2 == cfg_.dim_head(), "[transformer] ",
                factors.size(), " RoPE frequency factors given; head_dim ", cfg_.dim_head(),
                " needs ", cfg_.dim_head() / 2);
    for (size_t i = 0; i < factors.size(); ++i)
        FORGE_CHECK(std::isfinite(factors[i]) && factors[i] > 0, "[transformer] RoPE frequency "
                    "factor ", i, " is ", factors[i], "; factors must be finite and positive");
    impl_->rope_freq_factors = std::move(factors);
}

uint64_t Transformer::dropout_state() const { return impl_->dropout_seed; }
void Transformer::set_dropout_state(uint64_t state) { impl_->dropout_seed = state; }

Tensor Transformer::hidden(const Tensor& ids_in, KVCache* cache) {
    FORGE_CHECK(ids_in.defined() && ids_in.dim() == 2, "[transformer] ids must be (B, T), got ",
                ids_in.defined() ? shape_str(ids_in.shape()) : "undefined");
    FORGE_CHECK(ids_in.dtype() == DType::i64 || ids_in.dtype() == DType::i32,
                "[transformer] ids must be i32 or i64, got ", dtype_name(ids_in.dtype()));
    const ModelConfig& c = cfg_;
    Impl& m = *impl_;
    // Host ids stay on the host: embedding() validates them there and copies them to the
    // weights' device (B * T integers), with no wait for the device.
    const Tensor ids = ids_in.to(DType::i64);
    const int64_t B = ids.size(0), T = ids.size(1), C = c.n_embd, D = c.dim_head();
    const int64_t H = c.n_head, Hkv = c.n_head_kv;
    const int64_t pos0 = cache ? cache->length : 0;
    FORGE_CHECK(T > 0, "[transformer] empty sequence");
    FORGE_CHECK(pos0 + T <= c.n_ctx, "[transformer] positions ", pos0, "..", pos0 + T - 1,
                " exceed the model's context of ", c.n_ctx);
    if (cache) {
        FORGE_CHECK(int64_t(cache->k.size()) == c.n_layer && cache->k[0].size(0) == B,
                    "[transformer] the KV cache was made for another model or batch size");
        FORGE_CHECK(pos0 + T <= cache->capacity, "[transformer] the KV cache holds ",
                    cache->capacity, " positions; ", pos0 + T, " needed");
    }
    // Lambdas below capture by value: a checkpointed block runs again during backward().
    const bool drop = is_training() && c.dropout > 0;
    const float p_drop = c.dropout;
    // Dropout seeds are fixed per call site so a recomputed block draws the same masks.
    auto dropout_ = [drop, p_drop](const Tensor& t, uint64_t seed) {
        return drop ? dropout(t, p_drop, seed) : t;
    };
    // (B, T, n*D) -> (B, n, T, D)
    auto heads = [B, T, D](const Tensor& t, int64_t n) {
        return t.reshape({B, T, n, D}).permute({0, 2, 1, 3});
    };
    // Appends k/v (B, Hkv, T, D) to the cache and returns all cached positions, in k's dtype: an
    // f32 cache under CUDA autocast, whose projections return bf16/f16, attends in that dtype.
    auto with_cache = [cache, pos0, T](Tensor k, Tensor v, int64_t l) {
        if (!cache) return std::pair{k, v};
        cache->k[size_t(l)].narrow(2, pos0, T).copy_(k.detach());
        cache->v[size_t(l)].narrow(2, pos0, T).copy_(v.detach());
        Tensor ka = cache->k[size_t(l)].narrow(2, 0, pos0 + T);
        Tensor va = cache->v[size_t(l)].narrow(2, 0, pos0 + T);
        if (ka.dtype() != k.dtype()) ka = ka.to(k.dtype());
        if (va.dtype() != v.dtype()) va = va.to(v.dtype());
        return std::pair{ka, va};
    };

    Tensor x = embedding(m.wte, ids); // (B, T, C)
    if (c.family == ModelFamily::gpt2) x = add(x, m.wpe.narrow(0, pos0, T));
    // The stream advances only when masks are drawn, so evaluation never shifts training's masks.
    x = drop ? dropout_(x, ++m.dropout_seed) : x;

    for (int64_t l = 0; l < c.n_layer; ++l) {
        const LayerWeights w = m.layers[size_t(l)]; // handles: shares the parameters
        const uint64_t seed0 = m.dropout_seed;
        if (drop) m.dropout_seed += 2;
        const std::vector<float> factors = m.rope_freq_factors;
        auto block = [=](const Tensor& xin) -> Tensor {
            Tensor q, k, v, a, mlp_out;
            if (c.family == ModelFamily::gpt2) {
                Tensor h = layer_norm(xin, w.ln1_w, w.ln1_b, c.norm_eps);
                Tensor qkv = linear(h, w.attn_w, w.attn_b); // (B, T, 3C)
                if (!cache) { // training and full forwards: q, k, v never leave the kernel's layout
                    a = attention_packed(qkv, H);
                } else {
                    auto p = split(qkv, {C, C, C}, 2);
                    q = heads(p[0], H), k = heads(p[1], H), v = heads(p[2], H);
                }
            } else {
                Tensor h = rms_norm(xin, w.in_norm, c.norm_eps);
                q = heads(matmul(h, w.q_w.t()), H);
                k = heads(matmul(h, w.k_w.t()), Hkv);
                v = heads(matmul(h, w.v_w.t()), Hkv);
                if (factors.empty()) {
                    RopeOptions ro{.theta = c.rope_theta, .pos_offset = pos0};
                    q = rope(q, ro);
                    k = rope(k, ro);
                } else {
                    q = rope_with_factors(q, c, pos0, factors);
                    k = rope_with_factors(k, c, pos0, factors);
                }
            }
            if (!a.defined()) {
                auto [ka, va] = with_cache(k, v, l);
                a = attention(q, ka, va).permute({0, 2, 1, 3}).reshape({B, T, H * D});
            }
            Tensor x2;
            if (c.family == ModelFamily::gpt2) {
                x2 = add(xin, dropout_(linear(a, w.proj_w, w.proj_b), seed0 + 1));
                Tensor h = layer_norm(x2, w.ln2_w, w.ln2_b, c.norm_eps);
                h = linear(h, w.fc_w, w.fc_b, /*gelu=*/true); // GELU-tanh
                mlp_out = linear(h, w.fc2_w, w.fc2_b);
            } else {
                x2 = add(xin, dropout_(matmul(a, w.o_w.t()), seed0 + 1));
                Tensor h = rms_norm(x2, w.post_norm, c.norm_eps);
                Tensor g = mul(silu(matmul(h, w.gate_w.t())), matmul(h, w.up_w.t()));
                mlp_out = matmul(g, w.down_w.t());
            }
            return add(x2, dropout_(mlp_out, seed0 + 2));
        };
        // Checkpointing recomputes the block, so it can't also append to a KV cache.
        x = c.checkpoint_activations && !cache ? checkpointed(block, x) : block(x);
    }
    if (cache) cache->length = pos0 + T;
    return c.family == ModelFamily::gpt2 ? layer_norm(x, m.lnf_w, m.lnf_b, c.norm_eps)
                                         : rms_norm(x, m.lnf_w, c.norm_eps);
}

namespace {
// Rows-by-weights product for the batched decode step: x (S, K), w (K, N) -> (S, N). The CPU
// matmul's few-row kernels (up to 16 rows) sum every row in the same order whatever the row
// count, so S is cut into groups of 16 and a sequence's output never depends on its neighbours.
Tensor step_matmul(const Tensor& x, const Tensor& w) {
    constexpr int64_t kGroup = 16;
    const int64_t S = x.size(0);
    if (S <= kGroup) return matmul(x, w);
    std::vector<Tensor> parts;
    for (int64_t s = 0; s < S; s += kGroup)
        parts.push_back(matmul(x.narrow(0, s, std::min(kGroup, S - s)), w));
    return concat(parts, 0);
}
} // namespace

Tensor Transformer::decode_step(std::span<const int64_t> ids_in, std::span<KVCache* const> caches) {
    const ModelConfig& c = cfg_;
    Impl& m = *impl_;
    const int64_t S = int64_t(ids_in.size()), C = c.n_embd, D = c.dim_head();
    const int64_t H = c.n_head, Hkv = c.n_head_kv;
    FORGE_CHECK(S > 0, "[transformer] decode_step of no sequences");
    FORGE_CHECK(caches.size() == ids_in.size(), "[transformer] decode_step: ", S, " ids but ",
                caches.size(), " caches");
    std::vector<int64_t> pos(static_cast<size_t>(S), 0);
    for (int64_t s = 0; s < S; ++s) {
        const KVCache* kc = caches[size_t(s)];
        FORGE_CHECK(kc && int64_t(kc->k.size()) == c.n_layer && kc->k[0].size(0) == 1,
                    "[transformer] decode_step: cache ", s,
                    " was made for another model or is not batch 1");
        FORGE_CHECK(kc->length < kc->capacity && kc->length < c.n_ctx, "[transformer] decode_step: "
                    "cache ", s, " is full (", kc->length, " of ", kc->capacity, " positions)");
        pos[size_t(s)] = kc->length;
    }
    NoGradGuard no_grad;
    const std::vector<int64_t> ids_v(ids_in.begin(), ids_in.end());
    const Device dev = m.wte.device(); // positions follow the weights
    const Tensor ids = Tensor::from_vector(ids_v, {S}); // host ids: embedding() copies them
    Tensor x = embedding(m.wte, ids); // (S, C)
    if (c.family == ModelFamily::gpt2)
        x = add(x, embedding(m.wpe, Tensor::from_vector(pos, {S}).to(dev)));

    // Row s of t (S, n*D) as one query/key step: (1, n, 1, D).
    auto head_row = [D](const Tensor& t, int64_t s, int64_t n) {
        return t.narrow(0, s, 1).reshape({1, 1, n, D}).permute({0, 2, 1, 3});
    };
    for (int64_t l = 0; l < c.n_layer; ++l) {
        const LayerWeights& w = m.layers[size_t(l)];
        Tensor q, k, v;
        if (c.family == ModelFamily::gpt2) {
            Tensor h = layer_norm(x, w.ln1_w, w.ln1_b, c.norm_eps);
            auto p = split(add(step_matmul(h, w.attn_w), w.attn_b), {C, C, C}, 1);
            q = p[0], k = p[1], v = p[2];
        } else {
            Tensor h = rms_norm(x, w.in_norm, c.norm_eps);
            q = step_matmul(h, w.q_w.t()), k = step_matmul(h, w.k_w.t());
            v = step_matmul(h, w.v_w.t());
        }
        // Attention per sequence: its own position, its own cache.
        std::vector<Tensor> rows;
        rows.reserve(size_t(S));
        for (int64_t s = 0; s < S; ++s) {
            KVCache& kc = *caches[size_t(s)];
            const int64_t p0 = pos[size_t(s)];
            Tensor qs = head_row(q, s, H), ks = head_row(k, s, Hkv);
            if (c.family == ModelFamily::llama) {
                if (m.rope_freq_factors.empty()) {
                    RopeOptions ro{.theta = c.rope_theta, .pos_offset = p0};
                    qs = rope(qs, ro);
                    ks = rope(ks, ro);
                } else {
                    qs = rope_with_factors(qs, c, p0, m.rope_freq_factors);
                    ks = rope_with_factors(ks, c, p0, m.rope_freq_factors);
                }
            }
            kc.k[size_t(l)].narrow(2, p0, 1).copy_(ks);
            kc.v[size_t(l)].narrow(2, p0, 1).copy_(head_row(v, s, Hkv));
            Tensor a = attention(qs, kc.k[size_t(l)].narrow(2, 0, p0 + 1),
                                 kc.v[size_t(l)].narrow(2, 0, p0 + 1));
            rows.push_back(a.permute({0, 2, 1, 3}).reshape({1, H * D}));
        }
        Tensor a = S == 1 ? rows[0] : concat(rows, 0); // (S, C)
        if (c.family == ModelFamily::gpt2) {
            x = add(x, add(step_matmul(a, w.proj_w), w.proj_b));
            Tensor h = layer_norm(x, w.ln2_w, w.ln2_b, c.norm_eps);
            h = gelu(add(step_matmul(h, w.fc_w), w.fc_b), GeluApprox::tanh);
            x = add(x, add(step_matmul(h, w.fc2_w), w.fc2_b));
        } else {
            x = add(x, step_matmul(a, w.o_w.t()));
            Tensor h = rms_norm(x, w.post_norm, c.norm_eps);
            Tensor g = mul(silu(step_matmul(h, w.gate_w.t())), step_matmul(h, w.up_w.t()));
            x = add(x, step_matmul(g, w.down_w.t()));
        }
    }
    for (KVCache* kc : caches) ++kc->length;
    return c.family == ModelFamily::gpt2 ? layer_norm(x, m.lnf_w, m.lnf_b, c.norm_eps)
                                         : rms_norm(x, m.lnf_w, c.norm_eps);
}

Tensor Transformer::forward(const Tensor& ids, KVCache* cache) {
    Tensor h = hidden(ids, cache);
    const Tensor& head = impl_->head.defined() ? impl_->head : impl_->wte;
    return matmul(h, head.t()); // (B, T, V)
}

Tensor Transformer::loss(const Tensor& ids, const Tensor& targets, int64_t ignore_index) {
    FORGE_CHECK(targets.defined() && targets.shape() == ids.shape(), "[transformer] targets ",
                targets.defined() ? shape_str(targets.shape()) : "undefined",
                " must match ids ", shape_str(ids.shape()));
    // The head and the loss in one op: the (B T, V) logits are never materialized whole.
    Tensor h = hidden(ids, nullptr);
    const Tensor& head = impl_->head.defined() ? impl_->head : impl_->wte; // (V, C)
    const int64_t N = ids.numel();
    return linear_cross_entropy(h.reshape({N, h.size(-1)}), head, targets.reshape({N}),
                                ignore_index);
}

} // namespace forge
