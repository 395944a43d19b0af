// An 8 x 8 f32 block transpose in AVX registers for the attention kernels' K^T and V^T tiles
// (attention_short.h), shared by attention_avx2.cpp and attention_avx512.cpp, which include it
// after <immintrin.h> and compile it with their own -mavx2 or wider flags. Not for other files.
#pragma once

#include <cstdint>

#include <immintrin.h>

namespace forge::cpu::flash {
namespace {

// dst[i * ldd + r] = src[r * lds + i] * f for r, i < 8: unpack pairs of rows, then pairs of
// pairs, then swap 128-bit halves (the usual 24-shuffle transpose).
inline void transpose8x8(float* dst, int64_t ldd, const float* src, int64_t lds, float f) {
    const __m256 s = _mm256_set1_ps(f);
    __m256 r[8], t[8];
    for (int i = 0; i < 8; ++i)
        r[i] = _mm256_mul_ps(_mm256_loadu_ps(src + i * lds), s);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);     // a0 b0 a1 b1 | a4 b4 a5 b5
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]); // a2 b2 a3 b3 | a6 b6 a7 b7
    }
    for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);     // a0 b0 c0 d0 | a4 b4 c4 d4
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE); // column 1 | 5
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
        _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
    }
}

} // namespace
} // namespace forge::cpu::flash
