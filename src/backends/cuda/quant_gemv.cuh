// Device code of the decode GEMVs over ggml's Q8_0 / Q4_0 weights (decode_kernels.h,
// WeightFormat): one lane's unit of work, a "chunk" of a row, its loads, and its dot product with
// the input, in f32 or in int8 (dp4a, the input rounded per 32 values as llama.cpp's MMVQ does).
// decode_kernels.cu's gemv_tiles streams the chunks and fuses the norm and epilogue around them.
// Not a standalone kernel, and no K-quants.
//   File blocks (q8_0, q4_0): 34 / 18 bytes, so only 2-byte aligned; a chunk is 8 bytes of
//   values (8 of Q8_0, 16 of Q4_0) loaded 16 bits at a time through L1, plus its block's scale.
//   Split (q8_0_split, q4_0_split): a chunk is one 16-byte load of values (16 of Q8_0, 32 of
//   Q4_0: a whole block) and one 2-byte scale, neighbouring lanes' scales adjacent.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_fp16.h>

#include "backends/cuda/common.cuh"
#include "backends/cuda/decode_kernels.h"

namespace forge::cuda::decode::quant {

constexpr bool is_split(WeightFormat f) {
    return f == WeightFormat::q8_0_split || f == WeightFormat::q4_0_split;
}
constexpr bool is_q8(WeightFormat f) {
    return f == WeightFormat::q8_0 || f == WeightFormat::q8_0_split;
}
/// Values per chunk (bf16: 16 bytes = 8 values).
constexpr int chunk_values(WeightFormat f) {
    switch (f) {
    case WeightFormat::bf16:
    case WeightFormat::q8_0:
        return 8;
    case WeightFormat::q4_0:
    case WeightFormat::q8_0_split:
        return 16;
    case WeightFormat::q4_0_split:
        return 32;
    }
    return 8;
}
constexpr int block_bytes(WeightFormat f) {
    return is_q8(f) ? 34 : 18;
}
/// Split form: bytes of quantized values per row of k.
__host__ __device__ constexpr int64_t split_row_bytes(WeightFormat f, int64_t k) {
    return is_q8(f) ? k : k / 2;
}

struct SplitChunk {
    uint4 q;    ///< 16 bytes of values
    uint32_t d; ///< f16 scale bits
};
/// A chunk in registers: file blocks {values 0..3, 4..7, f16 scale bits, 0}; split SplitChunk.
template <WeightFormat F> using Chunk = std::conditional_t<is_split(F), SplitChunk, uint4>;

__device__ __forceinline__ uint32_t ld_u16(const uint8_t* p) {
    return __ldg(reinterpret_cast<const unsigned short*>(p));
}
// 16 bytes of weights, streamed once per token and larger than L2 in total: not kept in L1
// (the bf16 GEMV's loads too, decode_kernels.cu).
__device__ __forceinline__ uint4 load_stream(const void* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

/// Chunk c of `row` of an (n, k) matrix.
template <WeightFormat F>
__device__ __forceinline__ Chunk<F> load_chunk(const void* w, int n, int k, int row, int c) {
    const auto* base = static_cast<const uint8_t*>(w);
    if constexpr (is_split(F)) {
        const int64_t qrow = split_row_bytes(F, k);
        const int blk = is_q8(F) ? c / 2 : c;
        return {load_stream(base + row * qrow + 16 * int64_t(c)),
                ld_u16(base + n * qrow + (int64_t(row) * (k / 32) + blk) * 2)};
    } else {
        constexpr int per_block = 32 / chunk_values(F);
        const int64_t row_bytes = int64_t(k / 32) * block_bytes(F);
        const uint8_t* b = base + row * row_bytes + (c / per_block) * block_bytes(F);
        const uint8_t* q = b + 2 + (c % per_block) * 8;
        return make_uint4(ld_u16(q) | ld_u16(q + 2) << 16, ld_u16(q + 4) | ld_u16(q + 6) << 16,
                          ld_u16(b), 0u);
    }
}

__device__ __forceinline__ float f16_bits(uint32_t d) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(d)));
}

// Byte J of v as a float, less `off`: 2^23 + byte has the byte in its mantissa, so one byte
// permute and one subtraction replace an int-to-float conversion (a quarter-rate instruction).
template <int J> __device__ __forceinline__ float byte_as_float(uint32_t v, float off) {
    return __uint_as_float(__byte_perm(v, 0x4b000000u, 0x7440 + J)) - off;
}
// s + sum_j (byte j of v - off) * x[j], j = 0..3
__device__ __forceinline__ float dot4(uint32_t v, float off, float4 x, float s) {
    s = fmaf(byte_as_float<0>(v, off), x.x, s);
    s = fmaf(byte_as_float<1>(v, off), x.y, s);
    s = fmaf(byte_as_float<2>(v, off), x.z, s);
    return fmaf(byte_as_float<3>(v, off), x.w, s);
}
constexpr float kOffQ8 = 8388608.f + 128.f; // int8 q ^ 0x80 = q + 128
constexpr float kOffQ4 = 8388608.f + 8.f;   // values q - 8
constexpr uint32_t kLo = 0x0f0f0f0fu;

/// Chunk c's dot product with xs (K floats), the weights dequantized to f32.
template <WeightFormat F>
__device__ __forceinline__ float dot_f32(const Chunk<F>& w, int c, const float* xs) {
    const float4* x4 = reinterpret_cast<const float4*>(xs);
    float s = 0.f;
    if constexpr (F == WeightFormat::q8_0) { // values 8c..8c+7
        s = dot4(w.x ^ 0x80808080u, kOffQ8, x4[2 * c], s);
        s = dot4(w.y ^ 0x80808080u, kOffQ8, x4[2 * c + 1], s);
        return f16_bits(w.z) * s;
    } else if constexpr (F == WeightFormat::q4_0) { // 32 b + 8 h + (0..7 | 16..23)
        const int lo = (c / 2) * 8 + (c % 2) * 2;   // float4 of value 32 b + 8 h
        s = dot4(w.x & kLo, kOffQ4, x4[lo], s);
        s = dot4(w.y & kLo, kOffQ4, x4[lo + 1], s);
        s = dot4((w.x >> 4) & kLo, kOffQ4, x4[lo + 4], s);
        s = dot4((w.y >> 4) & kLo, kOffQ4, x4[lo + 5], s);
        return f16_bits(w.z) * s;
    } else if constexpr (F == WeightFormat::q8_0_split) { // values 16c..16c+15
        s = dot4(w.q.x ^ 0x80808080u, kOffQ8, x4[4 * c], s);
        s = dot4(w.q.y ^ 0x80808080u, kOffQ8, x4[4 * c + 1], s);
        s = dot4(w.q.z ^ 0x80808080u, kOffQ8, x4[4 * c + 2], s);
        s = dot4(w.q.w ^ 0x80808080u, kOffQ8, x4[4 * c + 3], s);
        return f16_bits(w.d) * s;
    } else { // block c: values 32c + (0..15 low nibbles | 16..31 high)
        const float4* x = x4 + 8 * c;
        s = dot4(w.q.x & kLo, kOffQ4, x[0], s);
        s = dot4(w.q.y & kLo, kOffQ4, x[1], s);
        s = dot4(w.q.z & kLo, kOffQ4, x[2], s);
        s = dot4(w.q.w & kLo, kOffQ4, x[3], s);
        s = dot4((w.q.x >> 4) & kLo, kOffQ4, x[4], s);
        s = dot4((w.q.y >> 4) & kLo, kOffQ4, x[5], s);
        s = dot4((w.q.z >> 4) & kLo, kOffQ4, x[6], s);
        s = dot4((w.q.w >> 4) & kLo, kOffQ4, x[7], s);
        return f16_bits(w.d) * s;
    }
}

// 4-bit values of v (low or high nibbles) less 8, as 4 signed bytes.
__device__ __forceinline__ int q4_lo(uint32_t v) {
    return int(__vsub4(v & kLo, 0x08080808u));
}
__device__ __forceinline__ int q4_hi(uint32_t v) {
    return int(__vsub4((v >> 4) & kLo, 0x08080808u));
}

/// Chunk c's dot product with the int8 input xq (K values) and its per-32 scales xd.
template <WeightFormat F>
__device__ __forceinline__ float dot_i8(const Chunk<F>& w, int c, const int8_t* xq,
                                        const float* xd) {
    if constexpr (F == WeightFormat::q8_0) {
        const int2 x = *reinterpret_cast<const int2*>(xq + 8 * c);
        const int s = __dp4a(int(w.y), x.y, __dp4a(int(w.x), x.x, 0));
        return f16_bits(w.z) * xd[c / 4] * float(s);
    } else if constexpr (F == WeightFormat::q4_0) {
        const int8_t* x = xq + 32 * (c / 2) + 8 * (c % 2);
        const int2 xl = *reinterpret_cast<const int2*>(x);
        const int2 xh = *reinterpret_cast<const int2*>(x + 16);
        int s = __dp4a(q4_lo(w.x), xl.x, 0);
        s = __dp4a(q4_lo(w.y), xl.y, s);
        s = __dp4a(q4_hi(w.x), xh.x, s);
        s = __dp4a(q4_hi(w.y), xh.y, s);
        return f16_bits(w.z) * xd[c / 2] * float(s);
    } else if constexpr (F == WeightFormat::q8_0_split) {
        const int4 x = *reinterpret_cast<const int4*>(xq + 16 * c);
        int s = __dp4a(int(w.q.x), x.x, 0);
        s = __dp4a(int(w.q.y), x.y, s);
        s = __dp4a(int(w.q.z), x.z, s);
        s = __dp4a(int(w.q.w), x.w, s);
        return f16_bits(w.d) * xd[c / 2] * float(s);
    } else {
        const int4 xl = *reinterpret_cast<const int4*>(xq + 32 * c);
        const int4 xh = *reinterpret_cast<const int4*>(xq + 32 * c + 16);
        int s = __dp4a(q4_lo(w.q.x), xl.x, 0);
        s = __dp4a(q4_lo(w.q.y), xl.y, s);
        s = __dp4a(q4_lo(w.q.z), xl.z, s);
        s = __dp4a(q4_lo(w.q.w), xl.w, s);
        s = __dp4a(q4_hi(w.q.x), xh.x, s);
        s = __dp4a(q4_hi(w.q.y), xh.y, s);
        s = __dp4a(q4_hi(w.q.z), xh.z, s);
        s = __dp4a(q4_hi(w.q.w), xh.w, s);
        return f16_bits(w.d) * xd[c] * float(s);
    }
}

// Rounds 8 floats to int8 with scale factor id, packed 4 to an int.
__device__ __forceinline__ int pack4(float a, float b, float c, float d, float id) {
    const uint32_t q0 = uint8_t(__float2int_rn(a * id)), q1 = uint8_t(__float2int_rn(b * id));
    const uint32_t q2 = uint8_t(__float2int_rn(c * id)), q3 = uint8_t(__float2int_rn(d * id));
    return int(q0 | q1 << 8 | q2 << 16 | q3 << 24);
}

/// xs (K floats, K % 32 == 0) -> xq (K int8) and xd (K / 32 scales): per 32 values d = amax / 127,
/// q = round-to-even(x * (127 / amax)), the CPU engine's activation rounding (qkernels.cpp). Four
/// lanes per 32 values (8 each), so a 256-thread block rounds 2048 values per pass; ends with a
/// block barrier.
__device__ __forceinline__ void quantize_input(const float* xs, int K, int8_t* xq, float* xd) {
    const float4* x4 = reinterpret_cast<const float4*>(xs);
    const int part = threadIdx.x & 3;
    const unsigned group = 0xfu << (threadIdx.x & 28); // the 4 lanes of one 32 (they loop alike)
    for (int b = threadIdx.x >> 2; b < K / 32; b += blockDim.x >> 2) {
        const float4 u = x4[8 * b + 2 * part], v = x4[8 * b + 2 * part + 1];
        float amax = fmaxf(fmaxf(fmaxf(fabsf(u.x), fabsf(u.y)), fmaxf(fabsf(u.z), fabsf(u.w))),
                           fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w))));
        amax = fmaxf(amax, __shfl_xor_sync(group, amax, 1));
        amax = fmaxf(amax, __shfl_xor_sync(group, amax, 2));
        const float id = amax != 0.f ? 127.f / amax : 0.f;
        *reinterpret_cast<int2*>(xq + 32 * b + 8 * part) =
            make_int2(pack4(u.x, u.y, u.z, u.w, id), pack4(v.x, v.y, v.z, v.w, id));
        if (part == 0)
            xd[b] = amax / 127.f;
    }
    __syncthreads();
}

/// Value i of row `row` of an (n, k) matrix.
template <WeightFormat F>
__device__ __forceinline__ float dequantize(const void* w, int n, int k, int64_t row, int i) {
    const auto* base = static_cast<const uint8_t*>(w);
    float d;
    int q;
    if constexpr (is_split(F)) {
        const int64_t qrow = split_row_bytes(F, k);
        d = f16_bits(ld_u16(base + n * qrow + (row * (k / 32) + i / 32) * 2));
        if constexpr (is_q8(F))
            q = static_cast<int8_t>(base[row * qrow + i]);
        else
            q = int((base[row * qrow + (i / 32) * 16 + i % 16] >> (i % 32 >= 16 ? 4 : 0)) & 15) - 8;
    } else {
        const uint8_t* b = base + row * (k / 32) * block_bytes(F) + (i / 32) * block_bytes(F);
        d = f16_bits(ld_u16(b));
        if constexpr (is_q8(F))
            q = static_cast<int8_t>(b[2 + i % 32]);
        else
            q = int((b[2 + i % 16] >> (i % 32 >= 16 ? 4 : 0)) & 15) - 8;
    }
    return d * float(q);
}

} // namespace forge::cuda::decode::quant
