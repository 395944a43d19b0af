// The AVX2+FMA instantiations of the f32 LayerNorm / RMSNorm row kernels (simd/nn_rows.h); chosen
// at run time by the CpuBackend methods in norms.cpp.
#include "backends/cpu/simd/vmath_avx2.h"

#include "backends/cpu/simd/nn_rows.h"

namespace forge::cpu::nn::avx2 {

void layer_norm(const float* x, const float* w, const float* b, float eps, float* y, float* mean,
                float* rstd, int64_t rows, int64_t cols) {
    layer_norm_rows<F32x8>(x, w, b, eps, y, mean, rstd, rows, cols);
}

void layer_norm_backward(const float* dy, const float* x, const float* w, const float* mean,
                         const float* rstd, float* dx, float* scratch, int n_threads, int64_t rows,
                         int64_t cols) {
    layer_norm_backward_rows<F32x8>(dy, x, w, mean, rstd, dx, scratch, n_threads, rows, cols);
}

void rms_norm(const float* x, const float* w, float eps, float* y, float* rstd, int64_t rows,
              int64_t cols) {
    rms_norm_rows<F32x8>(x, w, eps, y, rstd, rows, cols);
}

void rms_norm_backward(const float* dy, const float* x, const float* w, const float* rstd,
                       float* dx, float* scratch, int n_threads, int64_t rows, int64_t cols) {
    rms_norm_backward_rows<F32x8>(dy, x, w, rstd, dx, scratch, n_threads, rows, cols);
}

} // namespace forge::cpu::nn::avx2
