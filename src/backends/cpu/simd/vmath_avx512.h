// AVX-512F vector of 16 floats with the few operations the NN row kernels need (masked tails,
// horizontal reductions, a vectorised exp). Include only from files compiled for AVX-512
// (*_avx512.cpp); see nn_rows.h for the kernels written against it. Not a general SIMD library.
#pragma once

#include <cstdint>

// GCC 12 reports -Wmaybe-uninitialized inside avx512fintrin.h (the _mm512_undefined_ps() of
// many intrinsics, GCC bug 105593); the state that counts is the one at the header's lines.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

namespace forge::cpu::nn {

struct F32x16 {
    using V = __m512;
    using M = __mmask16;
    static constexpr int64_t W = 16;

    /// Lanes [0, n) on, n in [0, 16].
    static M mask(int64_t n) { return M((1u << n) - 1u); }
    static V load(const float* p) { return _mm512_loadu_ps(p); }
    /// Masked-off lanes read nothing (no fault) and take `fill`.
    static V load(const float* p, M m, V fill) { return _mm512_mask_loadu_ps(fill, m, p); }
    static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
    static void store(float* p, V v, M m) { _mm512_mask_storeu_ps(p, m, v); }
    /// v on the lanes of m, 0 elsewhere.
    static V keep(M m, V v) { return _mm512_maskz_mov_ps(m, v); }

    static V set1(float a) { return _mm512_set1_ps(a); }
    static V zero() { return _mm512_setzero_ps(); }
    static V add(V a, V b) { return _mm512_add_ps(a, b); }
    static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
    static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
    static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }   // a * b + c
    static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); } // c - a * b
    static V max(V a, V b) { return _mm512_max_ps(a, b); }
    static float hsum(V v) { return _mm512_reduce_add_ps(v); }
    static float hmax(V v) { return _mm512_reduce_max_ps(v); }
    /// [v1, v0, v3, v2, ...]: swaps the two floats of each pair (interleaved RoPE).
    static V swap_pairs(V v) { return _mm512_permute_ps(v, 0xB1); }

    /// exp(x), about 2 ulp. exp(x) = 2^n * exp(r) with n = round(x / ln 2) and
    /// |r| <= ln(2)/2, where exp(r) is its degree-7 Taylor polynomial (truncation error
    /// r^8/8! < 6e-9). scalef applies 2^n with correct overflow to inf and underflow to 0;
    /// NaN propagates (x is the second operand of min/max, which return it when unordered).
    static V exp(V x) {
        x = _mm512_max_ps(_mm512_set1_ps(-104.0f), _mm512_min_ps(_mm512_set1_ps(89.0f), x));
        const V n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        // ln 2 split in two so n * ln2_hi is exact (Cody-Waite reduction).
        V r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
        r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
        V p = _mm512_set1_ps(1.0f / 5040.0f);
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
        return _mm512_scalef_ps(p, n);
    }
};

} // namespace forge::cpu::nn
