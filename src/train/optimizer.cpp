// AdamW and SGD updates, the weight-decay rule and gradient clipping (see optimizer.h). CPU f32
// parameters take one multi-tensor AdamW update (vector kernels: adamw_*.cpp); anything else
// (half params, other devices) goes through public ops, so the optimizers work wherever the ops do. f32 parameters on a CUDA
// device take one fused multi-tensor kernel per device (src/backends/cuda/adamw.cu).
#include <forge/train/optimizer.h>

#include <cmath>
#include <unordered_set>

#include <forge/autograd/autograd.h>
#include <forge/core/ops.h>
#include <forge/nn/module.h>

#include "backends/cpu/simd/nn_kernels.h"
#include "train/adamw_kernel.h"
#ifdef FORGE_HAS_CUDA
#include <map>

#include "backends/cuda/cuda_backend.h"
#endif

namespace forge {

namespace {

// Below this many elements a parallel region costs more than it saves.
constexpr int64_t kParallelMin = 1 << 15;
// Fixed chunking of the sum of squares: the result does not depend on the thread count.
constexpr int64_t kNormChunk = 1 << 14;

bool cpu_f32_dense(const Tensor& t) {
    return t.device().type == DeviceType::cpu && t.dtype() == DType::f32 && t.is_contiguous();
}

bool fast_path(const Tensor& p, const Tensor& g) {
    return cpu_f32_dense(p) && cpu_f32_dense(g);
}

// A run of at most kNormChunk floats of a CPU f32 contiguous gradient: the norm and the
// scaling deal all parameters' chunks to the threads in one parallel region.
struct GradChunk {
    float* d;
    int64_t n;
};
void append_chunks(const Tensor& g, std::vector<GradChunk>& chunks) {
    for (int64_t lo = 0; lo < g.numel(); lo += kNormChunk)
        chunks.push_back({g.data<float>() + lo, std::min(kNormChunk, g.numel() - lo)});
}

#ifdef FORGE_HAS_CUDA
// f32 contiguous parameter and gradient on one CUDA device: the fused multi-tensor kernel.
bool cuda_fused_path(const Tensor& p, const Tensor& g) {
    return p.device().type == DeviceType::cuda && p.dtype() == DType::f32 && p.is_contiguous() &&
           g.dtype() == DType::f32 && g.is_contiguous() && g.device() == p.device();
}
#endif

// One CPU f32 parameter for the multi-tensor AdamW update.
struct CpuAdamWItem {
    float *w;
    const float* g;
    float *m, *v;
    int64_t n;
    float decay;
};

// Updates every item in one parallel region: the parameters are cut into chunks of
// kAdamWChunk elements and the chunks dealt to the threads (one fork/join per step instead of
// one per large parameter; small parameters no longer run serially).
constexpr int64_t kAdamWChunk = 1 << 13;
void adamw_cpu_multi_tensor(const std::vector<CpuAdamWItem>& items,
                            const detail::AdamWScalars& s) {
    struct Chunk {
        int item;
        int64_t lo, hi;
    };
    std::vector<Chunk> chunks;
    int64_t total = 0;
    for (size_t i = 0; i < items.size(); ++i) {
        total += items[i].n;
        for (int64_t lo = 0; lo < items[i].n; lo += kAdamWChunk)
            chunks.push_back({int(i), lo, std::min(items[i].n, lo + kAdamWChunk)});
    }
    const auto isa = cpu::nn::active_isa();
    const auto update = isa == cpu::nn::Isa::avx512 ? detail::avx512::adamw_update
                        : isa == cpu::nn::Isa::avx2 ? detail::avx2::adamw_update
                                                    : detail::adamw_update_scalar;
#pragma omp parallel for schedule(static) if (total >= kParallelMin)
    for (size_t c = 0; c < chunks.size(); ++c) {
        const CpuAdamWItem& it = items[size_t(chunks[c].item)];
        const int64_t lo = chunks[c].lo;
        update(it.w + lo, it.g + lo, it.m + lo, it.v + lo, chunks[c].hi - lo, it.decay, s);
    }
}

Tensor grad_of(const ParamRef& p) {
    Tensor g = p.tensor.grad();
    if (!g.defined())
        return g;
    FORGE_CHECK(g.shape() == p.tensor.shape(), "[optimizer] gradient of ", p.name, " has shape ",
                shape_str(g.shape()), ", parameter has ", shape_str(p.tensor.shape()));
    return g;
}

const Tensor& state_at(const std::map<std::string, Tensor>& state, const std::string& key,
                       const Shape& shape) {
    auto it = state.find(key);
    FORGE_CHECK(it != state.end(), "[optimizer] state has no tensor '", key, "'");
    FORGE_CHECK(it->second.shape() == shape, "[optimizer] state tensor '", key, "' has shape ",
                shape_str(it->second.shape()), ", expected ", shape_str(shape));
    return it->second;
}

int64_t load_step(const std::map<std::string, Tensor>& state) {
    auto it = state.find("step");
    FORGE_CHECK(it != state.end() && it->second.numel() == 1,
                "[optimizer] state has no scalar 'step'");
    return int64_t(it->second.item());
}

Tensor step_tensor(int64_t t) {
    return Tensor::from_vector(std::vector<int64_t>{t}, {1});
}

} // namespace

namespace detail {
void adamw_update_scalar(float* w, const float* g, float* m, float* v, int64_t n, float decay,
                         const AdamWScalars& s) {
    for (int64_t k = 0; k < n; ++k) {
        const float gk = g[k];
        const float mk = m[k] * s.b1 + gk * s.a1;
        const float vk = v[k] * s.b2 + gk * gk * s.a2;
        m[k] = mk;
        v[k] = vk;
        const float denom = std::sqrt(vk) / s.bc2_sqrt + s.eps;
        w[k] = w[k] * decay - s.step_size * (mk / denom);
    }
}
} // namespace detail

bool default_weight_decay(const std::string& name, const Tensor& t, bool decay_embeddings) {
    if (t.dim() < 2)
        return false; // norms' gains and biases
    if (!decay_embeddings &&
        (name.find("wte") != std::string::npos || name.find("wpe") != std::string::npos ||
         name.find("embed") != std::string::npos))
        return false;
    return true;
}

std::vector<ParamRef> collect_parameters(const nn::Module& module, bool decay_embeddings) {
    std::vector<ParamRef> out;
    std::unordered_set<const void*> seen; // tied parameters share one TensorImpl
    for (auto& [name, t] : module.named_parameters()) {
        if (!seen.insert(t.impl().get()).second)
            continue;
        out.push_back({name, t, default_weight_decay(name, t, decay_embeddings)});
    }
    return out;
}

Optimizer::Optimizer(std::vector<ParamRef> params) : params_(std::move(params)) {
    for (auto& p : params_)
        FORGE_CHECK(p.tensor.defined() && is_floating(p.tensor.dtype()), "[optimizer] parameter '",
                    p.name, "' is not a floating-point tensor");
}

void Optimizer::zero_grad() const {
    for (auto& p : params_)
        p.tensor.zero_grad();
}

// ------------------------------------------------------------------------------------ AdamW

AdamW::AdamW(std::vector<ParamRef> params, AdamWOptions opts)
    : Optimizer(std::move(params)), opts_(opts) {
    FORGE_CHECK(opts_.beta1 >= 0 && opts_.beta1 < 1, "[adamw] beta1 must be in [0, 1), got ",
                opts_.beta1);
    FORGE_CHECK(opts_.beta2 >= 0 && opts_.beta2 < 1, "[adamw] beta2 must be in [0, 1), got ",
                opts_.beta2);
    FORGE_CHECK(opts_.eps > 0, "[adamw] eps must be > 0, got ", opts_.eps);
    FORGE_CHECK(opts_.weight_decay >= 0, "[adamw] weight_decay must be >= 0, got ",
                opts_.weight_decay);
    for (auto& p : params_) {
        m_.push_back(Tensor::zeros(p.tensor.shape(), DType::f32, p.tensor.device()));
        v_.push_back(Tensor::zeros(p.tensor.shape(), DType::f32, p.tensor.device()));
    }
}

void AdamW::step(double lr) {
    NoGradGuard no_grad;
    ++t_;
    const double bc1 = 1.0 - std::pow(opts_.beta1, double(t_));
    const double bc2 = 1.0 - std::pow(opts_.beta2, double(t_));
    // Scalars rounded to f32 once, as torch does when it applies Python floats to f32 tensors.
    const float b1 = float(opts_.beta1), b2 = float(opts_.beta2);
    const float a1 = float(1.0 - opts_.beta1), a2 = float(1.0 - opts_.beta2);
    const float step_size = float(lr / bc1), bc2_sqrt = float(std::sqrt(bc2));
    const float eps = float(opts_.eps);
    std::vector<CpuAdamWItem> cpu_items; // CPU f32 parameters, updated together below
#ifdef FORGE_HAS_CUDA
    std::map<int, std::vector<cuda::AdamWTensor>> fused; // CUDA device -> its tensors
    std::vector<Tensor> keep;                              // grads alive until the launch
#endif
    for (size_t i = 0; i < params_.size(); ++i) {
        const ParamRef& p = params_[i];
        Tensor g = grad_of(p);
        if (!g.defined())
            continue; // unused this step (torch skips params whose grad is None)
        const float decay = p.decay ? float(1.0 - lr * opts_.weight_decay) : 1.0f;
#ifdef FORGE_HAS_CUDA
        if (cuda_fused_path(p.tensor, g) && m_[i].device() == p.tensor.device()) {
            fused[p.tensor.device().index].push_back({p.tensor.data<float>(), g.data<float>(),
                                                      m_[i].data<float>(), v_[i].data<float>(),
                                                      p.tensor.numel(), decay});
            keep.push_back(g);
            continue;
        }
#endif
        if (fast_path(p.tensor, g)) {
            cpu_items.push_back({p.tensor.data<float>(), g.data<float>(), m_[i].data<float>(),
                                 v_[i].data<float>(), p.tensor.numel(), decay});
            continue;
        }
        // Generic path: the same formula with ops (any device, half parameters).
        Tensor g32 = g.to(DType::f32);
        m_[i].copy_(add(mul_scalar(m_[i], b1), mul_scalar(g32, a1)));
        v_[i].copy_(add(mul_scalar(v_[i], b2), mul_scalar(mul(g32, g32), a2)));
        Tensor denom = add_scalar(mul_scalar(sqrt(v_[i]), 1.0 / bc2_sqrt), eps);
        Tensor w32 = mul_scalar(p.tensor.detach().to(DType::f32), decay);
        Tensor w = p.tensor;
        w.copy_(sub(w32, mul_scalar(div(m_[i], denom), step_size)));
    }
    adamw_cpu_multi_tensor(cpu_items, {b1, b2, a1, a2, step_size, bc2_sqrt, eps});
#ifdef FORGE_HAS_CUDA
    for (auto& [dev, ts] : fused)
        cuda::adamw_multi_tensor(dev, ts, b1, b2, a1, a2, step_size, bc2_sqrt, eps);
#endif
}

std::map<std::string, Tensor> AdamW::state_tensors() const {
    std::map<std::string, Tensor> out;
    for (size_t i = 0; i < params_.size(); ++i) {
        out["exp_avg." + params_[i].name] = m_[i];
        out["exp_avg_sq." + params_[i].name] = v_[i];
    }
    out["step"] = step_tensor(t_);
    return out;
}

void AdamW::load_state_tensors(const std::map<std::string, Tensor>& state) {
    for (size_t i = 0; i < params_.size(); ++i) {
        const Shape& s = params_[i].tensor.shape();
        m_[i].copy_(state_at(state, "exp_avg." + params_[i].name, s));
        v_[i].copy_(state_at(state, "exp_avg_sq." + params_[i].name, s));
    }
    t_ = load_step(state);
}

// -------------------------------------------------------------------------------------- SGD

SGD::SGD(std::vector<ParamRef> params, SgdOptions opts)
    : Optimizer(std::move(params)), opts_(opts) {
    FORGE_CHECK(opts_.momentum >= 0, "[sgd] momentum must be >= 0, got ", opts_.momentum);
    FORGE_CHECK(!opts_.nesterov || (opts_.momentum > 0 && opts_.dampening == 0),
                "[sgd] nesterov needs momentum > 0 and dampening 0");
    for (auto& p : params_)
        buf_.push_back(Tensor::zeros(p.tensor.shape(), DType::f32, p.tensor.device()));
}

void SGD::step(double lr) {
    NoGradGuard no_grad;
    const bool first = t_ == 0;
    ++t_;
    const float mu = float(opts_.momentum), damp = float(1.0 - opts_.dampening);
    const float flr = float(lr);
    for (size_t i = 0; i < params_.size(); ++i) {
        const ParamRef& p = params_[i];
        Tensor g = grad_of(p);
        if (!g.defined())
            continue;
        const float wd = p.decay ? float(opts_.weight_decay) : 0.0f;
        if (fast_path(p.tensor, g)) {
            float* w = p.tensor.data<float>();
            const float* gd = g.data<float>();
            float* b = buf_[i].data<float>();
            const int64_t n = p.tensor.numel();
            const bool use_momentum = mu != 0.0f, nesterov = opts_.nesterov;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
            for (int64_t k = 0; k < n; ++k) {
                float gk = gd[k] + wd * w[k];
                if (use_momentum) {
                    const float bk = first ? gk : b[k] * mu + damp * gk;
                    b[k] = bk;
                    gk = nesterov ? gk + mu * bk : bk;
                }
                w[k] -= flr * gk;
            }
            continue;
        }
        Tensor w32 = p.tensor.detach().to(DType::f32);
        Tensor g32 = add(g.to(DType::f32), mul_scalar(w32, wd));
        if (mu != 0.0f) {
            buf_[i].copy_(first ? g32 : add(mul_scalar(buf_[i], mu), mul_scalar(g32, damp)));
            g32 = opts_.nesterov ? add(g32, mul_scalar(buf_[i], mu)) : buf_[i];
        }
        Tensor w = p.tensor;
        w.copy_(sub(w32, mul_scalar(g32, flr)));
    }
}

std::map<std::string, Tensor> SGD::state_tensors() const {
    std::map<std::string, Tensor> out;
    for (size_t i = 0; i < params_.size(); ++i)
        out["momentum_buffer." + params_[i].name] = buf_[i];
    out["step"] = step_tensor(t_);
    return out;
}

void SGD::load_state_tensors(const std::map<std::string, Tensor>& state) {
    for (size_t i = 0; i < params_.size(); ++i)
        buf_[i].copy_(
            state_at(state, "momentum_buffer." + params_[i].name, params_[i].tensor.shape()));
    t_ = load_step(state);
}

// ----------------------------------------------------------------------------- clipping

namespace {
// Sum of squares of one chunk in double, eight independent accumulators (summed in a fixed
// order) so the additions pipeline instead of waiting on one another.
double sum_squares(const float* d, int64_t n) {
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t k = 0;
    for (; k + 8 <= n; k += 8)
        for (int j = 0; j < 8; ++j)
            acc[j] += double(d[k + j]) * double(d[k + j]);
    for (; k < n; ++k)
        acc[0] += double(d[k]) * double(d[k]);
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}
} // namespace

GradNorm grad_norm(const std::vector<ParamRef>& params) {
    NoGradGuard no_grad;
    // CPU f32 contiguous gradients: fixed chunks of kNormChunk elements, all parameters'
    // chunks in one parallel region; per-parameter sums add their chunks in order, so the
    // result does not depend on the thread count.
    std::vector<GradChunk> chunks;
    std::vector<size_t> first_chunk(params.size() + 1, 0);
    std::vector<Tensor> grads(params.size());
    std::vector<char> on_cpu(params.size(), 0); // summed by the chunks below
    for (size_t i = 0; i < params.size(); ++i) {
        first_chunk[i] = chunks.size();
        grads[i] = grad_of(params[i]);
        const Tensor& g = grads[i];
        on_cpu[i] = g.defined() && cpu_f32_dense(g);
        if (on_cpu[i])
            append_chunks(g, chunks);
    }
    first_chunk[params.size()] = chunks.size();
    std::vector<double> partial(chunks.size(), 0.0);
    const int64_t total_elems = int64_t(chunks.size()) * kNormChunk;
#pragma omp parallel for schedule(static) if (total_elems >= kParallelMin)
    for (size_t c = 0; c < chunks.size(); ++c)
        partial[c] = sum_squares(chunks[c].d, chunks[c].n);

    GradNorm out;
    double total = 0.0;
    for (size_t i = 0; i < params.size(); ++i) {
        const Tensor& g = grads[i];
        if (!g.defined())
            continue;
        double sq = 0.0;
        if (on_cpu[i]) {
            for (size_t c = first_chunk[i]; c < first_chunk[i + 1]; ++c)
                sq += partial[c];
        } else {
            Tensor g64 = g.to(DType::f64);
            sq = sum(mul(g64, g64)).item();
        }
        if (!std::isfinite(sq) && out.nonfinite_index < 0)
            out.nonfinite_index = int64_t(i);
        total += sq;
    }
    out.norm = std::sqrt(total);
    return out;
}

void scale_grads(const std::vector<ParamRef>& params, double factor) {
    NoGradGuard no_grad;
    const float f = float(factor);
    // CPU f32 contiguous gradients: all parameters' chunks in one parallel region (one
    // fork/join per call, not one per large parameter: on a VM whose idle vCPUs halt, each
    // wake-up of the workers costs far more than the scaling).
    std::vector<GradChunk> chunks;
    int64_t total = 0;
    for (auto& p : params) {
        Tensor g = grad_of(p);
        if (!g.defined())
            continue;
        if (cpu_f32_dense(g)) {
            append_chunks(g, chunks);
            total += g.numel();
        } else {
            g.copy_(mul_scalar(g, factor));
        }
    }
#pragma omp parallel for schedule(static) if (total >= kParallelMin)
    for (size_t c = 0; c < chunks.size(); ++c) {
        float* d = chunks[c].d;
        for (int64_t k = 0; k < chunks[c].n; ++k)
            d[k] *= f;
    }
}

double clip_grad_norm(const std::vector<ParamRef>& params, double max_norm) {
    GradNorm gn = grad_norm(params);
    if (max_norm > 0 && std::isfinite(gn.norm)) {
        const double coef = max_norm / (gn.norm + 1e-6);
        if (coef < 1.0)
            scale_grads(params, coef);
    }
    return gn.norm;
}

} // namespace forge
