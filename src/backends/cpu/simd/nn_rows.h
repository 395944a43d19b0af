// The f32 row kernels of the NN ops, written once against a SIMD vector type S (F32x8 in
// vmath_avx2.h, F32x16 in vmath_avx512.h) and instantiated by the *_avx2.cpp / *_avx512.cpp
// files. Threads: OpenMP over rows. Every loop runs full vectors and then one masked tail, so
// any cols >= 1 works. Only templates and intrinsics live here: nothing from the C++ library
// is instantiated in these ISA-specific translation units (a weak inline function compiled
// with AVX-512 could otherwise be picked by the linker for generic code).
#pragma once

#include <cstdint>

#include <omp.h>

#include "backends/cpu/simd/nn_kernels.h"

namespace forge::cpu::nn {

// ---------------------------------------------------------------- reductions over one row

template <class S> inline float row_max(const float* x, int64_t n) {
    using V = typename S::V;
    constexpr int64_t W = S::W;
    const V ninf = S::set1(-__builtin_inff());
    V m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
    int64_t c = 0;
    for (; c + 4 * W <= n; c += 4 * W) {
        m0 = S::max(m0, S::load(x + c));
        m1 = S::max(m1, S::load(x + c + W));
        m2 = S::max(m2, S::load(x + c + 2 * W));
        m3 = S::max(m3, S::load(x + c + 3 * W));
    }
    for (; c + W <= n; c += W)
        m0 = S::max(m0, S::load(x + c));
    if (c < n)
        m1 = S::max(m1, S::load(x + c, S::mask(n - c), ninf));
    return S::hmax(S::max(S::max(m0, m1), S::max(m2, m3)));
}

template <class S> inline float row_sum(const float* x, int64_t n) {
    using V = typename S::V;
    constexpr int64_t W = S::W;
    V s0 = S::zero(), s1 = S::zero(), s2 = S::zero(), s3 = S::zero();
    int64_t c = 0;
    for (; c + 4 * W <= n; c += 4 * W) {
        s0 = S::add(s0, S::load(x + c));
        s1 = S::add(s1, S::load(x + c + W));
        s2 = S::add(s2, S::load(x + c + 2 * W));
        s3 = S::add(s3, S::load(x + c + 3 * W));
    }
    for (; c + W <= n; c += W)
        s0 = S::add(s0, S::load(x + c));
    if (c < n)
        s1 = S::add(s1, S::load(x + c, S::mask(n - c), S::zero()));
    return S::hsum(S::add(S::add(s0, s1), S::add(s2, s3)));
}

// sum(exp(x - m)); with y, also stores the exps there.
template <class S> inline float row_sum_exp(const float* x, float m, float* y, int64_t n) {
    using V = typename S::V;
    constexpr int64_t W = S::W;
    const V vm = S::set1(m);
    V s0 = S::zero(), s1 = S::zero();
    int64_t c = 0;
    for (; c + 2 * W <= n; c += 2 * W) {
        const V e0 = S::exp(S::sub(S::load(x + c), vm));
        const V e1 = S::exp(S::sub(S::load(x + c + W), vm));
        if (y) {
            S::store(y + c, e0);
            S::store(y + c + W, e1);
        }
        s0 = S::add(s0, e0);
        s1 = S::add(s1, e1);
    }
    for (; c + W <= n; c += W) {
        const V e = S::exp(S::sub(S::load(x + c), vm));
        if (y)
            S::store(y + c, e);
        s0 = S::add(s0, e);
    }
    if (c < n) {
        const auto mk = S::mask(n - c);
        const V e = S::keep(mk, S::exp(S::sub(S::load(x + c, mk, vm), vm)));
        if (y)
            S::store(y + c, e, mk);
        s1 = S::add(s1, e);
    }
    return S::hsum(S::add(s0, s1));
}

// y = x * a + b elementwise with scalars a, b (in place allowed).
template <class S> inline void row_affine(const float* x, float a, float b, float* y, int64_t n) {
    constexpr int64_t W = S::W;
    const auto va = S::set1(a), vb = S::set1(b);
    int64_t c = 0;
    for (; c + W <= n; c += W)
        S::store(y + c, S::fmadd(S::load(x + c), va, vb));
    if (c < n) {
        const auto mk = S::mask(n - c);
        S::store(y + c, S::fmadd(S::load(x + c, mk, S::zero()), va, vb), mk);
    }
}

// ---------------------------------------------------------------- softmax

// softmax: y = exp(x - max) / sum. log_softmax: y = (x - max) - log(sum).
template <class S>
void softmax_rows(const float* x, float* y, int64_t rows, int64_t cols, bool log) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMinElems && rows > 1)
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * cols;
        float* yr = y + r * cols;
        const float m = row_max<S>(xr, cols);
        const float s = row_sum_exp<S>(xr, m, log ? nullptr : yr, cols);
        if (log)
            row_affine<S>(xr, 1.0f, -(m + __builtin_logf(s)), yr, cols);
        else
            row_affine<S>(yr, 1.0f / s, 0.0f, yr, cols);
    }
}

// ---------------------------------------------------------------- layer norm

template <class S>
void layer_norm_rows(const float* x, const float* w, const float* b, float eps, float* y,
                     float* mean, float* rstd, int64_t rows, int64_t cols) {
    using V = typename S::V;
    constexpr int64_t W = S::W;
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMinElems && rows > 1)
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * cols;
        float* yr = y + r * cols;
        // Two passes (mean, then centred squares): the row is in L1/L2 for the second, and it
        // avoids the cancellation of E[x^2] - E[x]^2.
        const float m = row_sum<S>(xr, cols) / float(cols);
        const V vm = S::set1(m);
        V q0 = S::zero(), q1 = S::zero();
        int64_t c = 0;
        for (; c + 2 * W <= cols; c += 2 * W) {
            const V d0 = S::sub(S::load(xr + c), vm), d1 = S::sub(S::load(xr + c + W), vm);
            q0 = S::fmadd(d0, d0, q0);
            q1 = S::fmadd(d1, d1, q1);
        }
        for (; c + W <= cols; c += W) {
            const V d0 = S::sub(S::load(xr + c), vm);
            q0 = S::fmadd(d0, d0, q0);
        }
        if (c < cols) {
            const auto mk = S::mask(cols - c);
            const V d0 = S::keep(mk, S::sub(S::load(xr + c, mk, vm), vm));
            q1 = S::fmadd(d0, d0, q1);
        }
        const float var = S::hsum(S::add(q0, q1)) / float(cols);
        const float rs = 1.0f / __builtin_sqrtf(var + eps);
        mean[r] = m;
        rstd[r] = rs;
        const V vr = S::set1(rs);
        for (c = 0; c + W <= cols; c += W) {
            const V xh = S::mul(S::sub(S::load(xr + c), vm), vr);
            S::store(yr + c,
                     b ? S::fmadd(xh, S::load(w + c), S::load(b + c)) : S::mul(xh, S::load(w + c)));
        }
        if (c < cols) {
            const auto mk = S::mask(cols - c);
            const V xh = S::mul(S::sub(S::load(xr + c, mk, vm), vm), vr);
            const V wv = S::load(w + c, mk, S::zero());
            S::store(yr + c, b ? S::fmadd(xh, wv, S::load(b + c, mk, S::zero())) : S::mul(xh, wv),
                     mk);
        }
    }
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w, xhat = (x - mean) * rstd.
// Per-thread partial dw = sum dy * xhat and db = sum dy accumulate into scratch[t * 2 * cols ...]
// (zero on entry; OpenMP may start fewer threads than asked); the caller adds the n_threads
// partials in a fixed order, so results are reproducible.
template <class S>
void layer_norm_backward_rows(const float* dy, const float* x, const float* w, const float* mean,
                              const float* rstd, float* dx, float* scratch, int n_threads,
                              int64_t rows, int64_t cols) {
    using V = typename S::V;
    constexpr int64_t W = S::W;
#pragma omp parallel num_threads(n_threads)
    {
        const int t = omp_get_thread_num();
        float* pdw = scratch + int64_t(t) * 2 * cols;
        float* pdb = pdw + cols;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            const float* xr = x + r * cols;
            const float* gr = dy + r * cols;
            float* dxr = dx + r * cols;
            const V vm = S::set1(mean[r]), vr = S::set1(rstd[r]);
            V sg = S::zero(), sgx = S::zero();
            int64_t c = 0;
            for (; c + W <= cols; c += W) {
                const V xh = S::mul(S::sub(S::load(xr + c), vm), vr);
                const V d = S::load(gr + c);
                const V g = S::mul(d, S::load(w + c));
                sg = S::add(sg, g);
                sgx = S::fmadd(g, xh, sgx);
                S::store(pdw + c, S::fmadd(d, xh, S::load(pdw + c)));
                S::store(pdb + c, S::add(d, S::load(pdb + c)));
            }
            if (c < cols) {
                const auto mk = S::mask(cols - c);
                const V xh = S::keep(mk, S::mul(S::sub(S::load(xr + c, mk, vm), vm), vr));
                const V d = S::load(gr + c, mk, S::zero());
                const V g = S::mul(d, S::load(w + c, mk, S::zero()));
                sg = S::add(sg, g);
                sgx = S::fmadd(g, xh, sgx);
                S::store(pdw + c, S::fmadd(d, xh, S::load(pdw + c, mk, S::zero())), mk);
                S::store(pdb + c, S::add(d, S::load(pdb + c, mk, S::zero())), mk);
            }
            const V mg = S::set1(S::hsum(sg) / float(cols));
            const V mgx = S::set1(S::hsum(sgx) / float(cols));
            for (c = 0; c + W <= cols; c += W) {
                const V xh = S::mul(S::sub(S::load(xr + c), vm), vr);
                const V g = S::mul(S::load(gr + c), S::load(w + c));
                S::store(dxr + c, S::mul(vr, S::fnmadd(xh, mgx, S::sub(g, mg))));
            }
            if (c < cols) {
                const auto mk = S::mask(cols - c);
                const V xh = S::mul(S::sub(S::load(xr + c, mk, vm), vm), vr);
                const V g = S::mul(S::load(gr + c, mk, S::zero()), S::load(w + c, mk, S::zero()));
                S::store(dxr + c, S::mul(vr, S::fnmadd(xh, mgx, S::sub(g, mg))), mk);
            }
        }
    }
}

// ---------------------------------------------------------------- RMS norm

template <class S>
void rms_norm_rows(const float* x, const float* w, float eps, float* y, float* rstd, int64_t rows,
                   int64_t cols) {
    using V = typename S::V;
    constexpr int64_t W = S::W;
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMinElems && rows > 1)
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * cols;
        float* yr = y + r * cols;
        V q0 = S::zero(), q1 = S::zero();
        int64_t c = 0;
        for (; c + 2 * W <= cols; c += 2 * W) {
            const V a = S::load(xr + c), b = S::load(xr + c + W);
            q0 = S::fmadd(a, a, q0);
            q1 = S::fmadd(b, b, q1);
        }
        for (; c + W <= cols; c += W) {
            const V a = S::load(xr + c);
            q0 = S::fmadd(a, a, q0);
        }
        if (c < cols) {
            const V a = S::load(xr + c, S::mask(cols - c), S::zero());
            q1 = S::fmadd(a, a, q1);
        }
        const float rs = 1.0f / __builtin_sqrtf(S::hsum(S::add(q0, q1)) / float(cols) + eps);
        rstd[r] = rs;
        const V vr = S::set1(rs);
        for (c = 0; c + W <= cols; c += W)
            S::store(yr + c, S::mul(S::mul(S::load(xr + c), vr), S::load(w + c)));
        if (c < cols) {
            const auto mk = S::mask(cols - c);
            S::store(
                yr + c,
                S::mul(S::mul(S::load(xr + c, mk, S::zero()), vr), S::load(w + c, mk, S::zero())),
                mk);
        }
    }
}

// dx = rstd * (g - xhat * mean(g * xhat)), g = dy * w, xhat = x * rstd; partial dw per thread
// accumulated into scratch[t * cols ...] (zero on entry).
template <class S>
void rms_norm_backward_rows(const float* dy, const float* x, const float* w, const float* rstd,
                            float* dx, float* scratch, int n_threads, int64_t rows, int64_t cols) {
    using V = typename S::V;
    constexpr int64_t W = S::W;
#pragma omp parallel num_threads(n_threads)
    {
        float* pdw = scratch + int64_t(omp_get_thread_num()) * cols;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            const float* xr = x + r * cols;
            const float* gr = dy + r * cols;
            float* dxr = dx + r * cols;
            const V vr = S::set1(rstd[r]);
            V sgx = S::zero();
            int64_t c = 0;
            for (; c + W <= cols; c += W) {
                const V xh = S::mul(S::load(xr + c), vr);
                const V d = S::load(gr + c);
                sgx = S::fmadd(S::mul(d, S::load(w + c)), xh, sgx);
                S::store(pdw + c, S::fmadd(d, xh, S::load(pdw + c)));
            }
            if (c < cols) {
                const auto mk = S::mask(cols - c);
                const V xh = S::mul(S::load(xr + c, mk, S::zero()), vr);
                const V d = S::load(gr + c, mk, S::zero());
                sgx = S::fmadd(S::mul(d, S::load(w + c, mk, S::zero())), xh, sgx);
                S::store(pdw + c, S::fmadd(d, xh, S::load(pdw + c, mk, S::zero())), mk);
            }
            const V mgx = S::set1(S::hsum(sgx) / float(cols));
            for (c = 0; c + W <= cols; c += W) {
                const V xh = S::mul(S::load(xr + c), vr);
                const V g = S::mul(S::load(gr + c), S::load(w + c));
                S::store(dxr + c, S::mul(vr, S::fnmadd(xh, mgx, g)));
            }
            if (c < cols) {
                const auto mk = S::mask(cols - c);
                const V xh = S::mul(S::load(xr + c, mk, S::zero()), vr);
                const V g = S::mul(S::load(gr + c, mk, S::zero()), S::load(w + c, mk, S::zero()));
                S::store(dxr + c, S::mul(vr, S::fnmadd(xh, mgx, g)), mk);
            }
        }
    }
}

// ---------------------------------------------------------------- cross-entropy

// Fused: per row a max pass and an exp-sum pass over the logits (the row stays in L2); the
// softmax itself is never written. Ignored rows: loss 0, lse 0.
template <class S>
void cross_entropy_rows(const float* logits, const int64_t* targets, int64_t ignore_index,
                        float* losses, float* lse, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMinElems && rows > 1)
    for (int64_t n = 0; n < rows; ++n) {
        if (targets[n] == ignore_index) {
            losses[n] = lse[n] = 0.0f;
            continue;
        }
        const float* xr = logits + n * cols;
        const float m = row_max<S>(xr, cols);
        const float l = m + __builtin_logf(row_sum_exp<S>(xr, m, nullptr, cols));
        lse[n] = l;
        losses[n] = l - xr[targets[n]];
    }
}

// One pass: dlogits = exp(x - lse) * scale, then the target column gets -scale.
template <class S>
void cross_entropy_backward_rows(const float* logits, const int64_t* targets, const float* lse,
                                 int64_t ignore_index, float scale, float* dlogits, int64_t rows,
                                 int64_t cols) {
    using V = typename S::V;
    constexpr int64_t W = S::W;
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMinElems && rows > 1)
    for (int64_t n = 0; n < rows; ++n) {
        const float* xr = logits + n * cols;
        float* dr = dlogits + n * cols;
        const bool ignored = targets[n] == ignore_index;
        const V vl = S::set1(lse[n]), vs = S::set1(ignored ? 0.0f : scale);
        int64_t c = 0;
        if (ignored) {
            for (; c + W <= cols; c += W)
                S::store(dr + c, S::zero());
            if (c < cols)
                S::store(dr + c, S::zero(), S::mask(cols - c));
            continue;
        }
        for (; c + W <= cols; c += W)
            S::store(dr + c, S::mul(S::exp(S::sub(S::load(xr + c), vl)), vs));
        if (c < cols) {
            const auto mk = S::mask(cols - c);
            S::store(dr + c, S::mul(S::exp(S::sub(S::load(xr + c, mk, vl), vl)), vs), mk);
        }
        dr[targets[n]] -= scale;
    }
}

// ---------------------------------------------------------------- RoPE

// x, y: n_rows = B*H*T rows of d; row r is position t = r % seq. Tables per position t:
//   neox:        cs/sn (seq, rd/2): cos/sin of pair i (sin negated for the inverse)
//   interleaved: cs/sn (seq, rd): cos duplicated [c0, c0, c1, c1, ...] and sin with the sign
//                of each slot [-s0, s0, -s1, s1, ...], so y = x * cs + swap_pairs(x) * sn.
template <class S>
void rope_rows(const float* x, float* y, const float* cs, const float* sn, int64_t n_rows,
               int64_t seq, int64_t d, int64_t rd, bool neox) {
    using V = typename S::V;
    constexpr int64_t W = S::W;
    const int64_t half = rd / 2;
#pragma omp parallel for schedule(static) if (n_rows * d >= kParallelMinElems && n_rows > 1)
    for (int64_t r = 0; r < n_rows; ++r) {
        const float* xr = x + r * d;
        float* yr = y + r * d;
        const int64_t t = r % seq;
        if (neox) {
            const float* c = cs + t * half;
            const float* s = sn + t * half;
            int64_t i = 0;
            for (; i + W <= half; i += W) {
                const V x0 = S::load(xr + i), x1 = S::load(xr + half + i);
                const V vc = S::load(c + i), vs = S::load(s + i);
                S::store(yr + i, S::fnmadd(x1, vs, S::mul(x0, vc)));
                S::store(yr + half + i, S::fmadd(x0, vs, S::mul(x1, vc)));
            }
            if (i < half) {
                const auto mk = S::mask(half - i);
                const V x0 = S::load(xr + i, mk, S::zero());
                const V x1 = S::load(xr + half + i, mk, S::zero());
                const V vc = S::load(c + i, mk, S::zero()), vs = S::load(s + i, mk, S::zero());
                S::store(yr + i, S::fnmadd(x1, vs, S::mul(x0, vc)), mk);
                S::store(yr + half + i, S::fmadd(x0, vs, S::mul(x1, vc)), mk);
            }
        } else {
            const float* c = cs + t * rd;
            const float* s = sn + t * rd;
            int64_t i = 0;
            for (; i + W <= rd; i += W) {
                const V v = S::load(xr + i);
                S::store(yr + i,
                         S::fmadd(S::swap_pairs(v), S::load(s + i), S::mul(v, S::load(c + i))));
            }
            if (i < rd) { // rd and W are even: the mask never splits a pair
                const auto mk = S::mask(rd - i);
                const V v = S::load(xr + i, mk, S::zero());
                S::store(yr + i,
                         S::fmadd(S::swap_pairs(v), S::load(s + i, mk, S::zero()),
                                  S::mul(v, S::load(c + i, mk, S::zero()))),
                         mk);
            }
        }
        for (int64_t k = rd; k < d; ++k) // features beyond rotary_dim pass through
            yr[k] = xr[k];
    }
}

} // namespace forge::cpu::nn
