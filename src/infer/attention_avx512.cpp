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

namespace {

// Scores of NQ queries against every key tile (one K load feeds NQ FMAs), scaled; row i at
// sc + i * ld.
template <int NQ>
void qk_block(const float* q, int64_t ldq, const float* K, int64_t tiles, int64_t D, float scale,
              float* sc, int64_t ld) {
    for (int64_t tile = 0; tile < tiles; ++tile) {
        const float* kt = K + tile * D * kKeyTile;
        __m512 acc[NQ];
        for (int i = 0; i < NQ; ++i) acc[i] = _mm512_setzero_ps();
        for (int64_t d = 0; d < D; ++d) {
            const __m512 k = _mm512_loadu_ps(kt + d * kKeyTile);
            for (int i = 0; i < NQ; ++i) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[i * ldq + d]), k, acc[i]);
        }
        for (int i = 0; i < NQ; ++i)
            _mm512_storeu_ps(sc + i * ld + tile * kKeyTile, _mm512_mul_ps(acc[i], _mm512_set1_ps(scale)));
    }
}

// out_i = inv_i * sum_j p_ij V[j] for QG queries at once (one V row load feeds QG x ND FMAs);
// p_ij = 0 past query i's keys, so all QG run over the last one's n keys.
template <int ND, int QG>
void pv_block(const float* p, int64_t ld, const float* inv, const float* V, int64_t n, float* out,
              int64_t ldo) {
    __m512 o[QG][ND];
    for (int i = 0; i < QG; ++i)
        for (int c = 0; c < ND; ++c) o[i][c] = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
        __m512 v[ND];
        for (int c = 0; c < ND; ++c) v[c] = _mm512_loadu_ps(V + j * ND * 16 + c * 16);
        for (int i = 0; i < QG; ++i) {
            const __m512 pj = _mm512_set1_ps(p[i * ld + j]);
            for (int c = 0; c < ND; ++c) o[i][c] = _mm512_fmadd_ps(pj, v[c], o[i][c]);
        }
    }
    for (int i = 0; i < QG; ++i)
        for (int c = 0; c < ND; ++c)
            _mm512_storeu_ps(out + i * ldo + c * 16, _mm512_mul_ps(o[i][c], _mm512_set1_ps(inv[i])));
}

template <int ND>
void pv_rows(const float* p, int64_t ld, const float* inv, const float* V, int64_t n0, int nq,
             float* out, int64_t ldo) {
    constexpr int QG = ND >= 4 ? 16 / ND : 4; // accumulators: QG * ND <= 16 registers
    int i = 0;
    for (; i + QG <= nq; i += QG)
        pv_block<ND, QG>(p + i * ld, ld, inv + i, V, n0 + i + QG - 1, out + i * ldo, ldo);
    for (; i < nq; ++i) pv_block<ND, 1>(p + i * ld, ld, inv + i, V, n0 + i, out + i * ldo, ldo);
}

template <int NQ>
void attend_block(const float* q, int64_t ldq, const float* K, const float* V, int64_t n0,
                  int64_t D, float scale, float* sc, float* out, int64_t ldo) {
    const int64_t n_max = n0 + NQ - 1, tiles = (n_max + kKeyTile - 1) / kKeyTile;
    const int64_t ld = tiles * kKeyTile;
    qk_block<NQ>(q, ldq, K, tiles, D, scale, sc, ld);
    using S = cpu::nn::F32x16;
    float inv[NQ];
    for (int i = 0; i < NQ; ++i) { // softmax over query i's n0 + i keys, zeros after them
        float* r = sc + i * ld;
        const int64_t n = n0 + i;
        __m512 vmx = _mm512_set1_ps(-INFINITY);
        for (int64_t j = 0; j < n; j += 16) {
            const __mmask16 m = n - j >= 16 ? __mmask16(0xFFFF) : S::mask(n - j);
            vmx = _mm512_max_ps(vmx, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), m, r + j));
        }
        const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmx));
        __m512 vs = _mm512_setzero_ps();
        for (int64_t j = 0; j < ld; j += 16) {
            const __mmask16 m = n - j >= 16 ? __mmask16(0xFFFF) : n > j ? S::mask(n - j) : 0;
            const __m512 e = S::keep(m, S::exp(_mm512_sub_ps(_mm512_loadu_ps(r + j), mx)));
            _mm512_storeu_ps(r + j, e);
            vs = _mm512_add_ps(vs, e);
        }
        inv[i] = 1.f / _mm512_reduce_add_ps(vs);
    }
    switch (D / 16) {
    case 1: return pv_rows<1>(sc, ld, inv, V, n0, NQ, out, ldo);
    case 2: return pv_rows<2>(sc, ld, inv, V, n0, NQ, out, ldo);
    case 4: return pv_rows<4>(sc, ld, inv, V, n0, NQ, out, ldo);
    default: return pv_rows<8>(sc, ld, inv, V, n0, NQ, out, ldo);
    }
}

} // namespace

void attend_rows(const float* q, int64_t ldq, int nq, const float* K, const float* V, int64_t n0,
                 int64_t D, float scale, float* scores, float* out, int64_t ldo) {
    if (D != 16 && D != 32 && D != 64 && D != 128) {
        for (int i = 0; i < nq; ++i) attend_row(q + i * ldq, K, V, n0 + i, D, scale, scores, out + i * ldo);
        return;
    }
    switch (nq) {
    case 8: return attend_block<8>(q, ldq, K, V, n0, D, scale, scores, out, ldo);
    case 7: return attend_block<7>(q, ldq, K, V, n0, D, scale, scores, out, ldo);
    case 6: return attend_block<6>(q, ldq, K, V, n0, D, scale, scores, out, ldo);
    case 5: return attend_block<5>(q, ldq, K, V, n0, D, scale, scores, out, ldo);
    case 4: return attend_block<4>(q, ldq, K, V, n0, D, scale, scores, out, ldo);
    case 3: return attend_block<3>(q, ldq, K, V, n0, D, scale, scores, out, ldo);
    case 2: return attend_block<2>(q, ldq, K, V, n0, D, scale, scores, out, ldo);
    default: return attend_row(q, K, V, n0, D, scale, scores, out);
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
