// gemm_bf16's AVX512_BF16 path (Zen 4, Cooper Lake, Sapphire Rapids): operands packed on the
// fly into bf16 pair panels, then a 12 x 32 register-blocked vdpbf16ps micro-kernel. Also the
// packing the AMX path uses. Compiled with -mavx512bf16; called only where cpuid says so.
#include <algorithm>
#include <array>
#include <utility>

#include <omp.h>

#include "backends/cpu/kernels/gemm_bf16.h"
#include "backends/cpu/kernels/gemm_bf16_intrin.h"

namespace forge::cpu::bf16 {

namespace {

// Micro-tile: 12 rows x 32 columns = 24 zmm accumulators, plus 2 for B's vectors, of 32.
constexpr int kMr = 12, kNr = 32;

inline __mmask16 first_n(int64_t n) {
    return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

// 32 bf16 from rows k (even) and k+1 (odd), 16 lanes each, as 16 (even, odd) pairs: the
// conversion puts even in the low 256 bits and odd in the high; the permute interleaves them.
inline __m512i cvt_interleave(__m512 even, __m512 odd) {
    alignas(64) static const uint16_t kIdx[32] = {0,  16, 1,  17, 2,  18, 3,  19, 4,  20, 5,
                                                  21, 6,  22, 7,  23, 8,  24, 9,  25, 10, 26,
                                                  11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    const __m512i h = (__m512i)_mm512_cvtne2ps_pbh(odd, even);
    return _mm512_permutexvar_epi16(_mm512_load_si512(kIdx), h);
}

// 32 consecutive floats (n valid, the rest read as zero) as 32 bf16 in order.
inline __m512i cvt32(const float* x, int64_t n) {
    const __m512 lo = _mm512_maskz_loadu_ps(first_n(n), x);
    const __m512 hi = n > 16 ? _mm512_maskz_loadu_ps(first_n(n - 16), x + 16) : _mm512_setzero_ps();
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

// r[i] (16 dwords each) becomes column i of the 16 x 16 matrix the rows r[0..15] held.
inline void transpose16x16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    // Now 128-bit lane L of r[4g + c] is column 4L + c of rows 4g..4g+3: gather the lanes.
    for (int c = 0; c < 4; ++c) {
        t[c] = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x88);
        t[4 + c] = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xdd);
        t[8 + c] = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x88);
        t[12 + c] = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xdd);
    }
    for (int c = 0; c < 4; ++c) {
        r[c] = _mm512_shuffle_i32x4(t[c], t[8 + c], 0x88);
        r[4 + c] = _mm512_shuffle_i32x4(t[4 + c], t[12 + c], 0x88);
        r[8 + c] = _mm512_shuffle_i32x4(t[c], t[8 + c], 0xdd);
        r[12 + c] = _mm512_shuffle_i32x4(t[4 + c], t[12 + c], 0xdd);
    }
}

} // namespace

void pack_pairs(const float* x, int64_t k_stride, int64_t lane_stride, int64_t lanes, int64_t K,
                int64_t n_pairs, int width, uint32_t* dst) {
    if (lane_stride == 1) { // lanes contiguous: convert rows k, k+1 and interleave
        for (int64_t p = 0; p < n_pairs; ++p) {
            const int64_t k = 2 * p;
            for (int l0 = 0; l0 < width; l0 += 16) {
                const __mmask16 m = first_n(lanes - l0);
                __m512 even = _mm512_setzero_ps(), odd = _mm512_setzero_ps();
                if (m && k < K)
                    even = _mm512_maskz_loadu_ps(m, x + k * k_stride + l0);
                if (m && k + 1 < K)
                    odd = _mm512_maskz_loadu_ps(m, x + (k + 1) * k_stride + l0);
                _mm512_mask_storeu_epi32(dst + p * width + l0, first_n(width - l0),
                                         cvt_interleave(even, odd));
            }
        }
        return;
    }
    if (k_stride == 1) { // k contiguous per lane: 16 pairs of 16 lanes, then transposed
        for (int l0 = 0; l0 < width; l0 += 16) {
            const __mmask16 m = first_n(width - l0);
            for (int64_t p0 = 0; p0 < n_pairs; p0 += 16) {
                __m512i r[16];
                for (int i = 0; i < 16; ++i)
                    r[i] = l0 + i < lanes ? cvt32(x + (l0 + i) * lane_stride + 2 * p0, K - 2 * p0)
                                          : _mm512_setzero_si512();
                transpose16x16(r);
                const int64_t np = std::min<int64_t>(16, n_pairs - p0);
                for (int64_t j = 0; j < np; ++j)
                    _mm512_mask_storeu_epi32(dst + (p0 + j) * width + l0, m, r[j]);
            }
        }
        return;
    }
    for (int64_t p = 0; p < n_pairs; ++p) // any other strides: one element at a time
        for (int l = 0; l < width; ++l) {
            const int64_t k = 2 * p;
            const bool in = l < lanes;
            const uint32_t even =
                in && k < K ? f32_to_bf16_daz(x[k * k_stride + l * lane_stride]) : 0;
            const uint32_t odd =
                in && k + 1 < K ? f32_to_bf16_daz(x[(k + 1) * k_stride + l * lane_stride]) : 0;
            dst[p * width + l] = even | odd << 16;
        }
}

void pack_rows(const float* x, int64_t row_stride, int64_t k_stride, int64_t rows, int64_t K,
               int64_t k_pad, uint16_t* dst) {
    if (k_stride == 1) { // each row's k contiguous: 32 at a time
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t k0 = 0; k0 < k_pad; k0 += 32)
                _mm512_mask_storeu_epi16(dst + r * k_pad + k0,
                                         k_pad - k0 >= 32 ? ~__mmask32(0)
                                                          : __mmask32((1u << (k_pad - k0)) - 1),
                                         cvt32(x + r * row_stride + k0, K - k0));
        return;
    }
    if (row_stride == 1) { // rows contiguous per k: pairs of 16 rows, then transposed
        uint32_t* dst32 = reinterpret_cast<uint32_t*>(dst); // k_pad is even: rows of pairs
        const int64_t n_pairs = k_pad / 2;
        for (int64_t r0 = 0; r0 < rows; r0 += 16) {
            const __mmask16 m = first_n(rows - r0);
            for (int64_t p0 = 0; p0 < n_pairs; p0 += 16) {
                __m512i v[16];
                for (int j = 0; j < 16; ++j) {
                    const int64_t k = 2 * (p0 + j);
                    const __m512 even = k < K ? _mm512_maskz_loadu_ps(m, x + k * k_stride + r0)
                                              : _mm512_setzero_ps();
                    const __m512 odd = k + 1 < K
                                           ? _mm512_maskz_loadu_ps(m, x + (k + 1) * k_stride + r0)
                                           : _mm512_setzero_ps();
                    v[j] = cvt_interleave(even, odd);
                }
                transpose16x16(v);
                const __mmask16 keep = first_n(n_pairs - p0);
                for (int64_t i = 0; i < std::min<int64_t>(16, rows - r0); ++i)
                    _mm512_mask_storeu_epi32(dst32 + (r0 + i) * n_pairs + p0, keep, v[i]);
            }
        }
        return;
    }
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < k_pad; ++k)
            dst[r * k_pad + k] = k < K ? f32_to_bf16_daz(x[r * row_stride + k * k_stride]) : 0;
}

namespace {

// c (MR x 16*NV, row stride ldc) = A panel (n_pairs x kMr pairs) * B panel (n_pairs x kNr
// pairs); the last vector of each row stores only the columns in `last`.
template <int MR, int NV>
void micro_kernel(int64_t n_pairs, const uint32_t* ap, const uint32_t* bp, float* c, int64_t ldc,
                  __mmask16 last) {
    __m512 acc[MR][NV];
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v)
            acc[r][v] = _mm512_setzero_ps();
    for (int64_t p = 0; p < n_pairs; ++p, ap += kMr, bp += kNr) {
        __m512bh b[NV];
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v)
            b[v] = (__m512bh)_mm512_loadu_si512(bp + 16 * v);
#pragma GCC unroll 12
        for (int r = 0; r < MR; ++r) {
            const __m512bh a = (__m512bh)_mm512_set1_epi32(int(ap[r]));
#pragma GCC unroll 2
            for (int v = 0; v < NV; ++v)
                acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, b[v]);
        }
    }
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
        for (int v = 0; v < NV - 1; ++v)
            _mm512_storeu_ps(c + r * ldc + 16 * v, acc[r][v]);
        _mm512_mask_storeu_ps(c + r * ldc + 16 * (NV - 1), last, acc[r][NV - 1]);
    }
}

using MicroKernel = void (*)(int64_t, const uint32_t*, const uint32_t*, float*, int64_t, __mmask16);

// kernels[rows - 1][vectors - 1]: row tails get kernels of fewer rows, not padded work.
template <int... R> constexpr auto make_kernels(std::integer_sequence<int, R...>) {
    return std::array<std::array<MicroKernel, 2>, sizeof...(R)>{
        {{micro_kernel<R + 1, 1>, micro_kernel<R + 1, 2>}...}};
}
constexpr auto kKernels = make_kernels(std::make_integer_sequence<int, kMr>{});

// The last panel's columns when there are at most kNarrow of them (the LM head's 65 = 2 x 32
// + 1): c (rows x NC) with the 12 rows in the lanes and B's pair broadcast, so a column costs
// one vdpbf16ps per pair instead of the 12 of a (mostly idle) 12 x 16 tile. U independent
// sums per column hide the instruction's latency when NC is small.
constexpr int kNarrow = 8;
template <int NC>
void column_kernel(int64_t n_pairs, const uint32_t* ap, const uint32_t* bp, float* c, int64_t ldc,
                   int rows) {
    constexpr int U = NC <= 2 ? 4 : NC <= 4 ? 2 : 1;
    __m512 acc[U][NC];
    for (int u = 0; u < U; ++u)
        for (int n = 0; n < NC; ++n)
            acc[u][n] = _mm512_setzero_ps();
    auto step = [&](int u, int64_t p) {
        const __m512bh a = (__m512bh)_mm512_maskz_loadu_epi32(first_n(kMr), ap + p * kMr);
        for (int n = 0; n < NC; ++n)
            acc[u][n] =
                _mm512_dpbf16_ps(acc[u][n], a, (__m512bh)_mm512_set1_epi32(int(bp[p * kNr + n])));
    };
    int64_t p = 0;
    for (; p + U <= n_pairs; p += U)
        for (int u = 0; u < U; ++u)
            step(u, p + u);
    for (; p < n_pairs; ++p)
        step(0, p);
    alignas(64) float out[16];
    for (int n = 0; n < NC; ++n) {
        for (int u = 1; u < U; ++u)
            acc[0][n] = _mm512_add_ps(acc[0][n], acc[u][n]);
        _mm512_store_ps(out, acc[0][n]);
        for (int r = 0; r < rows; ++r)
            c[r * ldc + n] = out[r];
    }
}

using ColumnKernel = void (*)(int64_t, const uint32_t*, const uint32_t*, float*, int64_t, int);
template <int... N> constexpr auto make_column_kernels(std::integer_sequence<int, N...>) {
    return std::array<ColumnKernel, sizeof...(N)>{column_kernel<N + 1>...};
}
constexpr auto kColumnKernels = make_column_kernels(std::make_integer_sequence<int, kNarrow>{});

} // namespace

void gemm_avx512bf16(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_rs, int64_t a_cs,
                     const float* b, int64_t b_rs, int64_t b_cs, float* c, int64_t ldc,
                     int threads) {
    const int64_t n_pairs = (K + 1) / 2; // odd K: the last pair's odd half is zero
    const int64_t n_panels = (N + kNr - 1) / kNr, m_blocks = (M + kMr - 1) / kMr;
    const int64_t panel_size = n_pairs * kNr, block_size = n_pairs * kMr;
    threads = int(std::min<int64_t>(threads, m_blocks * n_panels));
    static thread_local Scratch<uint32_t> a_scratch, b_scratch;
    uint32_t* apack = a_scratch.get(size_t(m_blocks * block_size));
    uint32_t* bpack = b_scratch.get(size_t(n_panels * panel_size));
    auto pack_a = [&](int64_t i) {
        pack_pairs(a + i * kMr * a_rs, a_cs, a_rs, std::min<int64_t>(kMr, M - i * kMr), K, n_pairs,
                   kMr, apack + i * block_size);
    };
    auto pack_b = [&](int64_t j) {
        pack_pairs(b + j * kNr * b_cs, b_rs, b_cs, std::min<int64_t>(kNr, N - j * kNr), K, n_pairs,
                   kNr, bpack + j * panel_size);
    };
    auto tile = [&](int64_t i, int64_t j) {
        const int64_t rows = std::min<int64_t>(kMr, M - i * kMr);
        const int64_t cols = std::min<int64_t>(kNr, N - j * kNr);
        const uint32_t* ap = apack + i * block_size;
        const uint32_t* bp = bpack + j * panel_size;
        float* cp = c + i * kMr * ldc + j * kNr;
        if (cols <= kNarrow)
            return kColumnKernels[cols - 1](n_pairs, ap, bp, cp, ldc, int(rows));
        const int nv = cols > 16 ? 2 : 1;
        kKernels[rows - 1][nv - 1](n_pairs, ap, bp, cp, ldc, first_n(cols - 16 * (nv - 1)));
    };
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        const TileRange r = tile_range(M, N, kMr, kNr, t, nt);
        for (int64_t i = r.by_rows ? r.m0 : t; i < (r.by_rows ? r.m1 : m_blocks);
             i += r.by_rows ? 1 : nt)
            pack_a(i);
        for (int64_t j = r.by_rows ? t : r.j0; j < (r.by_rows ? n_panels : r.j1);
             j += r.by_rows ? nt : 1)
            pack_b(j);
#pragma omp barrier
        // One operand's panel stays in L1 while the other's panels stream past from L2: the
        // smaller of the two streams, so that it fits L2 (fc2's dW: 800 KB of A, 200 KB of B).
        if ((r.m1 - r.m0) * block_size > (r.j1 - r.j0) * panel_size) {
            for (int64_t i = r.m0; i < r.m1; ++i)
                for (int64_t j = r.j0; j < r.j1; ++j)
                    tile(i, j);
        } else {
            for (int64_t j = r.j0; j < r.j1; ++j)
                for (int64_t i = r.m0; i < r.m1; ++i)
                    tile(i, j);
        }
    }
}

} // namespace forge::cpu::bf16
