// Matrix products of ggml-typed weight rows with activation rows, for the inference engine
// (src/infer). Activations are quantized on the fly as llama.cpp does: to 32-value int8 blocks
// for Q8_0/Q4_0 weights, to 256-value int8 super-blocks with group sums for Q4_K; F32 and F16
// weights take f32 activations. Each instruction set (generic scalar reference, AVX2,
// AVX-512 + VNNI) implements the same functions; `active_isa()` of nn_kernels.h chooses. The
// scalar versions are the oracle: the integer part of every block dot product is exact in all
// of them, only the order of the float sums differs.
#pragma once

#include <cstdint>

#include <forge/quant/ggml_types.h>

namespace forge::cpu::quant {

using forge::quant::GgmlType;

/// How activation rows are laid out for weights of a given type.
enum class ActKind { f32, q8_0, q4_0, q8_k, s8 };

/// One activation row: for q8_0, u8 qs[K] (the int8 value + 128, so vpdpbusd takes it as its
/// unsigned operand against signed weights; the weights' sum times 128 comes off) | f32 dexp[K/32 * 8] (each block's scale repeated
/// 8 times, so two blocks' scales load as one 16-lane vector) | i32 nsum8[K/32 * 8] (each
/// block's -8 * sum(qs) in its first of 8 lanes, zeros in the rest: the Q4_0 offset correction,
/// loaded as the accumulator a vpdpbusd starts from); for q8_k, int8 qs[K] | f32 d[K/256] | i16 bsums[K/16]; for f32, float[K].
/// For q4_0 (the same int8 blocks, arranged for Q4_0 weights): qs in groups of 4 blocks, 128
/// bytes each, the first 16 values of the group's blocks then their last 16 (a partial last
/// group padded with zeros) | f32 d and i32 -8 * sum per block, in chunks of 16 blocks, block
/// 4 * g + l of a chunk at lane 4 * l + g (the order in which the kernel's lane reduction leaves
/// the 16 block sums), zeros past the last block.
/// For s8 (what x16-packed Q8_0 / Q4_0 weights read, packed_rows.h): int8 qs[K] (q8_0's
/// rounding, stored as is) | f32 d[K/32] | i32 sum[K/32] (each block's sum of qs).
/// Sections start at 64-byte multiples; row_bytes is a multiple of 64.
struct ActLayout {
    ActKind kind = ActKind::f32;
    int64_t K = 0;
    int64_t d_off = 0, s_off = 0, row_bytes = 0;
};

/// q4_0 layout: offset of block b's first 16 values in qs (its last 16 follow 64 bytes later),
/// and block b's lane in the d / offset sections.
inline int64_t q4_lo_offset(int64_t b) { return (b / 4) * 128 + (b % 4) * 16; }
inline int64_t q4_lane(int64_t b) {
    const int64_t c = b % 16;
    return (b / 16) * 16 + 4 * (c % 4) + c / 4;
}

/// The weight types the kernels read in place.
bool kernel_type(GgmlType t);
/// Throws InvalidArgument unless kernel_type(w) and K a multiple of w's block size.
ActLayout act_layout(GgmlType w, int64_t K);
/// The s8 layout (for x16-packed weights); K a multiple of 32.
ActLayout act_layout_s8(int64_t K);

/// Quantizes N rows of x (row stride ldx floats) into `out` (N * row_bytes, 64-byte aligned).
/// Ties round to even. For ActKind::f32 this copies.
void quantize_act(const ActLayout& L, const float* x, int64_t ldx, int64_t N, uint8_t* out);

/// Y[n * ldy + m] = dot(weight row m, activation row n) for m in [m0, m1), n in [0, N).
/// W: the weight matrix (rows of K values, `w_stride` bytes apart); A: N activation rows laid
/// out by L (`a_stride` bytes apart; for f32 activations any stride that is a multiple of 4).
void gemm(GgmlType wt, const uint8_t* W, int64_t w_stride, int64_t m0, int64_t m1,
          const ActLayout& L, const uint8_t* A, int64_t a_stride, int64_t N, float* Y,
          int64_t ldy);

// ---- per instruction set (the dispatch above picks one) ----
#define FORGE_QUANT_KERNELS                                                                        \
    void quantize_act(const ActLayout& L, const float* x, int64_t ldx, int64_t N, uint8_t* out);   \
    void gemm(GgmlType wt, const uint8_t* W, int64_t w_stride, int64_t m0, int64_t m1,             \
              const ActLayout& L, const uint8_t* A, int64_t a_stride, int64_t N, float* Y,         \
              int64_t ldy);
/// Writes natural int8 blocks (qs[K], d and sum per block) as a q4_0-layout row.
void arrange_q4_0(const ActLayout& L, const int8_t* qs, const float* d, const int32_t* sums,
                  uint8_t* out);

/// The same from a q8_0-layout row (N8 = act_layout(q8_0, K)).
void q4_0_from_q8_0(const ActLayout& L, const ActLayout& N8, const uint8_t* nat, uint8_t* out);

namespace ref {
FORGE_QUANT_KERNELS
/// One dot product (the oracle of every SIMD tile).
float dot(GgmlType wt, const uint8_t* w, const ActLayout& L, const uint8_t* a);
} // namespace ref
namespace avx2 {
FORGE_QUANT_KERNELS
}
namespace avx512 {
FORGE_QUANT_KERNELS
}
#undef FORGE_QUANT_KERNELS

/// Which of the above runs: avx512 needs AVX-512 F/BW/VL/DQ, VNNI, VBMI and GFNI (Ice Lake, Zen 4),
/// capped by nn::IsaCapScope.
enum class QuantIsa { generic, avx2, avx512 };
QuantIsa quant_isa();

} // namespace forge::cpu::quant
