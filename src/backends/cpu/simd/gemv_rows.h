// f32 kernels for matmuls with few rows (decoding: one row per sequence), written once against a
// SIMD vector type S (F32x8 / F32x16) and instantiated in kernels/gemv_avx2.cpp and
// gemv_avx512.cpp. Up to 8 rows of x share each load of the weights. Every output is summed by
// one thread in a fixed order that depends on neither the number of rows (1..16 give identical
// bits per row) nor how outputs are split between threads: a sequence's logits are the same
// alone or batched with others. (OpenBLAS is not used here: its sgemm packs all of B even for
// one row, and concurrent sgemv calls are not safe in the pthreads build.) Only templates and
// intrinsics live here (see nn_rows.h).
#pragma once

#include <cstdint>

namespace forge::cpu::nn {

/// y[m][r] = dot(w + r * ld, x[m]) for r in [r0, r1), m < R: weights stored one output per row
/// (K long). x rows are xs apart, y rows ys apart.
template <class S, int R>
inline void gemv_dot_rows(const float* w, int64_t ld, const float* x, int64_t xs, float* y,
                          int64_t ys, int64_t r0, int64_t r1, int64_t K) {
    using V = typename S::V;
    constexpr int64_t W = S::W;
    const int64_t full = K / W * W;
    const auto tail = S::mask(K - full);
    for (int64_t r = r0; r < r1; ++r) {
        const float* a = w + r * ld;
        V s0[R], s1[R];
        for (int m = 0; m < R; ++m) s0[m] = s1[m] = S::zero();
        int64_t k = 0;
        for (; k + 2 * W <= full; k += 2 * W) {
            const V w0 = S::load(a + k), w1 = S::load(a + k + W);
            for (int m = 0; m < R; ++m) {
                s0[m] = S::fmadd(w0, S::load(x + m * xs + k), s0[m]);
                s1[m] = S::fmadd(w1, S::load(x + m * xs + k + W), s1[m]);
            }
        }
        for (; k < full; k += W) {
            const V w0 = S::load(a + k);
            for (int m = 0; m < R; ++m) s0[m] = S::fmadd(w0, S::load(x + m * xs + k), s0[m]);
        }
        if (k < K) {
            const V w0 = S::load(a + k, tail, S::zero());
            for (int m = 0; m < R; ++m)
                s1[m] = S::fmadd(w0, S::load(x + m * xs + k, tail, S::zero()), s1[m]);
        }
        for (int m = 0; m < R; ++m) y[m * ys + r] = S::hsum(S::add(s0[m], s1[m]));
    }
}

/// y[m][c] = sum_k x[m][k] * w[k * ld + c] for c in [c0, c1), m < R: weights stored one input
/// per row. Columns go in tiles of 2 vectors held in registers while k runs over all rows.
template <class S, int R>
inline void gemv_axpy_cols(const float* w, int64_t ld, const float* x, int64_t xs, float* y,
                           int64_t ys, int64_t c0, int64_t c1, int64_t K) {
    using V = typename S::V;
    constexpr int64_t W = S::W;
    int64_t c = c0;
    for (; c + 2 * W <= c1; c += 2 * W) {
        V s0[R], s1[R];
        for (int m = 0; m < R; ++m) s0[m] = s1[m] = S::zero();
        const float* p = w + c;
        for (int64_t k = 0; k < K; ++k, p += ld) {
            const V w0 = S::load(p), w1 = S::load(p + W);
            for (int m = 0; m < R; ++m) {
                const V xk = S::set1(x[m * xs + k]);
                s0[m] = S::fmadd(w0, xk, s0[m]);
                s1[m] = S::fmadd(w1, xk, s1[m]);
            }
        }
        for (int m = 0; m < R; ++m) {
            S::store(y + m * ys + c, s0[m]);
            S::store(y + m * ys + c + W, s1[m]);
        }
    }
    for (; c < c1; c += W) {
        const auto mk = S::mask(c1 - c < W ? c1 - c : W);
        V s[R];
        for (int m = 0; m < R; ++m) s[m] = S::zero();
        const float* p = w + c;
        for (int64_t k = 0; k < K; ++k, p += ld) {
            const V w0 = S::load(p, mk, S::zero());
            for (int m = 0; m < R; ++m) s[m] = S::fmadd(w0, S::set1(x[m * xs + k]), s[m]);
        }
        for (int m = 0; m < R; ++m) S::store(y + m * ys + c, s[m], mk);
    }
}

} // namespace forge::cpu::nn
