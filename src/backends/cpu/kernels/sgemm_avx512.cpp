// f32 GEMM with AVX-512 (see sgemm.h), blocked as BLIS does:
//   for each block of at most kKc depths: pack b's rows into panels of 32 columns (zero past N);
//   for each block of kMc rows: pack a's rows into tiles of 12, k-major; then for each panel
//   and tile, a 12 x 32 register tile runs over the depth: per k, two vector loads of the panel
//   and 12 broadcasts of a, 24 FMAs. The tile adds into c after the first depth block.
// b's panel (kc x 32 floats, at most 32 KiB) stays in L1 across a block's tiles; the packed rows
// of a (96 x kc) stay in L2 across the panels. Packing reads each operand in its own layout,
// transposing 16 x 16 blocks in registers where the layout runs the other way. Packing a costs
// a copy but made the kernel 1.5x faster on the Xeon with operands out of cache (docs/PERF.md).
#include "backends/cpu/kernels/sgemm.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#include <immintrin.h>

namespace forge::cpu {

namespace {

constexpr int kNr = 32;      // columns per panel: two zmm
constexpr int kMr = 12;      // rows per tile: 24 accumulators + 2 panel vectors + 1 broadcast
constexpr int64_t kKc = 256; // depth per block: a 32 KiB panel
constexpr int64_t kMc = 96;  // rows per block: 96 x 256 floats of a (96 KiB) stay in L2

// c[r][0..32) (+)= sum_k ap[k][r] * bp[k][0..32) for r < MR: ap is a's tile packed k-major.
// m0 / m1 mask the columns of c's two 16-wide halves that exist.
template <int MR>
void tile(int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc, __mmask16 m0,
          __mmask16 m1, bool accumulate) {
    __m512 c0[MR], c1[MR];
    for (int r = 0; r < MR; ++r) {
        c0[r] = c1[r] = _mm512_setzero_ps();
        // c's lines arrive while the depth loop runs (a fresh output misses every cache).
        __builtin_prefetch(c + r * ldc, 1, 3);
        __builtin_prefetch(c + r * ldc + 16, 1, 3);
    }
    for (int64_t k = 0; k < kc; ++k) {
        const __m512 b0 = _mm512_load_ps(bp + k * kNr), b1 = _mm512_load_ps(bp + k * kNr + 16);
        const float* ak = ap + k * MR;
        for (int r = 0; r < MR; ++r) {
            const __m512 x = _mm512_set1_ps(ak[r]);
            c0[r] = _mm512_fmadd_ps(x, b0, c0[r]);
            c1[r] = _mm512_fmadd_ps(x, b1, c1[r]);
        }
    }
    for (int r = 0; r < MR; ++r) {
        float* cr = c + r * ldc;
        if (accumulate) {
            c0[r] = _mm512_add_ps(c0[r], _mm512_maskz_loadu_ps(m0, cr));
            c1[r] = _mm512_add_ps(c1[r], _mm512_maskz_loadu_ps(m1, cr + 16));
        }
        _mm512_mask_storeu_ps(cr, m0, c0[r]);
        _mm512_mask_storeu_ps(cr + 16, m1, c1[r]);
    }
}

using TileFn = void (*)(int64_t, const float*, const float*, float*, int64_t, __mmask16,
                        __mmask16, bool);

template <int... R> constexpr auto make_tiles(std::integer_sequence<int, R...>) {
    return std::array<TileFn, sizeof...(R)>{&tile<R + 1>...};
}
constexpr auto kTiles = make_tiles(std::make_integer_sequence<int, kMr>{}); // kTiles[r - 1]

// GCC 12 flags the unpack/shuffle intrinsics' internal _mm512_undefined_ps() operand as
// maybe-uninitialized once inlined (a false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// Transposes a block of up to 16 x 16 floats: row r < rows of the block starts at src + r * ld
// and has `cols` values; out[c][r] = src[r * ld + c], zero outside the block.
inline void transpose16(const float* src, int64_t ld, int rows, int cols, __m512 out[16]) {
    const __mmask16 m = __mmask16((1u << cols) - 1);
    __m512 r[16], t[16];
    for (int i = 0; i < 16; ++i)
        r[i] = i < rows ? _mm512_maskz_loadu_ps(m, src + i * ld) : _mm512_setzero_ps();
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 2]);
        const __m512d c = _mm512_castps_pd(t[i + 1]), d = _mm512_castps_pd(t[i + 3]);
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
    }
    // r[4g + j] now holds, in each 128-bit lane L, column 4L + j of rows 4g .. 4g + 3.
    for (int j = 0; j < 4; ++j) {
        t[j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);      // lanes 0, 2 of rows 0-7
        t[4 + j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xdd);  // lanes 1, 3
        t[8 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
        t[12 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xdd);
    }
    for (int j = 0; j < 4; ++j) {
        out[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);        // lane 0: columns j
        out[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xdd);    // lane 2: columns 8 + j
        out[4 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0x88); // lane 1: columns 4 + j
        out[12 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0xdd);
    }
}

// Rows [k0, k0 + kc) of b, columns [0, N), into panels: bp[p][k][j] = b(k0 + k, 32 p + j).
void pack_b(const float* b, int64_t rsb, int64_t csb, int64_t N, int64_t k0, int64_t kc,
            float* bp) {
    const int64_t panels = (N + kNr - 1) / kNr;
    for (int64_t p = 0; p < panels; ++p) {
        const int64_t j0 = p * kNr, nj = std::min<int64_t>(kNr, N - j0);
        float* dst = bp + p * kc * kNr;
        if (csb == 1) { // row-major b: each panel row is a contiguous run
            const __mmask16 m0 = __mmask16((1u << std::min<int64_t>(nj, 16)) - 1);
            const __mmask16 m1 = nj > 16 ? __mmask16((1u << (nj - 16)) - 1) : __mmask16(0);
            for (int64_t k = 0; k < kc; ++k) {
                const float* src = b + (k0 + k) * rsb + j0;
                _mm512_store_ps(dst + k * kNr, _mm512_maskz_loadu_ps(m0, src));
                _mm512_store_ps(dst + k * kNr + 16, _mm512_maskz_loadu_ps(m1, src + 16));
            }
        } else { // column-major b: each column of the panel is a contiguous run, transposed
            __m512 t[16];
            for (int64_t h = 0; h < kNr; h += 16) {
                const int cols = int(std::clamp<int64_t>(nj - h, 0, 16));
                for (int64_t k = 0; k < kc; k += 16) {
                    const int depth = int(std::min<int64_t>(16, kc - k));
                    transpose16(b + (j0 + h) * csb + k0 + k, csb, cols, depth, t);
                    for (int kk = 0; kk < depth; ++kk)
                        _mm512_store_ps(dst + (k + kk) * kNr + h, t[kk]);
                }
            }
        }
    }
}

// Rows [0, rows) and depths [0, kc) of a (element (i, k) at a[i * rs + k * cs]) into tiles of
// kMr rows: ap[t][k][r] = a(kMr t + r, k), the last tile `rows % kMr` wide.
void pack_a(const float* a, int64_t rs, int64_t cs, int64_t rows, int64_t kc, float* ap) {
    for (int64_t i = 0; i < rows; i += kMr) {
        const int64_t mr = std::min<int64_t>(kMr, rows - i);
        float* dst = ap + i * kc;
        const __mmask16 m = __mmask16((1u << mr) - 1); // the tile's rows
        if (rs == 1) { // column-major: the tile's values of each k are adjacent
            for (int64_t k = 0; k < kc; ++k)
                _mm512_mask_storeu_ps(dst + k * mr, m,
                                      _mm512_maskz_loadu_ps(m, a + i + k * cs));
        } else { // row-major: 16 x mr blocks transposed
            __m512 t[16];
            for (int64_t k = 0; k < kc; k += 16) {
                const int depth = int(std::min<int64_t>(16, kc - k));
                transpose16(a + i * rs + k, rs, int(mr), depth, t);
                for (int kk = 0; kk < depth; ++kk)
                    _mm512_mask_storeu_ps(dst + (k + kk) * mr, m, t[kk]);
            }
        }
    }
}

} // namespace

void sgemm_avx512(int64_t M, int64_t N, int64_t K, const float* a, int64_t rsa, int64_t csa,
                  const float* b, int64_t rsb, int64_t csb, float* c, int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        for (int64_t i = 0; i < M; ++i) std::fill(c + i * ldc, c + i * ldc + N, 0.0f);
        return;
    }
    const int64_t panels = (N + kNr - 1) / kNr;
    // Equal depth blocks of at most kKc.
    const int64_t kblocks = (K + kKc - 1) / kKc, kc_max = (K + kblocks - 1) / kblocks;
    thread_local std::vector<float> scratch;
    const size_t need = size_t(panels * kc_max * kNr + kMc * kc_max + 32);
    if (scratch.size() < need) scratch.resize(need);
    // 64-byte aligned start for the aligned panel loads.
    float* bp = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(scratch.data()) + 63) &
                                         ~uintptr_t(63));
    float* ap = bp + panels * kc_max * kNr;
    for (int64_t k0 = 0; k0 < K; k0 += kc_max) {
        const int64_t kc = std::min(kc_max, K - k0);
        pack_b(b, rsb, csb, N, k0, kc, bp);
        const float* ak = a + k0 * csa;
        for (int64_t i0 = 0; i0 < M; i0 += kMc) {
            const int64_t i1 = std::min(M, i0 + kMc);
            pack_a(ak + i0 * rsa, rsa, csa, i1 - i0, kc, ap);
            for (int64_t p = 0; p < panels; ++p) {
                const int64_t j0 = p * kNr, nj = std::min<int64_t>(kNr, N - j0);
                const __mmask16 m0 = __mmask16((1u << std::min<int64_t>(nj, 16)) - 1);
                const __mmask16 m1 = nj > 16 ? __mmask16((1u << (nj - 16)) - 1) : __mmask16(0);
                for (int64_t i = i0; i < i1; i += kMr) {
                    const int rows = int(std::min<int64_t>(kMr, i1 - i));
                    kTiles[size_t(rows - 1)](kc, ap + (i - i0) * kc, bp + p * kc * kNr,
                                             c + i * ldc + j0, ldc, m0, m1, k0 > 0);
                }
            }
        }
    }
}

} // namespace forge::cpu
