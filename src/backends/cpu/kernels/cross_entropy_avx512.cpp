// The AVX-512 instantiations of the fused f32 cross-entropy row kernels (simd/nn_rows.h); chosen
// at run time by the CpuBackend methods in cross_entropy.cpp.
#include "backends/cpu/simd/vmath_avx512.h"

#include "backends/cpu/simd/nn_rows.h"

namespace forge::cpu::nn::avx512 {

void cross_entropy(const float* logits, const int64_t* targets, int64_t ignore_index, float* losses,
                   float* lse, int64_t rows, int64_t cols) {
    cross_entropy_rows<F32x16>(logits, targets, ignore_index, losses, lse, rows, cols);
}

void cross_entropy_backward(const float* logits, const int64_t* targets, const float* lse,
                            int64_t ignore_index, float scale, float* dlogits, int64_t rows,
                            int64_t cols) {
    cross_entropy_backward_rows<F32x16>(logits, targets, lse, ignore_index, scale, dlogits, rows,
                                        cols);
}

} // namespace forge::cpu::nn::avx512
