// The packed block structs of the ggml quantized types (bit-compatible with ggml-common.h) and
// the small helpers shared by the reference routines (ggml_types.cpp) and the CPU kernels
// (src/backends/cpu/quant). Internal: not part of the public API.
#pragma once

#include <cmath>
#include <cstdint>

#include <forge/core/dtype.h>

namespace forge::quant {

constexpr int kQK = 32;   ///< values per block of Q8_0 / Q4_0 / Q4_1
constexpr int kQKK = 256; ///< values per super-block of the K-quants
constexpr int kKScaleBytes = 12;

#pragma pack(push, 1)
struct BlockQ8_0 {
    uint16_t d; // f16
    int8_t qs[kQK];
};
struct BlockQ4_0 {
    uint16_t d; // f16
    uint8_t qs[kQK / 2];
};
struct BlockQ4_1 {
    uint16_t d, m; // f16
    uint8_t qs[kQK / 2];
};
struct BlockQ4K {
    uint16_t d, dmin; // f16
    uint8_t scales[kKScaleBytes];
    uint8_t qs[kQKK / 2];
};
struct BlockQ5K {
    uint16_t d, dmin; // f16
    uint8_t scales[kKScaleBytes];
    uint8_t qh[kQKK / 8];
    uint8_t qs[kQKK / 2];
};
struct BlockQ6K {
    uint8_t ql[kQKK / 2];
    uint8_t qh[kQKK / 4];
    int8_t scales[kQKK / 16];
    uint16_t d; // f16
};
/// Activations for the K-quant dot products (never stored in files): f32 scale, 256 int8 and
/// the sums of each group of 16 (to fold the K-quant minimums in without touching qs again).
struct BlockQ8K {
    float d;
    int8_t qs[kQKK];
    int16_t bsums[kQKK / 16];
};
#pragma pack(pop)

static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ4K) == 144 && sizeof(BlockQ5K) == 176 && sizeof(BlockQ6K) == 210);
static_assert(sizeof(BlockQ8K) == 292);

/// Round to nearest, ties to even (what ggml's nearest_int does for |x| < 2^22).
inline int nearest_int(float x) { return int(std::lrintf(x)); }

/// The j-th (0..7) 6-bit scale and min of a Q4_K/Q5_K super-block's 12 packed scale bytes:
/// bytes 0..3 hold scales 0..3 (low 6 bits), 4..7 mins 0..3; bytes 8..11 hold the low nibbles
/// of scales 4..7 (low) and mins 4..7 (high), whose top 2 bits sit in bits 6..7 of bytes 0..7.
inline void k_scale_min(int j, const uint8_t* q, uint8_t& sc, uint8_t& m) {
    if (j < 4) {
        sc = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        sc = uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        m = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/// Reference activation quantizer for the K-quant dot products: amax-signed scale -127/max,
/// as ggml's quantize_row_q8_K_ref. n a multiple of 256.
void quantize_row_q8_k_ref(const float* x, BlockQ8K* y, int64_t n);

} // namespace forge::quant
