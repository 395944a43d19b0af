// Device code of the decode GEMVs over ggml's Q8_0 / Q4_0 blocks, in the layout a GGUF file
// stores them (decode_kernels.h, WeightFormat): one lane's unit of work, a "chunk" of a row (8
// bytes of quantized values and their block's f16 scale), its loads, and its dot product with the
// input, in f32 or in int8 (dp4a, the input rounded per 32 values as llama.cpp's MMVQ does).
// decode_kernels.cu's gemv_tiles streams the chunks and fuses the norm and epilogue around them.
// Not a standalone kernel, and no K-quants. Blocks are 34 / 18 bytes, so only 2-byte aligned:
// loads are 16-bit through L1, where a warp's 32 neighbouring chunks share their sectors.
#pragma once

#include <cstdint>

#include <cuda_fp16.h>

#include "backends/cuda/common.cuh"
#include "backends/cuda/decode_kernels.h"

namespace forge::cuda::decode::quant {

/// Values per chunk: bf16 16 bytes = 8 values; Q8_0 a quarter block (8 values); Q4_0 half a
/// block (8 bytes = 16 values: byte j holds value j in its low nibble, j + 16 in its high one).
constexpr int chunk_values(WeightFormat f) {
    return f == WeightFormat::q4_0 ? 16 : 8;
}
constexpr int block_bytes(WeightFormat f) {
    return f == WeightFormat::q8_0 ? 34 : 18;
}

__device__ __forceinline__ uint32_t ld_u16(const uint8_t* p) {
    return __ldg(reinterpret_cast<const unsigned short*>(p));
}

/// Chunk c of `row`: {quantized bytes 0..3, 4..7, f16 scale bits, 0}.
template <WeightFormat F>
__device__ __forceinline__ uint4 load_chunk(const void* w, int64_t row_bytes, int row, int c) {
    constexpr int per_block = 32 / chunk_values(F);
    const uint8_t* b =
        static_cast<const uint8_t*>(w) + row * row_bytes + (c / per_block) * block_bytes(F);
    const uint8_t* q = b + 2 + (c % per_block) * 8;
    return make_uint4(ld_u16(q) | ld_u16(q + 2) << 16, ld_u16(q + 4) | ld_u16(q + 6) << 16,
                      ld_u16(b), 0u);
}

__device__ __forceinline__ float f16_bits(uint32_t d) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(d)));
}

// Byte J of v as a float, less `off`: 2^23 + byte has the byte in its mantissa, so one byte
// permute and one subtraction replace an int-to-float conversion (a quarter-rate instruction).
template <int J> __device__ __forceinline__ float byte_as_float(uint32_t v, float off) {
    return __uint_as_float(__byte_perm(v, 0x4b000000u, 0x7440 + J)) - off;
}
// sum_j (byte j of v - off) * x[j], j = 0..3
__device__ __forceinline__ float dot4(uint32_t v, float off, float4 x, float s) {
    s = fmaf(byte_as_float<0>(v, off), x.x, s);
    s = fmaf(byte_as_float<1>(v, off), x.y, s);
    s = fmaf(byte_as_float<2>(v, off), x.z, s);
    return fmaf(byte_as_float<3>(v, off), x.w, s);
}

/// Chunk c's dot product with xs (K floats), the weights dequantized to f32.
template <WeightFormat F>
__device__ __forceinline__ float dot_f32(uint4 w, int c, const float* xs) {
    const float4* x4 = reinterpret_cast<const float4*>(xs);
    float s = 0.f;
    if constexpr (F == WeightFormat::q8_0) {
        constexpr float off = 8388608.f + 128.f; // int8 q ^ 0x80 = q + 128
        s = dot4(w.x ^ 0x80808080u, off, x4[2 * c], s);
        s = dot4(w.y ^ 0x80808080u, off, x4[2 * c + 1], s);
    } else {
        constexpr float off = 8388608.f + 8.f;    // values q - 8
        const int lo = (c / 2) * 8 + (c % 2) * 2; // float4 of value 32 b + 8 h
        s = dot4(w.x & 0x0f0f0f0fu, off, x4[lo], s);
        s = dot4(w.y & 0x0f0f0f0fu, off, x4[lo + 1], s);
        s = dot4((w.x >> 4) & 0x0f0f0f0fu, off, x4[lo + 4], s);
        s = dot4((w.y >> 4) & 0x0f0f0f0fu, off, x4[lo + 5], s);
    }
    return f16_bits(w.z) * s;
}

/// Chunk c's dot product with the int8 input xq (K values) and its per-32 scales xd.
template <WeightFormat F>
__device__ __forceinline__ float dot_i8(uint4 w, int c, const int8_t* xq, const float* xd) {
    int s;
    int blk;
    if constexpr (F == WeightFormat::q8_0) {
        const int2 x = *reinterpret_cast<const int2*>(xq + 8 * c);
        s = __dp4a(int(w.x), x.x, 0);
        s = __dp4a(int(w.y), x.y, s);
        blk = c / 4;
    } else {
        blk = c / 2;
        const int8_t* x = xq + 32 * blk + 8 * (c % 2);
        const int2 xl = *reinterpret_cast<const int2*>(x),
                   xh = *reinterpret_cast<const int2*>(x + 16);
        const uint32_t eight = 0x08080808u;
        s = __dp4a(int(__vsub4(w.x & 0x0f0f0f0fu, eight)), xl.x, 0);
        s = __dp4a(int(__vsub4(w.y & 0x0f0f0f0fu, eight)), xl.y, s);
        s = __dp4a(int(__vsub4((w.x >> 4) & 0x0f0f0f0fu, eight)), xh.x, s);
        s = __dp4a(int(__vsub4((w.y >> 4) & 0x0f0f0f0fu, eight)), xh.y, s);
    }
    return f16_bits(w.z) * xd[blk] * float(s);
}

/// xs (K floats, K % 32 == 0) -> xq (K int8) and xd (K / 32 scales): per 32 values d = amax / 127,
/// q = round-to-even(x * 127 / amax), the CPU engine's activation rounding (qkernels.cpp). A
/// warp per 32 values; ends with a block barrier.
__device__ __forceinline__ void quantize_input(const float* xs, int K, int8_t* xq, float* xd) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, n_warps = blockDim.x >> 5;
    for (int b = warp; b < K / 32; b += n_warps) {
        const float v = xs[32 * b + lane];
        const float amax = warp_max(fabsf(v));
        const float id = amax != 0.f ? 127.f / amax : 0.f;
        xq[32 * b + lane] = static_cast<int8_t>(__float2int_rn(v * id));
        if (lane == 0)
            xd[b] = amax / 127.f;
    }
    __syncthreads();
}

/// Value i of a row of blocks.
template <WeightFormat F> __device__ __forceinline__ float dequantize(const uint8_t* row, int i) {
    const uint8_t* b = row + (i / 32) * block_bytes(F);
    const float d = f16_bits(ld_u16(b));
    if constexpr (F == WeightFormat::q8_0)
        return d * float(static_cast<int8_t>(b[2 + i % 32]));
    else
        return d * float(int((b[2 + i % 16] >> (i % 32 >= 16 ? 4 : 0)) & 15) - 8);
}

} // namespace forge::cuda::decode::quant
