// AVX-512 instantiation of the vectorised activations (activations_impl.h).
#include "backends/cpu/kernels/activations_impl.h"
#include "backends/cpu/simd/vmath_avx512.h"

namespace forge::cpu {

namespace {
struct E512 : nn::F32x16 {
    static V div(V a, V b) { return _mm512_div_ps(a, b); }
    static V abs(V a) { return _mm512_abs_ps(a); }
    /// |mag| with the sign of s
    static V copysign(V mag, V s) {
        const __m512i sign = _mm512_set1_epi32(int(0x80000000u));
        return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(
            _mm512_castps_si512(mag), _mm512_castps_si512(s), sign, 0xd8));
    }
    /// a < thr ? lo : hi
    static V select_lt(V a, float thr, V lo, V hi) {
        return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, _mm512_set1_ps(thr), _CMP_LT_OQ), hi, lo);
    }
};
} // namespace

bool unary_f32_avx512(UnaryOp op, const float* x, float* y, int64_t n) {
    return act::run<E512>(op, x, y, n);
}

void bias_act_f32_avx512(const float* x, const float* b, float* y, int64_t rows, int64_t cols,
                        bool gelu) {
    act::bias_act_rows<E512>(x, b, y, rows, cols, gelu);
}

void bias_act_backward_f32_avx512(const float* dy, const float* x, const float* b, float* dx,
                                 float* db, int64_t rows, int64_t cols, bool gelu) {
    act::bias_act_backward_rows<E512>(dy, x, b, dx, db, rows, cols, gelu);
}

} // namespace forge::cpu
