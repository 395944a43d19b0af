// Flash attention, f32, AVX2 + FMA: the vector policy for attention_flash.h (8 lanes, 4x2
// register block) and its entry points (flash and short-sequence). Compiled with -mavx2 -mfma;
// called only when the CPU has both and D % 8 == 0 (and no AVX-512).
#include <immintrin.h>

#include "backends/cpu/kernels/attention_flash.h"
#include "backends/cpu/kernels/attention_short.h"
#include "backends/cpu/kernels/attention_transpose_avx.h"

namespace forge::cpu::flash {
namespace {

struct Avx2 {
    using T = float;
    using V = __m256;
    // 4 rows x 2 vectors = 8 accumulators, 2 B vectors and a broadcast: 11 of 16 registers.
    static constexpr int W = 8, R = 4, C = 2;
    static void transpose8(float* dst, int64_t ldd, const float* src, int64_t lds, float f) {
        transpose8x8(dst, ldd, src, lds, f);
    }
    static V zero() { return _mm256_setzero_ps(); }
    static V load(const float* p) { return _mm256_loadu_ps(p); }
    static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
    static V set1(float x) { return _mm256_set1_ps(x); }
    static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
    static V add(V a, V b) { return _mm256_add_ps(a, b); }
    static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
    static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
    static V max(V a, V b) { return _mm256_max_ps(a, b); }
    static V neg_inf_to_zero(V x) {
        return _mm256_andnot_ps(
            _mm256_cmp_ps(x, _mm256_set1_ps(-__builtin_huge_valf()), _CMP_EQ_OQ), x);
    }
    static float reduce_max(V v) {
        __m128 q = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        q = _mm_max_ps(q, _mm_movehl_ps(q, q));
        q = _mm_max_ss(q, _mm_shuffle_ps(q, q, 1));
        return _mm_cvtss_f32(q);
    }
    static float reduce_add(V v) {
        __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
        return _mm_cvtss_f32(q);
    }
    // e^x as in attention_avx512.cpp; 2^n built in the exponent bits (n in [-126, 127] after the
    // clamp). Below -87.3 (incl. -inf) the result is exactly 0.
    static V exp(V x) {
        const V live = _mm256_cmp_ps(x, _mm256_set1_ps(-87.33654f), _CMP_GE_OQ);
        x = _mm256_min_ps(x, _mm256_set1_ps(88.37626f));
        const V n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        V r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
        r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
        V p = _mm256_set1_ps(1.9875691500e-4f);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
        p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
        // 2^n: (n + 127) << 23 as float bits; n = 128 (x near the top clamp) is split in two
        const __m256i ni = _mm256_cvtps_epi32(n);
        const __m256i half = _mm256_srai_epi32(ni, 1);
        const V s1 = _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_add_epi32(half, _mm256_set1_epi32(127)), 23));
        const V s2 = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_add_epi32(_mm256_sub_epi32(ni, half), _mm256_set1_epi32(127)), 23));
        return _mm256_and_ps(live, _mm256_mul_ps(_mm256_mul_ps(p, s1), s2));
    }
};

} // namespace

void forward_f32_avx2(const FwdArgs<float>& a) {
    flash_forward<Avx2>(a);
}
void backward_f32_avx2(const BwdArgs<float>& a) {
    flash_backward<Avx2>(a);
}

void short_forward_f32_avx2(const FwdArgs<float>& a) {
    short_forward<Avx2>(a);
}
void short_backward_f32_avx2(const BwdArgs<float>& a) {
    short_backward<Avx2>(a);
}

} // namespace forge::cpu::flash
