// AVX2 + FMA quantized matrix products (CPUs without AVX-512 VNNI): u8 x s8 products through
// vpmaddubsw (the sign of the weight moved onto the activation so the left operand is
// unsigned), pairs summed by vpmaddwd. Same tiling as the AVX-512 file.
#include <immintrin.h>

#include <algorithm>

#include "backends/cpu/quant/qkernels.h"
#include "quant/blocks.h"

namespace forge::cpu::quant::avx2 {

namespace fq = forge::quant;

namespace {

inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
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
void tile_f32(GgmlType wt, const uint8_t* w, const Rows& A, int64_t K, float* out) {
    __m256 acc[NA], acc2[NA];
    for (int r = 0; r < NA; ++r) acc[r] = acc2[r] = _mm256_setzero_ps();
    const float* wf = reinterpret_cast<const float*>(w);
    const uint16_t* wh = reinterpret_cast<const uint16_t*>(w);
    auto load_w = [&](int64_t k) {
        return wt == GgmlType::f32 ? _mm256_loadu_ps(wf + k)
                                   : _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(wh + k)));
    };
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        const __m256 w0 = load_w(k), w1 = load_w(k + 8);
        for (int r = 0; r < NA; ++r) {
            const float* a = reinterpret_cast<const float*>(A.a[r]);
            acc[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(a + k), acc[r]);
            acc2[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(a + k + 8), acc2[r]);
        }
    }
    for (int r = 0; r < NA; ++r) {
        const float* a = reinterpret_cast<const float*>(A.a[r]);
        float s = hsum_ps(_mm256_add_ps(acc[r], acc2[r]));
        for (int64_t j = k; j < K; ++j) s += (wt == GgmlType::f32 ? wf[j] : h2f(wh[j])) * a[j];
        out[r] = s;
    }
}

template <int NA>
void tile_q8_0(const uint8_t* w, const Rows& A, const ActLayout& L, float* out) {
    const auto* wb = reinterpret_cast<const fq::BlockQ8_0*>(w);
    const int64_t nb = L.K / fq::kQK;
    __m256 acc[NA];
    for (int r = 0; r < NA; ++r) acc[r] = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < nb; ++b) {
        const __m256i wy = _mm256_loadu_si256((const __m256i*)wb[b].qs);
        const __m256i aw = _mm256_abs_epi8(wy);
        const float dw = h2f(wb[b].d);
        for (int r = 0; r < NA; ++r) {
            const __m256i a = _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)(A.a[r] + b * fq::kQK)),
                                               _mm256_set1_epi8(char(0x80))); // back to int8
            const __m256i ay = _mm256_sign_epi8(a, wy);
            const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, ay), ones);
            const float da = reinterpret_cast<const float*>(A.a[r] + L.d_off)[b * 8];
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * da), acc[r]);
        }
    }
    for (int r = 0; r < NA; ++r) out[r] = hsum_ps(acc[r]);
}

template <int NA>
void tile_q4_0(const uint8_t* w, const Rows& A, const ActLayout& L, float* out) {
    const auto* wb = reinterpret_cast<const fq::BlockQ4_0*>(w);
    const int64_t nb = L.K / fq::kQK;
    __m256 acc[NA];
    for (int r = 0; r < NA; ++r) acc[r] = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    for (int64_t b = 0; b < nb; ++b) {
        const __m128i q = _mm_loadu_si128((const __m128i*)wb[b].qs);
        const __m256i z = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_and_si128(q, m4)),
                                                  _mm_and_si128(_mm_srli_epi16(q, 4), m4), 1);
        const float dw = h2f(wb[b].d);
        const int64_t lo = q4_lo_offset(b), lane = q4_lane(b);
        for (int r = 0; r < NA; ++r) {
            const __m256i a = _mm256_inserti128_si256(
                _mm256_castsi128_si256(_mm_loadu_si128((const __m128i*)(A.a[r] + lo))),
                _mm_loadu_si128((const __m128i*)(A.a[r] + lo + 64)), 1);
            const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(z, a), ones);
            // the block's -8 * sum(a) joins in lane 0: its integer sum stays exact
            const __m256i off = _mm256_setr_epi32(
                reinterpret_cast<const int32_t*>(A.a[r] + L.s_off)[lane], 0, 0, 0, 0, 0, 0, 0);
            const float s = dw * reinterpret_cast<const float*>(A.a[r] + L.d_off)[lane];
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(p, off)), _mm256_set1_ps(s), acc[r]);
        }
    }
    for (int r = 0; r < NA; ++r) out[r] = hsum_ps(acc[r]);
}

template <int NA>
void tile_q4_k(const uint8_t* w, const Rows& A, const ActLayout& L, float* out) {
    const auto* wb = reinterpret_cast<const fq::BlockQ4K*>(w);
    const int64_t nb = L.K / fq::kQKK;
    __m256 acc[NA];
    float mins[NA] = {};
    for (int r = 0; r < NA; ++r) acc[r] = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int64_t b = 0; b < nb; ++b) {
        alignas(32) int16_t mm[16];
        __m256i sc[8];
        for (int j = 0; j < 8; ++j) {
            uint8_t s, m;
            fq::k_scale_min(j, wb[b].scales, s, m);
            sc[j] = _mm256_set1_epi16(int16_t(s));
            mm[2 * j] = mm[2 * j + 1] = int16_t(m);
        }
        const __m256i mv = _mm256_load_si256((const __m256i*)mm);
        const float d = h2f(wb[b].d), dmin = h2f(wb[b].dmin);
        for (int r = 0; r < NA; ++r) {
            const uint8_t* a = A.a[r] + b * fq::kQKK;
            __m256i isum = _mm256_setzero_si256();
            for (int g = 0; g < 4; ++g) {
                const __m256i y = _mm256_loadu_si256((const __m256i*)(wb[b].qs + 32 * g));
                const __m256i lo = _mm256_and_si256(y, m4);
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(y, 4), m4);
                const __m256i plo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i*)(a + 64 * g)));
                const __m256i phi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i*)(a + 64 * g + 32)));
                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(plo, sc[2 * g]));
                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(phi, sc[2 * g + 1]));
            }
            const float ad = reinterpret_cast<const float*>(A.a[r] + L.d_off)[b];
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(ad * d), acc[r]);
            const __m256i bs = _mm256_loadu_si256(
                (const __m256i*)(reinterpret_cast<const int16_t*>(A.a[r] + L.s_off) + b * 16));
            mins[r] += ad * dmin * float(hsum_epi32(_mm256_madd_epi16(bs, mv)));
        }
    }
    for (int r = 0; r < NA; ++r) out[r] = hsum_ps(acc[r]) - mins[r];
}

template <int NA>
void tile(GgmlType wt, const uint8_t* w, const Rows& A, const ActLayout& L, float* out) {
    switch (wt) {
    case GgmlType::f32:
    case GgmlType::f16: return tile_f32<NA>(wt, w, A, L.K, out);
    case GgmlType::q8_0: return tile_q8_0<NA>(w, A, L, out);
    case GgmlType::q4_0: return tile_q4_0<NA>(w, A, L, out);
    case GgmlType::q4_k: return tile_q4_k<NA>(w, A, L, out);
    default: return;
    }
}

} // namespace

// Activation quantization is O(K) per row against O(K * M) for the product: the scalar
// reference (same rounding) serves here.
void quantize_act(const ActLayout& L, const float* x, int64_t ldx, int64_t N, uint8_t* out) {
    ref::quantize_act(L, x, ldx, N, out);
}

void gemm(GgmlType wt, const uint8_t* W, int64_t w_stride, int64_t m0, int64_t m1,
          const ActLayout& L, const uint8_t* A, int64_t a_stride, int64_t N, float* Y,
          int64_t ldy) {
    const int64_t band = std::max<int64_t>(4, (256 << 10) / std::max<int64_t>(w_stride, 1));
    for (int64_t mb = m0; mb < m1; mb += band) {
        const int64_t me = std::min(m1, mb + band);
        for (int64_t n = 0; n < N; n += 4) {
            const int na = int(std::min<int64_t>(4, N - n));
            Rows R{};
            for (int r = 0; r < na; ++r) R.a[r] = A + (n + r) * a_stride;
            float out[4];
            for (int64_t m = mb; m < me; ++m) {
                const uint8_t* w = W + m * w_stride;
                switch (na) {
                case 4: tile<4>(wt, w, R, L, out); break;
                case 3: tile<3>(wt, w, R, L, out); break;
                case 2: tile<2>(wt, w, R, L, out); break;
                default: tile<1>(wt, w, R, L, out); break;
                }
                for (int r = 0; r < na; ++r) Y[(n + r) * ldy + m] = out[r];
            }
        }
    }
}

} // namespace forge::cpu::quant::avx2
