// The AdamW update of one f32 parameter on the CPU, per instruction set. Every lane runs the
// scalar formula of AdamW::step with the same IEEE operations in the same order (mul, add,
// sqrt, div; no FMA), so the vector kernels give the scalar loop's bits.
#pragma once

#include <cstdint>

namespace forge::detail {

struct AdamWScalars {
    float b1, b2, a1, a2; // a = 1 - beta
    float step_size;      // lr / (1 - beta1^t)
    float bc2_sqrt;       // sqrt(1 - beta2^t)
    float eps;
};

// w, m, v: n elements updated in place; g: the gradient; decay = 1 - lr * weight_decay (or 1).
void adamw_update_scalar(float* w, const float* g, float* m, float* v, int64_t n, float decay,
                         const AdamWScalars& s);
namespace avx2 {
void adamw_update(float* w, const float* g, float* m, float* v, int64_t n, float decay,
                  const AdamWScalars& s);
}
namespace avx512 {
void adamw_update(float* w, const float* g, float* m, float* v, int64_t n, float decay,
                  const AdamWScalars& s);
}

} // namespace forge::detail
