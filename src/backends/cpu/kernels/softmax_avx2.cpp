// The AVX2+FMA instantiation of the f32 softmax row kernel (simd/nn_rows.h); chosen at run time by
// CpuBackend::softmax in softmax.cpp.
#include "backends/cpu/simd/vmath_avx2.h"

#include "backends/cpu/simd/nn_rows.h"

namespace forge::cpu::nn::avx2 {

void softmax(const float* x, float* y, int64_t rows, int64_t cols, bool log) {
    softmax_rows<F32x8>(x, y, rows, cols, log);
}

} // namespace forge::cpu::nn::avx2
