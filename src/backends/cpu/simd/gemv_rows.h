// f32 matrix-vector kernels for matmul's M = 1 case (decoding), written once against a SIMD
// vector type S (F32x8 / F32x16) and instantiated in kernels/gemv_avx2.cpp and gemv_avx512.cpp.
// Each output is summed by one thread in a fixed order, so results do not depend on how the
// outputs are split between threads. (OpenBLAS's sgemv is not used here: calling it from several
// threads at once is not safe in the pthreads build, and a single-threaded call reads the
// weights on one core only.) Only templates and intrinsics live here (see nn_rows.h).
#pragma once

#include <cstdint>

namespace forge::cpu::nn {

/// y[r] = dot(w + r * ld, x) for r in [r0, r1): weights stored one output per row (K long).
template <class S>
inline void gemv_dot_rows(const float* w, int64_t ld, const float* x, float* y, int64_t r0,
                          int64_t r1, int64_t K) {
    using V = typename S::V;
    constexpr int64_t W = S::W;
    const int64_t full = K / W * W;
    const auto tail = S::mask(K - full);
    int64_t r = r0;
    // Two rows at a time share each load of x.
    for (; r + 2 <= r1; r += 2) {
        const float* a = w + r * ld;
        const float* b = a + ld;
        V a0 = S::zero(), a1 = S::zero(), b0 = S::zero(), b1 = S::zero();
        int64_t k = 0;
        for (; k + 2 * W <= full; k += 2 * W) {
            const V x0 = S::load(x + k), x1 = S::load(x + k + W);
            a0 = S::fmadd(S::load(a + k), x0, a0);
            a1 = S::fmadd(S::load(a + k + W), x1, a1);
            b0 = S::fmadd(S::load(b + k), x0, b0);
            b1 = S::fmadd(S::load(b + k + W), x1, b1);
        }
        for (; k < full; k += W) {
            const V x0 = S::load(x + k);
            a0 = S::fmadd(S::load(a + k), x0, a0);
            b0 = S::fmadd(S::load(b + k), x0, b0);
        }
        if (k < K) {
            const V x0 = S::load(x + k, tail, S::zero());
            a1 = S::fmadd(S::load(a + k, tail, S::zero()), x0, a1);
            b1 = S::fmadd(S::load(b + k, tail, S::zero()), x0, b1);
        }
        y[r] = S::hsum(S::add(a0, a1));
        y[r + 1] = S::hsum(S::add(b0, b1));
    }
    for (; r < r1; ++r) {
        const float* a = w + r * ld;
        V a0 = S::zero(), a1 = S::zero();
        int64_t k = 0;
        for (; k + 2 * W <= full; k += 2 * W) {
            a0 = S::fmadd(S::load(a + k), S::load(x + k), a0);
            a1 = S::fmadd(S::load(a + k + W), S::load(x + k + W), a1);
        }
        for (; k < full; k += W) a0 = S::fmadd(S::load(a + k), S::load(x + k), a0);
        if (k < K)
            a1 = S::fmadd(S::load(a + k, tail, S::zero()), S::load(x + k, tail, S::zero()), a1);
        y[r] = S::hsum(S::add(a0, a1));
    }
}

/// y[c] = sum_k x[k] * w[k * ld + c] for c in [c0, c1): weights stored one input per row.
/// Columns go in tiles of 4 vectors held in registers while k runs over all rows.
template <class S>
inline void gemv_axpy_cols(const float* w, int64_t ld, const float* x, float* y, int64_t c0,
                           int64_t c1, int64_t K) {
    using V = typename S::V;
    constexpr int64_t W = S::W;
    int64_t c = c0;
    for (; c + 4 * W <= c1; c += 4 * W) {
        V s0 = S::zero(), s1 = S::zero(), s2 = S::zero(), s3 = S::zero();
        const float* p = w + c;
        for (int64_t k = 0; k < K; ++k, p += ld) {
            const V xk = S::set1(x[k]);
            s0 = S::fmadd(S::load(p), xk, s0);
            s1 = S::fmadd(S::load(p + W), xk, s1);
            s2 = S::fmadd(S::load(p + 2 * W), xk, s2);
            s3 = S::fmadd(S::load(p + 3 * W), xk, s3);
        }
        S::store(y + c, s0);
        S::store(y + c + W, s1);
        S::store(y + c + 2 * W, s2);
        S::store(y + c + 3 * W, s3);
    }
    for (; c < c1; c += W) {
        const auto m = S::mask(c1 - c < W ? c1 - c : W);
        V s = S::zero();
        const float* p = w + c;
        for (int64_t k = 0; k < K; ++k, p += ld) s = S::fmadd(S::load(p, m, S::zero()), S::set1(x[k]), s);
        S::store(y + c, s, m);
    }
}

} // namespace forge::cpu::nn
