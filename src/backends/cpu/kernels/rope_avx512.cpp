// The AVX-512 instantiation of the f32 RoPE row kernel (simd/nn_rows.h); chosen at run time by
// CpuBackend::rope in rope.cpp.
#include "backends/cpu/simd/vmath_avx512.h"

#include "backends/cpu/simd/nn_rows.h"

namespace forge::cpu::nn::avx512 {

void rope(const float* x, float* y, const float* cs, const float* sn, int64_t n_rows, int64_t seq,
          int64_t d, int64_t rd, bool neox) {
    rope_rows<F32x16>(x, y, cs, sn, n_rows, seq, d, rd, neox);
}

} // namespace forge::cpu::nn::avx512
