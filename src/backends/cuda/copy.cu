// Copies (strided, with dtype casts; host <-> device), fills and the counter-based random
// generator. random() reproduces the CPU's stream bit for bit in its integer part: splitmix64 of
// (seed, i), then the same double-precision transforms, so a seed gives the same tensor on
// either backend (up to the last ulp of log/cos).
#include "backends/cuda/common.cuh"

namespace forge::cuda {

namespace {

template <typename S, typename D>
__global__ void copy_kernel(const S* __restrict__ src, D* __restrict__ dst, StridedIndex<2> ix,
                            int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x) {
        int64_t off[2];
        ix.offsets(i, off);
        if constexpr (std::is_same_v<S, D>)
            dst[off[1]] = src[off[0]];
        else
            dst[off[1]] = from_double<D>(to_double(src[off[0]]));
    }
}

template <typename T> __global__ void fill_kernel(T* __restrict__ p, T v, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        p[i] = v;
}

// splitmix64, as in src/backends/cpu/cpu_backend.cpp.
__device__ __forceinline__ uint64_t mix(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
__device__ __forceinline__ double uniform01(uint64_t seed_mixed, uint64_t i) {
    const uint64_t r = mix(seed_mixed ^ i);
    return (double(r >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

template <typename T>
__global__ void random_kernel(T* __restrict__ p, int64_t n, int kind, uint64_t seed_mixed,
                              double a, double b) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x) {
        double v;
        if (kind == int(RandomKind::normal)) { // Box-Muller on two counters
            const double u1 = uniform01(seed_mixed, uint64_t(2 * i));
            const double u2 = uniform01(seed_mixed, uint64_t(2 * i + 1));
            v = a + b * ::sqrt(-2.0 * ::log(u1)) * cos(6.283185307179586 * u2);
        } else if (kind == int(RandomKind::uniform)) {
            v = a + (b - a) * uniform01(seed_mixed, uint64_t(i));
        } else {
            v = uniform01(seed_mixed, uint64_t(i)) < a ? 0.0 : 1.0 / (1.0 - a);
        }
        p[i] = T(v);
    }
}

uint64_t mix_host(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// n4 groups of four contiguous elements, S -> D (f32 / bf16 / f16), rounding to nearest even.
template <typename S, typename D>
__global__ void cast4_kernel(const S* __restrict__ src, D* __restrict__ dst, int64_t n4) {
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n4;
         i += int64_t(gridDim.x) * blockDim.x)
        store4(dst + 4 * i, load4(src + 4 * i));
}

} // namespace

void CudaBackend::copy(const Tensor& src, const Tensor& dst) {
    const bool src_host = src.device().type == DeviceType::cpu;
    const bool dst_host = dst.device().type == DeviceType::cpu;
    if (src_host || dst_host) {
        FORGE_ASSERT(src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous());
        copy_host_device(src, dst);
        return;
    }
    const int64_t n = dst.numel();
    if (n == 0) return;
    cudaStream_t s = stream_of(dst);
    if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous()) {
        if (src.data_ptr() != dst.data_ptr())
            FORGE_CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), dst.nbytes(),
                                             cudaMemcpyDeviceToDevice, s));
        return;
    }
    if (src.dtype() == DType::f32 && src.is_contiguous() && dst.is_contiguous() &&
        (dst.dtype() == DType::bf16 || dst.dtype() == DType::f16)) { // autocast's rounding
        if (dst.dtype() == DType::bf16)
            convert_f32_to_bf16(src.data<float>(), dst.data_ptr(), n, s);
        else
            convert_f32_to_f16(src.data<float>(), dst.data_ptr(), n, s);
        return;
    }
    if (is_f32_or_half(src.dtype()) && is_f32_or_half(dst.dtype()) && src.is_contiguous() &&
        dst.is_contiguous() && n % 4 == 0 &&
        ((reinterpret_cast<uintptr_t>(src.data_ptr()) |
          reinterpret_cast<uintptr_t>(dst.data_ptr())) & 15) == 0) { // widening, 4 at a time
        visit_f32_half(src.dtype(), [&]<typename S>() {
            visit_f32_half(dst.dtype(), [&]<typename D>() {
                cast4_kernel<S, D><<<blocks_for(n / 4), kBlock, 0, s>>>(
                    static_cast<const S*>(src.data_ptr()), static_cast<D*>(dst.data_ptr()),
                    n / 4);
            });
        });
        check_launch("copy");
        return;
    }
    const auto ix = make_index<2>(dst.shape(), {&src.strides(), &dst.strides()});
    visit_dtype(src.dtype(), [&]<typename S>() {
        visit_dtype(dst.dtype(), [&]<typename D>() {
            copy_kernel<S, D><<<blocks_for(n), kBlock, 0, s>>>(
                static_cast<const S*>(src.data_ptr()), static_cast<D*>(dst.data_ptr()), ix, n);
        });
    });
    check_launch("copy");
}

void CudaBackend::fill(const Tensor& dst, double value) {
    const int64_t n = dst.numel();
    if (n == 0) return;
    cudaStream_t s = stream_of(dst);
    visit_dtype(dst.dtype(), [&]<typename T>() {
        // The value is rounded on the host exactly as the CPU's store_from_double does.
        T v;
        if constexpr (std::is_same_v<T, __half>) {
            __half_raw r;
            r.x = f32_to_f16(float(value));
            v = __half(r);
        } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
            __nv_bfloat16_raw r;
            r.x = f32_to_bf16(float(value));
            v = __nv_bfloat16(r);
        } else {
            v = T(value);
        }
        fill_kernel<T><<<blocks_for(n), kBlock, 0, s>>>(static_cast<T*>(dst.data_ptr()), v, n);
    });
    check_launch("fill");
}

void CudaBackend::random(const Tensor& dst, RandomKind kind, uint64_t seed, double a, double b) {
    const int64_t n = dst.numel();
    if (n == 0) return;
    cudaStream_t s = stream_of(dst);
    visit_float(dst.dtype(), [&]<typename T>() {
        random_kernel<T><<<blocks_for(n), kBlock, 0, s>>>(dst.data<T>(), n, int(kind),
                                                          mix_host(seed), a, b);
    });
    check_launch("random");
}

} // namespace forge::cuda
