// f32 -> bf16 and f32 -> f16 conversion of a flat range: the operand copies behind bf16 and f16
// autocast matmuls (matmul.cpp). Round to nearest even, as forge::f32_to_bf16.
#include "backends/cuda/common.cuh"

namespace forge::cuda {

namespace {
__global__ void f32_to_bf16_kernel(const float* __restrict__ src, __nv_bfloat16* __restrict__ dst,
                                   int64_t n) {
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}
__global__ void f32_to_f16_kernel(const float* __restrict__ src, __half* __restrict__ dst,
                                  int64_t n) {
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        dst[i] = __float2half_rn(src[i]);
}
} // namespace

void convert_f32_to_bf16(const float* src, void* dst, int64_t n, void* stream) {
    if (n <= 0) return;
    f32_to_bf16_kernel<<<blocks_for(n), kBlock, 0, cudaStream_t(stream)>>>(
        src, static_cast<__nv_bfloat16*>(dst), n);
    check_launch("bf16 autocast conversion");
}

void convert_f32_to_f16(const float* src, void* dst, int64_t n, void* stream) {
    if (n <= 0)
        return;
    f32_to_f16_kernel<<<blocks_for(n), kBlock, 0, cudaStream_t(stream)>>>(
        src, static_cast<__half*>(dst), n);
    check_launch("f16 autocast conversion");
}

} // namespace forge::cuda
