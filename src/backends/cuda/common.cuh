// Device-side plumbing shared by the CUDA kernels: element types of the dtypes, conversions
// through double (as the CPU backend converts), strided indexing, block reductions and launch
// sizes. Host-only helpers (context, errors) are in cuda_backend.h.
#pragma once

#include <array>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "backends/cuda/cuda_backend.h"

namespace forge::cuda {

/// The stream of t's device (made current on this thread).
inline cudaStream_t stream_of(const Tensor& t) { return cudaStream_t(context(t).stream); }

// ---------------------------------------------------------------- dtypes

/// Calls f.template operator()<T>() with T the device type of dtype.
template <typename F> decltype(auto) visit_dtype(DType t, F&& f) {
    switch (t) {
    case DType::f32: return f.template operator()<float>();
    case DType::f64: return f.template operator()<double>();
    case DType::f16: return f.template operator()<__half>();
    case DType::bf16: return f.template operator()<__nv_bfloat16>();
    case DType::i32: return f.template operator()<int32_t>();
    case DType::i64: return f.template operator()<int64_t>();
    case DType::u8: return f.template operator()<uint8_t>();
    }
    FORGE_ASSERT(false);
}
/// f32 / f64 only: the compute dtypes of the float kernels (half types arrive widened).
template <typename F> decltype(auto) visit_float(DType t, F&& f) {
    if (t == DType::f32) return f.template operator()<float>();
    FORGE_ASSERT(t == DType::f64);
    return f.template operator()<double>();
}
/// f32, bf16, f16: the storage types of kernels that compute in f32 and load or store halves.
template <typename F> decltype(auto) visit_f32_half(DType t, F&& f) {
    switch (t) {
    case DType::f32: return f.template operator()<float>();
    case DType::bf16: return f.template operator()<__nv_bfloat16>();
    case DType::f16: return f.template operator()<__half>();
    default: FORGE_ASSERT(false);
    }
}
inline bool is_f32_or_half(DType t) {
    return t == DType::f32 || t == DType::bf16 || t == DType::f16;
}
/// f32, f64, i32, i64: the compute dtypes of binary/where/reduce.
template <typename F> decltype(auto) visit_numeric(DType t, F&& f) {
    switch (t) {
    case DType::f32: return f.template operator()<float>();
    case DType::f64: return f.template operator()<double>();
    case DType::i32: return f.template operator()<int32_t>();
    case DType::i64: return f.template operator()<int64_t>();
    default: FORGE_ASSERT(false);
    }
}

// Conversions go through double, like cpu::load_as_double / store_from_double; half types
// round from float (round to nearest even), matching forge::f32_to_f16 / f32_to_bf16.
template <typename T> __device__ __forceinline__ double to_double(T v) {
    if constexpr (std::is_same_v<T, __half>) return double(__half2float(v));
    else if constexpr (std::is_same_v<T, __nv_bfloat16>) return double(__bfloat162float(v));
    else return double(v);
}
template <typename T> __device__ __forceinline__ T from_double(double v) {
    if constexpr (std::is_same_v<T, __half>) return __float2half_rn(float(v));
    else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(float(v));
    else return T(v);
}

/// A half type (__half or __nv_bfloat16) to float, and float to it (round to nearest even):
/// the float-only forms of the two above, for kernels whose math is f32. float passes through,
/// so kernels over "f32 or a half type" storage use them as they are.
template <typename H> __device__ __forceinline__ float half_to_float(H v) {
    if constexpr (std::is_same_v<H, float>) return v;
    else if constexpr (std::is_same_v<H, __half>) return __half2float(v);
    else return __bfloat162float(v);
}
template <typename H> __device__ __forceinline__ H float_to_half(float v) {
    if constexpr (std::is_same_v<H, float>) return v;
    else if constexpr (std::is_same_v<H, __half>) return __float2half_rn(v);
    else return __float2bfloat16_rn(v);
}

/// Four consecutive elements of T (float, __half or __nv_bfloat16) as floats, and back (rounded
/// to nearest even): one 16-byte access for float, 8 bytes for the half types. p is aligned to
/// 4 elements.
template <typename T> __device__ __forceinline__ float4 load4(const T* p) {
    if constexpr (std::is_same_v<T, float>) {
        return *reinterpret_cast<const float4*>(p);
    } else {
        struct alignas(8) Pack { T h[4]; } pk = *reinterpret_cast<const Pack*>(p);
        return make_float4(half_to_float(pk.h[0]), half_to_float(pk.h[1]),
                           half_to_float(pk.h[2]), half_to_float(pk.h[3]));
    }
}
template <typename T> __device__ __forceinline__ void store4(T* p, float4 v) {
    if constexpr (std::is_same_v<T, float>) {
        *reinterpret_cast<float4*>(p) = v;
    } else {
        struct alignas(8) Pack { T h[4]; } pk;
        pk.h[0] = float_to_half<T>(v.x), pk.h[1] = float_to_half<T>(v.y);
        pk.h[2] = float_to_half<T>(v.z), pk.h[3] = float_to_half<T>(v.w);
        *reinterpret_cast<Pack*>(p) = pk;
    }
}

// ---------------------------------------------------------------- strided indexing

constexpr int kMaxDims = 8;

/// N operands walked over one shape, each with its own strides (elements). Dims are coalesced
/// on the host (size-1 dims dropped, contiguous runs merged), so rank <= kMaxDims covers every
/// layout the ops produce.
template <int N> struct StridedIndex {
    int rank = 0;
    int64_t shape[kMaxDims];
    int64_t strides[N][kMaxDims];

    /// Offsets (elements) of linear element i (row-major over shape) in each operand.
    __device__ __forceinline__ void offsets(int64_t i, int64_t (&off)[N]) const {
#pragma unroll
        for (int k = 0; k < N; ++k)
            off[k] = 0;
        for (int d = rank - 1; d >= 0; --d) {
            const int64_t c = i % shape[d];
            i /= shape[d];
#pragma unroll
            for (int k = 0; k < N; ++k)
                off[k] += c * strides[k][d];
        }
    }
};

/// Builds the index for `shape` and the operands' strides (throws beyond kMaxDims).
template <int N>
StridedIndex<N> make_index(const Shape& shape, const std::array<const Shape*, N>& strides) {
    // Drop size-1 dims, then merge dim d into d+1 wherever every operand allows it.
    std::vector<int64_t> sh;
    std::vector<std::array<int64_t, N>> st;
    for (size_t d = 0; d < shape.size(); ++d) {
        if (shape[d] == 1) continue;
        std::array<int64_t, N> s{};
        for (int k = 0; k < N; ++k)
            s[size_t(k)] = (*strides[size_t(k)])[d];
        if (!sh.empty()) {
            bool merge = true;
            for (int k = 0; k < N; ++k)
                merge = merge && st.back()[size_t(k)] == s[size_t(k)] * shape[d];
            if (merge) {
                sh.back() *= shape[d];
                st.back() = s;
                continue;
            }
        }
        sh.push_back(shape[d]);
        st.push_back(s);
    }
    FORGE_CHECK(sh.size() <= size_t(kMaxDims), "[cuda] a strided tensor of shape ",
                shape_str(shape), " has more than ", kMaxDims,
                " non-mergeable dims; make it contiguous first");
    StridedIndex<N> ix;
    ix.rank = int(sh.size());
    for (size_t d = 0; d < sh.size(); ++d) {
        ix.shape[d] = sh[d];
        for (int k = 0; k < N; ++k)
            ix.strides[k][d] = st[d][size_t(k)];
    }
    return ix;
}

// ---------------------------------------------------------------- launch sizes, reductions

// 64-bit min/max usable on both sides (forge::max is the tensor op; CUDA's min is untemplated).
__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/// p is 16-byte aligned (float4 / 8 x bf16 accesses).
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

constexpr int kBlock = 256;
inline unsigned blocks_for(int64_t n, int block = kBlock, int64_t cap = 65535LL * 16) {
    int64_t b = (n + block - 1) / block;
    return unsigned(b < 1 ? 1 : (b > cap ? cap : b));
}

template <typename T> __device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
template <typename T> __device__ __forceinline__ T warp_max(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/// Sum over the whole block (blockDim.x a multiple of 32, <= 1024); every thread gets it.
/// `scratch` holds 32 values; the call synchronises the block.
template <typename T> __device__ T block_sum(T v, T* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); // scratch may still be read by an earlier call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < n_warps ? scratch[lane] : T(0);
    return warp_sum(v);
}
template <typename T> __device__ T block_max(T v, T* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < n_warps ? scratch[lane] : T(-INFINITY);
    return warp_max(v);
}

/// Threads per row for the row kernels: a multiple of 32 up to 1024, about C / 4.
inline int row_threads(int64_t cols) {
    int64_t t = (cols + 3) / 4;
    t = (t + 31) / 32 * 32;
    return int(t < 32 ? 32 : (t > 1024 ? 1024 : t));
}

} // namespace forge::cuda
