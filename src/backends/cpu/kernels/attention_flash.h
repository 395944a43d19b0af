// Flash attention on the CPU (private to src/backends/cpu/kernels): the tiled forward and
// backward passes, written once over a vector policy `Vec` so that attention_avx512.cpp and
// attention_avx2.cpp instantiate them with their own SIMD width and attention.cpp with a
// portable scalar policy (also the f64 path). Not a public header; no tensor types in here.
//
// Algorithm: FlashAttention-2 (Dao, 2023, https://arxiv.org/abs/2307.08691), Algorithms 1-2.
// Forward, per (batch, head, tile of kBlockQ queries): stream over tiles of kBlockK keys,
// S = Q K^T * scale, keep a running row max m and row sum l (online softmax), rescale the
// output accumulator O by exp(m_old - m_new), O += exp(S - m) V. Causal tiles above the diagonal
// are never visited. Extra memory: per-thread tiles, O(kBlock * (kBlock + D)); the caller keeps
// lse (B, H, Tq) for the backward pass. GQA reads the shared kv-head in place (no copies).
// Backward, per (batch, kv-head): for each key tile, for each query head of the group and each
// query tile, recompute P = exp(S - lse), then dV += P^T dO, dP = dO V^T,
// dS = P * (dP - delta) with delta = rowsum(dO * O), dQ += dS K * scale, dK += dS^T Q * scale.
// A task owns dK, dV of its kv-head and dQ of the query heads that read it, so threads never
// write the same memory and no atomics are needed. When (batch, kv-head) pairs are fewer than
// threads (MQA, B = 1), tasks are (batch, query head) with partial dK, dV summed afterwards.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include <omp.h>

namespace forge::cpu::flash {

constexpr int64_t kBlockQ = 64; // query rows per tile
constexpr int64_t kBlockK = 64; // keys per tile (a multiple of every SIMD width)

/// Element strides of a (B, H, T, D) operand's batch, head and row dims (D is contiguous).
struct Rows {
    int64_t b, h, t;
    /// Where row t of head h of batch b starts.
    int64_t at(int64_t bi, int64_t hi, int64_t ti) const { return bi * b + hi * h + ti * t; }
};

/// One forward call: q (B, Hq, Tq, D), k/v (B, Hkv, Tk, D), out (B, Hq, Tq, D), lse (B, Hq, Tq)
/// contiguous. The short kernels (attention_short.h) read and write q, k, v, out at the strides
/// in sq..so; the flash kernels take contiguous tensors only (and ignore them).
/// scratch: n_threads * fwd_scratch(D) elements.
template <typename T> struct FwdArgs {
    const T *q, *k, *v;
    T *out, *lse;
    int64_t B, Hq, Hkv, Tq, Tk, D;
    T scale;
    bool causal;
    T* scratch;
    Rows sq, sk, sv, so;
};

/// One backward call: dq/dk/dv overwritten; delta (B, Hq, Tq) is workspace.
/// scratch: n_threads * bwd_scratch(D) elements. dkv_part: null, or 2 * (B, Hq, Tk, D)
/// elements of workspace for per-query-head partial dK, dV, which lets B * Hq tasks run in
/// parallel instead of B * Hkv (for GQA/MQA with fewer (batch, kv-head) pairs than threads).
/// As in the forward, the short kernels take q..dv at the strides in sq..sdv.
template <typename T> struct BwdArgs {
    const T *q, *k, *v, *out, *lse, *dout;
    T *dq, *dk, *dv, *delta, *dkv_part;
    int64_t B, Hq, Hkv, Tq, Tk, D;
    T scale;
    bool causal;
    T* scratch;
    Rows sq, sk, sv, so, sdo, sdq, sdk, sdv;
};

// Below this many multiply-adds (B * Hq * Tq * Tk * D) a call runs on one thread: a fork/join
// costs microseconds, and much more when the cores are busy with other work.
constexpr int64_t kMinParallelWork = int64_t(1) << 18;

// Per-thread scratch sizes in elements; each region is rounded to 16 elements (64 bytes).
constexpr int64_t round16(int64_t n) {
    return (n + 15) / 16 * 16;
}
constexpr int64_t fwd_scratch(int64_t D) {
    // Q tile transposed (D, kBlockQ), scores transposed (kBlockK, kBlockQ), O accumulator
    // (kBlockQ, D), running max, running sum and rescale factors (kBlockQ each)
    return round16(D * kBlockQ) + kBlockK * kBlockQ + round16(kBlockQ * D) + 3 * kBlockQ;
}
constexpr int64_t bwd_scratch(int64_t D) {
    // K and V tiles transposed (D, kBlockK) each, P and dS (kBlockQ, kBlockK) each
    return 2 * round16(D * kBlockK) + 2 * kBlockQ * kBlockK;
}

// Entry points of the ISA files, called only after __builtin_cpu_supports says the CPU has the
// ISA. They need D % 16 (avx512) or D % 8 (avx2) == 0.
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
void tile_gemm(typename Vec::T* c, int64_t ldc, int64_t n, int64_t w, const typename Vec::T* a,
               int64_t ars, int64_t aks, int64_t m, const typename Vec::T* b, int64_t ldb) {
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
// Vec also supplies add, sub, mul, max, exp (exp(-inf) = 0 exactly), neg_inf_to_zero,
// reduce_add and reduce_max. n is a multiple of W in all of these.

// x = exp(x - sub); returns the sum of the new x.
template <class Vec>
typename Vec::T row_exp_sum(typename Vec::T* x, int64_t n, typename Vec::T sub) {
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
template <class Vec>
typename Vec::T row_dot(const typename Vec::T* a, const typename Vec::T* b, int64_t n) {
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

// A row of scores against keys j0 .. j0 + kBlockK: columns at or past `lim` are masked (-inf);
// lim <= 0 masks them all. visible_keys gives lim for the query at absolute position pos
// (Tk - Tq + i: queries are aligned to the end of the keys) in a tile of nk real keys.
template <typename T> void mask_from(T* row, int64_t lim) {
    for (int64_t c = std::max<int64_t>(lim, 0); c < kBlockK; ++c)
        row[c] = -std::numeric_limits<T>::infinity();
}
inline int64_t visible_keys(bool causal, int64_t nk, int64_t pos, int64_t j0) {
    return causal ? std::min(nk, pos - j0 + 1) : nk;
}

// ------------------------------------------------------------------------------ forward
// Scores are kept transposed, St (keys, queries): the query tile is transposed (and scaled)
// once per task instead of every key tile once per query tile, and the softmax statistics of
// kBlockQ queries are whole vectors (a column max is an element-wise max of rows: no
// horizontal reductions).
template <class Vec> void flash_forward(const FwdArgs<typename Vec::T>& a) {
    using T = typename Vec::T;
    constexpr int W = Vec::W;
    const int64_t D = a.D, G = a.Hq / a.Hkv, off = a.Tk - a.Tq;
    const int64_t n_qt = (a.Tq + kBlockQ - 1) / kBlockQ;
    const int64_t n_tasks = a.B * a.Hq * n_qt;
    const T neg_inf = -std::numeric_limits<T>::infinity();
    const bool parallel = n_tasks > 1 && a.B * a.Hq * a.Tq * a.Tk * D >= kMinParallelWork;
#pragma omp parallel if (parallel)
    {
        T* qt = a.scratch + omp_get_thread_num() * fwd_scratch(D); // (D, kBlockQ)
        T* st = qt + round16(D * kBlockQ);                         // (kBlockK, kBlockQ)
        T* o = st + kBlockK * kBlockQ;                             // (kBlockQ, D)
        T* m = o + round16(kBlockQ * D);                           // running max (kBlockQ)
        T* l = m + kBlockQ;                                        // running sum (kBlockQ)
        T* alpha = l + kBlockQ;                                    // rescale (kBlockQ)
        // Causal tiles near the diagonal cost less than full ones: hand them out dynamically.
#pragma omp for schedule(dynamic)
        for (int64_t task = 0; task < n_tasks; ++task) {
            const int64_t qt_i = task % n_qt, bh = task / n_qt, h = bh % a.Hq, b = bh / a.Hq;
            const int64_t i0 = qt_i * kBlockQ, nq = std::min(kBlockQ, a.Tq - i0);
            const int64_t kv = (b * a.Hkv + h / G) * a.Tk * D; // GQA: read the group's kv-head
            const T* Q = a.q + (bh * a.Tq + i0) * D;
            const T* K = a.k + kv;
            const T* Vv = a.v + kv;
            // Q tile -> qt (D, kBlockQ), times scale; padded query columns are zero
            for (int64_t d = 0; d < D; ++d) {
                for (int64_t i = 0; i < nq; ++i)
                    qt[d * kBlockQ + i] = Q[i * D + d] * a.scale;
                for (int64_t i = nq; i < kBlockQ; ++i)
                    qt[d * kBlockQ + i] = T(0);
            }
            std::fill(o, o + nq * D, T(0));
            std::fill(m, m + kBlockQ, neg_inf);
            std::fill(l, l + kBlockQ, T(0));
            // keys the tile's last row may see (causal); later key tiles are skipped
            const int64_t k_end = a.causal ? std::min(a.Tk, off + i0 + nq) : a.Tk;
            for (int64_t j0 = 0; j0 < k_end; j0 += kBlockK) {
                const int64_t nk = std::min(kBlockK, k_end - j0);
                // St (nk, kBlockQ) = K_j Qt: St[j][i] = scale * k_j . q_i
                tile_gemm<Vec, false>(st, kBlockQ, nk, kBlockQ, K + j0 * D, D, 1, D, qt, kBlockQ);
                if (a.causal && j0 + nk - 1 > off + i0) {
                    // key j0 + j is hidden from queries i with off + i0 + i < j0 + j
                    for (int64_t j = 0; j < nk; ++j) {
                        const int64_t hidden = std::clamp<int64_t>(j0 + j - off - i0, 0, kBlockQ);
                        std::fill(st + j * kBlockQ, st + j * kBlockQ + hidden, neg_inf);
                    }
                }
                // Online softmax, kBlockQ queries per vector op. Every query sees key 0, so the
                // running max is finite after the first tile; neg_inf_to_zero only guards the
                // (impossible) fully masked column against inf - inf.
                for (int64_t i = 0; i < kBlockQ; i += W) {
                    auto mx = Vec::load(m + i);
                    const auto m_old = mx;
                    for (int64_t j = 0; j < nk; ++j)
                        mx = Vec::max(mx, Vec::load(st + j * kBlockQ + i));
                    mx = Vec::neg_inf_to_zero(mx);
                    auto sum = Vec::zero();
                    for (int64_t j = 0; j < nk; ++j) {
                        T* p = st + j * kBlockQ + i;
                        const auto e = Vec::exp(Vec::sub(Vec::load(p), mx));
                        Vec::store(p, e);
                        sum = Vec::add(sum, e);
                    }
                    const auto al = Vec::exp(Vec::sub(m_old, mx)); // 0 on the first tile
                    Vec::store(alpha + i, al);
                    Vec::store(l + i, Vec::fma(Vec::load(l + i), al, sum));
                    Vec::store(m + i, mx);
                }
                for (int64_t r = 0; r < nq; ++r)
                    if (alpha[r] != T(1))
                        row_scale<Vec>(o + r * D, D, alpha[r]);
                // O (nq, D) += P V_j with P[i][j] = St[j][i]
                tile_gemm<Vec, true>(o, D, nq, D, st, 1, kBlockQ, nk, Vv + j0 * D, D);
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
    // One task per (batch, kv-head), or with dkv_part per (batch, query head): then each task
    // writes its own partial dK, dV and a second pass sums the G partials of each kv-head.
    const bool split = a.dkv_part != nullptr;
    const int64_t n_tasks = split ? a.B * a.Hq : a.B * a.Hkv;
    const int64_t part_stride = a.B * a.Hq * a.Tk * D; // dk partials, then dv partials
    const bool parallel = n_tasks > 1 && a.B * a.Hq * a.Tq * a.Tk * D >= kMinParallelWork;
#pragma omp parallel if (parallel)
    {
        T* kt = a.scratch + omp_get_thread_num() * bwd_scratch(D);
        T* vt = kt + round16(D * kBlockK);
        T* p = vt + round16(D * kBlockK);
        T* ds = p + kBlockQ * kBlockK;
#pragma omp for schedule(dynamic)
        for (int64_t task = 0; task < n_tasks; ++task) {
            const int64_t b = split ? task / a.Hq : task / a.Hkv;
            const int64_t hk = split ? task % a.Hq / G : task % a.Hkv;
            const int64_t h_begin = split ? task % a.Hq : hk * G;
            const int64_t h_end = split ? h_begin + 1 : (hk + 1) * G;
            const int64_t kv = (b * a.Hkv + hk) * a.Tk * D;
            const T* K = a.k + kv;
            const T* Vv = a.v + kv;
            T* dK = split ? a.dkv_part + (b * a.Hq + h_begin) * a.Tk * D : a.dk + kv;
            T* dV = split ? dK + part_stride : a.dv + kv;
            std::fill(dK, dK + a.Tk * D, T(0));
            std::fill(dV, dV + a.Tk * D, T(0));
            // delta = rowsum(dO * O) and dQ = 0 for this task's query heads
            for (int64_t h = h_begin; h < h_end; ++h) {
                const int64_t bh = b * a.Hq + h;
                for (int64_t i = 0; i < a.Tq; ++i)
                    a.delta[bh * a.Tq + i] =
                        row_dot<Vec>(a.dout + (bh * a.Tq + i) * D, a.out + (bh * a.Tq + i) * D, D);
                std::fill(a.dq + bh * a.Tq * D, a.dq + (bh + 1) * a.Tq * D, T(0));
            }
            for (int64_t j0 = 0; j0 < a.Tk; j0 += kBlockK) {
                const int64_t nk = std::min(kBlockK, a.Tk - j0);
                transpose_tile(kt, K + j0 * D, nk, D);
                transpose_tile(vt, Vv + j0 * D, nk, D);
                // causal: query i sees key j0 iff off + i >= j0; earlier query tiles are skipped
                const int64_t i_first = a.causal ? std::max<int64_t>(0, j0 - off) : 0;
                for (int64_t h = h_begin; h < h_end; ++h) {
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
                        tile_gemm<Vec, true>(dV + j0 * D, D, nk, D, p, 1, kBlockK, nq, dO + i0 * D,
                                             D);
                        // dQ (nq, D) += dS K (scale folded into dS)
                        tile_gemm<Vec, true>(dQ + i0 * D, D, nq, D, ds, kBlockK, 1, nk, K + j0 * D,
                                             D);
                        // dK (nk, D) += dS^T Q
                        tile_gemm<Vec, true>(dK + j0 * D, D, nk, D, ds, 1, kBlockK, nq, Q + i0 * D,
                                             D);
                    }
                }
            }
        }
        if (split) {
            // dK[b, hk] = sum of the G partials of its query heads (rows of D elements)
#pragma omp for schedule(static)
            for (int64_t row = 0; row < a.B * a.Hkv * a.Tk; ++row) {
                const int64_t bk = row / a.Tk, t = row % a.Tk;
                const int64_t b = bk / a.Hkv, hk = bk % a.Hkv;
                for (int64_t which = 0; which < 2; ++which) {
                    T* dst = (which == 0 ? a.dk : a.dv) + row * D;
                    const T* src =
                        a.dkv_part + which * part_stride + ((b * a.Hq + hk * G) * a.Tk + t) * D;
                    std::copy(src, src + D, dst);
                    for (int64_t g = 1; g < G; ++g)
                        for (int64_t d = 0; d < D; ++d)
                            dst[d] += src[g * a.Tk * D + d];
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
    static V neg_inf_to_zero(V x) { return x == -std::numeric_limits<T>::infinity() ? T(0) : x; }
    static V exp(V x) { return std::exp(x); }
    static T reduce_add(V v) { return v; }
    static T reduce_max(V v) { return v; }
};

} // namespace
} // namespace forge::cpu::flash
