// AdamW update, AVX-512 (16 floats a step); see adamw_impl.h.
#include <immintrin.h>

#include "train/adamw_impl.h"

namespace forge::detail::avx512 {
namespace {
struct V {
    using Reg = __m512;
    static constexpr int64_t kWidth = 16;
    static Reg set1(float x) { return _mm512_set1_ps(x); }
    static Reg load(const float* p) { return _mm512_loadu_ps(p); }
    static void store(float* p, Reg x) { _mm512_storeu_ps(p, x); }
    static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
    static Reg sub(Reg a, Reg b) { return _mm512_sub_ps(a, b); }
    static Reg mul(Reg a, Reg b) { return _mm512_mul_ps(a, b); }
    static Reg div(Reg a, Reg b) { return _mm512_div_ps(a, b); }
    static Reg sqrt(Reg a) { return _mm512_sqrt_ps(a); }
};
} // namespace

void adamw_update(float* w, const float* g, float* m, float* v, int64_t n, float decay,
                  const AdamWScalars& s) {
    adamw_update_vec<V>(w, g, m, v, n, decay, s);
}
} // namespace forge::detail::avx512
