// The inference engine's forward pass over ggml-typed weights. Activations are f32 (T, C) rows;
// every linear layer is one quantized GEMM (prefill, T rows) or GEMV (decode, T = 1) split over
// the worker pool by output rows. The KV cache of a sequence is f32, per layer
// (n_head_kv, capacity, head_dim), and attention reads only positions [0, length).
#include <forge/infer/quant_lm.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include <sys/mman.h>

#include <forge/core/error.h>
#include <forge/core/tensor.h>
#include <forge/formats/gguf_model.h>
#include <forge/models/transformer.h>

#include "backends/cpu/quant/packed_rows.h"
#include "backends/cpu/quant/qkernels.h"
#include "backends/cpu/simd/nn_kernels.h"
#include "infer/attention.h"
#include "infer/worker_pool.h"

namespace forge::infer {

using quant::GgmlType;
namespace cq = forge::cpu::quant;

namespace {

// A weight matrix: `rows` outputs of `cols` inputs, row r at data + r * stride; x16: rows
// repacked in groups of 16 (packed_rows.h).
struct Mat {
    GgmlType type = GgmlType::f32;
    const uint8_t* data = nullptr;
    int64_t rows = 0, cols = 0, stride = 0;
    bool x16 = false;
    bool defined() const { return data != nullptr; }
    cq::ActLayout act_layout() const {
        return x16 ? cq::act_layout_x16(type, cols) : cq::act_layout(type, cols);
    }
    // Y[n * ldy + m] = dot(row m, activation row n), m in [m0, m1)
    void gemm(int64_t m0, int64_t m1, const cq::ActLayout& L, const uint8_t* A, int64_t a_stride,
              int64_t N, float* Y, int64_t ldy) const {
        if (x16) return cq::gemm_x16(type, data, rows, m0, m1, L, A, a_stride, N, Y, ldy);
        cq::gemm(type, data, stride, m0, m1, L, A, a_stride, N, Y, ldy);
    }
};

struct Layer {
    std::vector<float> n1_w, n1_b, n2_w, n2_b;
    Mat q, k, v, qkv, o, gate, up, down;
    std::vector<float> qkv_b, o_b, up_b, down_b; // gpt2
};

// 64-byte aligned scratch that only grows.
struct Scratch {
    struct Free {
        void operator()(void* p) const { std::free(p); }
    };
    std::unique_ptr<uint8_t, Free> p;
    size_t n = 0;
    uint8_t* get(size_t bytes) {
        if (bytes > n) {
            n = (bytes + 63) / 64 * 64;
            p.reset(static_cast<uint8_t*>(std::aligned_alloc(64, n)));
            FORGE_CHECK(p != nullptr, "[infer] out of memory allocating ", n, " bytes");
        }
        return p.get();
    }
    float* f(size_t count) { return reinterpret_cast<float*>(get(count * 4)); }
};

struct QState : CausalLM::State {
    int64_t len = 0, cap = 0, limit = 0; // cap: limit rounded up to whole key tiles
    // k: (n_layer, n_head_kv, cap / 16, head_dim, 16) (attention.h's tiles); v: (n_layer,
    // n_head_kv, cap, head_dim)
    std::vector<float> k, v;
    int64_t length() const override { return len; }
};

// Two matrices of one input read the same activation rows.
bool same_act(const Mat& a, const Mat& b) { return a.type == b.type && a.x16 == b.x16; }

float gelu_tanh(float x) {
    const float c = 0.7978845608028654f; // sqrt(2 / pi)
    return 0.5f * x * (1.f + std::tanh(c * (x + 0.044715f * x * x * x)));
}

} // namespace

struct QuantLM::Impl {
    ModelConfig cfg;
    EngineOptions opts;
    std::shared_ptr<const void> keep_alive;
    std::vector<std::vector<uint8_t>> owned; // converted tensors
    Scratch packed;                          // x16-repacked matrices, one arena
    std::vector<const void*> mapped_sources; // of matrices read from a file mapping
    Mat tok, pos, out;
    std::vector<float> out_norm_w, out_norm_b;
    std::vector<Layer> layers;
    std::vector<float> inv_freq; // per rotated pair
    std::unique_ptr<WorkerPool> pool;
    std::mutex mu;
    Scratch s_x, s_h, s_q, s_k, s_v, s_att, s_ff, s_ff2, s_act, s_act2, s_act3;

    int64_t grain(int64_t rows) const {
        const int64_t want = rows / (int64_t(pool->size()) * 4);
        return std::max<int64_t>(16, (want + 15) / 16 * 16);
    }

    struct Act {
        cq::ActLayout L;
        const uint8_t* data;
        int64_t stride;
    };
    // x: (T, w.cols) f32 rows -> the activation rows that w reads.
    Act quantize(const Mat& w, const float* x, int64_t T, Scratch& buf) {
        const int64_t K = w.cols;
        Act a{w.act_layout(), nullptr, 0};
        if (a.L.kind == cq::ActKind::f32) {
            a.data = reinterpret_cast<const uint8_t*>(x);
            a.stride = K * 4;
            return a;
        }
        uint8_t* out = buf.get(size_t(T * a.L.row_bytes));
        const int64_t g = std::max<int64_t>(1, T / (int64_t(pool->size()) * 4));
        pool->parallel_for(T, g, [&](int64_t b, int64_t e) {
            cq::quantize_act(a.L, x + b * K, K, e - b, out + b * a.L.row_bytes);
        });
        a.data = out;
        a.stride = a.L.row_bytes;
        return a;
    }
    // y: (T, w.rows) = x W^T (+ bias)
    void matmul(const Mat& w, const Act& a, int64_t T, float* y, const std::vector<float>* bias) {
        pool->parallel_for(w.rows, grain(w.rows), [&](int64_t b, int64_t e) {
            w.gemm(b, e, a.L, a.data, a.stride, T, y, w.rows);
            if (bias)
                for (int64_t t = 0; t < T; ++t)
                    for (int64_t m = b; m < e; ++m) y[t * w.rows + m] += (*bias)[size_t(m)];
        });
    }
    // Several products of one input in one pass over the pool (Q, K, V; gate, up): fewer
    // synchronizations per token. acts[i] is the activation for mats[i] (shared when types agree).
    struct Out {
        const Mat* w;
        const Act* a;
        float* y;
    };
    void matmul_multi(std::initializer_list<Out> outs, int64_t T) {
        struct Chunk {
            const Out* o;
            int64_t b, e;
        };
        std::vector<Chunk> chunks;
        for (const Out& o : outs) {
            const int64_t g = grain(o.w->rows);
            for (int64_t b = 0; b < o.w->rows; b += g) chunks.push_back({&o, b, std::min(o.w->rows, b + g)});
        }
        pool->parallel_for(int64_t(chunks.size()), 1, [&](int64_t cb, int64_t ce) {
            for (int64_t c = cb; c < ce; ++c) {
                const Chunk& ch = chunks[size_t(c)];
                const Out& o = *ch.o;
                o.w->gemm(ch.b, ch.e, o.a->L, o.a->data, o.a->stride, T, o.y, o.w->rows);
            }
        });
    }
    void linear(const Mat& w, const float* x, int64_t T, float* y,
                const std::vector<float>* bias = nullptr) {
        matmul(w, quantize(w, x, T, s_act), T, y, bias);
    }

    void norm(const float* x, float* y, int64_t T, const std::vector<float>& w,
              const std::vector<float>& b) const {
        const int64_t C = cfg.n_embd;
        for (int64_t t = 0; t < T; ++t) {
            const float* xr = x + t * C;
            float* yr = y + t * C;
            if (cfg.family == ModelFamily::llama) {
                double ss = 0;
                for (int64_t i = 0; i < C; ++i) ss += double(xr[i]) * xr[i];
                const float r = float(1.0 / std::sqrt(ss / double(C) + cfg.norm_eps));
                for (int64_t i = 0; i < C; ++i) yr[i] = xr[i] * r * w[size_t(i)];
            } else {
                double s = 0, ss = 0;
                for (int64_t i = 0; i < C; ++i) s += xr[i];
                const double mean = s / double(C);
                for (int64_t i = 0; i < C; ++i) ss += (xr[i] - mean) * (xr[i] - mean);
                const float r = float(1.0 / std::sqrt(ss / double(C) + cfg.norm_eps));
                for (int64_t i = 0; i < C; ++i)
                    yr[i] = float(xr[i] - mean) * r * w[size_t(i)] + b[size_t(i)];
            }
        }
    }

    // Rotates adjacent pairs (ggml's "normal" RoPE, on Q/K rows permuted by the converter).
    void rope(float* x, int64_t T, int64_t n_heads, int64_t pos0) const {
        const int64_t D = cfg.dim_head(), half = D / 2;
        for (int64_t t = 0; t < T; ++t) {
            for (int64_t i = 0; i < half; ++i) {
                const double ang = double(pos0 + t) * double(inv_freq[size_t(i)]);
                const float c = float(std::cos(ang)), s = float(std::sin(ang));
                for (int64_t h = 0; h < n_heads; ++h) {
                    float* p = x + (t * n_heads + h) * D + 2 * i;
                    const float a = p[0], b = p[1];
                    p[0] = a * c - b * s;
                    p[1] = a * s + b * c;
                }
            }
        }
    }

    void forward(QState& st, std::span<const TokenId> ids, bool all, std::vector<float>& logits);
};

namespace {

Mat to_mat(QuantLM::Impl& m, const std::string& name, const TensorRef& t, int64_t rows,
           int64_t cols) {
    FORGE_CHECK(t.ne.size() == 2 && t.ne[0] == cols && t.ne[1] == rows, "[infer] tensor ", name,
                " has shape [", t.ne.size() > 0 ? t.ne[0] : -1, ", ",
                t.ne.size() > 1 ? t.ne[1] : -1, "] (ggml order); expected [", cols, ", ", rows,
                "]");
    Mat w{t.type, static_cast<const uint8_t*>(t.data), rows, cols, quant::row_bytes(t.type, cols)};
    if (cq::kernel_type(t.type)) return w;
    // Types without a kernel: BF16 widens to F32 (exact); the rest requantize to Q8_0.
    const GgmlType to = t.type == GgmlType::bf16 || cols % 32 ? GgmlType::f32 : GgmlType::q8_0;
    const int64_t rb = quant::row_bytes(to, cols);
    auto& buf = m.owned.emplace_back(size_t(rows * rb));
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
        quant::dequantize_row(t.type, w.data + r * w.stride, row.data(), cols);
        quant::quantize_row(to, row.data(), buf.data() + r * rb, cols);
    }
    return {to, buf.data(), rows, cols, rb};
}

// Moves every matrix into one arena, 2 MiB aligned and advised for huge pages: decode streams
// all of it per token, and from 4 KiB pages (of the file mapping, or anonymous) it streams at
// about half the rate (120m Q8_0 decode, 1 thread: 92 vs 190 tokens/s). F32 / F16 / Q8_0 / Q4_0
// matrices of 16 rows or more are repacked into the x16 form on the way when the AVX-512 VNNI
// kernels run; the rest (Q4_K) are copied as they are. A matrix read from a file mapping then
// gives its pages back, so the arena replaces the original in memory instead of adding to it.
void pack_all(QuantLM::Impl& m, const std::vector<Mat*>& mats) {
    const bool x16 = cq::quant_isa() == cq::QuantIsa::avx512;
    const int64_t huge = int64_t(2) << 20;
    int64_t total = 0;
    for (const Mat* w : mats) total += (w->rows * w->stride + 63) / 64 * 64;
    if (total == 0) return;
    total = (total + huge - 1) / huge * huge;
    void* arena = nullptr;
    FORGE_CHECK(posix_memalign(&arena, size_t(huge), size_t(total)) == 0,
                "[infer] out of memory allocating ", total, " bytes for repacked weights");
    m.packed.p.reset(static_cast<uint8_t*>(arena));
    m.packed.n = size_t(total);
    madvise(arena, size_t(total), MADV_HUGEPAGE); // a hint: without it, 4 KiB pages
    uint8_t* at = m.packed.p.get();
    const int64_t page = 4096;
    for (Mat* w : mats) {
        const int64_t bytes = w->rows * w->stride;
        const bool pack = x16 && cq::packable(w->type) && w->rows >= cq::kPackRows;
        if (pack) cq::pack_x16(w->type, w->data, w->rows, w->cols, at);
        else std::memcpy(at, w->data, size_t(bytes));
        const bool from_map = std::find(m.mapped_sources.begin(), m.mapped_sources.end(),
                                        static_cast<const void*>(w->data)) != m.mapped_sources.end();
        if (from_map) { // the whole pages inside the source
            const auto b = (reinterpret_cast<uintptr_t>(w->data) + page - 1) / page * page;
            const auto e = (reinterpret_cast<uintptr_t>(w->data) + uintptr_t(bytes)) / page * page;
            if (e > b) madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
        }
        w->data = at;
        w->x16 = pack;
        at += (bytes + 63) / 64 * 64;
    }
}

} // namespace

void attend_row(const float* q, const float* K, const float* V, int64_t n, int64_t D, float scale,
                float* scores, float* out) {
    if (D % 16 == 0 && cpu::nn::active_isa() == cpu::nn::Isa::avx512)
        return avx512::attend_row(q, K, V, n, D, scale, scores, out);
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {
        float s = 0;
        for (int64_t d = 0; d < D; ++d) s += q[d] * K[key_index(j, d, D)];
        scores[j] = s * scale;
        mx = std::max(mx, scores[j]);
    }
    float sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += (scores[j] = std::exp(scores[j] - mx));
    const float inv = 1.f / sum;
    for (int64_t d = 0; d < D; ++d) out[d] = 0;
    for (int64_t j = 0; j < n; ++j) {
        const float p = scores[j] * inv;
        for (int64_t d = 0; d < D; ++d) out[d] += p * V[j * D + d];
    }
}

void attend_rows(const float* q, int64_t ldq, int nq, const float* K, const float* V, int64_t n0,
                 int64_t D, float scale, float* scores, float* out, int64_t ldo) {
    if (D % 16 == 0 && D <= 128 && cpu::nn::active_isa() == cpu::nn::Isa::avx512)
        return avx512::attend_rows(q, ldq, nq, K, V, n0, D, scale, scores, out, ldo);
    for (int i = 0; i < nq; ++i) attend_row(q + i * ldq, K, V, n0 + i, D, scale, scores, out + i * ldo);
}

void silu_mul(float* g, const float* u, int64_t n) {
    if (cpu::nn::active_isa() == cpu::nn::Isa::avx512) return avx512::silu_mul(g, u, n);
    for (int64_t i = 0; i < n; ++i) g[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
}

QuantLM::QuantLM(const ModelConfig& cfg, const Lookup& lookup,
                 std::shared_ptr<const void> keep_alive, EngineOptions opts)
    : impl_(new Impl) {
    Impl& m = *impl_;
    cfg.validate();
    m.cfg = cfg;
    m.opts = opts;
    m.keep_alive = std::move(keep_alive);
    m.pool = std::make_unique<WorkerPool>(opts.n_threads);
    const int64_t C = cfg.n_embd, D = cfg.dim_head(), H = cfg.n_head, Hkv = cfg.n_head_kv;
    const int64_t F = cfg.n_ff, V = cfg.vocab_size;
    auto need = [&](const std::string& name) {
        auto t = lookup(name);
        FORGE_CHECK(t.has_value() && t->data, "[infer] the model has no tensor '", name, "'");
        return *t;
    };
    auto mat = [&](const std::string& name, int64_t rows, int64_t cols) {
        const TensorRef t = need(name);
        if (t.in_mapping) m.mapped_sources.push_back(t.data);
        return to_mat(m, name, t, rows, cols);
    };
    auto vec = [&](const std::string& name, int64_t n) {
        const TensorRef t = need(name);
        int64_t numel = 1;
        for (int64_t d : t.ne) numel *= d;
        FORGE_CHECK(numel == n, "[infer] tensor ", name, " has ", numel, " values; expected ", n);
        std::vector<float> out(static_cast<size_t>(n));
        quant::dequantize_row(t.type, t.data, out.data(), n);
        return out;
    };
    const bool gpt2 = cfg.family == ModelFamily::gpt2;
    m.tok = mat("token_embd.weight", V, C);
    if (gpt2) m.pos = mat("position_embd.weight", cfg.n_ctx, C);
    for (int64_t l = 0; l < cfg.n_layer; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        Layer L;
        L.n1_w = vec(p + "attn_norm.weight", C);
        L.n2_w = vec(p + "ffn_norm.weight", C);
        L.o = mat(p + "attn_output.weight", C, H * D);
        L.up = mat(p + "ffn_up.weight", F, C);
        L.down = mat(p + "ffn_down.weight", C, F);
        if (gpt2) {
            L.n1_b = vec(p + "attn_norm.bias", C);
            L.n2_b = vec(p + "ffn_norm.bias", C);
            L.qkv = mat(p + "attn_qkv.weight", 3 * C, C);
            L.qkv_b = vec(p + "attn_qkv.bias", 3 * C);
            L.o_b = vec(p + "attn_output.bias", C);
            L.up_b = vec(p + "ffn_up.bias", F);
            L.down_b = vec(p + "ffn_down.bias", C);
        } else {
            L.q = mat(p + "attn_q.weight", H * D, C);
            L.k = mat(p + "attn_k.weight", Hkv * D, C);
            L.v = mat(p + "attn_v.weight", Hkv * D, C);
            L.gate = mat(p + "ffn_gate.weight", F, C);
        }
        m.layers.push_back(std::move(L));
    }
    m.out_norm_w = vec("output_norm.weight", C);
    if (gpt2) m.out_norm_b = vec("output_norm.bias", C);
    const bool tied = !(lookup("output.weight") && lookup("output.weight")->data);
    m.out = tied ? m.tok : mat("output.weight", V, C);
    // Token rows are looked up in GGUF layout: tied embeddings stay unpacked.
    std::vector<Mat*> to_pack;
    if (!tied) to_pack.push_back(&m.out);
    for (Layer& L : m.layers)
        for (Mat* w : {&L.q, &L.k, &L.v, &L.qkv, &L.o, &L.gate, &L.up, &L.down})
            if (w->defined()) to_pack.push_back(w);
    pack_all(m, to_pack);
    m.mapped_sources.clear();
    // converted matrices now live in the arena; converted embeddings stay where they are
    std::erase_if(m.owned, [&](const std::vector<uint8_t>& b) {
        return b.data() != m.tok.data && b.data() != m.pos.data;
    });
    if (!gpt2) {
        m.inv_freq.resize(size_t(D / 2));
        std::vector<float> factors(size_t(D / 2), 1.f);
        if (auto rf = lookup("rope_freqs.weight"); rf && rf->data)
            factors = vec("rope_freqs.weight", D / 2);
        else if (cfg.rope_scaling_factor > 0) {
            // Llama 3 scaling, as llama.cpp's converter writes rope_freqs.
            const double lo = cfg.rope_original_max_pos / cfg.rope_low_freq_factor;
            const double hi = cfg.rope_original_max_pos / cfg.rope_high_freq_factor;
            for (int64_t i = 0; i < D / 2; ++i) {
                const double f = std::pow(double(cfg.rope_theta), -2.0 * double(i) / double(D));
                const double wl = 2 * M_PI / f;
                double scaled = f;
                if (wl > lo) scaled = f / cfg.rope_scaling_factor;
                else if (wl >= hi) {
                    const double sm = (cfg.rope_original_max_pos / wl - cfg.rope_low_freq_factor) /
                                      (cfg.rope_high_freq_factor - cfg.rope_low_freq_factor);
                    scaled = (1 - sm) * f / cfg.rope_scaling_factor + sm * f;
                }
                factors[size_t(i)] = float(f / scaled);
            }
        }
        for (int64_t i = 0; i < D / 2; ++i)
            m.inv_freq[size_t(i)] =
                float(std::pow(double(cfg.rope_theta), -2.0 * double(i) / double(D)) /
                      double(factors[size_t(i)]));
    }
}

QuantLM::~QuantLM() = default;

int64_t QuantLM::n_vocab() const { return impl_->cfg.vocab_size; }
int64_t QuantLM::n_ctx() const { return impl_->cfg.n_ctx; }
const ModelConfig& QuantLM::config() const { return impl_->cfg; }
int QuantLM::n_threads() const { return impl_->pool->size(); }

int64_t QuantLM::weight_bytes() const {
    int64_t n = impl_->out.rows * impl_->out.stride;
    for (const Layer& L : impl_->layers)
        for (const Mat* w : {&L.q, &L.k, &L.v, &L.qkv, &L.o, &L.gate, &L.up, &L.down})
            if (w->defined()) n += w->rows * w->stride;
    return n;
}

std::unique_ptr<CausalLM::State> QuantLM::new_state(int64_t capacity) {
    const ModelConfig& c = impl_->cfg;
    FORGE_CHECK(capacity > 0 && capacity <= c.n_ctx, "[infer] state capacity ", capacity,
                " must be in 1..", c.n_ctx);
    auto st = std::make_unique<QState>();
    st->cap = (capacity + kKeyTile - 1) / kKeyTile * kKeyTile; // whole key tiles
    st->limit = capacity;
    const size_t n = size_t(c.n_layer * c.n_head_kv * st->cap * c.dim_head());
    st->k.assign(n, 0.f);
    st->v.assign(n, 0.f);
    return st;
}

void QuantLM::eval(State& state, std::span<const TokenId> ids, std::vector<float>& logits) {
    auto* st = dynamic_cast<QState*>(&state);
    FORGE_CHECK(st != nullptr, "[infer] the state was not made by this model");
    FORGE_CHECK(!ids.empty(), "[infer] eval needs at least one token");
    std::lock_guard lock(impl_->mu);
    const int64_t chunk = std::max<int64_t>(1, impl_->opts.prefill_chunk);
    for (size_t b = 0; b < ids.size(); b += size_t(chunk)) {
        const size_t e = std::min(ids.size(), b + size_t(chunk));
        impl_->forward(*st, ids.subspan(b, e - b), false, logits);
    }
}

void QuantLM::eval_all(State& state, std::span<const TokenId> ids, std::vector<float>& logits) {
    auto* st = dynamic_cast<QState*>(&state);
    FORGE_CHECK(st != nullptr, "[infer] the state was not made by this model");
    FORGE_CHECK(!ids.empty(), "[infer] eval needs at least one token");
    std::lock_guard lock(impl_->mu);
    const int64_t chunk = std::max<int64_t>(1, impl_->opts.prefill_chunk), V = impl_->cfg.vocab_size;
    std::vector<float> all(ids.size() * size_t(V)), part;
    for (size_t b = 0; b < ids.size(); b += size_t(chunk)) {
        const size_t e = std::min(ids.size(), b + size_t(chunk));
        impl_->forward(*st, ids.subspan(b, e - b), true, part);
        std::copy(part.begin(), part.end(), all.begin() + std::ptrdiff_t(b * size_t(V)));
    }
    logits = std::move(all);
}

void QuantLM::Impl::forward(QState& st, std::span<const TokenId> ids, bool all,
                            std::vector<float>& logits) {
    const ModelConfig& c = cfg;
    const int64_t T = int64_t(ids.size()), C = c.n_embd, D = c.dim_head(), H = c.n_head;
    const int64_t Hkv = c.n_head_kv, F = c.n_ff, V = c.vocab_size, pos0 = st.len;
    const bool gpt2 = c.family == ModelFamily::gpt2;
    FORGE_CHECK(pos0 + T <= st.limit, "[infer] the sequence would reach ", pos0 + T,
                " positions; the state holds ", st.limit);
    for (TokenId id : ids)
        FORGE_CHECK(id >= 0 && id < V, "[infer] token id ", id, " is outside the vocabulary of ", V);

    float* x = s_x.f(size_t(T * C));
    float* h = s_h.f(size_t(T * std::max(C, H * D)));
    std::vector<float> row(static_cast<size_t>(C));
    for (int64_t t = 0; t < T; ++t) {
        quant::dequantize_row(tok.type, tok.data + int64_t(ids[size_t(t)]) * tok.stride, x + t * C, C);
        if (gpt2) {
            quant::dequantize_row(pos.type, pos.data + (pos0 + t) * pos.stride, row.data(), C);
            for (int64_t i = 0; i < C; ++i) x[t * C + i] += row[size_t(i)];
        }
    }
    const float scale = 1.f / std::sqrt(float(D));
    const int64_t group = H / Hkv, n_kv = pos0 + T;
    for (size_t l = 0; l < layers.size(); ++l) {
        const Layer& L = layers[l];
        norm(x, h, T, L.n1_w, L.n1_b);
        // q: (T, H, D); k, v: (T, Hkv, D), rows of ld_q / ld_kv floats
        const float *q, *k, *v;
        int64_t ld_q, ld_kv;
        if (gpt2) {
            float* qkv = s_q.f(size_t(T * 3 * C));
            linear(L.qkv, h, T, qkv, &L.qkv_b);
            q = qkv, k = qkv + C, v = qkv + 2 * C, ld_q = ld_kv = 3 * C;
        } else {
            float* qb = s_q.f(size_t(T * H * D));
            float* kb = s_k.f(size_t(T * Hkv * D));
            float* vb = s_v.f(size_t(T * Hkv * D));
            const Act a = quantize(L.q, h, T, s_act);
            const Act ak = same_act(L.k, L.q) ? a : quantize(L.k, h, T, s_act2);
            const Act av = same_act(L.v, L.q) ? a : same_act(L.v, L.k) ? ak : quantize(L.v, h, T, s_act3);
            matmul_multi({{&L.q, &a, qb}, {&L.k, &ak, kb}, {&L.v, &av, vb}}, T);
            rope(qb, T, H, pos0);
            rope(kb, T, Hkv, pos0);
            q = qb, k = kb, v = vb, ld_q = H * D, ld_kv = Hkv * D;
        }
        // Append K/V at positions pos0..pos0+T.
        float* kc = st.k.data() + size_t(int64_t(l) * Hkv * st.cap * D);
        float* vc = st.v.data() + size_t(int64_t(l) * Hkv * st.cap * D);
        for (int64_t t = 0; t < T; ++t)
            for (int64_t g = 0; g < Hkv; ++g) {
                for (int64_t d = 0; d < D; ++d)
                    kc[g * st.cap * D + key_index(pos0 + t, d, D)] = k[t * ld_kv + g * D + d];
                std::memcpy(vc + (g * st.cap + pos0 + t) * D, v + t * ld_kv + g * D, size_t(D) * 4);
            }
        // Causal attention over the cache: one work item per (head, block of query positions).
        float* att = s_att.f(size_t(T * H * D));
        const int64_t n_qb = (T + kQueryBlock - 1) / kQueryBlock;
        pool->parallel_for(H * n_qb, std::max<int64_t>(1, H * n_qb / (int64_t(pool->size()) * 4)),
                           [&](int64_t b, int64_t e) {
            thread_local std::vector<float> scores;
            const size_t need = size_t(kQueryBlock * (n_kv + kKeyTile));
            if (scores.size() < need) scores.resize(need);
            for (int64_t it = b; it < e; ++it) {
                const int64_t hh = it / n_qb, t = it % n_qb * kQueryBlock, g = hh / group;
                const int nq = int(std::min<int64_t>(kQueryBlock, T - t));
                attend_rows(q + t * ld_q + hh * D, ld_q, nq, kc + g * st.cap * D,
                            vc + g * st.cap * D, pos0 + t + 1, D, scale, scores.data(),
                            att + t * H * D + hh * D, H * D);
            }
        });
        float* proj = s_h.f(size_t(T * std::max(C, H * D)));
        linear(L.o, att, T, proj, gpt2 ? &L.o_b : nullptr);
        for (int64_t i = 0; i < T * C; ++i) x[i] += proj[i];

        norm(x, h, T, L.n2_w, L.n2_b);
        float* f1 = s_ff.f(size_t(T * F));
        if (gpt2) {
            linear(L.up, h, T, f1, &L.up_b);
            for (int64_t i = 0; i < T * F; ++i) f1[i] = gelu_tanh(f1[i]);
        } else {
            float* f2 = s_ff2.f(size_t(T * F));
            const Act a = quantize(L.gate, h, T, s_act);
            const Act au = same_act(L.up, L.gate) ? a : quantize(L.up, h, T, s_act2);
            matmul_multi({{&L.gate, &a, f1}, {&L.up, &au, f2}}, T);
            pool->parallel_for(T, std::max<int64_t>(1, T / (int64_t(pool->size()) * 4)),
                               [&](int64_t b, int64_t e) { silu_mul(f1 + b * F, f2 + b * F, (e - b) * F); });
        }
        float* down = s_h.f(size_t(T * std::max(C, H * D)));
        linear(L.down, f1, T, down, gpt2 ? &L.down_b : nullptr);
        for (int64_t i = 0; i < T * C; ++i) x[i] += down[i];
    }
    st.len = pos0 + T;
    const int64_t rows = all ? T : 1;
    const float* xs = all ? x : x + (T - 1) * C;
    norm(xs, h, rows, out_norm_w, out_norm_b);
    logits.resize(size_t(rows * V));
    linear(out, h, rows, logits.data());
}

std::unique_ptr<QuantLM> QuantLM::random(const ModelConfig& c, GgmlType type, uint64_t seed,
                                         EngineOptions opts) {
    c.validate();
    using Store = std::map<std::string, std::pair<TensorRef, std::vector<uint8_t>>>;
    auto store = std::make_shared<Store>();
    const int64_t C = c.n_embd, D = c.dim_head(), H = c.n_head, Hkv = c.n_head_kv, F = c.n_ff;
    const int64_t V = c.vocab_size;
    // Uniform in [-a, a] with the variance of N(0, 0.02^2): a = 0.02 sqrt(3).
    auto fill = [](std::vector<float>& v, uint64_t s) {
        uint64_t x = s * 0x9E3779B97F4A7C15ull + 1;
        for (auto& f : v) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            f = (float(x >> 40) * 0x1p-24f * 2.f - 1.f) * 0.0346f;
        }
    };
    uint64_t k = seed;
    auto mat = [&](const std::string& name, int64_t rows, int64_t cols) {
        const GgmlType t = formats::gguf_tensor_type(name, cols, 2, type); // as save_gguf would
        const int64_t rb = quant::row_bytes(t, cols);
        auto& e = (*store)[name];
        e.second.resize(size_t(rows * rb));
        std::vector<float> row(static_cast<size_t>(cols));
        for (int64_t r = 0; r < rows; ++r) {
            fill(row, ++k);
            quant::quantize_row(t, row.data(), e.second.data() + r * rb, cols);
        }
        e.first = TensorRef{t, {cols, rows}, nullptr};
    };
    auto vec = [&](const std::string& name, int64_t n, float value) {
        auto& e = (*store)[name];
        std::vector<float> v(static_cast<size_t>(n), value);
        e.second.resize(size_t(n) * 4);
        std::memcpy(e.second.data(), v.data(), size_t(n) * 4);
        e.first = TensorRef{GgmlType::f32, {n}, nullptr};
    };
    const bool gpt2 = c.family == ModelFamily::gpt2;
    mat("token_embd.weight", V, C);
    if (gpt2) mat("position_embd.weight", c.n_ctx, C);
    for (int64_t l = 0; l < c.n_layer; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        vec(p + "attn_norm.weight", C, 1.f);
        vec(p + "ffn_norm.weight", C, 1.f);
        mat(p + "attn_output.weight", C, H * D);
        mat(p + "ffn_up.weight", F, C);
        mat(p + "ffn_down.weight", C, F);
        if (gpt2) {
            vec(p + "attn_norm.bias", C, 0.f);
            vec(p + "ffn_norm.bias", C, 0.f);
            mat(p + "attn_qkv.weight", 3 * C, C);
            vec(p + "attn_qkv.bias", 3 * C, 0.f);
            vec(p + "attn_output.bias", C, 0.f);
            vec(p + "ffn_up.bias", F, 0.f);
            vec(p + "ffn_down.bias", C, 0.f);
        } else {
            mat(p + "attn_q.weight", H * D, C);
            mat(p + "attn_k.weight", Hkv * D, C);
            mat(p + "attn_v.weight", Hkv * D, C);
            mat(p + "ffn_gate.weight", F, C);
        }
    }
    vec("output_norm.weight", C, 1.f);
    if (gpt2) vec("output_norm.bias", C, 0.f);
    if (!c.tie_embeddings) mat("output.weight", V, C);
    for (auto& [name, e] : *store) e.first.data = e.second.data();
    Lookup lookup = [store](const std::string& name) -> std::optional<TensorRef> {
        auto it = store->find(name);
        if (it == store->end()) return std::nullopt;
        return it->second.first;
    };
    return std::make_unique<QuantLM>(c, lookup, store, opts);
}

} // namespace forge::infer
