// One query row of causal attention over an f32 KV cache with AVX-512: scores = q . K[j] * scale
// for the n cached positions, softmax, out = sum_j p_j V[j]. head_dim a multiple of 16.
#include "infer/attention.h"

// GCC 12 flags the undefined lanes inside its own reduce intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cmath>

namespace forge::infer::avx512 {

void attend_row(const float* q, const float* K, const float* V, int64_t n, int64_t D, float scale,
                float* scores, float* out) {
    float mx = -INFINITY;
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t d = 0; d < D; d += 16) {
            const __m512 qv = _mm512_loadu_ps(q + d);
            a0 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(K + (j + 0) * D + d), a0);
            a1 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(K + (j + 1) * D + d), a1);
            a2 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(K + (j + 2) * D + d), a2);
            a3 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(K + (j + 3) * D + d), a3);
        }
        scores[j] = _mm512_reduce_add_ps(a0) * scale;
        scores[j + 1] = _mm512_reduce_add_ps(a1) * scale;
        scores[j + 2] = _mm512_reduce_add_ps(a2) * scale;
        scores[j + 3] = _mm512_reduce_add_ps(a3) * scale;
    }
    for (; j < n; ++j) {
        __m512 a0 = _mm512_setzero_ps();
        for (int64_t d = 0; d < D; d += 16)
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), _mm512_loadu_ps(K + j * D + d), a0);
        scores[j] = _mm512_reduce_add_ps(a0) * scale;
    }
    for (j = 0; j < n; ++j) mx = std::max(mx, scores[j]);
    float sum = 0;
    for (j = 0; j < n; ++j) sum += (scores[j] = std::exp(scores[j] - mx));
    const float inv = 1.f / sum;
    for (int64_t d = 0; d < D; d += 16) {
        __m512 o0 = _mm512_setzero_ps(), o1 = o0;
        j = 0;
        for (; j + 2 <= n; j += 2) {
            o0 = _mm512_fmadd_ps(_mm512_set1_ps(scores[j]), _mm512_loadu_ps(V + j * D + d), o0);
            o1 = _mm512_fmadd_ps(_mm512_set1_ps(scores[j + 1]), _mm512_loadu_ps(V + (j + 1) * D + d), o1);
        }
        if (j < n) o0 = _mm512_fmadd_ps(_mm512_set1_ps(scores[j]), _mm512_loadu_ps(V + j * D + d), o0);
        _mm512_storeu_ps(out + d, _mm512_mul_ps(_mm512_add_ps(o0, o1), _mm512_set1_ps(inv)));
    }
}

} // namespace forge::infer::avx512
