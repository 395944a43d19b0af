// The LM head and its cross-entropy under bf16/f16 autocast (Backend::linear_cross_entropy);
// exact f32 takes the default (backend.cpp). x and w are rounded to the half type once; the
// vocabulary is padded to a multiple of 64 with zero rows of w, so every logits row starts
// 128-byte aligned (with V = 50257 unpadded, cuBLASLt ran the head GEMM at 127 TFLOP/s against
// ~570 for aligned shapes, docs/PERF.md). Per chunk of rows:
//   logits (n, Vp) in the half type = x_c w^T (f32 accumulation, as PyTorch's autocast logits);
//   one kernel per row: the loss from one read (running max and sum), then, with gradients,
//   dl = (softmax - onehot) * grad_scale written over the logits in the half type;
//   dx_c (f32) = dl w, dw (f32) += dl^T x_c (beta = 1 after the first chunk; its rows split at
//   a multiple of 64, below).
// The logits are never f32 in memory: one half-type buffer of a chunk is the whole workspace.
#include "backends/cuda/common.cuh"

#include <algorithm>
#include <cmath>

namespace forge::cuda {

namespace {

constexpr int kRowThreads = 512;
constexpr int kUnroll = 4; // 16-byte loads in flight per thread

// Eight half values in 16 bytes.
template <typename H> struct alignas(16) Eight {
    H v[8];
};

// The groups i0, i0 + blockDim, ... (kUnroll of them, those below n8) of a row: the loads are
// issued before any is used.
template <typename H>
__device__ __forceinline__ void load_groups(const Eight<H>* r8, int64_t i0, int64_t n8,
                                            Eight<H> (&u)[kUnroll]) {
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
        const int64_t i = i0 + k * int64_t(blockDim.x);
        if (i < n8) u[k] = r8[i];
    }
}

// (m, s): running max and sum of exp(v - m); merging two keeps the larger max.
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
    if (m2 > m) {
        s = s * __expf(m - m2) + s2;
        m = m2;
    } else if (m2 > -INFINITY) {
        s += s2 * __expf(m2 - m);
    }
}

// One block per row of logits (ld elements apart, ld % 8 == 0, V valid, 16-byte aligned rows).
// losses[row] = logsumexp - logit[target] (0 on ignored rows). With `grads`, the row is then
// overwritten by (softmax - onehot(target)) * grad_scale, 0 on padding columns and ignored rows.
template <typename H>
__global__ void __launch_bounds__(kRowThreads)
    ce_rows_inplace_kernel(H* __restrict__ logits, int64_t ld, int64_t V,
                           const int64_t* __restrict__ targets, int64_t ignore_index,
                           float grad_scale, float* __restrict__ losses, bool grads) {
    const int64_t row = blockIdx.x;
    Eight<H>* r8 = reinterpret_cast<Eight<H>*>(logits + row * ld);
    const int64_t n8 = ld / 8;
    const int64_t t = targets[row];
    const bool ignored = t == ignore_index;
    if (ignored) {
        if (threadIdx.x == 0) losses[row] = 0.0f;
        if (grads) {
            Eight<H> z;
#pragma unroll
            for (int j = 0; j < 8; ++j) z.v[j] = float_to_half<H>(0.0f);
            for (int64_t i = threadIdx.x; i < n8; i += blockDim.x) r8[i] = z;
        }
        return;
    }
    // Read before any thread can overwrite the row (the barrier below orders it).
    const float target_logit = threadIdx.x == 0 ? half_to_float(logits[row * ld + t]) : 0.0f;

    // Pass 1: the row's running max and sum, kUnroll independent loads at a time.
    float m = -INFINITY, s = 0.0f;
    for (int64_t i0 = threadIdx.x; i0 < n8; i0 += kUnroll * int64_t(blockDim.x)) {
        Eight<H> u[kUnroll];
        load_groups(r8, i0, n8, u);
#pragma unroll
        for (int k = 0; k < kUnroll; ++k) {
            const int64_t i = i0 + k * int64_t(blockDim.x);
            if (i >= n8) break;
            float f[8], lm = -INFINITY;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                f[j] = 8 * i + j < V ? half_to_float(u[k].v[j]) : -INFINITY;
                lm = fmaxf(lm, f[j]);
            }
            if (lm == -INFINITY) continue; // all padding
            if (lm > m) s *= __expf(m - lm), m = lm;
#pragma unroll
            for (int j = 0; j < 8; ++j) s += __expf(f[j] - m);
        }
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
        const int n_warps = int(blockDim.x) / 32;
        m = lane < n_warps ? sm[lane] : -INFINITY;
        s = lane < n_warps ? ss[lane] : 0.0f;
        for (int o = 16; o > 0; o /= 2)
            merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
        if (lane == 0) lse_shared = m + logf(s);
    }
    __syncthreads();
    const float lse = lse_shared;
    if (threadIdx.x == 0) losses[row] = lse - target_logit;
    if (!grads) return;

    // Pass 2: the scaled gradient over the logits, in place (each thread rewrites what it read).
    for (int64_t i0 = threadIdx.x; i0 < n8; i0 += kUnroll * int64_t(blockDim.x)) {
        Eight<H> u[kUnroll];
        load_groups(r8, i0, n8, u);
#pragma unroll
        for (int k = 0; k < kUnroll; ++k) {
            const int64_t i = i0 + k * int64_t(blockDim.x);
            if (i >= n8) break;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int64_t col = 8 * i + j;
                const float g =
                    col < V ? (__expf(half_to_float(u[k].v[j]) - lse) - (col == t ? 1.0f : 0.0f)) *
                                  grad_scale
                            : 0.0f;
                u[k].v[j] = float_to_half<H>(g);
            }
            r8[i] = u[k];
        }
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

    // Chunks of at most 4 x linear_ce_chunk_elements() logits (2^28 by default: 512 MiB in the
    // half type, 4096 rows of GPT-2's head at 16 x 1024), split evenly, rows a multiple of 8.
    const int64_t budget = 4 * linear_ce_chunk_elements();
    const int64_t n_chunks = std::max<int64_t>(1, (N * Vp + budget - 1) / budget);
    const int64_t chunk = std::min(N, ((N + n_chunks - 1) / n_chunks + 7) / 8 * 8);
    const bool grads = dx.defined();
    Tensor logits = Tensor::empty({chunk, Vp}, hd, dev); // the gradient overwrites it in place
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
        const int64_t n = std::min(chunk, N - r0);
        const Tensor lg = logits.narrow(0, 0, n), xc = xh.narrow(0, r0, n);
        matmul_half(xc.unsqueeze(0), wh.t().unsqueeze(0), lg.unsqueeze(0), false); // (n, Vp)
        visit_dtype(hd, [&]<typename H>() {
            if constexpr (std::is_same_v<H, __nv_bfloat16> || std::is_same_v<H, __half>)
                ce_rows_inplace_kernel<H><<<unsigned(n), kRowThreads, 0, stream>>>(
                    static_cast<H*>(lg.data_ptr()), Vp, V, targets.data<int64_t>() + r0,
                    ignore_index, float(grad_scale), losses.data<float>() + r0, grads);
        });
        check_launch("linear_cross_entropy rows");
        if (!grads) continue;
        // dx_c (n, C) = dl (n, Vp) wh (Vp, C): the padding rows of wh are zero.
        matmul_half(lg.unsqueeze(0), wh.unsqueeze(0), dx.narrow(0, r0, n).unsqueeze(0), false);
        // dw (V, C) (+)= dl[:, :V]^T x_c: the padding columns of dl are not needed. Rows
        // [0, V64) and [V64, V) apart: with V = 50257 in one GEMM, cuBLASLt offered only Ampere
        // (mma.sync) kernels, 0.66 ms a chunk against ~0.4 for a multiple of 64.
        const int64_t V64 = V / 64 * 64;
        for (const auto& [v0, nv] : {std::pair{int64_t(0), V64}, std::pair{V64, V - V64}})
            if (nv > 0)
                matmul_half(lg.narrow(1, v0, nv).t().unsqueeze(0), xc.unsqueeze(0),
                            dw.narrow(0, v0, nv).unsqueeze(0), r0 > 0);
    }
}

} // namespace forge::cuda
