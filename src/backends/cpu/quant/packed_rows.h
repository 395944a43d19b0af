// Weights repacked at load into groups of 16 interleaved rows ("x16"), the in-memory form the
// engine's GEMV/GEMM reads instead of the GGUF rows (the file is never changed). One load then
// holds the same position of 16 rows, so an FMA (floats) or a `vpdpbusd` (Q8_0 / Q4_0) against
// one broadcast activation value advances all 16 rows' dot products and the 16 lanes end as 16
// outputs: no cross-lane work at all. Q4_K keeps its GGUF layout.
//
// Layout, per group of 16 rows (rows 16 g .. 16 g + 15 occupy exactly the bytes they had), for
// each block b of 32 values in turn:
//   Q4_0: 4 x 64 bytes, vector i lane r (bytes 4r..4r+3) = row r's qs[4i .. 4i+3] (nibbles:
//         low = value 4i+j, high = value 16+4i+j, both + 8), then 16 f16 scales: 288 bytes.
//   Q8_0: 8 x 64 bytes, vector i lane r = row r's qs[4i .. 4i+3] + 128 (as u8), then 16 f16
//         scales: 544 bytes.
// F32 / F16: column-major within the group, for each k the 16 rows' values (64 / 32 bytes).
// Rows past the last whole group stay in GGUF layout at their own offsets.
//
// Activations for x16 Q8_0 / Q4_0 are ActKind::s8 rows (qkernels.h): signed int8 blocks with
// their sums, so the weights can be the unsigned operand of vpdpbusd and each block's offset
// (-8 or -128 times the activation sum) starts the accumulator. F32 / F16 take f32 rows.
#pragma once

#include <cstdint>

#include "backends/cpu/quant/qkernels.h"

namespace forge::cpu::quant {

constexpr int64_t kPackRows = 16;

/// F32, F16, Q8_0 and Q4_0 have an x16 form.
bool packable(GgmlType t);
/// The activation rows x16 weights of type t read: s8 for Q8_0 / Q4_0, f32 for F32 / F16.
ActLayout act_layout_x16(GgmlType t, int64_t K);
/// Rewrites M rows of K values (GGUF layout, rows contiguous) into the x16 layout; src and dst
/// must not overlap. dst gets M * row_bytes(t, K) bytes.
void pack_x16(GgmlType t, const uint8_t* src, int64_t M, int64_t K, uint8_t* dst);

/// As gemm(), over x16 weights of M rows (m0 a multiple of 16, or any row past the last whole
/// group); activations of act_layout_x16(wt, K).
void gemm_x16(GgmlType wt, const uint8_t* W, int64_t M, int64_t m0, int64_t m1, const ActLayout& L,
              const uint8_t* A, int64_t a_stride, int64_t N, float* Y, int64_t ldy);

namespace ref {
void gemm_x16(GgmlType wt, const uint8_t* W, int64_t M, int64_t m0, int64_t m1, const ActLayout& L,
              const uint8_t* A, int64_t a_stride, int64_t N, float* Y, int64_t ldy);
} // namespace ref
namespace avx512 {
void gemm_x16(GgmlType wt, const uint8_t* W, int64_t M, int64_t m0, int64_t m1, const ActLayout& L,
              const uint8_t* A, int64_t a_stride, int64_t N, float* Y, int64_t ldy);
} // namespace avx512

} // namespace forge::cpu::quant
