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

/// nq consecutive query rows of one head (prefill): row i (at q + i * ldq) sees keys
/// [0, n0 + i), its output goes to out + i * ldo. The AVX-512 version reads each key tile and
/// value row once for the whole block; the fallback calls attend_row per row. scores: nq
/// rows of (n0 + nq rounded up to 16) floats of scratch.
void attend_rows(const float* q, int64_t ldq, int nq, const float* K, const float* V, int64_t n0,
                 int64_t D, float scale, float* scores, float* out, int64_t ldo);
constexpr int kQueryBlock = 8;

/// g = silu(g) * u over n values (Llama's gated MLP), AVX-512 when available.
void silu_mul(float* g, const float* u, int64_t n);

namespace avx512 {
void silu_mul(float* g, const float* u, int64_t n);
void attend_rows(const float* q, int64_t ldq, int nq, const float* K, const float* V, int64_t n0,
                 int64_t D, float scale, float* scores, float* out, int64_t ldo);
void attend_row(const float* q, const float* K, const float* V, int64_t n, int64_t D, float scale,
                float* scores, float* out);
}

} // namespace forge::infer
