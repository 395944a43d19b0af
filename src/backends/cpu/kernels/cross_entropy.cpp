// CpuBackend::cross_entropy(_backward): the fused f32 SIMD row kernels for the CPU's
// instruction set (simd/nn_rows.h), or the generic loops below for f64 and for CPUs without
// AVX2. The forward never writes the softmax; the backward writes (softmax - onehot) * scale in
// one pass. Ignored rows: loss 0, lse 0, zero gradient.
#include <cmath>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/cpu_common.h"
#include "backends/cpu/simd/nn_kernels.h"

namespace forge::cpu {

namespace {

template <typename T>
void cross_entropy_generic(const T* x, const int64_t* targets, int64_t ignore_index, T* losses,
                           T* lse, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols >= nn::kParallelMinElems && rows > 1)
    for (int64_t n = 0; n < rows; ++n) {
        if (targets[n] == ignore_index) {
            losses[n] = lse[n] = T(0);
            continue;
        }
        const T* xr = x + n * cols;
        T m = -INFINITY;
        for (int64_t v = 0; v < cols; ++v)
            m = std::fmax(m, xr[v]);
        double s = 0;
        for (int64_t v = 0; v < cols; ++v)
            s += std::exp(double(xr[v] - m));
        const T l = T(double(m) + std::log(s));
        lse[n] = l;
        losses[n] = l - xr[targets[n]];
    }
}

template <typename T>
void cross_entropy_backward_generic(const T* x, const int64_t* targets, const T* lse,
                                    int64_t ignore_index, T scale, T* dx, int64_t rows,
                                    int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols >= nn::kParallelMinElems && rows > 1)
    for (int64_t n = 0; n < rows; ++n) {
        T* dr = dx + n * cols;
        if (targets[n] == ignore_index) {
            for (int64_t v = 0; v < cols; ++v)
                dr[v] = T(0);
            continue;
        }
        const T* xr = x + n * cols;
        for (int64_t v = 0; v < cols; ++v)
            dr[v] = std::exp(xr[v] - lse[n]) * scale;
        dr[targets[n]] -= scale;
    }
}

} // namespace

// logits (N, V), targets (N) i64 -> losses (N), lse (N).
void CpuBackend::cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                               const Tensor& losses, const Tensor& lse) {
    const int64_t rows = logits.size(0), cols = logits.size(1);
    const int64_t* tp = targets.data<int64_t>();
    if (logits.dtype() == DType::f32) {
        const float* xp = logits.data<float>();
        float *lp = losses.data<float>(), *sp = lse.data<float>();
        switch (nn::active_isa()) {
        case nn::Isa::avx512:
            return nn::avx512::cross_entropy(xp, tp, ignore_index, lp, sp, rows, cols);
        case nn::Isa::avx2:
            return nn::avx2::cross_entropy(xp, tp, ignore_index, lp, sp, rows, cols);
        case nn::Isa::generic:
            return cross_entropy_generic(xp, tp, ignore_index, lp, sp, rows, cols);
        }
    }
    visit_float(logits.dtype(), [&]<typename T>() {
        cross_entropy_generic(logits.data<T>(), tp, ignore_index, losses.data<T>(), lse.data<T>(),
                              rows, cols);
    });
}

// dlogits (N, V) = (softmax - onehot) * dloss * inv_count.
void CpuBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                        const Tensor& lse, int64_t ignore_index,
                                        const Tensor& dloss, double inv_count,
                                        const Tensor& dlogits) {
    const int64_t rows = logits.size(0), cols = logits.size(1);
    const int64_t* tp = targets.data<int64_t>();
    if (logits.dtype() == DType::f32) {
        const float* xp = logits.data<float>();
        const float* sp = lse.data<float>();
        float* dp = dlogits.data<float>();
        const float scale = float(double(dloss.data<float>()[0]) * inv_count);
        switch (nn::active_isa()) {
        case nn::Isa::avx512:
            return nn::avx512::cross_entropy_backward(xp, tp, sp, ignore_index, scale, dp, rows,
                                                      cols);
        case nn::Isa::avx2:
            return nn::avx2::cross_entropy_backward(xp, tp, sp, ignore_index, scale, dp, rows,
                                                    cols);
        case nn::Isa::generic:
            return cross_entropy_backward_generic(xp, tp, sp, ignore_index, scale, dp, rows, cols);
        }
    }
    visit_float(logits.dtype(), [&]<typename T>() {
        const T scale = T(double(dloss.data<T>()[0]) * inv_count);
        cross_entropy_backward_generic(logits.data<T>(), tp, lse.data<T>(), ignore_index, scale,
                                       dlogits.data<T>(), rows, cols);
    });
}

} // namespace forge::cpu
