// Flash attention on the CPU (private to src/backends/cpu/kernels): the tiled forward and
// backward passes, written once over a vector policy `Vec` so that attention_avx512.cpp and
// attention_avx2.cpp instantiate them with their own SIMD width and attention.cpp with a
// portable scalar policy (also the f64 path). Not a public header; no tensor types in here.
//
// Algorithm: FlashAttention-2 (Dao, 2023, https://arxiv.org/abs/2307.08691), Algorithms 1-2.
// Forward, per (batch, head, tile of kBlockQ queries): stream over tiles of kBlockK keys,
// S = Q K^T * scale, keep a running row max m and row sum l (online softmax), rescale the
// output accumulator O by exp(m_old - m_new), O += exp(S - m) V. Causal tiles above the diagonal
// are never visited. Extra memory: per-thread tiles, O(kBlock * D); lse (B, H, Tq) is kept.
// Backward, per (batch, kv-head): for each key tile, for each query head of the group and each
// query tile, recompute P = exp(S - lse), then dV += P^T dO, dP = dO V^T,
// dS = P * (dP - delta) with delta = rowsum(dO * O), dQ += dS K * scale, dK += dS^T Q * scale.
// A task owns dK, dV of its kv-head and dQ of the query heads that read it, so threads never
// write the same memory and no atomics or per-thread copies are needed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include <omp.h>

namespace forge::cpu::flash {

constexpr int64_t kBlockQ = 64; // query rows per tile
constexpr int64_t kBlockK = 64; // keys per tile (a multiple of every SIMD width)

/// One forward call. All tensors contiguous: q (B, Hq, Tq, D), k/v (B, Hkv, Tk, D),
/// out (B, Hq, Tq, D), lse (B, Hq, Tq). scratch: n_threads * fwd_scratch(D) elements.
template <typename T> struct FwdArgs {
    const T *q, *k, *v;
    T *out, *lse;
    int64_t B, Hq, Hkv, Tq, Tk, D;
    T scale;
    bool causal;
    T* scratch;
};

/// One backward call: dq/dk/dv overwritten; delta (B, Hq, Tq) is workspace.
/// scratch: n_threads * bwd_scratch(D) elements.
template <typename T> struct BwdArgs {
    const T *q, *k, *v, *out, *lse, *dout;
    T *dq, *dk, *dv, *delta;
    int64_t B, Hq, Hkv, Tq, Tk, D;
    T scale;
    bool causal;
    T* scratch;
};

// Per-thread scratch sizes in elements; each region is rounded to 16 elements (64 bytes).
constexpr int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

// Below this many multiply-adds (about Tq * Tk * D per head) a call runs on one thread: a
// fork/join costs microseconds, and much more when the cores are busy with other work.
constexpr int64_t kMinParallelWork = int64_t(1) << 18;
constexpr int64_t fwd_scratch(int64_t D) {
    // K tile transposed (D, kBlockK), scores (kBlockQ, kBlockK), O accumulator (kBlockQ, D),
    // row max and row sum (kBlockQ each)
    return round16(D * kBlockK) + kBlockQ * kBlockK + round16(kBlockQ * D) + 2 * kBlockQ;
}
constexpr int64_t bwd_scratch(int64_t D) {
    // K and V tiles transposed (D, kBlockK) each, P and dS (kBlockQ, kBlockK) each
    return 2 * round16(D * kBlockK) + 2 * kBlockQ * kBlockK;
}

// Entry points of the ISA files (defined only where the compiler supports the ISA; called
// only after __builtin_cpu_supports says the CPU does). They need D % 16 (avx512) or D % 8
// (avx2) == 0.
void forward_f32_avx512(const FwdArgs<float>& a);
void backward_f32_avx512(const BwdArgs<float>& a);
void forward_f32_avx2(const FwdArgs<float>& a);
void backward_f32_avx2(const BwdArgs<float>& a);

// Everything below has internal linkage in each file that includes it, so the copies compiled
// with different ISA flags never get merged by the linker.
namespace {

// ------------------------------------------------------------------------------ tile GEMM
// C (n, w) = / += sum_k A(r, k) * B(k, :), where A(r, k) = a[r * ars + k * aks] (so a row-major
// A, or a transposed one, is read in place) and B's rows are w contiguous elements ldb apart.
// Vec supplies: T, W (lanes), R x C (register block: R rows, C vectors), V, zero, load, store,
// set1, fma(a, b, c) = a * b + c. w must be a multiple of W.
template <class Vec, int R, int C, bool kAcc>
inline void micro_gemm(typename Vec::T* c, int64_t ldc, const typename Vec::T* a, int64_t ars,
                       int64_t aks, int64_t m, const typename Vec::T* b, int64_t ldb) {
    using V = typename Vec::V;
    constexpr int W = Vec::W;
    V acc[R][C];
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < C; ++j)
            acc[r][j] = kAcc ? Vec::load(c + r * ldc + j * W) : Vec::zero();
    for (int64_t k = 0; k < m; ++k) {
        V bv[C];
        for (int j = 0; j < C; ++j)
            bv[j] = Vec::load(b + k * ldb + j * W);
        for (int r = 0; r < R; ++r) {
            const V av = Vec::set1(a[r * ars + k * aks]);
            for (int j = 0; j < C; ++j)
                acc[r][j] = Vec::fma(av, bv[j], acc[r][j]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < C; ++j)
            Vec::store(c + r * ldc + j * W, acc[r][j]);
}

template <class Vec, bool kAcc>
void tile_gemm(typename Vec::T* c, int64_t ldc, int64_t n, int64_t w,
               const typename Vec::T* a, int64_t ars, int64_t aks, int64_t m,
               const typename Vec::T* b, int64_t ldb) {
    constexpr int W = Vec::W, R = Vec::R, C = Vec::C;
    const int64_t nv = w / W;
    for (int64_t j = 0; j < nv;) {
        const int64_t cw = j * W;
        if (nv - j >= C) {
            int64_t r = 0;
            for (; r + R <= n; r += R)
                micro_gemm<Vec, R, C, kAcc>(c + r * ldc + cw, ldc, a + r * ars, ars, aks, m, b + cw,
                                            ldb);
            for (; r < n; ++r)
                micro_gemm<Vec, 1, C, kAcc>(c + r * ldc + cw, ldc, a + r * ars, ars, aks, m, b + cw,
                                            ldb);
            j += C;
        } else {
            int64_t r = 0;
            for (; r + R <= n; r += R)
                micro_gemm<Vec, R, 1, kAcc>(c + r * ldc + cw, ldc, a + r * ars, ars, aks, m, b + cw,
                                            ldb);
            for (; r < n; ++r)
                micro_gemm<Vec, 1, 1, kAcc>(c + r * ldc + cw, ldc, a + r * ars, ars, aks, m, b + cw,
                                            ldb);
            j += 1;
        }
    }
}

// ------------------------------------------------------------------------------ row helpers
// Vec also supplies max, mul, sub, exp (exp(-inf) = 0 exactly), and reduce_max / reduce_add.
// n is a multiple of W in all of these.
template <class Vec> typename Vec::T row_max(const typename Vec::T* x, int64_t n) {
    auto m = Vec::set1(-std::numeric_limits<typename Vec::T>::infinity());
    for (int64_t i = 0; i < n; i += Vec::W)
        m = Vec::max(m, Vec::load(x + i));
    return Vec::reduce_max(m);
}
// x = exp(x - sub); returns the sum of the new x.
template <class Vec> typename Vec::T row_exp_sum(typename Vec::T* x, int64_t n, typename Vec::T sub) {
    const auto s = Vec::set1(sub);
    auto acc = Vec::zero();
    for (int64_t i = 0; i < n; i += Vec::W) {
        const auto e = Vec::exp(Vec::sub(Vec::load(x + i), s));
        Vec::store(x + i, e);
        acc = Vec::add(acc, e);
    }
    return Vec::reduce_add(acc);
}
template <class Vec> void row_scale(typename Vec::T* x, int64_t n, typename Vec::T f) {
    const auto s = Vec::set1(f);
    for (int64_t i = 0; i < n; i += Vec::W)
        Vec::store(x + i, Vec::mul(Vec::load(x + i), s));
}
// ds = p * (ds - delta) * scale (ds holds dP on entry).
template <class Vec>
void row_dsoftmax(typename Vec::T* ds, const typename Vec::T* p, int64_t n, typename Vec::T delta,
                  typename Vec::T scale) {
    const auto d = Vec::set1(delta), s = Vec::set1(scale);
    for (int64_t i = 0; i < n; i += Vec::W)
        Vec::store(ds + i, Vec::mul(Vec::mul(Vec::load(p + i), Vec::sub(Vec::load(ds + i), d)), s));
}
template <class Vec> typename Vec::T row_dot(const typename Vec::T* a, const typename Vec::T* b, int64_t n) {
    auto acc = Vec::zero();
    for (int64_t i = 0; i < n; i += Vec::W)
        acc = Vec::fma(Vec::load(a + i), Vec::load(b + i), acc);
    return Vec::reduce_add(acc);
}

// (nk, D) rows of src (row stride D) -> dst (D, kBlockK), columns nk.. zero-filled.
template <typename T> void transpose_tile(T* dst, const T* src, int64_t nk, int64_t D) {
    for (int64_t d = 0; d < D; ++d) {
        T* row = dst + d * kBlockK;
        for (int64_t j = 0; j < nk; ++j)
            row[j] = src[j * D + d];
        for (int64_t j = nk; j < kBlockK; ++j)
            row[j] = T(0);
    }
}

// Scores of query row r (absolute position pos = Tk - Tq + i in causal mode) against the keys
// j0 .. j0 + kBlockK: columns at or past `lim` are masked (-inf). lim <= 0: all masked.
template <typename T> void mask_from(T* row, int64_t lim) {
    for (int64_t c = std::max<int64_t>(lim, 0); c < kBlockK; ++c)
        row[c] = -std::numeric_limits<T>::infinity();
}
inline int64_t visible_keys(bool causal, int64_t nk, int64_t pos, int64_t j0) {
    return causal ? std::min(nk, pos - j0 + 1) : nk;
}

// ------------------------------------------------------------------------------ forward
template <class Vec> void flash_forward(const FwdArgs<typename Vec::T>& a) {
    using T = typename Vec::T;
    const int64_t D = a.D, G = a.Hq / a.Hkv, off = a.Tk - a.Tq;
    const int64_t n_qt = (a.Tq + kBlockQ - 1) / kBlockQ;
    const int64_t n_tasks = a.B * a.Hq * n_qt;
    const T neg_inf = -std::numeric_limits<T>::infinity();
    const bool parallel = n_tasks > 1 && a.B * a.Hq * a.Tq * a.Tk * D >= kMinParallelWork;
#pragma omp parallel if (parallel)
    {
        T* kt = a.scratch + omp_get_thread_num() * fwd_scratch(D);
        T* s = kt + round16(D * kBlockK);
        T* o = s + kBlockQ * kBlockK;
        T* m = o + round16(kBlockQ * D);
        T* l = m + kBlockQ;
        // Causal tiles near the diagonal cost less than full ones: hand them out dynamically.
#pragma omp for schedule(dynamic)
        for (int64_t task = 0; task < n_tasks; ++task) {
            const int64_t qt = task % n_qt, bh = task / n_qt, h = bh % a.Hq, b = bh / a.Hq;
            const int64_t i0 = qt * kBlockQ, nq = std::min(kBlockQ, a.Tq - i0);
            const int64_t kv = (b * a.Hkv + h / G) * a.Tk * D; // GQA: read the group's kv-head
            const T* Q = a.q + (bh * a.Tq + i0) * D;
            const T* K = a.k + kv;
            const T* Vv = a.v + kv;
            // keys the tile's last row may see (causal); later key tiles are skipped
            const int64_t k_end = a.causal ? std::min(a.Tk, off + i0 + nq) : a.Tk;
            std::fill(o, o + nq * D, T(0));
            std::fill(m, m + nq, neg_inf);
            std::fill(l, l + nq, T(0));
            for (int64_t j0 = 0; j0 < k_end; j0 += kBlockK) {
                const int64_t nk = std::min(kBlockK, k_end - j0);
                transpose_tile(kt, K + j0 * D, nk, D);
                tile_gemm<Vec, false>(s, kBlockK, nq, kBlockK, Q, D, 1, D, kt, kBlockK);
                for (int64_t r = 0; r < nq; ++r) {
                    T* row = s + r * kBlockK;
                    row_scale<Vec>(row, kBlockK, a.scale);
                    mask_from(row, visible_keys(a.causal, nk, off + i0 + r, j0));
                    const T m_new = std::max(m[r], row_max<Vec>(row, kBlockK));
                    if (m_new == neg_inf) { // nothing visible yet (never in practice: key 0 is)
                        std::fill(row, row + kBlockK, T(0));
                        continue;
                    }
                    const T alpha = std::exp(m[r] - m_new); // 0 on the first visible tile
                    l[r] = l[r] * alpha + row_exp_sum<Vec>(row, kBlockK, m_new);
                    m[r] = m_new;
                    if (alpha != T(1)) row_scale<Vec>(o + r * D, D, alpha);
                }
                // O += P V, P (nq, nk) in s, V rows j0 .. j0 + nk
                tile_gemm<Vec, true>(o, D, nq, D, s, kBlockK, 1, nk, Vv + j0 * D, D);
            }
            T* out = a.out + (bh * a.Tq + i0) * D;
            T* lse = a.lse + bh * a.Tq + i0;
            for (int64_t r = 0; r < nq; ++r) {
                const T inv = T(1) / l[r];
                for (int64_t d = 0; d < D; ++d)
                    out[r * D + d] = o[r * D + d] * inv;
                lse[r] = m[r] + std::log(l[r]);
            }
        }
    }
}

// ------------------------------------------------------------------------------ backward
template <class Vec> void flash_backward(const BwdArgs<typename Vec::T>& a) {
    using T = typename Vec::T;
    const int64_t D = a.D, G = a.Hq / a.Hkv, off = a.Tk - a.Tq;
    const int64_t n_tasks = a.B * a.Hkv;
    const bool parallel = n_tasks > 1 && a.B * a.Hq * a.Tq * a.Tk * D >= kMinParallelWork;
#pragma omp parallel if (parallel)
    {
        T* kt = a.scratch + omp_get_thread_num() * bwd_scratch(D);
        T* vt = kt + round16(D * kBlockK);
        T* p = vt + round16(D * kBlockK);
        T* ds = p + kBlockQ * kBlockK;
#pragma omp for schedule(dynamic)
        for (int64_t task = 0; task < n_tasks; ++task) {
            const int64_t b = task / a.Hkv, hk = task % a.Hkv;
            const int64_t kv = (b * a.Hkv + hk) * a.Tk * D;
            const T* K = a.k + kv;
            const T* Vv = a.v + kv;
            T* dK = a.dk + kv;
            T* dV = a.dv + kv;
            std::fill(dK, dK + a.Tk * D, T(0));
            std::fill(dV, dV + a.Tk * D, T(0));
            // delta = rowsum(dO * O) and dQ = 0 for the query heads of this group
            for (int64_t h = hk * G; h < (hk + 1) * G; ++h) {
                const int64_t bh = b * a.Hq + h;
                for (int64_t i = 0; i < a.Tq; ++i)
                    a.delta[bh * a.Tq + i] = row_dot<Vec>(a.dout + (bh * a.Tq + i) * D,
                                                          a.out + (bh * a.Tq + i) * D, D);
                std::fill(a.dq + bh * a.Tq * D, a.dq + (bh + 1) * a.Tq * D, T(0));
            }
            for (int64_t j0 = 0; j0 < a.Tk; j0 += kBlockK) {
                const int64_t nk = std::min(kBlockK, a.Tk - j0);
                transpose_tile(kt, K + j0 * D, nk, D);
                transpose_tile(vt, Vv + j0 * D, nk, D);
                // causal: query i sees key j0 iff off + i >= j0; earlier query tiles are skipped
                const int64_t i_first = a.causal ? std::max<int64_t>(0, j0 - off) : 0;
                for (int64_t h = hk * G; h < (hk + 1) * G; ++h) {
                    const int64_t bh = b * a.Hq + h;
                    const T* Q = a.q + bh * a.Tq * D;
                    const T* dO = a.dout + bh * a.Tq * D;
                    T* dQ = a.dq + bh * a.Tq * D;
                    const T* lse = a.lse + bh * a.Tq;
                    const T* delta = a.delta + bh * a.Tq;
                    for (int64_t i0 = i_first / kBlockQ * kBlockQ; i0 < a.Tq; i0 += kBlockQ) {
                        const int64_t nq = std::min(kBlockQ, a.Tq - i0);
                        tile_gemm<Vec, false>(p, kBlockK, nq, kBlockK, Q + i0 * D, D, 1, D, kt,
                                              kBlockK); // S
                        tile_gemm<Vec, false>(ds, kBlockK, nq, kBlockK, dO + i0 * D, D, 1, D, vt,
                                              kBlockK); // dP
                        for (int64_t r = 0; r < nq; ++r) {
                            T* prow = p + r * kBlockK;
                            row_scale<Vec>(prow, kBlockK, a.scale);
                            mask_from(prow, visible_keys(a.causal, nk, off + i0 + r, j0));
                            row_exp_sum<Vec>(prow, kBlockK, lse[i0 + r]); // P = exp(S - lse)
                            row_dsoftmax<Vec>(ds + r * kBlockK, prow, kBlockK, delta[i0 + r],
                                              a.scale);
                        }
                        // dV (nk, D) += P^T dO: A(r, k) = P[k][r]
                        tile_gemm<Vec, true>(dV + j0 * D, D, nk, D, p, 1, kBlockK, nq,
                                             dO + i0 * D, D);
                        // dQ (nq, D) += dS K (scale folded into dS)
                        tile_gemm<Vec, true>(dQ + i0 * D, D, nq, D, ds, kBlockK, 1, nk, K + j0 * D,
                                             D);
                        // dK (nk, D) += dS^T Q
                        tile_gemm<Vec, true>(dK + j0 * D, D, nk, D, ds, 1, kBlockK, nq,
                                             Q + i0 * D, D);
                    }
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------ scalar policy
// One "lane": plain loops the compiler may vectorise for the file's baseline ISA. Used for f64
// (gradcheck), for head sizes the SIMD files don't take, and on CPUs without AVX2.
template <typename TT> struct ScalarVec {
    using T = TT;
    using V = TT;
    static constexpr int W = 1, R = 4, C = 4;
    static V zero() { return T(0); }
    static V load(const T* p) { return *p; }
    static void store(T* p, V v) { *p = v; }
    static V set1(T x) { return x; }
    static V fma(V a, V b, V c) { return a * b + c; }
    static V add(V a, V b) { return a + b; }
    static V sub(V a, V b) { return a - b; }
    static V mul(V a, V b) { return a * b; }
    static V max(V a, V b) { return a > b ? a : b; }
    static V exp(V x) { return std::exp(x); }
    static T reduce_max(V v) { return v; }
    static T reduce_add(V v) { return v; }
};

} // namespace
} // namespace forge::cpu::flash
