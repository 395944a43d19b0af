// The tensor types of ggml/GGUF files: block layouts, sizes, and the portable reference
// quantize/dequantize routines (the oracle the SIMD kernels in src/backends/cpu/quant are
// tested against). Numeric values of GgmlType are ggml's, as stored in GGUF files.
//
// Block layouts (little-endian, packed, as llama.cpp's ggml-common.h defines them):
//   Q8_0 (32 values, 34 B):  f16 d; int8 qs[32];                   x = d * q
//   Q4_0 (32 values, 18 B):  f16 d; u8 qs[16] (low nibbles: 0..15, high: 16..31); x = d * (q - 8)
//   Q4_1 (32 values, 20 B):  f16 d, m; u8 qs[16];                   x = d * q + m
//   Q4_K (256 values, 144 B): f16 d, dmin; u8 scales[12] (8 x 6-bit scale + 6-bit min);
//                             u8 qs[128];                          x = d*sc*q - dmin*m
//   Q5_K (256 values, 176 B): f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]
//   Q6_K (256 values, 210 B): u8 ql[128]; u8 qh[64]; int8 scales[16]; f16 d
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace forge::quant {

enum class GgmlType : uint32_t {
    f32 = 0,
    f16 = 1,
    q4_0 = 2,
    q4_1 = 3,
    q8_0 = 8,
    q4_k = 12,
    q5_k = 13,
    q6_k = 14,
    bf16 = 30,
};

struct GgmlTypeInfo {
    GgmlType type;
    std::string_view name;  ///< "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", ...
    int64_t block_size;     ///< values per block (1 for the float types)
    int64_t block_bytes;    ///< bytes per block
};

/// Info for a type Forge reads. Throws InvalidArgument naming the raw number for a type it
/// does not know (e.g. Q2_K = 10, IQ types).
const GgmlTypeInfo& type_info(GgmlType type);
/// True for the raw values listed in GgmlType.
bool is_known_type(uint32_t raw);
/// Parses "f32", "q8_0", "Q4_K", ... (case-insensitive). Throws InvalidArgument listing the
/// accepted names.
GgmlType parse_type(std::string_view name);

/// Bytes of a row of n values. Throws InvalidArgument if n is not a multiple of the block size
/// (or would overflow).
int64_t row_bytes(GgmlType type, int64_t n);

/// Reference (portable, scalar) conversions of one row of n values (n a multiple of the block
/// size). dequantize_row reads every type above; quantize_row writes f32, f16, bf16, q8_0,
/// q4_0, q4_1 and q4_k with llama.cpp's reference rounding (throws InvalidArgument for others).
void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n);
void quantize_row(GgmlType type, const float* src, void* dst, int64_t n);

} // namespace forge::quant
