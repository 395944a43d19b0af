// AVX2+FMA vector of 8 floats with the operations the NN row kernels need (masked tails,
// horizontal reductions, a vectorised exp). Include only from files compiled for AVX2
// (*_avx2.cpp); see nn_rows.h for the kernels written against it. Not a general SIMD library.
#pragma once

#include <cstdint>

#include <immintrin.h>

namespace forge::cpu::nn {

struct F32x8 {
    using V = __m256;
    using M = __m256i; // all-ones lanes are on
    static constexpr int64_t W = 8;

    /// Lanes [0, n) on, n in [0, 8].
    static M mask(int64_t n) {
        return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)),
                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    }
    static V load(const float* p) { return _mm256_loadu_ps(p); }
    /// Masked-off lanes read nothing (no fault) and take `fill`.
    static V load(const float* p, M m, V fill) {
        return _mm256_blendv_ps(fill, _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
    }
    static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
    static void store(float* p, V v, M m) { _mm256_maskstore_ps(p, m, v); }
    /// v on the lanes of m, 0 elsewhere.
    static V keep(M m, V v) { return _mm256_and_ps(v, _mm256_castsi256_ps(m)); }

    static V set1(float a) { return _mm256_set1_ps(a); }
    static V zero() { return _mm256_setzero_ps(); }
    static V add(V a, V b) { return _mm256_add_ps(a, b); }
    static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
    static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
    static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }   // a * b + c
    static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); } // c - a * b
    static V max(V a, V b) { return _mm256_max_ps(a, b); }
    static float hsum(V v) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        return _mm_cvtss_f32(s);
    }
    static float hmax(V v) {
        __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
        return _mm_cvtss_f32(s);
    }
    /// [v1, v0, v3, v2, ...]: swaps the two floats of each pair (interleaved RoPE).
    static V swap_pairs(V v) { return _mm256_permute_ps(v, 0xB1); }

    /// exp(x), about 2 ulp: the same reduction and polynomial as F32x16::exp, with 2^n built
    /// in the exponent field, so n must stay in the normal range [-126, 127]: x is clamped to
    /// [-87.3, 88.3] and results below exp(-87.3) (~1.2e-38, the smallest normal) flush to 0.
    /// Inputs in (88.3, 88.72] saturate at exp(88.3); the kernels only pass x <= 0.
    static V exp(V x0) {
        V x = _mm256_max_ps(_mm256_set1_ps(-87.3f), _mm256_min_ps(_mm256_set1_ps(88.3f), x0));
        const V n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        V r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
        r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
        V p = _mm256_set1_ps(1.0f / 5040.0f);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
        const __m256i bits =
            _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        const V y = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
        // x0 < -87.3 underflows to 0 (NaN compares false and stays NaN).
        return _mm256_andnot_ps(_mm256_cmp_ps(x0, _mm256_set1_ps(-87.3f), _CMP_LT_OQ), y);
    }
};

} // namespace forge::cpu::nn
