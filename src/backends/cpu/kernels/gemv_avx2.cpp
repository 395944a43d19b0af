// The AVX2 instantiations of the f32 matrix-vector kernels (simd/gemv_rows.h); chosen at run
// time by CpuBackend::matmul for one-row products.
#include "backends/cpu/simd/vmath_avx2.h"

#include "backends/cpu/simd/gemv_rows.h"
#include "backends/cpu/simd/nn_kernels.h"

namespace forge::cpu::nn::avx2 {

void gemv_dot_rows(const float* w, int64_t ld, const float* x, float* y, int64_t r0, int64_t r1,
                   int64_t K) {
    nn::gemv_dot_rows<F32x8>(w, ld, x, y, r0, r1, K);
}

void gemv_axpy_cols(const float* w, int64_t ld, const float* x, float* y, int64_t c0, int64_t c1,
                    int64_t K) {
    nn::gemv_axpy_cols<F32x8>(w, ld, x, y, c0, c1, K);
}

} // namespace forge::cpu::nn::avx2
