// The LM head and its cross-entropy under bf16/f16 autocast (Backend::linear_cross_entropy).
// x and w are rounded to the half type once; the vocabulary is padded to a multiple of 64 with
// zero rows of w, so every logits row starts 16-byte aligned (with V = 50257 unpadded, cuBLASLt
// ran the head GEMM at 127 TFLOP/s against ~570 for aligned shapes, docs/PERF.md). Per chunk of
// rows: logits (n, Vp) f32 = x_c w^T; one kernel per row takes the loss and writes
// dl = (softmax - onehot) * grad_scale in the half type; dx_c = dl w, dw += dl^T x_c.
#include "backends/cuda/common.cuh"

#include <algorithm>
#include <cmath>

namespace forge::cuda {

namespace {

constexpr int kRowThreads = 512;

// (m, s): running max and sum of exp(v - m); merging two keeps the larger max.
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
    if (m2 > m) {
        s = s * __expf(m - m2) + s2;
        m = m2;
    } else if (m2 > -INFINITY) {
        s += s2 * __expf(m2 - m);
    }
}

// One block per row. logits rows ld floats apart (ld % 4 == 0, 16-byte aligned), V valid;
// dl rows ld elements apart, the padding columns written 0.
template <typename H>
__global__ void __launch_bounds__(kRowThreads)
    ce_rows_kernel(const float* __restrict__ logits, int64_t ld, int64_t V,
                   const int64_t* __restrict__ targets, int64_t ignore_index, float grad_scale,
                   float* __restrict__ losses, H* __restrict__ dl) {
    const int64_t row = blockIdx.x;
    const float4* l4 = reinterpret_cast<const float4*>(logits + row * ld);
    const int64_t n4 = ld / 4;
    float m = -INFINITY, s = 0.0f;
    for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
        const float4 v = l4[i];
        const float e[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int j = 0; j < 4; ++j)
            if (4 * i + j < V) merge(m, s, e[j], 1.0f);
    }
    // Block-wide merge: warps by shuffles, then the warps' results through shared memory.
    for (int o = 16; o > 0; o /= 2)
        merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    __shared__ float sm[kRowThreads / 32], ss[kRowThreads / 32];
    __shared__ float lse_shared;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) sm[warp] = m, ss[warp] = s;
    __syncthreads();
    if (warp == 0) {
        m = lane < kRowThreads / 32 ? sm[lane] : -INFINITY;
        s = lane < kRowThreads / 32 ? ss[lane] : 0.0f;
        for (int o = 16; o > 0; o /= 2)
            merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
        if (lane == 0) lse_shared = m + logf(s);
    }
    __syncthreads();
    const float lse = lse_shared;
    const int64_t t = targets[row];
    const bool ignored = t == ignore_index;
    if (threadIdx.x == 0) losses[row] = ignored ? 0.0f : lse - logits[row * ld + t];
    if (dl == nullptr) return;
    struct alignas(8) Four {
        H a, b, c, d;
    };
    Four* d4 = reinterpret_cast<Four*>(dl + row * ld);
    for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
        const float4 v = l4[i];
        const float e[4] = {v.x, v.y, v.z, v.w};
        float g[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int64_t col = 4 * i + j;
            g[j] = ignored || col >= V
                       ? 0.0f
                       : (__expf(e[j] - lse) - (col == t ? 1.0f : 0.0f)) * grad_scale;
        }
        if constexpr (std::is_same_v<H, __nv_bfloat16>)
            d4[i] = Four{__float2bfloat16_rn(g[0]), __float2bfloat16_rn(g[1]),
                         __float2bfloat16_rn(g[2]), __float2bfloat16_rn(g[3])};
        else
            d4[i] = Four{__float2half_rn(g[0]), __float2half_rn(g[1]), __float2half_rn(g[2]),
                         __float2half_rn(g[3])};
    }
}

} // namespace

void CudaBackend::linear_cross_entropy(const Tensor& x, const Tensor& w, const Tensor& targets,
                                       int64_t ignore_index, double grad_scale,
                                       const Tensor& losses, const Tensor& dx, const Tensor& dw) {
    const int64_t N = x.size(0), C = x.size(1), V = w.size(0);
    const bool half = (autocast_bf16() || autocast_f16()) && x.dtype() == DType::f32;
    if (!half || C % 8 != 0)
        return Backend::linear_cross_entropy(x, w, targets, ignore_index, grad_scale, losses, dx,
                                             dw);
    const DType hd = autocast_bf16() ? DType::bf16 : DType::f16;
    const Device dev = x.device();
    cudaStream_t stream = stream_of(x);
    const int64_t Vp = (V + 63) / 64 * 64;

    // w (V, C) -> wh (Vp, C) in the half type, rows V.. zero; x -> xh (N, C).
    Tensor wh = Tensor::empty({Vp, C}, hd, dev), xh = Tensor::empty({N, C}, hd, dev);
    copy(w, wh.narrow(0, 0, V));
    if (Vp > V)
        FORGE_CUDA_CHECK(cudaMemsetAsync(wh.narrow(0, V, Vp - V).data_ptr(), 0,
                                         size_t((Vp - V) * C) * 2, stream));
    copy(x, xh);

    // Chunks of at most 4 x linear_ce_chunk_elements() logits (1 GiB of f32 by default), split
    // evenly, rows a multiple of 8.
    const int64_t budget = 4 * linear_ce_chunk_elements();
    const int64_t n_chunks = std::max<int64_t>(1, (N * Vp + budget - 1) / budget);
    const int64_t chunk = std::min(N, ((N + n_chunks - 1) / n_chunks + 7) / 8 * 8);
    const bool grads = dx.defined();
    Tensor logits = Tensor::empty({chunk, Vp}, DType::f32, dev);
    Tensor dl = grads ? Tensor::empty({chunk, Vp}, hd, dev) : Tensor();
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
        const int64_t n = std::min(chunk, N - r0);
        const Tensor lg = logits.narrow(0, 0, n), xc = xh.narrow(0, r0, n);
        matmul(xc.unsqueeze(0), wh.t().unsqueeze(0), lg.unsqueeze(0)); // (n, C) x (C, Vp)
        visit_dtype(hd, [&]<typename H>() {
            if constexpr (std::is_same_v<H, __nv_bfloat16> || std::is_same_v<H, __half>)
                ce_rows_kernel<H><<<unsigned(n), kRowThreads, 0, stream>>>(
                    lg.data<float>(), Vp, V, targets.data<int64_t>() + r0, ignore_index,
                    float(grad_scale), losses.data<float>() + r0,
                    grads ? static_cast<H*>(dl.data_ptr()) : nullptr);
        });
        check_launch("linear_cross_entropy rows");
        if (!grads) continue;
        const Tensor d = dl.narrow(0, 0, n);
        matmul(d.unsqueeze(0), wh.unsqueeze(0), dx.narrow(0, r0, n).unsqueeze(0)); // (n, Vp) x (Vp, C)
        // dw (V, C) (+)= dl[:, :V]^T x_c: the padding columns of dl are not needed.
        const Tensor dlt = d.narrow(1, 0, V).t().unsqueeze(0), xc3 = xc.unsqueeze(0);
        if (r0 == 0)
            matmul(dlt, xc3, dw.unsqueeze(0));
        else
            matmul_half_accumulate(dlt, xc3, dw.unsqueeze(0));
    }
}

} // namespace forge::cuda
