// The body of the vector AdamW kernels (adamw_kernel.h), written once over a vector type V
// that supplies load/store/set1 and the four IEEE operations. Included by adamw_avx2.cpp and
// adamw_avx512.cpp, each compiled for its instruction set.
#pragma once

#include "train/adamw_kernel.h"

namespace forge::detail {

template <class V>
void adamw_update_vec(float* w, const float* g, float* m, float* v, int64_t n, float decay,
                      const AdamWScalars& s) {
    using R = typename V::Reg;
    const R b1 = V::set1(s.b1), b2 = V::set1(s.b2), a1 = V::set1(s.a1), a2 = V::set1(s.a2);
    const R step = V::set1(s.step_size), bc2 = V::set1(s.bc2_sqrt), eps = V::set1(s.eps);
    const R dec = V::set1(decay);
    int64_t k = 0;
    for (; k + V::kWidth <= n; k += V::kWidth) {
        const R gk = V::load(g + k);
        const R mk = V::add(V::mul(V::load(m + k), b1), V::mul(gk, a1));
        const R vk = V::add(V::mul(V::load(v + k), b2), V::mul(V::mul(gk, gk), a2));
        V::store(m + k, mk);
        V::store(v + k, vk);
        const R denom = V::add(V::div(V::sqrt(vk), bc2), eps);
        V::store(w + k, V::sub(V::mul(V::load(w + k), dec), V::mul(step, V::div(mk, denom))));
    }
    adamw_update_scalar(w + k, g + k, m + k, v + k, n - k, decay, s);
}

} // namespace forge::detail
