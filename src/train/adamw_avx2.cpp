// AdamW update, AVX2 (8 floats a step); see adamw_impl.h.
#include <immintrin.h>

#include "train/adamw_impl.h"

namespace forge::detail::avx2 {
namespace {
struct V {
    using Reg = __m256;
    static constexpr int64_t kWidth = 8;
    static Reg set1(float x) { return _mm256_set1_ps(x); }
    static Reg load(const float* p) { return _mm256_loadu_ps(p); }
    static void store(float* p, Reg x) { _mm256_storeu_ps(p, x); }
    static Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
    static Reg sub(Reg a, Reg b) { return _mm256_sub_ps(a, b); }
    static Reg mul(Reg a, Reg b) { return _mm256_mul_ps(a, b); }
    static Reg div(Reg a, Reg b) { return _mm256_div_ps(a, b); }
    static Reg sqrt(Reg a) { return _mm256_sqrt_ps(a); }
};
} // namespace

void adamw_update(float* w, const float* g, float* m, float* v, int64_t n, float decay,
                  const AdamWScalars& s) {
    adamw_update_vec<V>(w, g, m, v, n, decay, s);
}
} // namespace forge::detail::avx2
