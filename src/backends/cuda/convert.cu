// f32 -> bf16 and f32 -> f16 conversion of a flat range: the operand copies behind bf16 and f16
// autocast matmuls (matmul.cpp, linear()) and contiguous casting copies (copy.cu). Round to
// nearest even, as forge::f32_to_bf16. Four elements per thread when both pointers allow
// 16-byte loads and 8-byte stores (a memory-bound pass: the wide accesses reach the copy ceiling).
#include "backends/cuda/common.cuh"

namespace forge::cuda {

namespace {

template <typename H>
__global__ void f32_to_half_kernel(const float* __restrict__ src, H* __restrict__ dst, int64_t n) {
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        dst[i] = float_to_half<H>(src[i]);
}

// n4 groups of four; the caller converts the tail.
template <typename H>
__global__ void f32_to_half_x4_kernel(const float4* __restrict__ src, H* __restrict__ dst,
                                      int64_t n4) {
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n4;
         i += int64_t(gridDim.x) * blockDim.x) {
        const float4 v = src[i];
        struct alignas(8) Four {
            H a, b, c, d;
        } out{float_to_half<H>(v.x), float_to_half<H>(v.y), float_to_half<H>(v.z), float_to_half<H>(v.w)};
        reinterpret_cast<Four*>(dst)[i] = out;
    }
}

template <typename H> void convert(const float* src, void* dst_v, int64_t n, void* stream) {
    if (n <= 0) return;
    auto* dst = static_cast<H*>(dst_v);
    const auto s = cudaStream_t(stream);
    const bool wide = reinterpret_cast<uintptr_t>(src) % 16 == 0 &&
                      reinterpret_cast<uintptr_t>(dst) % 8 == 0;
    const int64_t n4 = wide ? n / 4 : 0;
    if (n4 > 0)
        f32_to_half_x4_kernel<H><<<blocks_for(n4), kBlock, 0, s>>>(
            reinterpret_cast<const float4*>(src), dst, n4);
    if (n - 4 * n4 > 0)
        f32_to_half_kernel<H><<<blocks_for(n - 4 * n4), kBlock, 0, s>>>(src + 4 * n4,
                                                                       dst + 4 * n4, n - 4 * n4);
}

} // namespace

void convert_f32_to_bf16(const float* src, void* dst, int64_t n, void* stream) {
    convert<__nv_bfloat16>(src, dst, n, stream);
    check_launch("f32 -> bf16 conversion");
}

void convert_f32_to_f16(const float* src, void* dst, int64_t n, void* stream) {
    convert<__half>(src, dst, n, stream);
    check_launch("f32 -> f16 conversion");
}

} // namespace forge::cuda
