// AVX-512 products of x16-packed weights (packed_rows.h). F32 / F16: per k one load (and for
// F16 one vcvtph2ps) of the 16 rows' values, then one FMA per activation row against its
// broadcast value. Q8_0 / Q4_0 with s8 activations, per block of 16 rows: 8 weight vectors (loaded,
// or for Q4_0 split from 4 loads into nibbles), then per activation row 8 `vpdpbusd` against
// broadcast activation words, starting from the block's offset (-128 or -8 times the activation
// sum): lane r ends as row r's exact block sum. One convert and one FMA by (weight scales x
// activation scale) per block; no lane reduction.
// GCC 12 flags the undefined upper halves of its own 256->512-bit cast intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>

#include "backends/cpu/quant/packed_rows.h"
#include "quant/blocks.h"

namespace forge::cpu::quant::avx512 {

namespace fq = forge::quant;

namespace {

struct Acts {
    const int32_t* qs[8]; // activation row r's int8 values, read 4 at a time
    const float* d[8];
    const int32_t* sum[8];
};

// out[r] (lane i) = dot(row i of the group, activation row r). The weight vectors of a block
// are built once and used by all NA activation rows (GEMM); NA = 1 is decode's GEMV.
template <bool Q8, int NA>
void tile_x16(const uint8_t* grp, int64_t nb, const Acts& A, __m512* out) {
    constexpr int64_t kBlock = Q8 ? 544 : 288;
    constexpr int kOff = Q8 ? 128 : 8; // offset: -128 (Q8_0 stored + 128) or -8 (Q4_0) x sum
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    // GF(2) affine rows moving each byte's high nibble to its low 4 bits, zeros above
    const __m512i hi_nibble = _mm512_set1_epi64(0x1020408000000000ll);
    __m512 acc[NA];
    for (int r = 0; r < NA; ++r)
        acc[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = grp + b * kBlock;
        __m512i w[8];
        if constexpr (Q8) {
            for (int i = 0; i < 8; ++i)
                w[i] = _mm512_loadu_si512(blk + 64 * i);
        } else {
            for (int i = 0; i < 4; ++i) {
                const __m512i v = _mm512_loadu_si512(blk + 64 * i);
                w[i] = _mm512_and_si512(v, m4);
                w[4 + i] = _mm512_gf2p8affine_epi64_epi8(v, hi_nibble, 0);
            }
        }
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(blk + kBlock - 32)));
        for (int r = 0; r < NA; ++r) {
            const int32_t* a = A.qs[r] + b * 8;
            // two chains, so the 8 dependent vpdpbusd overlap
            __m512i c0 = _mm512_set1_epi32(-kOff * A.sum[r][b]), c1 = _mm512_setzero_si512();
            for (int i = 0; i < 8; i += 2) {
                c0 = _mm512_dpbusd_epi32(c0, w[i], _mm512_set1_epi32(a[i]));
                c1 = _mm512_dpbusd_epi32(c1, w[i + 1], _mm512_set1_epi32(a[i + 1]));
            }
            const __m512 s = _mm512_mul_ps(dw, _mm512_set1_ps(A.d[r][b]));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(c0, c1)), s, acc[r]);
        }
    }
    for (int r = 0; r < NA; ++r)
        out[r] = acc[r];
}

// Float weights: out[r] (lane i) = dot(row i of the group, activation row r). Fewer than 4
// activation rows split k over U accumulators each, so enough FMA chains run at once.
template <bool F16, int NA>
void tile_x16_float(const uint8_t* grp, int64_t K, const float* const* a, __m512* out) {
    constexpr int U = NA >= 4 ? 1 : 4 / NA;
    __m512 acc[NA][U];
    for (int r = 0; r < NA; ++r)
        for (int u = 0; u < U; ++u)
            acc[r][u] = _mm512_setzero_ps();
    auto col = [&](int64_t k) {
        return F16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(grp + k * 32)))
                   : _mm512_loadu_ps(reinterpret_cast<const float*>(grp) + k * 16);
    };
    int64_t k = 0;
    for (; k + U <= K; k += U)
        for (int u = 0; u < U; ++u) {
            const __m512 w = col(k + u);
            for (int r = 0; r < NA; ++r)
                acc[r][u] = _mm512_fmadd_ps(w, _mm512_set1_ps(a[r][k + u]), acc[r][u]);
        }
    for (; k < K; ++k) {
        const __m512 w = col(k);
        for (int r = 0; r < NA; ++r)
            acc[r][0] = _mm512_fmadd_ps(w, _mm512_set1_ps(a[r][k]), acc[r][0]);
    }
    for (int r = 0; r < NA; ++r) {
        __m512 s = acc[r][0];
        for (int u = 1; u < U; ++u)
            s = _mm512_add_ps(s, acc[r][u]);
        out[r] = s;
    }
}

template <bool F16>
void tile_float_any(int na, const uint8_t* grp, int64_t K, const float* const* a, __m512* out) {
    switch (na) {
    case 8:
        return tile_x16_float<F16, 8>(grp, K, a, out);
    case 7:
        return tile_x16_float<F16, 7>(grp, K, a, out);
    case 6:
        return tile_x16_float<F16, 6>(grp, K, a, out);
    case 5:
        return tile_x16_float<F16, 5>(grp, K, a, out);
    case 4:
        return tile_x16_float<F16, 4>(grp, K, a, out);
    case 3:
        return tile_x16_float<F16, 3>(grp, K, a, out);
    case 2:
        return tile_x16_float<F16, 2>(grp, K, a, out);
    default:
        return tile_x16_float<F16, 1>(grp, K, a, out);
    }
}

template <bool Q8>
void tile_any(int na, const uint8_t* grp, int64_t nb, const Acts& A, __m512* out) {
    switch (na) {
    case 8:
        return tile_x16<Q8, 8>(grp, nb, A, out);
    case 7:
        return tile_x16<Q8, 7>(grp, nb, A, out);
    case 6:
        return tile_x16<Q8, 6>(grp, nb, A, out);
    case 5:
        return tile_x16<Q8, 5>(grp, nb, A, out);
    case 4:
        return tile_x16<Q8, 4>(grp, nb, A, out);
    case 3:
        return tile_x16<Q8, 3>(grp, nb, A, out);
    case 2:
        return tile_x16<Q8, 2>(grp, nb, A, out);
    default:
        return tile_x16<Q8, 1>(grp, nb, A, out);
    }
}

} // namespace

void gemm_x16(GgmlType wt, const uint8_t* W, int64_t M, int64_t m0, int64_t m1, const ActLayout& L,
              const uint8_t* A, int64_t a_stride, int64_t N, float* Y, int64_t ldy) {
    const int64_t rb = fq::row_bytes(wt, L.K), nb = L.K / fq::kQK;
    const int64_t packed = std::min(m1, M / kPackRows * kPackRows);
    const bool q8 = wt == GgmlType::q8_0, f32 = wt == GgmlType::f32, f16 = wt == GgmlType::f16;
    // A band of weight groups that stays in L2 while every tile of activation rows passes by.
    const int64_t band = std::max<int64_t>(1, (256 << 10) / (rb * kPackRows)) * kPackRows;
    for (int64_t mb = m0; mb < packed; mb += band) {
        const int64_t me = std::min(packed, mb + band);
        for (int64_t n = 0; n < N; n += 8) {
            const int na = int(std::min<int64_t>(8, N - n));
            Acts acts{};
            const float* af[8];
            for (int r = 0; r < na; ++r) {
                af[r] = reinterpret_cast<const float*>(A + (n + r) * a_stride);
                const uint8_t* a = A + (n + r) * a_stride;
                acts.qs[r] = reinterpret_cast<const int32_t*>(a);
                acts.d[r] = reinterpret_cast<const float*>(a + L.d_off);
                acts.sum[r] = reinterpret_cast<const int32_t*>(a + L.s_off);
            }
            for (int64_t m = mb; m < me; m += kPackRows) {
                __m512 out[8];
                if (f32)
                    tile_float_any<false>(na, W + m * rb, L.K, af, out);
                else if (f16)
                    tile_float_any<true>(na, W + m * rb, L.K, af, out);
                else if (q8)
                    tile_any<true>(na, W + m * rb, nb, acts, out);
                else
                    tile_any<false>(na, W + m * rb, nb, acts, out);
                for (int r = 0; r < na; ++r)
                    _mm512_storeu_ps(Y + (n + r) * ldy + m, out[r]);
            }
        }
    }
    // rows past the last whole group, in GGUF layout: a few rows at most
    const int64_t t0 = std::max(m0, packed);
    if (t0 >= m1)
        return;
    if (f32 || f16)
        avx512::gemm(wt, W, rb, t0, m1, L, A, a_stride, N, Y, ldy);
    else
        ref::gemm_x16(wt, W, M, t0, m1, L, A, a_stride, N, Y, ldy);
}

} // namespace forge::cpu::quant::avx512
