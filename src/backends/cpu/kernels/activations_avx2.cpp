// AVX2 instantiation of the vectorised activations (activations_impl.h).
#include "backends/cpu/kernels/activations_impl.h"
#include "backends/cpu/simd/vmath_avx2.h"

namespace forge::cpu {

namespace {
struct E256 : nn::F32x8 {
    static V div(V a, V b) { return _mm256_div_ps(a, b); }
    static V abs(V a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
    static V copysign(V mag, V s) {
        const V sign = _mm256_set1_ps(-0.0f);
        return _mm256_or_ps(_mm256_andnot_ps(sign, mag), _mm256_and_ps(sign, s));
    }
    static V select_lt(V a, float thr, V lo, V hi) {
        return _mm256_blendv_ps(hi, lo, _mm256_cmp_ps(a, _mm256_set1_ps(thr), _CMP_LT_OQ));
    }
};
} // namespace

bool unary_f32_avx2(UnaryOp op, const float* x, float* y, int64_t n) {
    return act::run<E256>(op, x, y, n);
}

void bias_act_f32_avx2(const float* x, const float* b, float* y, int64_t rows, int64_t cols,
                        bool gelu) {
    act::bias_act_rows<E256>(x, b, y, rows, cols, gelu);
}

void bias_act_backward_f32_avx2(const float* dy, const float* x, const float* b, float* dx,
                                 float* db, int64_t rows, int64_t cols, bool gelu) {
    act::bias_act_backward_rows<E256>(dy, x, b, dx, db, rows, cols, gelu);
}

} // namespace forge::cpu
