// The AVX2 instantiations of the few-row f32 matmul kernels (simd/gemv_rows.h); chosen at run
// time by CpuBackend::matmul for products of up to 16 rows.
#include "backends/cpu/simd/vmath_avx2.h"

#include "backends/cpu/simd/gemv_rows.h"
#include "backends/cpu/simd/nn_kernels.h"

namespace forge::cpu::nn::avx2 {

// rows: 1..8 rows of x (and y) at once.
void gemv_dot_rows(int rows, const float* w, int64_t ld, const float* x, int64_t xs, float* y,
                   int64_t ys, int64_t r0, int64_t r1, int64_t K) {
    switch (rows) {
    case 1: return nn::gemv_dot_rows<F32x8, 1>(w, ld, x, xs, y, ys, r0, r1, K);
    case 2: return nn::gemv_dot_rows<F32x8, 2>(w, ld, x, xs, y, ys, r0, r1, K);
    case 3: return nn::gemv_dot_rows<F32x8, 3>(w, ld, x, xs, y, ys, r0, r1, K);
    case 4: return nn::gemv_dot_rows<F32x8, 4>(w, ld, x, xs, y, ys, r0, r1, K);
    case 5: return nn::gemv_dot_rows<F32x8, 5>(w, ld, x, xs, y, ys, r0, r1, K);
    case 6: return nn::gemv_dot_rows<F32x8, 6>(w, ld, x, xs, y, ys, r0, r1, K);
    case 7: return nn::gemv_dot_rows<F32x8, 7>(w, ld, x, xs, y, ys, r0, r1, K);
    default: return nn::gemv_dot_rows<F32x8, 8>(w, ld, x, xs, y, ys, r0, r1, K);
    }
}

void gemv_axpy_cols(int rows, const float* w, int64_t ld, const float* x, int64_t xs, float* y,
                    int64_t ys, int64_t c0, int64_t c1, int64_t K) {
    switch (rows) {
    case 1: return nn::gemv_axpy_cols<F32x8, 1>(w, ld, x, xs, y, ys, c0, c1, K);
    case 2: return nn::gemv_axpy_cols<F32x8, 2>(w, ld, x, xs, y, ys, c0, c1, K);
    case 3: return nn::gemv_axpy_cols<F32x8, 3>(w, ld, x, xs, y, ys, c0, c1, K);
    case 4: return nn::gemv_axpy_cols<F32x8, 4>(w, ld, x, xs, y, ys, c0, c1, K);
    case 5: return nn::gemv_axpy_cols<F32x8, 5>(w, ld, x, xs, y, ys, c0, c1, K);
    case 6: return nn::gemv_axpy_cols<F32x8, 6>(w, ld, x, xs, y, ys, c0, c1, K);
    case 7: return nn::gemv_axpy_cols<F32x8, 7>(w, ld, x, xs, y, ys, c0, c1, K);
    default: return nn::gemv_axpy_cols<F32x8, 8>(w, ld, x, xs, y, ys, c0, c1, K);
    }
}

} // namespace forge::cpu::nn::avx2
