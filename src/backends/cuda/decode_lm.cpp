// CudaLM (include/forge/generate/cuda_lm.h): the weight copies (bf16 from a Transformer; Q8_0 /
// Q4_0 blocks or bf16 from GGUF tensors), per-state static buffers, the decode step as one
// persistent kernel or a list of decode_kernels launches, its CUDA graph, and the prefill through
// the model's ops (for GGUF, through an f32 Transformer of the dequantized weights, or step by
// step without one). The graph bakes in every pointer, so each state captures its own on its
// first decode step; token and position go through StepArgs in device memory.
#include <forge/generate/cuda_lm.h>

#include <cmath>
#include <cstdio>
#include <cstring>

#include <cuda_runtime.h>

#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/decode_kernels.h"
#include <forge/autograd/autograd.h>
#include <forge/core/device.h>
#include <forge/core/ops.h>
#include <forge/formats/gguf.h>
#include <forge/formats/gguf_model.h>
#include <forge/models/transformer.h>

namespace forge {

namespace dk = cuda::decode;

namespace {

const Device kGpu = Device::cuda(0);

// A bf16 copy on the GPU, (N, K) row-major.
Tensor bf16(const Tensor& w) {
    return w.to(kGpu).contiguous().to(DType::bf16).contiguous();
}
Tensor f32(const Tensor& w) {
    return w.to(kGpu).to(DType::f32).contiguous();
}

// Within each head of a q/k projection (n_head * D, C), rows (i, D/2 + i) made adjacent, so one
// warp of the GEMV holds both halves of a RoPE pair (decode_kernels.h, Epilogue::qkv).
Tensor pair_rope_rows(const Tensor& w, int64_t n_head, int64_t D) {
    const int64_t C = w.size(1);
    return w.reshape({n_head, 2, D / 2, C}).permute({0, 2, 1, 3}).reshape({n_head * D, C});
}

template <typename T> T* ptr(const Tensor& t) {
    return t.defined() ? t.data<T>() : nullptr;
}

// A matrix as the GEMVs read it: (rows, K) bf16, or rows of Q8_0 / Q4_0 blocks (u8 bytes).
struct Mat {
    Tensor t;
    dk::WeightFormat format = dk::WeightFormat::bf16;
    int64_t rows = 0;
    const void* data_ptr() const { return t.data_ptr(); }
    int64_t nbytes() const { return int64_t(t.nbytes()); }
};
Mat bf16_mat(const Tensor& w) {
    return {bf16(w), dk::WeightFormat::bf16, w.size(0)};
}

struct Layer {
    Mat qkv, proj, fc, fc2;                    // (N, K); Llama: fc = gate/up rows interleaved
    Tensor norm1_w, norm1_b, norm2_w, norm2_b; // f32
    Tensor qkv_b, proj_b, fc_b, fc2_b;         // f32 (GPT-2 only)
};

struct CudaState : CausalLM::State {
    int64_t len = 0, cap = 0;
    KVCache prefill_cache;    // the ops' f32 cache (1, Hkv, cap, D) for prompts
    int64_t prefill_len = 0;  // positions of prefill_cache that agree with k/v
    std::vector<Tensor> k, v; // (1, Hkv, cap, D) bf16 per layer: the decode cache
    Tensor x, q, att, hid, logits, partial, counters, args_dev;
    Tensor prompt_args;           // StepArgs per prompt token, when the prompt runs as decode steps
    Tensor layer_table, barrier;  // the persistent step's StepLayer per layer, its barrier count
    dk::StepArgs* args = nullptr; // args_dev's memory
    dk::StepArgs* host_args = nullptr; // pinned
    float* host_logits = nullptr;      // pinned (V)
    int32_t* host_tokens = nullptr;    // pinned, greedy()'s tokens
    int64_t host_tokens_cap = 0;
    cudaGraphExec_t graph = nullptr;

    int64_t length() const override { return len; }
    ~CudaState() override {
        if (graph)
            cudaGraphExecDestroy(graph);
        cudaFreeHost(host_args);
        cudaFreeHost(host_logits);
        cudaFreeHost(host_tokens);
    }
};

} // namespace

struct CudaLM::Impl {
    Transformer* model = nullptr; // null for GGUF tensors without one: prompts run as decode steps
    std::shared_ptr<Transformer> owned_model; // GGUF: the dequantized weights for prefill
    Options opts;
    ModelConfig cfg;
    bool gpt2 = true, graph_ok = true, persistent = false;
    Mat wte, head;                       // (V, C)
    Tensor wpe, lnf_w, lnf_b, rope_freq; // wpe f32; rope f64 (D/2)
    std::vector<Layer> layers;
    cudaStream_t stream = nullptr;
    int64_t weight_bytes = 0;

    Impl(Transformer* m, Options o, const ModelConfig& c) : model(m), opts(o), cfg(c) {}

    // One GEMV of the step, the matrix's format filled in.
    void gemv(const Mat& w, dk::GemvArgs g, void* st) const {
        g.w = w.data_ptr();
        g.format = w.format;
        g.int8_dot = opts.int8_dot;
        dk::gemv(g, st);
    }

    // The matrices of a decode step, the head included.
    std::vector<const Mat*> matrices() const {
        std::vector<const Mat*> out = {&head};
        for (const Layer& w : layers)
            out.insert(out.end(), {&w.qkv, &w.proj, &w.fc, &w.fc2});
        return out;
    }

    // After the weights: the persistent step if every matrix and the embedding share a format
    // it takes (bf16, or Q8_0 / Q4_0 with int8 dot products) and the GPU holds its grid; the
    // bytes a step reads.
    void finish_setup() {
        bool uniform = true;
        weight_bytes = 0;
        for (const Mat* w : matrices()) {
            uniform = uniform && w->format == wte.format;
            weight_bytes += w->nbytes();
        }
        const bool takes = wte.format == dk::WeightFormat::bf16 || opts.int8_dot;
        persistent = opts.persistent && uniform && takes && dk::persistent_grid(step_shapes()) > 0;
        FORGE_CUDA_CHECK(cudaStreamSynchronize(stream));
    }

    // The persistent step's shapes (pointers unset).
    dk::PersistentStepArgs step_shapes() const {
        return {.n_layer = int(cfg.n_layer),
                .n_embd = int(cfg.n_embd),
                .n_ff = int(cfg.n_ff),
                .n_head = int(cfg.n_head),
                .n_kv = int(cfg.n_head_kv),
                .head_dim = int(cfg.dim_head()),
                .vocab = int(cfg.vocab_size),
                .chunk = attn_chunk,
                .norm = gpt2 ? dk::Norm::layer : dk::Norm::rms,
                .eps = cfg.norm_eps,
                .ffn = gpt2 ? dk::Epilogue::gelu : dk::Epilogue::swiglu,
                .format = wte.format};
    }

    // The decode step for the token and position in s.args: the launches the graph holds.
    void enqueue_step(CudaState& s) {
        void* st = stream;
        if (persistent) {
            dk::PersistentStepArgs a = step_shapes();
            a.layers = static_cast<const dk::StepLayer*>(s.layer_table.data_ptr());
            a.cap = int(s.cap);
            a.wte = wte.data_ptr(), a.wpe = ptr<float>(wpe), a.head = head.data_ptr();
            a.lnf_w = ptr<float>(lnf_w), a.lnf_b = ptr<float>(lnf_b);
            a.rope_inv_freq = ptr<double>(rope_freq);
            a.x = ptr<float>(s.x), a.q = ptr<float>(s.q), a.hid = ptr<float>(s.hid);
            a.logits = ptr<float>(s.logits), a.partial = ptr<float>(s.partial);
            a.args = s.args;
            a.barrier = static_cast<unsigned long long*>(s.barrier.data_ptr());
            dk::persistent_step(a, st);
            return;
        }
        const int64_t C = cfg.n_embd, D = cfg.dim_head(), H = cfg.n_head, Hkv = cfg.n_head_kv;
        dk::embed(wte.data_ptr(), wte.format, int(cfg.vocab_size), ptr<float>(wpe), int(C), s.args,
                  ptr<float>(s.x), st);
        const dk::Norm norm = gpt2 ? dk::Norm::layer : dk::Norm::rms;
        for (size_t l = 0; l < layers.size(); ++l) {
            const Layer& w = layers[l];
            dk::GemvArgs g{.n = int((H + 2 * Hkv) * D),
                           .k = int(C),
                           .x = ptr<float>(s.x),
                           .norm = norm,
                           .norm_w = ptr<float>(w.norm1_w),
                           .norm_b = ptr<float>(w.norm1_b),
                           .eps = cfg.norm_eps,
                           .epi = dk::Epilogue::qkv,
                           .bias = ptr<float>(w.qkv_b),
                           .out = ptr<float>(s.q)};
            g.n_q = int(H), g.n_kv = int(Hkv), g.head_dim = int(D);
            g.rope_inv_freq = ptr<double>(rope_freq);
            g.k_cache = s.k[l].data_ptr(), g.v_cache = s.v[l].data_ptr();
            g.cache_cap = int(s.cap), g.args = s.args;
            gemv(w.qkv, g, st);
            dk::attention({.q = ptr<float>(s.q),
                           .k_cache = s.k[l].data_ptr(),
                           .v_cache = s.v[l].data_ptr(),
                           .n_head = int(H),
                           .n_kv = int(Hkv),
                           .head_dim = int(D),
                           .cap = int(s.cap),
                           .chunk = attn_chunk,
                           .scale = float(1.0 / std::sqrt(double(D))),
                           .args = s.args,
                           .out = ptr<float>(s.att),
                           .partial = ptr<float>(s.partial),
                           .counters = ptr<unsigned>(s.counters)},
                          st);
            gemv(w.proj,
                 {.n = int(C),
                  .k = int(H * D),
                  .x = ptr<float>(s.att),
                  .epi = dk::Epilogue::residual,
                  .bias = ptr<float>(w.proj_b),
                  .out = ptr<float>(s.x)},
                 st);
            gemv(w.fc,
                 {.n = int(w.fc.rows),
                  .k = int(C),
                  .x = ptr<float>(s.x),
                  .norm = norm,
                  .norm_w = ptr<float>(w.norm2_w),
                  .norm_b = ptr<float>(w.norm2_b),
                  .eps = cfg.norm_eps,
                  .epi = gpt2 ? dk::Epilogue::gelu : dk::Epilogue::swiglu,
                  .bias = ptr<float>(w.fc_b),
                  .out = ptr<float>(s.hid)},
                 st);
            gemv(w.fc2,
                 {.n = int(C),
                  .k = int(cfg.n_ff),
                  .x = ptr<float>(s.hid),
                  .epi = dk::Epilogue::residual,
                  .bias = ptr<float>(w.fc2_b),
                  .out = ptr<float>(s.x)},
                 st);
        }
        gemv(head,
             {.n = int(cfg.vocab_size),
              .k = int(C),
              .x = ptr<float>(s.x),
              .norm = norm,
              .norm_w = ptr<float>(lnf_w),
              .norm_b = ptr<float>(lnf_b),
              .eps = cfg.norm_eps,
              .epi = dk::Epilogue::store,
              .out = ptr<float>(s.logits),
              .argmax = true,
              .args = s.args},
             st);
        dk::finish(s.args, st);
    }

    // One decode step, replaying the state's graph (captured on first use) when it can.
    void launch_step(CudaState& s) {
        if (opts.graph && graph_ok && !s.graph)
            capture(s);
        if (s.graph)
            FORGE_CUDA_CHECK(cudaGraphLaunch(s.graph, stream));
        else
            enqueue_step(s);
    }

    void capture(CudaState& s) {
        cudaGraph_t g = nullptr;
        std::string why;
        FORGE_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
        try {
            enqueue_step(s);
        } catch (const std::exception& e) {
            why = e.what();
        }
        cudaError_t rc = cudaStreamEndCapture(stream, &g);
        if (why.empty() && rc != cudaSuccess)
            why = cudaGetErrorString(rc);
        if (why.empty()) {
            rc = cudaGraphInstantiate(&s.graph, g, 0);
            if (rc != cudaSuccess)
                why = cudaGetErrorString(rc), s.graph = nullptr;
        }
        if (g)
            cudaGraphDestroy(g);
        if (!why.empty()) {
            cudaGetLastError(); // clear the capture's error
            graph_ok = false;
            std::fprintf(stderr,
                         "[cuda] decode step: CUDA graph capture failed (%s); "
                         "launching its kernels one by one\n",
                         why.c_str());
        }
    }

    static constexpr int attn_chunk = 64;
};

namespace {

// Shapes the decode kernels take (decode_kernels.h), before any copy.
void check_shapes(const ModelConfig& c, const CudaLM::Options& opts) {
    const int64_t C = c.n_embd, D = c.dim_head(), H = c.n_head, Hkv = c.n_head_kv, F = c.n_ff;
    FORGE_CHECK(dk::attn_supported(int(D)), "[cuda decode] head dim ", D,
                " is not supported (32, 64 or 128)");
    FORGE_CHECK(C % 8 == 0 && F % 8 == 0 && (H * D) % 8 == 0, "[cuda decode] n_embd (", C,
                ") and n_ff (", F, ") must be multiples of 8");
    FORGE_CHECK(H % Hkv == 0 && H / Hkv <= 8, "[cuda decode] ", H, " query heads over ", Hkv,
                " kv heads: at most 8 per kv head");
    FORGE_CHECK(opts.prefill_chunk > 0, "[cuda decode] prefill_chunk must be > 0");
}

// NeoX RoPE frequencies theta^(-2i/D) (D/2 of them, f64 on the GPU), divided by per-pair
// factors (Llama 3's scaling), or null for GPT-2.
Tensor rope_frequencies(const ModelConfig& c, const std::vector<float>& factors) {
    const int64_t D = c.dim_head();
    std::vector<double> inv(size_t(D / 2));
    for (int64_t i = 0; i < D / 2; ++i)
        inv[size_t(i)] = std::pow(double(c.rope_theta), -2.0 * double(i) / double(D)) /
                         double(factors[size_t(i)]);
    return Tensor::from_vector(inv, {D / 2}).to(kGpu);
}

// ---------------------------------------------------------------- GGUF tensors

using quant::GgmlType;

// The GEMV format of a GGUF matrix type: Q8_0 / Q4_0 blocks split into values and scales (the
// same bytes, in 16-byte aligned rows: decode_kernels.h), the float types as bf16 (as from a
// Transformer), other block types requantized to Q8_0 (QuantLM does the same for the types its
// kernels lack).
dk::WeightFormat gpu_format(GgmlType t) {
    switch (t) {
    case GgmlType::q4_0:
        return dk::WeightFormat::q4_0_split;
    case GgmlType::f32:
    case GgmlType::f16:
    case GgmlType::bf16:
        return dk::WeightFormat::bf16;
    default:
        return dk::WeightFormat::q8_0_split;
    }
}
// The wider of two formats (for matrices concatenated into one GEMV).
dk::WeightFormat wider(dk::WeightFormat a, dk::WeightFormat b) {
    auto rank = [](dk::WeightFormat f) {
        return f == dk::WeightFormat::bf16 ? 2 : f == dk::WeightFormat::q8_0_split ? 1 : 0;
    };
    return rank(a) >= rank(b) ? a : b;
}

// A GGUF matrix (rows, cols) in the file's bytes.
struct FileMat {
    std::string name;
    GgmlType type;
    int64_t rows, cols, stride; // stride: bytes per row
    const uint8_t* data;
};

// Rows of one or more matrices in one format on the GPU: `order` lists (matrix, row) pairs.
// Rows already in `f` are copied; others go through f32 (quant::dequantize_row) to bf16 or to
// the blocks (quant::quantize_row, llama.cpp's rounding).
Mat upload(const std::vector<std::pair<const FileMat*, int64_t>>& order, dk::WeightFormat f) {
    const int64_t cols = order.front().first->cols, n = int64_t(order.size());
    const int64_t rb = dk::weight_bytes(f, 1, cols);
    const GgmlType ft = f == dk::WeightFormat::bf16         ? GgmlType::bf16
                        : f == dk::WeightFormat::q8_0_split ? GgmlType::q8_0
                                                            : GgmlType::q4_0;
    std::vector<uint8_t> bytes(size_t(n * rb));
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t i = 0; i < n; ++i) {
        const auto [m, r] = order[size_t(i)];
        const uint8_t* src = m->data + r * m->stride;
        uint8_t* dst = bytes.data() + i * rb;
        if (m->type == ft) {
            std::memcpy(dst, src, size_t(rb));
        } else {
            quant::dequantize_row(m->type, src, row.data(), cols);
            quant::quantize_row(ft, row.data(), dst, cols);
        }
    }
    if (f != dk::WeightFormat::bf16) { // blocks -> values | scales
        std::vector<uint8_t> split(bytes.size());
        dk::split_blocks(f, bytes.data(), n, cols, split.data());
        bytes.swap(split);
    }
    Mat out;
    out.format = f, out.rows = n;
    out.t = f == dk::WeightFormat::bf16
                ? Tensor::from_blob(bytes.data(), {n, cols}, DType::bf16, nullptr).to(kGpu)
                : Tensor::from_blob(bytes.data(), {n * rb}, DType::u8, nullptr).to(kGpu);
    FORGE_CUDA_CHECK(cudaStreamSynchronize(cudaStream_t(cuda::context(0).stream)));
    return out;
}

// One matrix, or several stacked (rows of a, then b, ...), in their widest format.
Mat upload_stacked(const std::vector<const FileMat*>& ms) {
    dk::WeightFormat f = gpu_format(ms.front()->type);
    std::vector<std::pair<const FileMat*, int64_t>> order;
    for (const FileMat* m : ms) {
        f = wider(f, gpu_format(m->type));
        for (int64_t r = 0; r < m->rows; ++r)
            order.emplace_back(m, r);
    }
    return upload(order, f);
}

// The GGUF model's prefill Transformer: it must have the decode weights' shapes (a different
// model would fill the cache with another model's K/V); moved to the GPU, where its ops run.
void attach_prefill_model(CudaLM::Impl& m, std::shared_ptr<Transformer> t) {
    const ModelConfig &a = t->config(), &c = m.cfg;
    FORGE_CHECK(
        a.family == c.family && a.n_layer == c.n_layer && a.n_embd == c.n_embd &&
            a.n_head == c.n_head && a.n_head_kv == c.n_head_kv && a.dim_head() == c.dim_head() &&
            a.n_ff == c.n_ff && a.vocab_size == c.vocab_size && a.n_ctx == c.n_ctx,
        "[cuda decode] the prefill model's config (", a.n_layer, " layers, n_embd ", a.n_embd,
        ", n_ff ", a.n_ff, ", vocab ", a.vocab_size, ") differs from the GGUF tensors' (",
        c.n_layer, " layers, n_embd ", c.n_embd, ", n_ff ", c.n_ff, ", vocab ", c.vocab_size, ")");
    if (t->device() != kGpu)
        t->to(kGpu);
    t->eval();
    m.owned_model = std::move(t);
    m.model = m.owned_model.get();
}

} // namespace

CudaLM::CudaLM(Transformer& model, Options opts)
    : impl_(std::make_unique<Impl>(&model, opts, model.config())) {
    cuda::check_device(kGpu);
    Impl& m = *impl_;
    const ModelConfig& c = m.cfg;
    check_shapes(c, opts);
    const int64_t C = c.n_embd, D = c.dim_head(), H = c.n_head, Hkv = c.n_head_kv, F = c.n_ff;
    if (model.device() != kGpu)
        model.to(kGpu); // the prefill runs the model's ops there
    model.eval();
    m.stream = cudaStream_t(cuda::context(0).stream);
    m.gpt2 = c.family == ModelFamily::gpt2;
    NoGradGuard no_grad;
    const auto sd = model.state_dict();
    auto get = [&](const std::string& n) -> const Tensor& {
        auto it = sd.find(n);
        FORGE_ASSERT(it != sd.end());
        return it->second;
    };
    if (m.gpt2) {
        m.wte = bf16_mat(get("transformer.wte.weight"));
        m.wpe = f32(get("transformer.wpe.weight"));
        m.head = c.tie_embeddings ? m.wte : bf16_mat(get("lm_head.weight"));
        m.lnf_w = f32(get("transformer.ln_f.weight"));
        m.lnf_b = f32(get("transformer.ln_f.bias"));
        for (int64_t l = 0; l < c.n_layer; ++l) {
            const std::string p = "transformer.h." + std::to_string(l) + ".";
            Layer w; // HF Conv1D weights are (in, out): transpose to (out, in)
            w.qkv = bf16_mat(get(p + "attn.c_attn.weight").t());
            w.proj = bf16_mat(get(p + "attn.c_proj.weight").t());
            w.fc = bf16_mat(get(p + "mlp.c_fc.weight").t());
            w.fc2 = bf16_mat(get(p + "mlp.c_proj.weight").t());
            w.norm1_w = f32(get(p + "ln_1.weight")), w.norm1_b = f32(get(p + "ln_1.bias"));
            w.norm2_w = f32(get(p + "ln_2.weight")), w.norm2_b = f32(get(p + "ln_2.bias"));
            w.qkv_b = f32(get(p + "attn.c_attn.bias")), w.proj_b = f32(get(p + "attn.c_proj.bias"));
            w.fc_b = f32(get(p + "mlp.c_fc.bias")), w.fc2_b = f32(get(p + "mlp.c_proj.bias"));
            m.layers.push_back(std::move(w));
        }
    } else {
        m.wte = bf16_mat(get("model.embed_tokens.weight"));
        m.head = c.tie_embeddings ? m.wte : bf16_mat(get("lm_head.weight"));
        m.lnf_w = f32(get("model.norm.weight"));
        for (int64_t l = 0; l < c.n_layer; ++l) {
            const std::string p = "model.layers." + std::to_string(l) + ".";
            Layer w;
            const Tensor q = pair_rope_rows(get(p + "self_attn.q_proj.weight"), H, D);
            const Tensor k = pair_rope_rows(get(p + "self_attn.k_proj.weight"), Hkv, D);
            w.qkv = bf16_mat(concat({q, k, get(p + "self_attn.v_proj.weight")}, 0));
            w.proj = bf16_mat(get(p + "self_attn.o_proj.weight"));
            const Tensor gate = get(p + "mlp.gate_proj.weight"), up = get(p + "mlp.up_proj.weight");
            w.fc =
                bf16_mat(concat({gate.reshape({F, 1, C}), up.reshape({F, 1, C})}, 1)
                             .reshape({2 * F, C})); // rows (gate_i, up_i) for the SwiGLU epilogue
            w.fc2 = bf16_mat(get(p + "mlp.down_proj.weight"));
            w.norm1_w = f32(get(p + "input_layernorm.weight"));
            w.norm2_w = f32(get(p + "post_attention_layernorm.weight"));
            m.layers.push_back(std::move(w));
        }
        // Divided by Llama 3's scaling factors if any.
        m.rope_freq =
            rope_frequencies(c, c.rope_scaling_factor > 0 ? llama3_rope_factors(c)
                                                          : std::vector<float>(size_t(D / 2), 1.f));
    }
    m.finish_setup();
}

// GGUF tensors (llama.cpp's names and layouts, as QuantLM reads them): every linear weight (out,
// in) rows; Llama's Q/K rows already permuted so RoPE rotates adjacent pairs, which is the order
// the qkv epilogue wants (pair_rope_rows).
//
// The prefill model's K/V go into the decode cache unchanged, as from a Transformer: the qkv
// epilogue writes each head's K in the HF (rotate-half) order, d0 = i and d1 = i + D/2 for the
// row pair (i, D/2 + i), and formats::gguf_to_model undoes llama.cpp's row permutation (the same
// one as pair_rope_rows), so its f32 cache holds K in that order too.
CudaLM::CudaLM(const ModelConfig& cfg, const infer::QuantLM::Lookup& lookup, Options opts,
               std::shared_ptr<Transformer> prefill_model)
    : impl_(std::make_unique<Impl>(nullptr, opts, cfg)) {
    cuda::check_device(kGpu);
    Impl& m = *impl_;
    const ModelConfig& c = m.cfg;
    c.validate();
    check_shapes(c, opts);
    const int64_t C = c.n_embd, D = c.dim_head(), H = c.n_head, Hkv = c.n_head_kv, F = c.n_ff;
    const int64_t V = c.vocab_size;
    m.stream = cudaStream_t(cuda::context(0).stream);
    m.gpt2 = c.family == ModelFamily::gpt2;
    auto need = [&](const std::string& name) {
        auto t = lookup(name);
        FORGE_CHECK(t.has_value() && t->data, "[cuda decode] the model has no tensor '", name, "'");
        return *t;
    };
    auto mat = [&](const std::string& name, int64_t rows, int64_t cols) {
        const infer::TensorRef t = need(name);
        FORGE_CHECK(t.ne.size() == 2 && t.ne[0] == cols && t.ne[1] == rows, "[cuda decode] tensor ",
                    name, " has shape [", t.ne.size() > 0 ? t.ne[0] : -1, ", ",
                    t.ne.size() > 1 ? t.ne[1] : -1, "] (ggml order); expected [", cols, ", ", rows,
                    "]");
        const std::string_view type = quant::type_info(t.type).name;
        FORGE_CHECK(gpu_format(t.type) == dk::WeightFormat::bf16 || cols % 32 == 0,
                    "[cuda decode] tensor ", name, " of type ", type, " has rows of ", cols,
                    " values, not a multiple of 32");
        return FileMat{name,
                       t.type,
                       rows,
                       cols,
                       quant::row_bytes(t.type, cols),
                       static_cast<const uint8_t*>(t.data)};
    };
    auto host_vec = [&](const std::string& name, int64_t n) {
        const infer::TensorRef t = need(name);
        int64_t numel = 1;
        for (int64_t d : t.ne)
            numel *= d;
        FORGE_CHECK(numel == n, "[cuda decode] tensor ", name, " has ", numel, " values; expected ",
                    n);
        std::vector<float> out(static_cast<size_t>(n));
        quant::dequantize_row(t.type, t.data, out.data(), n);
        return out;
    };
    auto vec = [&](const std::string& name, int64_t n) { // f32 on the GPU
        return Tensor::from_vector(host_vec(name, n), {n}).to(kGpu);
    };
    const FileMat tok = mat("token_embd.weight", V, C);
    m.wte = upload_stacked({&tok});
    const bool tied = !(lookup("output.weight") && lookup("output.weight")->data);
    if (tied) {
        m.head = m.wte;
    } else {
        const FileMat out = mat("output.weight", V, C);
        m.head = upload_stacked({&out});
    }
    if (m.gpt2)
        m.wpe = vec("position_embd.weight", c.n_ctx * C);
    m.lnf_w = vec("output_norm.weight", C);
    if (m.gpt2)
        m.lnf_b = vec("output_norm.bias", C);
    for (int64_t l = 0; l < c.n_layer; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        Layer w;
        w.norm1_w = vec(p + "attn_norm.weight", C);
        w.norm2_w = vec(p + "ffn_norm.weight", C);
        const FileMat o = mat(p + "attn_output.weight", C, H * D);
        const FileMat up = mat(p + "ffn_up.weight", F, C), down = mat(p + "ffn_down.weight", C, F);
        w.proj = upload_stacked({&o});
        w.fc2 = upload_stacked({&down});
        if (m.gpt2) {
            w.norm1_b = vec(p + "attn_norm.bias", C);
            w.norm2_b = vec(p + "ffn_norm.bias", C);
            const FileMat qkv = mat(p + "attn_qkv.weight", 3 * C, C);
            w.qkv = upload_stacked({&qkv});
            w.fc = upload_stacked({&up});
            w.qkv_b = vec(p + "attn_qkv.bias", 3 * C);
            w.proj_b = vec(p + "attn_output.bias", C);
            w.fc_b = vec(p + "ffn_up.bias", F);
            w.fc2_b = vec(p + "ffn_down.bias", C);
        } else {
            const FileMat q = mat(p + "attn_q.weight", H * D, C);
            const FileMat k = mat(p + "attn_k.weight", Hkv * D, C);
            const FileMat v = mat(p + "attn_v.weight", Hkv * D, C);
            w.qkv = upload_stacked({&q, &k, &v});
            const FileMat gate = mat(p + "ffn_gate.weight", F, C);
            std::vector<std::pair<const FileMat*, int64_t>> order; // rows (gate_i, up_i)
            for (int64_t i = 0; i < F; ++i)
                order.emplace_back(&gate, i), order.emplace_back(&up, i);
            w.fc = upload(order, wider(gpu_format(gate.type), gpu_format(up.type)));
        }
        m.layers.push_back(std::move(w));
    }
    if (!m.gpt2) { // the file's per-pair factors (llama.cpp writes Llama 3's), else the config's
        std::vector<float> factors(size_t(D / 2), 1.f);
        if (auto rf = lookup("rope_freqs.weight"); rf && rf->data)
            factors = host_vec("rope_freqs.weight", D / 2);
        else if (c.rope_scaling_factor > 0)
            factors = llama3_rope_factors(c);
        m.rope_freq = rope_frequencies(c, factors);
    }
    if (prefill_model)
        attach_prefill_model(m, std::move(prefill_model));
    m.finish_setup();
}

namespace {
// A CudaLM over a parsed GGUF file's tensors, uploaded (and the file no longer needed) by the
// time it returns. in_mapping: the tensor bytes lie in a read-only file mapping.
std::unique_ptr<CudaLM> lm_over_gguf(const formats::GgufFile& file, bool in_mapping,
                                     CudaLM::Options opts) {
    cuda::check_device(kGpu);             // before the f32 copy, which is slow for large models
    std::shared_ptr<Transformer> prefill; // f32 on the host until the constructor moves it
    if (opts.gguf_batched_prefill) {
        // A file the Transformer cannot hold (a tensor it has no place for) still decodes: its
        // prompts then run as decode steps. What the decode path needs, it checks itself.
        try {
            prefill = formats::gguf_to_model(file).model;
        } catch (const InvalidArgument& e) {
            std::fprintf(stderr, "[cuda] no batched prefill: %s; prompts run as decode steps\n",
                         e.what());
        }
    }
    return std::make_unique<CudaLM>(
        formats::gguf_config(file),
        [&](const std::string& name) -> std::optional<infer::TensorRef> {
            const formats::GgufTensorInfo* t = file.find_tensor(name);
            if (!t)
                return std::nullopt;
            return infer::TensorRef{t->type, t->ne, t->data, in_mapping};
        },
        opts, std::move(prefill));
}
} // namespace

std::unique_ptr<CudaLM> CudaLM::from_gguf(const std::filesystem::path& path, Options opts) {
    return lm_over_gguf(formats::GgufFile::open(path), true, opts);
}

std::unique_ptr<CudaLM> CudaLM::from_transformer(Transformer& model, quant::GgmlType type,
                                                 Options opts) {
    const std::vector<uint8_t> bytes = formats::gguf_writer(model, nullptr, type).bytes();
    return lm_over_gguf(formats::GgufFile::parse(bytes, "<model>"), false, opts);
}

CudaLM::~CudaLM() = default;

int64_t CudaLM::n_vocab() const {
    return impl_->cfg.vocab_size;
}
int64_t CudaLM::n_ctx() const {
    return impl_->cfg.n_ctx;
}
bool CudaLM::graph_active() const {
    return impl_->opts.graph && impl_->graph_ok;
}
bool CudaLM::persistent_active() const {
    return impl_->persistent;
}
bool CudaLM::batched_prefill_active() const {
    return impl_->model != nullptr;
}
int64_t CudaLM::weight_bytes_per_token() const {
    return impl_->weight_bytes;
}
std::string CudaLM::weight_format() const {
    std::string out;
    for (const Mat* w : impl_->matrices()) {
        const std::string f = w->format == dk::WeightFormat::bf16         ? "bf16"
                              : w->format == dk::WeightFormat::q8_0_split ? "q8_0"
                                                                          : "q4_0";
        if (out.empty())
            out = f;
        else if (out != f)
            return "mixed";
    }
    return out;
}

std::unique_ptr<CausalLM::State> CudaLM::new_state(int64_t capacity) {
    const ModelConfig& c = impl_->cfg;
    FORGE_CHECK(capacity > 0 && capacity <= c.n_ctx, "[generate] a sequence of ", capacity,
                " positions does not fit the model's context of ", c.n_ctx);
    const int64_t D = c.dim_head(), H = c.n_head, Hkv = c.n_head_kv;
    auto s = std::make_unique<CudaState>();
    s->cap = capacity;
    for (int64_t l = 0; l < c.n_layer; ++l) {
        s->k.push_back(Tensor::zeros({1, Hkv, capacity, D}, DType::bf16, kGpu));
        s->v.push_back(Tensor::zeros({1, Hkv, capacity, D}, DType::bf16, kGpu));
    }
    s->x = Tensor::zeros({c.n_embd}, DType::f32, kGpu);
    s->q = Tensor::zeros({H * D}, DType::f32, kGpu);
    s->att = Tensor::zeros({H * D}, DType::f32, kGpu);
    s->hid = Tensor::zeros({c.n_ff}, DType::f32, kGpu);
    s->logits = Tensor::zeros({c.vocab_size}, DType::f32, kGpu);
    s->partial =
        Tensor::zeros({dk::attn_partial_floats(int(H), int(D), int(capacity), Impl::attn_chunk)},
                      DType::f32, kGpu);
    s->counters = Tensor::zeros({Hkv}, DType::i32, kGpu);
    s->args_dev = Tensor::zeros({int64_t(sizeof(dk::StepArgs))}, DType::u8, kGpu);
    s->args = static_cast<dk::StepArgs*>(s->args_dev.data_ptr());
    std::vector<dk::StepLayer> table; // the persistent step's pointers, this state's caches
    if (impl_->persistent) {
        for (int64_t l = 0; l < c.n_layer; ++l) {
            const Layer& w = impl_->layers[size_t(l)];
            table.push_back({.qkv = w.qkv.data_ptr(),
                             .proj = w.proj.data_ptr(),
                             .fc = w.fc.data_ptr(),
                             .fc2 = w.fc2.data_ptr(),
                             .norm1_w = ptr<float>(w.norm1_w),
                             .norm1_b = ptr<float>(w.norm1_b),
                             .norm2_w = ptr<float>(w.norm2_w),
                             .norm2_b = ptr<float>(w.norm2_b),
                             .qkv_b = ptr<float>(w.qkv_b),
                             .proj_b = ptr<float>(w.proj_b),
                             .fc_b = ptr<float>(w.fc_b),
                             .fc2_b = ptr<float>(w.fc2_b),
                             .k_cache = s->k[size_t(l)].data_ptr(),
                             .v_cache = s->v[size_t(l)].data_ptr()});
        }
        s->layer_table =
            Tensor::from_blob(table.data(), {int64_t(table.size() * sizeof(dk::StepLayer))},
                              DType::u8, nullptr)
                .to(kGpu);
        s->barrier = Tensor::zeros({1}, DType::i64, kGpu);
    }
    FORGE_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&s->host_args), sizeof(dk::StepArgs),
                                   cudaHostAllocDefault));
    FORGE_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&s->host_logits),
                                   size_t(c.vocab_size) * sizeof(float), cudaHostAllocDefault));
    FORGE_CUDA_CHECK(cudaStreamSynchronize(impl_->stream)); // the zeros and table have landed
    return s;
}

namespace {
CudaState& cuda_state(CausalLM::State& state) {
    auto* s = dynamic_cast<CudaState*>(&state);
    FORGE_CHECK(s != nullptr, "[generate] this state was not made by this CudaLM");
    return *s;
}
} // namespace

void CudaLM::eval(State& state, std::span<const TokenId> ids, std::vector<float>& logits) {
    CudaState& s = cuda_state(state);
    Impl& m = *impl_;
    const int64_t n = int64_t(ids.size()), V = m.cfg.vocab_size;
    FORGE_CHECK(n > 0, "[generate] eval of no tokens");
    FORGE_CHECK(s.len + n <= s.cap, "[generate] the KV cache holds ", s.cap, " positions; ",
                s.len + n, " needed");
    for (TokenId id : ids)
        FORGE_CHECK(id >= 0 && id < V, "[generate] token id ", id, " outside the vocabulary");
    if (n == 1) {
        s.host_args->token = ids[0];
        s.host_args->pos = int32_t(s.len);
        s.host_args->argmax = 0;
        FORGE_CUDA_CHECK(cudaMemcpyAsync(s.args, s.host_args, sizeof(dk::StepArgs),
                                         cudaMemcpyHostToDevice, m.stream));
        m.launch_step(s);
        ++s.len;
    } else {
        prefill(s, ids);
    }
    FORGE_CUDA_CHECK(cudaMemcpyAsync(s.host_logits, s.logits.data_ptr(), size_t(V) * sizeof(float),
                                     cudaMemcpyDeviceToHost, m.stream));
    FORGE_CUDA_CHECK(cudaStreamSynchronize(m.stream));
    logits.assign(s.host_logits, s.host_logits + V);
}

void CudaLM::prefill(State& state, std::span<const TokenId> ids) {
    CudaState& s = cuda_state(state);
    Impl& m = *impl_;
    const ModelConfig& c = m.cfg;
    if (!m.model) { // GGUF weights: a decode step per token, each from its StepArgs on the device
        std::vector<dk::StepArgs> steps;
        for (size_t i = 0; i < ids.size(); ++i)
            steps.push_back({.token = ids[i], .pos = int32_t(s.len + int64_t(i)), .argmax = 0});
        s.prompt_args =
            Tensor::from_blob(steps.data(), {int64_t(steps.size() * sizeof(dk::StepArgs))},
                              DType::u8, nullptr)
                .to(kGpu);
        const auto* dev = static_cast<const dk::StepArgs*>(s.prompt_args.data_ptr());
        for (size_t i = 0; i < steps.size(); ++i) {
            FORGE_CUDA_CHECK(cudaMemcpyAsync(s.args, dev + i, sizeof(dk::StepArgs),
                                             cudaMemcpyDeviceToDevice, m.stream));
            m.launch_step(s);
        }
        s.len += int64_t(ids.size());
        return;
    }
    NoGradGuard no_grad;
    if (!s.prefill_cache.capacity)
        s.prefill_cache = KVCache::create(c, 1, s.cap, DType::f32, kGpu);
    // Decode steps since the last prompt wrote only the bf16 cache: bring the f32 one level.
    for (int64_t l = 0; l < c.n_layer; ++l) {
        const int64_t a = s.prefill_len, n = s.len - a;
        if (n <= 0)
            break;
        s.prefill_cache.k[size_t(l)].narrow(2, a, n).copy_(s.k[size_t(l)].narrow(2, a, n));
        s.prefill_cache.v[size_t(l)].narrow(2, a, n).copy_(s.v[size_t(l)].narrow(2, a, n));
    }
    s.prefill_cache.length = s.len;
    const int64_t n = int64_t(ids.size());
    Tensor h; // (1, T, C), after the final norm
    for (int64_t i = 0; i < n; i += m.opts.prefill_chunk) {
        const int64_t len = std::min(m.opts.prefill_chunk, n - i);
        std::vector<int64_t> chunk(ids.begin() + i, ids.begin() + i + len);
        h = m.model->hidden(Tensor::from_vector(chunk, {1, len}), &s.prefill_cache);
    }
    for (int64_t l = 0; l < c.n_layer; ++l) {
        s.k[size_t(l)].narrow(2, s.len, n).copy_(s.prefill_cache.k[size_t(l)].narrow(2, s.len, n));
        s.v[size_t(l)].narrow(2, s.len, n).copy_(s.prefill_cache.v[size_t(l)].narrow(2, s.len, n));
    }
    s.len += n;
    s.prefill_len = s.len;
    const Tensor last = h.narrow(1, h.size(1) - 1, 1).to(DType::f32).contiguous();
    m.gemv(m.head,
           {.n = int(c.vocab_size),
            .k = int(c.n_embd),
            .x = last.data<float>(),
            .epi = dk::Epilogue::store,
            .out = ptr<float>(s.logits)},
           m.stream);
    FORGE_CUDA_CHECK(cudaStreamSynchronize(m.stream)); // `last` is freed on return
}

std::vector<TokenId> CudaLM::greedy(State& state, TokenId first, int64_t n) {
    CudaState& s = cuda_state(state);
    Impl& m = *impl_;
    FORGE_CHECK(n >= 0 && s.len + n <= s.cap, "[generate] the KV cache holds ", s.cap,
                " positions; ", s.len + n, " needed");
    FORGE_CHECK(first >= 0 && first < m.cfg.vocab_size, "[generate] token id ", first,
                " outside the vocabulary");
    if (n > s.host_tokens_cap) {
        cudaFreeHost(s.host_tokens);
        s.host_tokens = nullptr;
        FORGE_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&s.host_tokens),
                                       size_t(n) * sizeof(int32_t), cudaHostAllocDefault));
        s.host_tokens_cap = n;
    }
    *s.host_args = {.token = first, .pos = int32_t(s.len), .argmax = 0};
    FORGE_CUDA_CHECK(cudaMemcpyAsync(s.args, s.host_args, sizeof(dk::StepArgs),
                                     cudaMemcpyHostToDevice, m.stream));
    for (int64_t i = 0; i < n; ++i) { // finish() leaves the argmax in args->token
        m.launch_step(s);
        FORGE_CUDA_CHECK(cudaMemcpyAsync(s.host_tokens + i, &s.args->token, sizeof(int32_t),
                                         cudaMemcpyDeviceToHost, m.stream));
    }
    FORGE_CUDA_CHECK(cudaStreamSynchronize(m.stream));
    s.len += n;
    return std::vector<TokenId>(s.host_tokens, s.host_tokens + n);
}

} // namespace forge
