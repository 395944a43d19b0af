// One query row of causal attention over an f32 KV cache with AVX-512: scores = q . K[j] * scale
// for the n cached positions, softmax, out = sum_j p_j V[j]. head_dim a multiple of 16.
#include "infer/attention.h"

#include "backends/cpu/simd/vmath_avx512.h"

// GCC 12 flags the undefined lanes inside its own reduce intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cmath>

namespace forge::infer::avx512 {

namespace {
template <int ND>
void pv(const float* p, const float* V, int64_t n, float inv, float* out) {
    __m512 o[ND];
    for (int i = 0; i < ND; ++i) o[i] = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
        const __m512 pj = _mm512_set1_ps(p[j]);
        for (int i = 0; i < ND; ++i) o[i] = _mm512_fmadd_ps(pj, _mm512_loadu_ps(V + j * ND * 16 + i * 16), o[i]);
    }
    for (int i = 0; i < ND; ++i) _mm512_storeu_ps(out + i * 16, _mm512_mul_ps(o[i], _mm512_set1_ps(inv)));
}
} // namespace

void attend_row(const float* q, const float* K, const float* V, int64_t n, int64_t D, float scale,
                float* scores, float* out) {
    float mx = -INFINITY;
    int64_t j = 0;
    for (int64_t tile = 0; tile * kKeyTile < n; ++tile) {
        const float* kt = K + tile * D * kKeyTile;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t d = 0; d < D; d += 4) {
            a0 = _mm512_fmadd_ps(_mm512_set1_ps(q[d]), _mm512_loadu_ps(kt + d * kKeyTile), a0);
            a1 = _mm512_fmadd_ps(_mm512_set1_ps(q[d + 1]), _mm512_loadu_ps(kt + (d + 1) * kKeyTile), a1);
            a2 = _mm512_fmadd_ps(_mm512_set1_ps(q[d + 2]), _mm512_loadu_ps(kt + (d + 2) * kKeyTile), a2);
            a3 = _mm512_fmadd_ps(_mm512_set1_ps(q[d + 3]), _mm512_loadu_ps(kt + (d + 3) * kKeyTile), a3);
        }
        const __m512 sc = _mm512_mul_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                                        _mm512_set1_ps(scale));
        _mm512_storeu_ps(scores + tile * kKeyTile, sc); // lanes past n: scratch, never read
    }
    __m512 vmx = _mm512_set1_ps(-INFINITY);
    for (j = 0; j < n; j += 16) {
        const __mmask16 m = n - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - j)) - 1);
        vmx = _mm512_max_ps(vmx, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), m, scores + j));
    }
    mx = _mm512_reduce_max_ps(vmx);
    using S = cpu::nn::F32x16;
    __m512 vs = _mm512_setzero_ps();
    for (j = 0; j < n; j += 16) {
        const __mmask16 m = n - j >= 16 ? __mmask16(0xFFFF) : S::mask(n - j);
        const __m512 e = S::keep(m, S::exp(_mm512_sub_ps(_mm512_loadu_ps(scores + j), _mm512_set1_ps(mx))));
        _mm512_storeu_ps(scores + j, e); // scores has room for whole tiles
        vs = _mm512_add_ps(vs, e);
    }
    const float inv = 1.f / _mm512_reduce_add_ps(vs);
    // out = sum_j p_j V[j]: keys outer, D / 16 independent accumulators inner.
    if (D == 64) pv<4>(scores, V, n, inv, out);
    else if (D == 128) pv<8>(scores, V, n, inv, out);
    else if (D == 32) pv<2>(scores, V, n, inv, out);
    else if (D == 16) pv<1>(scores, V, n, inv, out);
    else {
        for (int64_t d = 0; d < D; d += 16) {
            __m512 o0 = _mm512_setzero_ps();
            for (j = 0; j < n; ++j)
                o0 = _mm512_fmadd_ps(_mm512_set1_ps(scores[j]), _mm512_loadu_ps(V + j * D + d), o0);
            _mm512_storeu_ps(out + d, _mm512_mul_ps(o0, _mm512_set1_ps(inv)));
        }
    }
}

void silu_mul(float* g, const float* u, int64_t n) {
    using S = cpu::nn::F32x16;
    const __m512 one = _mm512_set1_ps(1.f);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : S::mask(n - i);
        const __m512 x = _mm512_maskz_loadu_ps(m, g + i);
        const __m512 s = _mm512_div_ps(x, _mm512_add_ps(one, S::exp(_mm512_sub_ps(_mm512_setzero_ps(), x))));
        _mm512_mask_storeu_ps(g + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, u + i)));
    }
}

} // namespace forge::infer::avx512
