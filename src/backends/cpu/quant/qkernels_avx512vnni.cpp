// AVX-512 (F/BW/VL/DQ) + VNNI quantized matrix products: vpdpbusd does 64 u8 x s8 products per
// instruction. Tiles are one weight row by up to 4 activation rows, so each weight block is
// loaded once per tile; gemm() walks L2-sized bands of weight rows inside each tile of rows.
// GCC 12 flags the undefined upper halves of its own 256->512-bit cast intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "backends/cpu/quant/qkernels.h"
#include "quant/blocks.h"

namespace forge::cpu::quant::avx512 {

namespace fq = forge::quant;

namespace {

inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

// Two f16 scales, each over 8 lanes: [a x8 | b x8]. The halves pair up in a general register
// (scalar ports), so only the conversion and one permute use the vector pipes.
inline __m512 pair_f16(uint16_t a, uint16_t b) {
    const __m128 f = _mm_cvtph_ps(_mm_cvtsi32_si128(int(uint32_t(a) | (uint32_t(b) << 16))));
    const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(f));
}

inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

struct Rows {
    const uint8_t* a[4];
};

template <int NA>
void tile_f32(GgmlType wt, const uint8_t* w, const Rows& A, int64_t K, __m512* res) {
    __m512 acc[NA], acc2[NA];
    for (int r = 0; r < NA; ++r) acc[r] = acc2[r] = _mm512_setzero_ps();
    const float* wf = reinterpret_cast<const float*>(w);
    const uint16_t* wh = reinterpret_cast<const uint16_t*>(w);
    auto load_w = [&](int64_t k) {
        return wt == GgmlType::f32 ? _mm512_loadu_ps(wf + k)
                                   : _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(wh + k)));
    };
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        const __m512 w0 = load_w(k), w1 = load_w(k + 16);
        for (int r = 0; r < NA; ++r) {
            const float* a = reinterpret_cast<const float*>(A.a[r]);
            acc[r] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(a + k), acc[r]);
            acc2[r] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(a + k + 16), acc2[r]);
        }
    }
    for (; k < K; k += 16) {
        const __mmask16 m = K - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (K - k)) - 1);
        const __m512 w0 = wt == GgmlType::f32
                              ? _mm512_maskz_loadu_ps(m, wf + k)
                              : _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, wh + k));
        for (int r = 0; r < NA; ++r) {
            const float* a = reinterpret_cast<const float*>(A.a[r]);
            acc[r] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(m, a + k), acc[r]);
        }
    }
    for (int r = 0; r < NA; ++r) res[r] = _mm512_add_ps(acc[r], acc2[r]);
}

// Q8_0: activations come as u8 (value + 128), weights stay signed, so one vpdpbusd per pair
// of blocks and activation row; it starts from -128 * (the weights' sums), computed once per
// pair of blocks for all rows of the tile.
// The 16 sums of 16 vectors, in order, by a transpose-and-add tree (45 shuffles and adds
// instead of 16 horizontal reductions).
inline __m512 reduce16(const __m512 (&v)[16]) {
    __m512 t[8], x[4];
    for (int p = 0; p < 8; ++p)
        t[p] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * p], v[2 * p + 1]),
                             _mm512_unpackhi_ps(v[2 * p], v[2 * p + 1]));
    for (int q = 0; q < 4; ++q) {
        const __m512d a = _mm512_castps_pd(t[2 * q]), b = _mm512_castps_pd(t[2 * q + 1]);
        x[q] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    const __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(x[0], x[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                     _mm512_shuffle_f32x4(x[0], x[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(x[2], x[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                     _mm512_shuffle_f32x4(x[2], x[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(s01, s23, _MM_SHUFFLE(3, 1, 3, 1)));
}

// F32/F16 prefill: 4 weight rows x 4 activation rows, 16 accumulators, so each weight and
// activation vector loaded feeds 4 FMAs. out[4 * i + r] = dot(weight row i, activation row r).
void tile4x4_f32(GgmlType wt, const uint8_t* w, int64_t w_stride, const Rows& A, int64_t K,
                 float* out) {
    __m512 acc[16];
    for (auto& a : acc) a = _mm512_setzero_ps();
    auto load_w = [&](int i, int64_t k, __mmask16 m) {
        const uint8_t* row = w + i * w_stride;
        return wt == GgmlType::f32
                   ? _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(row) + k)
                   : _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, reinterpret_cast<const uint16_t*>(row) + k));
    };
    auto step = [&](int64_t k, __mmask16 m) {
        __m512 a[4];
        for (int r = 0; r < 4; ++r)
            a[r] = _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(A.a[r]) + k);
        for (int i = 0; i < 4; ++i) {
            const __m512 wv = load_w(i, k, m);
            for (int r = 0; r < 4; ++r) acc[4 * i + r] = _mm512_fmadd_ps(wv, a[r], acc[4 * i + r]);
        }
    };
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) step(k, __mmask16(0xFFFF)); // constant mask: plain loads
    if (k < K) step(k, __mmask16((1u << (K - k)) - 1));
    _mm512_storeu_ps(out, reduce16(acc));
}

template <int NA>
void tile_q8_0(const uint8_t* w, const Rows& A, const ActLayout& L, __m512* res) {
    const auto* wb = reinterpret_cast<const fq::BlockQ8_0*>(w);
    const int64_t nb = L.K / fq::kQK;
    __m512 acc[NA];
    float tail[NA] = {};
    for (int r = 0; r < NA; ++r) acc[r] = _mm512_setzero_ps();
    const __m512i zero = _mm512_setzero_si512(), u128 = _mm512_set1_epi8(char(0x80));
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
        const __m512i wz = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)wb[b].qs)),
            _mm256_loadu_si256((const __m256i*)wb[b + 1].qs), 1);
        const __m512i negc = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, u128, wz));
        const __m512 dw = pair_f16(wb[b].d, wb[b + 1].d);
        for (int r = 0; r < NA; ++r) {
            const __m512i p = _mm512_dpbusd_epi32(negc, _mm512_loadu_si512(A.a[r] + b * fq::kQK), wz);
            const __m512 da = _mm512_loadu_ps(reinterpret_cast<const float*>(A.a[r] + L.d_off) + b * 8);
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(da, dw), acc[r]);
        }
    }
    if (b < nb) {
        const __m256i wy = _mm256_loadu_si256((const __m256i*)wb[b].qs);
        const __m256i z = _mm256_setzero_si256();
        const __m256i negc = _mm256_sub_epi32(z, _mm256_dpbusd_epi32(z, _mm256_set1_epi8(char(0x80)), wy));
        const float dw = h2f(wb[b].d);
        for (int r = 0; r < NA; ++r) {
            const int32_t isum = hsum_epi32(_mm256_dpbusd_epi32(
                negc, _mm256_loadu_si256((const __m256i*)(A.a[r] + b * fq::kQK)), wy));
            tail[r] = dw * reinterpret_cast<const float*>(A.a[r] + L.d_off)[b * 8] * float(isum);
        }
    }
    for (int r = 0; r < NA; ++r) res[r] = _mm512_mask_add_ps(acc[r], 1, acc[r], _mm512_set1_ps(tail[r]));
}

// 16 block sums from 4 accumulators whose 128-bit lane l holds 4 partial sums of block l of
// group g (g = 0..3): block 4 g + l lands in lane 4 l + g (q4_lane's order).
inline __m512i reduce_4x4(__m512i v0, __m512i v1, __m512i v2, __m512i v3) {
    const __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(v0, v1), _mm512_unpackhi_epi32(v0, v1));
    const __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(v2, v3), _mm512_unpackhi_epi32(v2, v3));
    return _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
}

struct Q4Tables {
    __m512i qs;       // 4 blocks' 72 bytes (two loads) -> their 4 x 16 nibble bytes
    __m512i d[4];     // group g's 4 f16 scales -> bytes 8 l + 2 g, 8 l + 2 g + 1
    __mmask64 dm[4];
    Q4Tables() {
        alignas(64) uint8_t q[64], dd[4][64] = {};
        for (int j = 0; j < 4; ++j)
            for (int i = 0; i < 16; ++i) q[16 * j + i] = uint8_t(18 * j + 2 + i);
        qs = _mm512_load_si512(q);
        for (int g = 0; g < 4; ++g) {
            dm[g] = 0;
            for (int l = 0; l < 4; ++l)
                for (int e = 0; e < 2; ++e) {
                    dd[g][8 * l + 2 * g + e] = uint8_t(18 * l + e);
                    dm[g] |= __mmask64(1) << (8 * l + 2 * g + e);
                }
            d[g] = _mm512_load_si512(dd[g]);
        }
    }
};

// Q4_0 in steps of 16 blocks: two loads and one byte permute gather 4 blocks' nibbles (and a
// masked permute their scales) without leaving the weights' own layout; each block's products
// stay in its own 4 lanes, 4 groups reduce to 16 exact block sums, then one convert and one
// FMA scale all 16 blocks at once.
template <int NA>
void tile_q4_0(const uint8_t* w, const Rows& A, const ActLayout& L, __m512* res) {
    static const Q4Tables T;
    const int64_t nb = L.K / fq::kQK, chunks = (nb + 15) / 16;
    __m512 acc[NA];
    for (int r = 0; r < NA; ++r) acc[r] = _mm512_setzero_ps();
    const __m512i m4 = _mm512_set1_epi8(0x0F), zero = _mm512_setzero_si512();
    // rows of the bit matrix, byte 7 - i giving result bit i: bit i <- bit i + 4 for i < 4
    const __m512i hi_nibble = _mm512_set1_epi64(0x1020408000000000ll);
    for (int64_t c = 0; c < chunks; ++c) {
        __m512i lo[4], hi[4], dh = zero;
        const int G = int(std::min<int64_t>(4, (nb - 16 * c + 3) / 4)); // groups holding blocks
        for (int g = 0; g < 4; ++g) { // fixed trip count: lo, hi and v stay in registers
            if (g >= G) {
                lo[g] = hi[g] = zero;
                continue;
            }
            const int64_t b0 = 16 * c + 4 * g, m = std::min<int64_t>(nb - b0, 4);
            const int64_t n = 18 * m; // bytes of this group's blocks
            const __mmask64 ma = n >= 64 ? ~__mmask64(0) : (__mmask64(1) << n) - 1;
            const __mmask64 mb = n > 64 ? (__mmask64(1) << (n - 64)) - 1 : 0;
            const uint8_t* base = w + b0 * 18;
            const __m512i a = _mm512_maskz_loadu_epi8(ma, base);
            const __m512i b = _mm512_maskz_loadu_epi8(mb, base + 64);
            const __m512i z = _mm512_permutex2var_epi8(a, T.qs, b);
            dh = _mm512_mask_permutexvar_epi8(dh, T.dm[g], T.d[g], a);
            lo[g] = _mm512_and_si512(z, m4);
            // high nibble to the low 4 bits, zeros above: one GF(2) affine map per byte
            hi[g] = _mm512_gf2p8affine_epi64_epi8(z, hi_nibble, 0);
        }
        const __m512 dw = _mm512_cvtph_ps(_mm512_castsi512_si256(dh));
        for (int r = 0; r < NA; ++r) {
            const uint8_t* a = A.a[r] + c * 512;
            __m512i v[4];
            for (int g = 0; g < 4; ++g)
                v[g] = g >= G ? zero : _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, lo[g], _mm512_loadu_si512(a + 128 * g)),
                                           hi[g], _mm512_loadu_si512(a + 128 * g + 64));
            const __m512i s = _mm512_add_epi32(
                reduce_4x4(v[0], v[1], v[2], v[3]),
                _mm512_loadu_si512(reinterpret_cast<const int32_t*>(A.a[r] + L.s_off) + 16 * c));
            const __m512 da = _mm512_loadu_ps(reinterpret_cast<const float*>(A.a[r] + L.d_off) + 16 * c);
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, da), acc[r]);
        }
    }
    for (int r = 0; r < NA; ++r) res[r] = acc[r];
}

// The 8 six-bit scales (bytes 0..7) and mins (bytes 8..15) of a K-quant super-block, unpacked
// from its 12 bytes with 32-bit masks (layout in quant/blocks.h, k_scale_min).
inline __m128i unpack_k_scales(const uint8_t* q) {
    uint32_t u[3];
    std::memcpy(u, q, 12);
    const uint32_t m1 = 0x3f3f3f3f, m2 = 0x0f0f0f0f, m3 = 0x03030303;
    const uint32_t sc_lo = u[0] & m1, mn_lo = u[1] & m1;
    const uint32_t sc_hi = (u[2] & m2) | (((u[0] >> 6) & m3) << 4);
    const uint32_t mn_hi = ((u[2] >> 4) & m2) | (((u[1] >> 6) & m3) << 4);
    return _mm_setr_epi32(int(sc_lo), int(sc_hi), int(mn_lo), int(mn_hi));
}

template <int NA>
void tile_q4_k(const uint8_t* w, const Rows& A, const ActLayout& L, __m512* res) {
    const auto* wb = reinterpret_cast<const fq::BlockQ4K*>(w);
    const int64_t nb = L.K / fq::kQKK;
    __m512 acc[NA];
    for (int r = 0; r < NA; ++r) acc[r] = _mm512_setzero_ps();
    __m128 minf[NA];
    for (int r = 0; r < NA; ++r) minf[r] = _mm_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m512i idx[4];
    for (int g = 0; g < 4; ++g)
        idx[g] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(2 * g)),
                                    _mm256_set1_epi32(2 * g + 1), 1);
    for (int64_t b = 0; b < nb; ++b) {
        const __m128i sm = unpack_k_scales(wb[b].scales);
        const __m512i scv = _mm512_cvtepu8_epi32(sm);         // lanes 0..7: scales
        const __m128i mv = _mm_cvtepu8_epi16(_mm_srli_si128(sm, 8)); // 8 mins as i16
        __m512i z[4], s[4];
        for (int g = 0; g < 4; ++g) {
            const __m256i y = _mm256_loadu_si256((const __m256i*)(wb[b].qs + 32 * g));
            z[g] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(y, m4)),
                                      _mm256_and_si256(_mm256_srli_epi16(y, 4), m4), 1);
            s[g] = _mm512_permutexvar_epi32(idx[g], scv);
        }
        const float d = h2f(wb[b].d), dmin = h2f(wb[b].dmin);
        for (int r = 0; r < NA; ++r) {
            const uint8_t* a = A.a[r] + b * fq::kQKK;
            __m512i isum = _mm512_setzero_si512();
            for (int g = 0; g < 4; ++g) {
                const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), z[g],
                                                      _mm512_loadu_si512(a + 64 * g));
                // |p| < 2^15: the 16-bit multiply-add by the scale is exact
                isum = _mm512_dpwssd_epi32(isum, p, s[g]);
            }
            const float ad = reinterpret_cast<const float*>(A.a[r] + L.d_off)[b];
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(ad * d), acc[r]);
            // mins: sum over sub-blocks of m_j * (bsums[2j] + bsums[2j+1]), exact in int32
            const int16_t* bs = reinterpret_cast<const int16_t*>(A.a[r] + L.s_off) + b * 16;
            const __m128i pairs = _mm_hadd_epi16(_mm_loadu_si128((const __m128i*)bs),
                                                 _mm_loadu_si128((const __m128i*)(bs + 8)));
            const __m128i mi = _mm_madd_epi16(pairs, mv); // 4 x i32
            minf[r] = _mm_fmadd_ps(_mm_cvtepi32_ps(mi), _mm_set1_ps(ad * dmin), minf[r]);
        }
    }
    for (int r = 0; r < NA; ++r) res[r] = _mm512_sub_ps(acc[r], _mm512_zextps128_ps512(minf[r]));
}

// res[r]: 16 partial sums whose total is dot(weight row, activation row r).
template <int NA>
void tile(GgmlType wt, const uint8_t* w, const Rows& A, const ActLayout& L, __m512* res) {
    switch (wt) {
    case GgmlType::f32:
    case GgmlType::f16: return tile_f32<NA>(wt, w, A, L.K, res);
    case GgmlType::q8_0: return tile_q8_0<NA>(w, A, L, res);
    case GgmlType::q4_0: return tile_q4_0<NA>(w, A, L, res);
    case GgmlType::q4_k: return tile_q4_k<NA>(w, A, L, res);
    default: return;
    }
}

} // namespace

void quantize_act(const ActLayout& L, const float* x, int64_t ldx, int64_t N, uint8_t* out) {
    const int64_t K = L.K;
    for (int64_t n = 0; n < N; ++n, x += ldx, out += L.row_bytes) {
        if (L.kind == ActKind::f32) {
            std::memcpy(out, x, size_t(K) * 4);
            continue;
        }
        auto* qs = reinterpret_cast<int8_t*>(out);
        if (L.kind == ActKind::q4_0) {
            const ActLayout N8 = act_layout(GgmlType::q8_0, K);
            thread_local std::vector<uint8_t> tmp;
            tmp.resize(size_t(N8.row_bytes));
            avx512::quantize_act(N8, x, ldx, 1, tmp.data());
            q4_0_from_q8_0(L, N8, tmp.data(), out);
        } else if (L.kind == ActKind::q8_0 || L.kind == ActKind::s8) {
            const bool s8 = L.kind == ActKind::s8;
            auto* dexp = reinterpret_cast<float*>(out + L.d_off);
            auto* sums = reinterpret_cast<int32_t*>(out + L.s_off);
            for (int64_t b = 0; b < K / fq::kQK; ++b) {
                const __m512 v0 = _mm512_loadu_ps(x + b * 32), v1 = _mm512_loadu_ps(x + b * 32 + 16);
                const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
                const float d = amax / 127.f, id = amax != 0 ? 127.f / amax : 0.f;
                const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, _mm512_set1_ps(id)));
                const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(id)));
                if (s8) { // signed as is, one scale and one sum per block
                    _mm_storeu_si128((__m128i*)(qs + b * 32), _mm512_cvtsepi32_epi8(q0));
                    _mm_storeu_si128((__m128i*)(qs + b * 32 + 16), _mm512_cvtsepi32_epi8(q1));
                    sums[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
                    dexp[b] = d;
                    continue;
                }
                const __m128i u = _mm_set1_epi8(char(0x80)); // stored + 128
                _mm_storeu_si128((__m128i*)(qs + b * 32), _mm_xor_si128(_mm512_cvtsepi32_epi8(q0), u));
                _mm_storeu_si128((__m128i*)(qs + b * 32 + 16), _mm_xor_si128(_mm512_cvtsepi32_epi8(q1), u));
                _mm256_storeu_si256((__m256i*)(sums + b * 8),
                                    _mm256_setr_epi32(-8 * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1)),
                                                      0, 0, 0, 0, 0, 0, 0));
                _mm256_storeu_ps(dexp + b * 8, _mm256_set1_ps(d));
            }
        } else {
            auto* dd = reinterpret_cast<float*>(out + L.d_off);
            auto* bs = reinterpret_cast<int16_t*>(out + L.s_off);
            for (int64_t b = 0; b < K / fq::kQKK; ++b) {
                const float* xb = x + b * fq::kQKK;
                __m512 mx = _mm512_setzero_ps();
                for (int j = 0; j < fq::kQKK; j += 16) mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(xb + j)));
                const float amax = _mm512_reduce_max_ps(mx);
                float max = 0;
                for (int j = 0; j < fq::kQKK; j += 16) {
                    const __mmask16 eq = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(xb + j)),
                                                            _mm512_set1_ps(amax), _CMP_EQ_OQ);
                    if (eq) {
                        max = xb[j + __builtin_ctz(eq)];
                        break;
                    }
                }
                const float iscale = amax != 0 ? -127.f / max : 0.f;
                const __m512i lim = _mm512_set1_epi32(127);
                for (int g = 0; g < 16; ++g) {
                    __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + 16 * g), _mm512_set1_ps(iscale)));
                    q = _mm512_min_epi32(q, lim);
                    _mm_storeu_si128((__m128i*)(qs + b * fq::kQKK + 16 * g), _mm512_cvtsepi32_epi8(q));
                    bs[b * 16 + g] = int16_t(_mm512_reduce_add_epi32(q));
                }
                dd[b] = amax != 0 ? 1.f / iscale : 0.f;
            }
        }
    }
}

void gemm(GgmlType wt, const uint8_t* W, int64_t w_stride, int64_t m0, int64_t m1,
          const ActLayout& L, const uint8_t* A, int64_t a_stride, int64_t N, float* Y,
          int64_t ldy) {
    if (wt == GgmlType::f16 && N >= 16) {
        // Prefill: each band of F16 rows widened to f32 once (exact) instead of once per tile of
        // activation rows: the same products without a vcvtph2ps per 16 FMAs.
        const int64_t K = L.K, rows = std::max<int64_t>(4, (256 << 10) / (K * 4));
        thread_local std::vector<float> wide;
        wide.resize(size_t(rows * K));
        for (int64_t mb = m0; mb < m1; mb += rows) {
            const int64_t me = std::min(m1, mb + rows);
            for (int64_t m = mb; m < me; ++m) {
                const auto* src = reinterpret_cast<const uint16_t*>(W + m * w_stride);
                float* dst = wide.data() + (m - mb) * K;
                for (int64_t k = 0; k < K; k += 16) {
                    const __mmask16 mk = K - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (K - k)) - 1);
                    _mm512_mask_storeu_ps(dst + k, mk, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, src + k)));
                }
            }
            avx512::gemm(GgmlType::f32, reinterpret_cast<const uint8_t*>(wide.data()), K * 4, 0, me - mb, L, A,
                 a_stride, N, Y + mb, ldy);
        }
        return;
    }
    // A band of weight rows that stays in L2 while every tile of activation rows passes by.
    const int64_t band = std::max<int64_t>(4, (256 << 10) / std::max<int64_t>(w_stride, 1));
    for (int64_t mb = m0; mb < m1; mb += band) {
        const int64_t me = std::min(m1, mb + band);
        for (int64_t n = 0; n < N; n += 4) {
            const int na = int(std::min<int64_t>(4, N - n));
            Rows R{};
            for (int r = 0; r < na; ++r) R.a[r] = A + (n + r) * a_stride;
            float out[16];
            int64_t m = mb;
            if (na == 4 && (wt == GgmlType::f32 || wt == GgmlType::f16)) {
                for (; m + 4 <= me; m += 4) {
                    tile4x4_f32(wt, W + m * w_stride, w_stride, R, L.K, out);
                    for (int i = 0; i < 4; ++i)
                        for (int r = 0; r < 4; ++r) Y[(n + r) * ldy + m + i] = out[4 * i + r];
                }
            }
            if (na == 1) { // GEMV: 16 rows' partial sums reduced together, stored as one vector
                __m512 v[16];
                for (; m + 16 <= me; m += 16) {
                    for (int i = 0; i < 16; ++i) tile<1>(wt, W + (m + i) * w_stride, R, L, &v[i]);
                    _mm512_storeu_ps(Y + n * ldy + m, reduce16(v));
                }
            }
            for (; m < me; ++m) {
                const uint8_t* w = W + m * w_stride;
                __m512 res[4];
                switch (na) {
                case 4: tile<4>(wt, w, R, L, res); break;
                case 3: tile<3>(wt, w, R, L, res); break;
                case 2: tile<2>(wt, w, R, L, res); break;
                default: tile<1>(wt, w, R, L, res); break;
                }
                for (int r = 0; r < na; ++r) Y[(n + r) * ldy + m] = _mm512_reduce_add_ps(res[r]);
            }
        }
    }
}

} // namespace forge::cpu::quant::avx512
