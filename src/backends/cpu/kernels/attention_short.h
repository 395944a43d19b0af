// Short-sequence attention on the CPU (private to src/backends/cpu/kernels): when every key of a
// head fits one L1/L2-resident tile (Tq, Tk <= kShortMaxT), exact softmax per row instead of the
// flash kernel's online softmax over 64-key tiles, whose per-tile rescaling, transposes and
// masking dominate at T = 64. Written over the same vector policies as attention_flash.h
// (include that first); not for long sequences, whose score rows would not fit in cache.
//
// Forward, per (batch, query head), per block of kShortRows queries: S = Q (K * scale)^T into a
// (kShortRows, Tk) buffer, P = exp(S - rowmax), O = P V / rowsum, lse = rowmax + log(rowsum).
// Backward, per (batch, kv-head), for each query head of its group: recompute P = exp(S - lse)
// and dP = dO V^T for all rows into (Tq, Tk) buffers, dS = P * (dP - delta) * scale with
// delta = rowsum(dO * O), dQ = dS K; then dV += P^T dO and dK += dS^T Q per block of keys.
// Causal work is skipped: a row block computes scores only up to its last row's diagonal, and a
// key block starts at the first query that sees it. A task owns everything it writes, and sums
// in a fixed order, so results do not depend on the thread count.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>

#include <omp.h>

namespace forge::cpu::flash {

constexpr int64_t kShortMaxT = 256; // longest Tq and Tk the short path takes
constexpr int64_t kShortRows = 8;   // query rows (forward) or keys (dK, dV) per block

// Per-thread scratch in elements; rows of keys are padded to ld_keys (a multiple of every
// SIMD width, and of 64 bytes).
constexpr int64_t ld_keys(int64_t Tk) {
    return round16(Tk);
}
constexpr int64_t short_fwd_scratch(int64_t D, int64_t Tk) {
    // K^T * scale (D, ldk), scores of one row block (kShortRows, ldk), 1 / rowsum (kShortRows)
    return (D + kShortRows) * ld_keys(Tk) + round16(kShortRows);
}
constexpr int64_t short_bwd_scratch(int64_t D, int64_t Tq, int64_t Tk) {
    // K^T * scale and V^T (D, ldk) each, P and dS (Tq, ldk) each
    return 2 * (D + Tq) * ld_keys(Tk);
}

void short_forward_f32_avx512(const FwdArgs<float>& a);
void short_backward_f32_avx512(const BwdArgs<float>& a);
void short_forward_f32_avx2(const FwdArgs<float>& a);
void short_backward_f32_avx2(const BwdArgs<float>& a);

namespace {

// C (n, C vectors) = / += A B for n rows, R at a time, then 4, then 1 (see micro_gemm).
template <class Vec, int R, int C, bool kAcc>
void gemm_rows(typename Vec::T* c, int64_t ldc, int64_t n, const typename Vec::T* a, int64_t ars,
               int64_t aks, int64_t m, const typename Vec::T* b, int64_t ldb) {
    int64_t r = 0;
    for (; r + R <= n; r += R)
        micro_gemm<Vec, R, C, kAcc>(c + r * ldc, ldc, a + r * ars, ars, aks, m, b, ldb);
    if constexpr (R > 4)
        for (; r + 4 <= n; r += 4)
            micro_gemm<Vec, 4, C, kAcc>(c + r * ldc, ldc, a + r * ars, ars, aks, m, b, ldb);
    for (; r < n; ++r)
        micro_gemm<Vec, 1, C, kAcc>(c + r * ldc, ldc, a + r * ars, ars, aks, m, b, ldb);
}

// tile_gemm with register blocks for narrow outputs: groups of Vec::C vectors take R-row blocks;
// a remainder of fewer vectors takes 2R-row blocks, so there are still enough independent
// accumulators to hide the FMA latency (D = 32 is only 2 AVX-512 vectors). w % W == 0.
template <class Vec, bool kAcc>
void short_gemm(typename Vec::T* c, int64_t ldc, int64_t n, int64_t w, const typename Vec::T* a,
                int64_t ars, int64_t aks, int64_t m, const typename Vec::T* b, int64_t ldb) {
    constexpr int W = Vec::W, R = Vec::R, C = Vec::C;
    const int64_t nv = w / W;
    int64_t j = 0;
    for (; j + C <= nv; j += C)
        gemm_rows<Vec, R, C, kAcc>(c + j * W, ldc, n, a, ars, aks, m, b + j * W, ldb);
    const int64_t rest = nv - j;
    if (rest == 1)
        gemm_rows<Vec, 2 * R, 1, kAcc>(c + j * W, ldc, n, a, ars, aks, m, b + j * W, ldb);
    if constexpr (C > 2)
        if (rest == 2)
            gemm_rows<Vec, 2 * R, 2, kAcc>(c + j * W, ldc, n, a, ars, aks, m, b + j * W, ldb);
    if constexpr (C > 3)
        if (rest == 3)
            gemm_rows<Vec, 2 * R, 3, kAcc>(c + j * W, ldc, n, a, ars, aks, m, b + j * W, ldb);
}

// Masks are added, not stored: scalar -inf stores into a row that is then read as vectors stall
// on store forwarding. ramp + kShortMaxT - lim is 0 before column lim and -inf from it.
template <typename T> constexpr std::array<T, 2 * kShortMaxT> make_ramp() {
    std::array<T, 2 * kShortMaxT> r{};
    for (int64_t i = kShortMaxT; i < 2 * kShortMaxT; ++i)
        r[size_t(i)] = -std::numeric_limits<T>::infinity();
    return r;
}
template <typename T> constexpr std::array<T, 2 * kShortMaxT> kRamp = make_ramp<T>();
template <typename T> const T* mask_from(int64_t lim) {
    return kRamp<T>.data() + kShortMaxT - lim;
}

// x += mask; returns max(x).
template <class Vec>
typename Vec::T row_mask_max(typename Vec::T* x, const typename Vec::T* mask, int64_t n) {
    auto mx = Vec::set1(-std::numeric_limits<typename Vec::T>::infinity());
    for (int64_t i = 0; i < n; i += Vec::W) {
        const auto v = Vec::add(Vec::load(x + i), Vec::load(mask + i));
        Vec::store(x + i, v);
        mx = Vec::max(mx, v);
    }
    return Vec::reduce_max(mx);
}

// x = exp(x + mask - sub)
template <class Vec>
void row_mask_exp(typename Vec::T* x, const typename Vec::T* mask, int64_t n, typename Vec::T sub) {
    const auto s = Vec::set1(sub);
    for (int64_t i = 0; i < n; i += Vec::W)
        Vec::store(x + i, Vec::exp(Vec::sub(Vec::add(Vec::load(x + i), Vec::load(mask + i)), s)));
}

// src (Tk, D), rows lds apart -> dst (D, ldk) times f, columns Tk.. zero. In 8 x 8 blocks where
// the policy has a register transpose (a strided scalar copy is a tenth of a short head's time).
template <class Vec, typename T>
void transpose_keys(T* dst, const T* src, int64_t lds, int64_t Tk, int64_t D, T f) {
    const int64_t ldk = ld_keys(Tk);
    int64_t j0 = 0;
    if constexpr (requires(T * d, const T* s) { Vec::transpose8(d, 0, s, 0, f); })
        if (D % 8 == 0)
            for (; j0 + 8 <= Tk; j0 += 8)
                for (int64_t d = 0; d < D; d += 8)
                    Vec::transpose8(dst + d * ldk + j0, ldk, src + j0 * lds + d, lds, f);
    for (int64_t d = 0; d < D; ++d) {
        T* row = dst + d * ldk;
        for (int64_t j = j0; j < Tk; ++j)
            row[j] = src[j * lds + d] * f;
        std::fill(row + Tk, row + ldk, T(0));
    }
}

// Keys query row i sees: causal queries sit at the end of the keys (position Tk - Tq + i).
inline int64_t keys_seen(bool causal, int64_t Tq, int64_t Tk, int64_t i) {
    return causal ? std::min(Tk, Tk - Tq + i + 1) : Tk;
}
inline int64_t round_up(int64_t n, int64_t w) {
    return (n + w - 1) / w * w;
}

template <class Vec> void short_forward(const FwdArgs<typename Vec::T>& a) {
    using T = typename Vec::T;
    constexpr int W = Vec::W;
    const int64_t D = a.D, G = a.Hq / a.Hkv, ldk = ld_keys(a.Tk), n_tasks = a.B * a.Hq;
    const bool parallel = n_tasks > 1 && a.B * a.Hq * a.Tq * a.Tk * D >= kMinParallelWork;
#pragma omp parallel if (parallel)
    {
        T* kt = a.scratch + omp_get_thread_num() * short_fwd_scratch(D, a.Tk); // (D, ldk)
        T* s = kt + D * ldk;                                                   // (kShortRows, ldk)
        T* inv_sum = s + kShortRows * ldk;                                     // (kShortRows)
#pragma omp for schedule(dynamic)
        for (int64_t bh = 0; bh < n_tasks; ++bh) {
            const int64_t b = bh / a.Hq, h = bh % a.Hq, hk = h / G; // GQA: kv-head shared
            const T* V = a.v + a.sv.at(b, hk, 0);
            transpose_keys<Vec>(kt, a.k + a.sk.at(b, hk, 0), a.sk.t, a.Tk, D, a.scale);
            for (int64_t i0 = 0; i0 < a.Tq; i0 += kShortRows) {
                const int64_t nr = std::min(kShortRows, a.Tq - i0);
                const int64_t n_keys = keys_seen(a.causal, a.Tq, a.Tk, i0 + nr - 1);
                const int64_t w = round_up(n_keys, W);
                const T* Q = a.q + a.sq.at(b, h, i0);
                short_gemm<Vec, false>(s, ldk, nr, w, Q, a.sq.t, 1, D, kt, ldk); // S * scale
                for (int64_t r = 0; r < nr; ++r) {
                    T* row = s + r * ldk;
                    const T* mask = mask_from<T>(keys_seen(a.causal, a.Tq, a.Tk, i0 + r));
                    const T mx = row_mask_max<Vec>(row, mask, w); // finite: all rows see key 0
                    const T sum = row_exp_sum<Vec>(row, w, mx);
                    inv_sum[r] = T(1) / sum;
                    a.lse[bh * a.Tq + i0 + r] = mx + std::log(sum);
                }
                T* O = a.out + a.so.at(b, h, i0);
                short_gemm<Vec, false>(O, a.so.t, nr, D, s, ldk, 1, n_keys, V, a.sv.t); // P V
                for (int64_t r = 0; r < nr; ++r) // normalised
                    row_scale<Vec>(O + r * a.so.t, D, inv_sum[r]);
            }
        }
    }
}

template <class Vec> void short_backward(const BwdArgs<typename Vec::T>& a) {
    using T = typename Vec::T;
    constexpr int W = Vec::W;
    const int64_t D = a.D, G = a.Hq / a.Hkv, ldk = ld_keys(a.Tk), n_tasks = a.B * a.Hkv;
    const int64_t Tq = a.Tq, Tk = a.Tk, off = Tk - Tq;
    const bool parallel = n_tasks > 1 && a.B * a.Hq * Tq * Tk * D >= kMinParallelWork;
#pragma omp parallel if (parallel)
    {
        T* kt = a.scratch + omp_get_thread_num() * short_bwd_scratch(D, Tq, Tk); // (D, ldk)
        T* vt = kt + D * ldk;                                                    // (D, ldk)
        T* p = vt + D * ldk;                                                     // (Tq, ldk)
        T* ds = p + Tq * ldk;                                                    // (Tq, ldk)
#pragma omp for schedule(dynamic)
        for (int64_t task = 0; task < n_tasks; ++task) {
            const int64_t b = task / a.Hkv, hk = task % a.Hkv;
            const T* K = a.k + a.sk.at(b, hk, 0);
            T* dK = a.dk + a.sdk.at(b, hk, 0);
            T* dV = a.dv + a.sdv.at(b, hk, 0);
            for (int64_t j = 0; j < Tk; ++j) { // only their own rows: views into one buffer
                std::fill(dK + j * a.sdk.t, dK + j * a.sdk.t + D, T(0));
                std::fill(dV + j * a.sdv.t, dV + j * a.sdv.t + D, T(0));
            }
            transpose_keys<Vec>(kt, K, a.sk.t, Tk, D, a.scale);
            transpose_keys<Vec>(vt, a.v + a.sv.at(b, hk, 0), a.sv.t, Tk, D, T(1));
            for (int64_t h = hk * G; h < (hk + 1) * G; ++h) {
                const int64_t bh = b * a.Hq + h;
                const T* Q = a.q + a.sq.at(b, h, 0);
                const T* dO = a.dout + a.sdo.at(b, h, 0);
                const T* O = a.out + a.so.at(b, h, 0);
                T* dQ = a.dq + a.sdq.at(b, h, 0);
                const int64_t lq = a.sq.t, ldo = a.sdo.t;
                const T* lse = a.lse + bh * Tq;
                for (int64_t i0 = 0; i0 < Tq; i0 += kShortRows) {
                    const int64_t nr = std::min(kShortRows, Tq - i0);
                    const int64_t n_keys = keys_seen(a.causal, Tq, Tk, i0 + nr - 1);
                    const int64_t w = round_up(n_keys, W);
                    T* P = p + i0 * ldk;
                    T* dS = ds + i0 * ldk;
                    short_gemm<Vec, false>(P, ldk, nr, w, Q + i0 * lq, lq, 1, D, kt, ldk); // S
                    short_gemm<Vec, false>(dS, ldk, nr, w, dO + i0 * ldo, ldo, 1, D, vt, ldk); // dP
                    for (int64_t r = 0; r < nr; ++r) {
                        const int64_t i = i0 + r;
                        T* prow = P + r * ldk;
                        T* dsrow = dS + r * ldk;
                        // P = exp(S - lse), 0 where masked
                        row_mask_exp<Vec>(prow, mask_from<T>(keys_seen(a.causal, Tq, Tk, i)), w,
                                          lse[i]);
                        const T delta = row_dot<Vec>(dO + i * ldo, O + i * a.so.t, D);
                        row_dsoftmax<Vec>(dsrow, prow, w, delta, a.scale);
                        // the dK, dV blocks below read whole columns: zero past the row's block
                        std::fill(prow + w, prow + ldk, T(0));
                        std::fill(dsrow + w, dsrow + ldk, T(0));
                    }
                    // dQ (nr, D) = dS K, scale folded into dS
                    short_gemm<Vec, false>(dQ + i0 * a.sdq.t, a.sdq.t, nr, D, dS, ldk, 1, n_keys,
                                           K, a.sk.t);
                }
                // dV (keys, D) += P^T dO and dK += dS^T Q from the first query seeing the block
                for (int64_t j0 = 0; j0 < Tk; j0 += kShortRows) {
                    const int64_t nk = std::min(kShortRows, Tk - j0);
                    const int64_t i1 = a.causal ? std::max<int64_t>(0, j0 - off) : 0;
                    short_gemm<Vec, true>(dV + j0 * a.sdv.t, a.sdv.t, nk, D, p + i1 * ldk + j0, 1,
                                          ldk, Tq - i1, dO + i1 * ldo, ldo);
                    short_gemm<Vec, true>(dK + j0 * a.sdk.t, a.sdk.t, nk, D, ds + i1 * ldk + j0, 1,
                                          ldk, Tq - i1, Q + i1 * lq, lq);
                }
            }
        }
    }
}

} // namespace
} // namespace forge::cpu::flash
