// One query row of attention over cached keys and values (the engine's inner loop), portable and
// AVX-512. K, V: n rows of D floats; scores: n floats of scratch; out: D floats.
#pragma once

#include <cstdint>

namespace forge::infer {

/// Picks the AVX-512 version when the CPU (and nn::IsaCapScope) allows and D % 16 == 0.
void attend_row(const float* q, const float* K, const float* V, int64_t n, int64_t D, float scale,
                float* scores, float* out);

namespace avx512 {
void attend_row(const float* q, const float* K, const float* V, int64_t n, int64_t D, float scale,
                float* scores, float* out);
}

} // namespace forge::infer
