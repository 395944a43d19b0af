// One query row of attention over cached keys and values (the engine's inner loop), portable and
// AVX-512. K is stored in tiles of 16 positions, each tile (D, 16): position p, dimension d at
// K[(p / 16) * D * 16 + d * 16 + p % 16], so 16 scores come from D broadcast-FMAs with no
// horizontal sums. V: n rows of D floats. scores: n rounded up to 16 floats of scratch; out: D.
#pragma once

#include <cstdint>

namespace forge::infer {

constexpr int64_t kKeyTile = 16;
/// Index of (position p, dimension d) in the tiled K layout.
inline int64_t key_index(int64_t p, int64_t d, int64_t D) {
    return (p / kKeyTile) * D * kKeyTile + d * kKeyTile + p % kKeyTile;
}

/// Picks the AVX-512 version when the CPU (and nn::IsaCapScope) allows and D % 16 == 0.
void attend_row(const float* q, const float* K, const float* V, int64_t n, int64_t D, float scale,
                float* scores, float* out);

/// g = silu(g) * u over n values (Llama's gated MLP), AVX-512 when available.
void silu_mul(float* g, const float* u, int64_t n);

namespace avx512 {
void silu_mul(float* g, const float* u, int64_t n);
void attend_row(const float* q, const float* K, const float* V, int64_t n, int64_t D, float scale,
                float* scores, float* out);
}

} // namespace forge::infer
