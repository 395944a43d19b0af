// The tensor-core attention's shared pieces: attention_tc.cu (the mma.sync kernels and the
// host side) and attention_wg.cu (the wgmma kernels bf16 tensors take) both include it. The
// geometry, bf16 packing, cp.async, quad reductions, and the wgmma kernels' launchers.
#pragma once

#include <cuda_bf16.h>

#include "backends/cuda/attention.cuh"

namespace forge::cuda::attn {

constexpr int kQRows = 64; // backward: queries per streamed Q/dO tile
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

using bf16 = __nv_bfloat16;

struct TcGeo {
    int64_t B, Hq, Hkv, Tq, Tk;
    float scale_log2; // softmax scale * log2(e): scores live in the log2 domain
    bool causal; // key j visible to query i iff j < Tk and, causal, j <= Tk - Tq + i
    // Row strides of each tensor (o: out, g: dout).
    HeadRows q{}, k{}, v{}, o{}, g{}, dq{}, dk{}, dv{};
};

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); // .x (low half) = lo
    return *reinterpret_cast<const uint32_t*>(&v);
}


// A C tile pair (n-tiles 2kk, 2kk+1 of 16x8) as the A fragment of k-chunk kk.
__device__ __forceinline__ void c_to_a(uint32_t (&a)[4], const float (&c0)[4],
                                       const float (&c1)[4]) {
    a[0] = pack_bf16(c0[0], c0[1]);
    a[1] = pack_bf16(c0[2], c0[3]);
    a[2] = pack_bf16(c1[0], c1[1]);
    a[3] = pack_bf16(c1[2], c1[3]);
}

// cp.async of 16 (or 4) bytes global -> shared; when !valid nothing is read and the bytes are
// zeroed (src-size 0), so `src` need only be some valid address. "memory": the compiler must not
// move shared-memory accesses across these.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    const uint32_t d = uint32_t(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src),
                 "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
    const uint32_t d = uint32_t(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src),
                 "r"(valid ? 4 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most N of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Two values of a row stored as T (f32, or bf16 rounded to nearest even).
template <typename T> __device__ __forceinline__ void store2(T* p, float a, float b) {
    if constexpr (std::is_same_v<T, bf16>)
        *reinterpret_cast<uint32_t*>(p) = pack_bf16(a, b);
    else
        *reinterpret_cast<float2*>(p) = make_float2(a, b);
}
template <typename T> __device__ __forceinline__ float2 load2(const T* p) {
    if constexpr (std::is_same_v<T, bf16>)
        return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
    else
        return *reinterpret_cast<const float2*>(p);
}

// Max / sum over the 4 lanes of a quad (the lanes holding one row of a C tile).
__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// The backward's query tiles for the key block at j_first of batch b, key/value head hk: every
// query head of hk's group in turn, each from the first kQRows-tile that sees key j_first (all
// of them without causal masking). Iteration it (0 .. n_iter - 1) is query head qh (as b Hq + h)
// from query i0.
struct BwdTiles {
    int64_t qh0, i_start, n_tiles, n_iter;
    __device__ __forceinline__ BwdTiles(const TcGeo& g, int64_t b, int64_t hk, int64_t j_first) {
        const int64_t group = g.Hq / g.Hkv;
        qh0 = b * g.Hq + hk * group;
        i_start = g.causal ? max64(0, j_first - (g.Tk - g.Tq)) / kQRows * kQRows : 0;
        n_tiles = (g.Tq - i_start + kQRows - 1) / kQRows;
        n_iter = group * n_tiles;
    }
    __device__ __forceinline__ void at(int64_t it, int64_t& qh, int64_t& i0) const {
        qh = qh0 + it / n_tiles;
        i0 = i_start + (it % n_tiles) * kQRows;
    }
};

// lse2 and delta (fa_bwd_prep's, contiguous per query row) of queries [i0, i0 + kQRows) of query
// head qh into Ls, Ds [kQRows] with cp.async, zero past Tq: threads 0..63 copy lse2, 64..127 delta.
__device__ __forceinline__ void fetch_lse_delta(float* Ls, float* Ds, const float* lse2,
                                                const float* delta, int64_t qh, int64_t i0,
                                                int64_t Tq) {
    if (threadIdx.x < 2 * kQRows) {
        const int t = threadIdx.x % kQRows;
        const bool is_delta = threadIdx.x >= kQRows, ok = i0 + t < Tq;
        const float* src = (is_delta ? delta : lse2) + qh * Tq + (ok ? i0 + t : 0);
        cp_async4((is_delta ? Ds : Ls) + t, src, ok);
    }
}

// A kernel's dynamic shared memory limit raised to `bytes`.
template <typename K> void set_smem_tc(K kernel, size_t bytes) {
    FORGE_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
    // All of the unified L1 as shared memory: these kernels copy past L1 (cp.async.cg), and two
    // blocks per SM need up to 2 x 115 KB.
    FORGE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                          int(cudaSharedmemCarveoutMaxShared)));
}


// The wgmma kernels (attention_wg.cu), on bf16 (B, H, T, D) rows at g's strides. Forward
// `config` 2 to 4 (attention_tc.cu's set_attention_tc_fwd_config; D 64 or 128).
void launch_fa_fwd_wg(int config, int64_t D, const TcGeo& g, const bf16* q, const bf16* k,
                      const bf16* v, bf16* out, float* lse, cudaStream_t s);
// Backward `config` 2 (a warpgroup a block) or 3 (two), from fa_bwd_prep's contiguous bf16 Q, dO
// rows, lse2, delta, into the zeroed f32 accumulator dq (contiguous (B, Hq, Tq, D), g.dq its
// strides).
void launch_fa_bwd_wg(int config, int64_t D, const TcGeo& g, const bf16* k, const bf16* v,
                      const bf16* qb, const bf16* gb, const float* lse2, const float* delta,
                      float* dq, bf16* dk, bf16* dv, float scale, cudaStream_t s);

} // namespace forge::cuda::attn
