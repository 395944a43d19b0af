// Flash attention, f32, AVX-512: the vector policy for attention_flash.h (16 lanes, 4x4 register
// block of the tile GEMMs) and the entry points of attention_flash.h and attention_short.h.
// Compiled with -mavx512f etc.; called only when the CPU has AVX-512F and D % 16 == 0.
// GCC 12 warns "__Y is used uninitialized" inside its own AVX-512 intrinsics (they pass
// _mm512_undefined_ps() as the unused merge source); the pragma must precede the header.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "backends/cpu/kernels/attention_flash.h"
#include "backends/cpu/kernels/attention_short.h"
#include "backends/cpu/kernels/attention_transpose_avx.h"

namespace forge::cpu::flash {
namespace {

struct Avx512 {
    using T = float;
    using V = __m512;
    // 4 rows x 4 vectors = 16 accumulators, 4 B vectors and a broadcast: 21 of 32 registers.
    static constexpr int W = 16, R = 4, C = 4;
    static void transpose8(float* dst, int64_t ldd, const float* src, int64_t lds, float f) {
        transpose8x8(dst, ldd, src, lds, f);
    }
    static V zero() { return _mm512_setzero_ps(); }
    static V load(const float* p) { return _mm512_loadu_ps(p); }
    static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
    static V set1(float x) { return _mm512_set1_ps(x); }
    static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
    static V add(V a, V b) { return _mm512_add_ps(a, b); }
    static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
    static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
    static V max(V a, V b) { return _mm512_max_ps(a, b); }
    static V neg_inf_to_zero(V x) {
        return _mm512_mask_mov_ps(
            x, _mm512_cmp_ps_mask(x, _mm512_set1_ps(-__builtin_huge_valf()), _CMP_EQ_OQ),
            _mm512_setzero_ps());
    }
    static float reduce_max(V v) { return _mm512_reduce_max_ps(v); }
    static float reduce_add(V v) {
        __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
        return _mm_cvtss_f32(q);
    }
    // e^x: x = n ln2 + r with |r| <= ln2/2, e^r by the Cephes expf polynomial (about 1 ulp),
    // times 2^n via scalef. Below -87.3 (incl. -inf, masked scores) the result is exactly 0.
    static V exp(V x) {
        const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.33654f), _CMP_GE_OQ);
        x = _mm512_min_ps(x, _mm512_set1_ps(88.37626f));
        const V n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        V r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
        r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
        V p = _mm512_set1_ps(1.9875691500e-4f);
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
        p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
        return _mm512_maskz_mov_ps(live, _mm512_scalef_ps(p, n));
    }
};

} // namespace

void forward_f32_avx512(const FwdArgs<float>& a) {
    flash_forward<Avx512>(a);
}
void backward_f32_avx512(const BwdArgs<float>& a) {
    flash_backward<Avx512>(a);
}

void short_forward_f32_avx512(const FwdArgs<float>& a) {
    short_forward<Avx512>(a);
}
void short_backward_f32_avx512(const BwdArgs<float>& a) {
    short_backward<Avx512>(a);
}

} // namespace forge::cpu::flash
