// The batch-1 decode step's kernels (decode_kernels.h). Batch-1 decode is a weight read: every
// GEMV streams its bf16 matrix once with 16-byte loads, accumulates in f32, and fuses the norm
// of its input (recomputed per block: K floats, cheap next to the weights) and its epilogue, so
// a GPT-2 layer is five launches: qkv, attention, proj, fc, fc2.
#include "backends/cuda/decode_kernels.h"

#include <algorithm>
#include <cstdlib>
#include <utility>

#include "backends/cuda/common.cuh"

namespace forge::cuda::decode {

namespace {

constexpr int kWarps = 8;  // GEMV block: 256 threads
constexpr int kRows = 2;   // rows per warp (a RoPE or SwiGLU pair)
constexpr int kUnroll = 4; // 16-byte chunks in flight per row per lane

__device__ __forceinline__ float bf16_lo(uint32_t v) {
    return __uint_as_float(v << 16);
}
__device__ __forceinline__ float bf16_hi(uint32_t v) {
    return __uint_as_float(v & 0xffff0000u);
}

// 8 bf16 weights . 8 f32 inputs
__device__ __forceinline__ float dot8(uint4 w, float4 a, float4 b) {
    float s = bf16_lo(w.x) * a.x;
    s = fmaf(bf16_hi(w.x), a.y, s);
    s = fmaf(bf16_lo(w.y), a.z, s);
    s = fmaf(bf16_hi(w.y), a.w, s);
    s = fmaf(bf16_lo(w.z), b.x, s);
    s = fmaf(bf16_hi(w.z), b.y, s);
    s = fmaf(bf16_lo(w.w), b.z, s);
    return fmaf(bf16_hi(w.w), b.w, s);
}

// Streamed once per token and larger than L2 in total: don't keep it in L1.
__device__ __forceinline__ uint4 load_stream(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// Total order on floats as unsigned ints (for the packed argmax).
__device__ __forceinline__ uint32_t ordered(float f) {
    const uint32_t b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float gelu_tanh(float x) {
    const float k = 0.7978845608028654f; // sqrt(2 / pi)
    return 0.5f * x * (1.f + tanhf(k * (x + 0.044715f * x * x * x)));
}

// xs = norm(x) for the block (K floats of shared memory).
__device__ void load_input(const GemvArgs& a, float* xs) {
    __shared__ float scratch[32];
    const int K = a.k;
    for (int i = threadIdx.x; i < K; i += blockDim.x)
        xs[i] = a.x[i];
    if (a.norm == Norm::none) {
        __syncthreads();
        return;
    }
    float mean = 0.f;
    if (a.norm == Norm::layer) {
        float s = 0.f;
        for (int i = threadIdx.x; i < K; i += blockDim.x)
            s += xs[i];
        mean = block_sum(s, scratch) / float(K);
    }
    float ss = 0.f; // two passes: the variance of (x - mean), as the LayerNorm kernels do
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
        const float d = xs[i] - mean;
        ss += d * d;
    }
    const float rstd = rsqrtf(block_sum(ss, scratch) / float(K) + a.eps);
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
        float v = (xs[i] - mean) * rstd * a.norm_w[i];
        if (a.norm_b)
            v += a.norm_b[i];
        xs[i] = v;
    }
    __syncthreads();
}

// One warp's kRows outputs (rows row, row + 1; lane 0 calls).
__device__ void epilogue(const GemvArgs& a, int row, const float (&acc)[kRows]) {
    float v[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r)
        v[r] = acc[r] + (a.bias && row + r < a.n ? a.bias[row + r] : 0.f);
    switch (a.epi) {
    case Epilogue::store:
        for (int r = 0; r < kRows; ++r)
            if (row + r < a.n)
                a.out[row + r] = v[r];
        break;
    case Epilogue::residual:
        for (int r = 0; r < kRows; ++r)
            if (row + r < a.n)
                a.out[row + r] += v[r];
        break;
    case Epilogue::gelu:
        for (int r = 0; r < kRows; ++r)
            if (row + r < a.n)
                a.out[row + r] = gelu_tanh(v[r]);
        break;
    case Epilogue::swiglu: // n even, row even
        a.out[row / 2] = v[0] / (1.f + __expf(-v[0])) * v[1];
        break;
    case Epilogue::qkv: {
        const int D = a.head_dim, nq = a.n_q * D, nk = a.n_kv * D, pos = a.args->pos;
        const int sec = row < nq ? 0 : row < nq + nk ? 1 : 2;
        const int local = row - (sec == 0 ? 0 : sec == 1 ? nq : nq + nk);
        const int head = local / D, j = local % D; // j even
        int d0 = j, d1 = j + 1;
        float o0 = v[0], o1 = v[1];
        if (a.rope_inv_freq && sec < 2) { // rows (i, i + D/2): rotate the pair
            const int i = j / 2;
            d0 = i, d1 = i + D / 2;
            double sn, cs;
            sincos(double(pos) * a.rope_inv_freq[i], &sn, &cs);
            o0 = float(v[0] * cs - v[1] * sn);
            o1 = float(v[1] * cs + v[0] * sn);
        }
        if (sec == 0) {
            a.out[head * D + d0] = o0;
            a.out[head * D + d1] = o1;
        } else {
            auto* c = static_cast<__nv_bfloat16*>(sec == 1 ? a.k_cache : a.v_cache) +
                      (int64_t(head) * a.cache_cap + pos) * D;
            c[d0] = __float2bfloat16_rn(o0);
            c[d1] = __float2bfloat16_rn(o1);
        }
        break;
    }
    }
}

// Programmatic dependent launch (sm_90): a kernel lets the next one start early, and waits for
// the previous one to finish (and its writes to land) before reading what it produced. The
// GEMVs stream their first weights before the wait, overlapping the previous kernel's tail.
__device__ __forceinline__ void launch_dependents() {
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}
__device__ __forceinline__ void wait_previous() {
    asm volatile("griddepcontrol.wait;" ::: "memory");
}

// Persistent: each block (kWarps warps = kWarps / ksplit row groups x ksplit warps splitting K)
// loads and normalises the input once, then walks tiles blockIdx.x, + gridDim.x, ... as one
// stream of iterations, loading iteration i + 1's weights before computing iteration i.
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(GemvArgs a, int ksplit) {
    extern __shared__ float4 smem4[];
    float* xs = reinterpret_cast<float*>(smem4);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int groups = kWarps / ksplit, g = warp / ksplit, kp = warp % ksplit;
    const int nchunk = a.k >> 3, stride = 32 * ksplit, step = kUnroll * stride;
    const int iters = (nchunk + step - 1) / step; // per tile, the same for every warp
    const int ntile = (a.n + kRows * groups - 1) / (kRows * groups);
    const uint4* W = static_cast<const uint4*>(a.w);
    launch_dependents();

    uint4 buf[kRows][kUnroll];
    auto load = [&](int t, int i) {
        const int row0 = (t * groups + g) * kRows;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
#pragma unroll
            for (int r = 0; r < kRows; ++r) {
                const int c = i * step + kp * 32 + lane + u * stride;
                buf[r][u] = t < ntile && c < nchunk && row0 + r < a.n
                                ? load_stream(W + int64_t(row0 + r) * nchunk + c)
                                : make_uint4(0, 0, 0, 0);
            }
    };
    int t = blockIdx.x, i = 0;
    load(t, i); // weights never depend on the previous kernel
    wait_previous();
    load_input(a, xs);

    __shared__ float red[kWarps][kRows];
    float acc[kRows] = {};
    unsigned long long best = 0; // argmax over this lane's rows
    while (t < ntile) {
        uint4 cur[kRows][kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
#pragma unroll
            for (int r = 0; r < kRows; ++r)
                cur[r][u] = buf[r][u];
        int nt = t, ni = i + 1;
        if (ni == iters)
            ni = 0, nt += gridDim.x;
        load(nt, ni);
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int c = i * step + kp * 32 + lane + u * stride;
            if (c < nchunk) {
                const float4 x0 = smem4[2 * c], x1 = smem4[2 * c + 1];
#pragma unroll
                for (int r = 0; r < kRows; ++r)
                    acc[r] += dot8(cur[r][u], x0, x1);
            }
        }
        if (ni == 0) { // tile t done: reduce over lanes, then over the ksplit warps
            const int row0 = (t * groups + g) * kRows;
#pragma unroll
            for (int r = 0; r < kRows; ++r)
                acc[r] = warp_sum(acc[r]);
            if (ksplit > 1) {
                __syncthreads(); // red's previous tile has been read
                if (lane == 0)
                    for (int r = 0; r < kRows; ++r)
                        red[warp][r] = acc[r];
                __syncthreads();
                if (kp == 0)
                    for (int j = 1; j < ksplit; ++j)
                        for (int r = 0; r < kRows; ++r)
                            acc[r] += red[warp + j][r];
            }
            if (kp == 0 && lane == 0 && row0 < a.n) {
                epilogue(a, row0, acc);
                if (a.argmax)
                    for (int r = 0; r < kRows; ++r)
                        if (row0 + r < a.n) {
                            const float v = acc[r] + (a.bias ? a.bias[row0 + r] : 0.f);
                            const unsigned long long k =
                                (uint64_t(ordered(v)) << 32) | uint32_t(~uint32_t(row0 + r));
                            best = k > best ? k : best;
                        }
            }
#pragma unroll
            for (int r = 0; r < kRows; ++r)
                acc[r] = 0.f;
        }
        t = nt, i = ni;
    }

    if (a.argmax) { // the block's best (value, lowest index), then one atomic per block
        __shared__ unsigned long long bests[kWarps];
        if (lane == 0)
            bests[warp] = best;
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 1; w < kWarps; ++w)
                best = bests[w] > best ? bests[w] : best;
            if (best)
                atomicMax(reinterpret_cast<unsigned long long*>(&a.args->argmax), best);
        }
    }
}

// ---------------------------------------------------------------- cp.async

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
    const unsigned d = unsigned(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;" ::: "memory");
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// ---------------------------------------------------------------- attention

// Block (kv head, chunk): 4 warps. The chunk's K and V rows come into shared memory with
// cp.async, all requests in flight at once (one memory latency, not one per position); then
// scores one thread per (query head, position), softmax of the chunk per query head (a warp
// each), P.V one thread per (query head, d). Rows are padded by 16 bytes against bank conflicts.
template <int D> __global__ void __launch_bounds__(128) attn_kernel(AttnArgs a) {
    constexpr int kRow = D + 8; // bf16 per padded row
    launch_dependents();
    wait_previous();
    const int kvh = blockIdx.x, split = blockIdx.y, chunk = a.chunk;
    const int len = a.args->pos + 1, n_active = (len + chunk - 1) / chunk;
    if (split >= n_active)
        return;
    const int G = a.n_head / a.n_kv, max_splits = gridDim.y;
    const int p0 = split * chunk, n = min(len, p0 + chunk) - p0;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    extern __shared__ float4 sm4[];
    auto* ks = reinterpret_cast<__nv_bfloat16*>(sm4);        // (chunk, kRow)
    __nv_bfloat16* vs = ks + chunk * kRow;                   // (chunk, kRow)
    float* qs = reinterpret_cast<float*>(vs + chunk * kRow); // (G, D)
    float* ps = qs + G * D;                                  // (G, chunk)
    __shared__ float stat_m[8], stat_l[8];

    const auto* K = static_cast<const __nv_bfloat16*>(a.k_cache) + (int64_t(kvh) * a.cap + p0) * D;
    const auto* V = static_cast<const __nv_bfloat16*>(a.v_cache) + (int64_t(kvh) * a.cap + p0) * D;
    constexpr int kVecs = D / 8; // 16-byte pieces per row
    for (int i = threadIdx.x; i < n * kVecs; i += blockDim.x) {
        const int r = i / kVecs, c = (i % kVecs) * 8;
        cp_async16(ks + r * kRow + c, K + int64_t(r) * D + c);
        cp_async16(vs + r * kRow + c, V + int64_t(r) * D + c);
    }
    cp_async_commit();
    for (int i = threadIdx.x; i < G * D; i += blockDim.x)
        qs[i] = a.q[kvh * G * D + i] * a.scale;
    cp_async_wait<0>();
    __syncthreads();

    for (int idx = threadIdx.x; idx < G * n; idx += blockDim.x) {
        const int g = idx / n, i = idx % n;
        const __nv_bfloat162* kr = reinterpret_cast<const __nv_bfloat162*>(ks + i * kRow);
        const float* q = qs + g * D;
        float s = 0.f;
#pragma unroll
        for (int d = 0; d < D / 2; ++d) {
            const float2 k2 = __bfloat1622float2(kr[d]);
            s = fmaf(k2.x, q[2 * d], fmaf(k2.y, q[2 * d + 1], s));
        }
        ps[g * chunk + i] = s;
    }
    __syncthreads();
    for (int g = warp; g < G; g += 4) {
        float m = -INFINITY;
        for (int i = lane; i < n; i += 32)
            m = fmaxf(m, ps[g * chunk + i]);
        m = warp_max(m);
        float l = 0.f;
        for (int i = lane; i < n; i += 32) {
            const float p = __expf(ps[g * chunk + i] - m);
            ps[g * chunk + i] = p;
            l += p;
        }
        l = warp_sum(l);
        if (lane == 0)
            stat_m[g] = m, stat_l[g] = l;
    }
    __syncthreads();
    // partial layout: o (n_head, max_splits, D), then m, l (n_head, max_splits) each
    float* part_o = a.partial;
    float* part_m = a.partial + int64_t(a.n_head) * max_splits * D;
    float* part_l = part_m + a.n_head * max_splits;
    for (int idx = threadIdx.x; idx < G * D; idx += blockDim.x) {
        const int g = idx / D, d = idx % D;
        const float* p = ps + g * chunk;
        float acc = 0.f;
        for (int i = 0; i < n; ++i)
            acc = fmaf(p[i], __bfloat162float(vs[i * kRow + d]), acc);
        part_o[(int64_t(kvh * G + g) * max_splits + split) * D + d] = acc;
    }
    if (threadIdx.x < G) {
        part_m[(kvh * G + threadIdx.x) * max_splits + split] = stat_m[threadIdx.x];
        part_l[(kvh * G + threadIdx.x) * max_splits + split] = stat_l[threadIdx.x];
    }

    // The last block of this kv head to finish merges the partials (threadFenceReduction).
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0)
        last = atomicAdd(&a.counters[kvh], 1u) == unsigned(n_active - 1);
    __syncthreads();
    if (!last)
        return;
    __threadfence();
    for (int idx = threadIdx.x; idx < G * D; idx += blockDim.x) {
        const int h = kvh * G + idx / D, d = idx % D;
        float M = -INFINITY;
        for (int s = 0; s < n_active; ++s)
            M = fmaxf(M, __ldcg(part_m + h * max_splits + s));
        float num = 0.f, den = 0.f;
        for (int s = 0; s < n_active; ++s) {
            const float w = __expf(__ldcg(part_m + h * max_splits + s) - M);
            num = fmaf(w, __ldcg(part_o + (int64_t(h) * max_splits + s) * D + d), num);
            den = fmaf(w, __ldcg(part_l + h * max_splits + s), den);
        }
        a.out[h * D + d] = num / den;
    }
    if (threadIdx.x == 0)
        a.counters[kvh] = 0;
}

__global__ void embed_kernel(const __nv_bfloat16* __restrict__ wte, const float* __restrict__ wpe,
                             int C, const StepArgs* args, float* x) {
    launch_dependents();
    wait_previous();
    const int64_t t = args->token, p = args->pos;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        x[c] = __bfloat162float(wte[t * C + c]) + (wpe ? wpe[p * C + c] : 0.f);
}

__global__ void finish_kernel(StepArgs* args) {
    launch_dependents();
    wait_previous();
    args->token = int32_t(~uint32_t(args->argmax & 0xffffffffu));
    args->argmax = 0;
    args->pos += 1;
}

// Launches with the programmatic-stream-serialization attribute (see launch_dependents).
template <typename... P, typename... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, void* stream,
            const char* what, A&&... args) {
    cudaLaunchAttribute attr{};
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem;
    cfg.stream = cudaStream_t(stream), cfg.attrs = &attr, cfg.numAttrs = 1;
    FORGE_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...));
    check_launch(what);
}

int sm_count() {
    static const int n = [] {
        int dev = 0, v = 0;
        FORGE_CUDA_CHECK(cudaGetDevice(&dev));
        FORGE_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
        return v;
    }();
    return n;
}

} // namespace

void gemv(const GemvArgs& a, void* stream) {
    FORGE_ASSERT(a.k % 8 == 0 && a.n > 0);
    FORGE_ASSERT((a.epi != Epilogue::swiglu && a.epi != Epilogue::qkv) || a.n % 2 == 0);
    static int smem_set = 0;
    const int smem = a.k * int(sizeof(float));
    if (smem > 48 * 1024 && smem > smem_set) {
        FORGE_CUDA_CHECK(
            cudaFuncSetAttribute(gemv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        smem_set = smem;
    }
    // Split K across warps until there are tiles for two blocks per multiprocessor, leaving at
    // most half the warps without a 16-byte chunk per lane.
    const int nchunk = a.k / 8;
    auto tiles = [&](int ks) {
        return (a.n + kRows * (kWarps / ks) - 1) / (kRows * (kWarps / ks));
    };
    int ksplit = 1;
    while (ksplit < kWarps && tiles(ksplit) < 2 * sm_count() && 32 * 2 * ksplit < 2 * nchunk)
        ksplit *= 2;
    // Two blocks per multiprocessor: 2,555 tokens/s on GPT-2 124M against 2,161 with one
    // (docs/PERF.md); FORGE_DECODE_BLOCKS_PER_SM overrides it for such experiments.
    static const int per_sm = [] {
        const char* e = std::getenv("FORGE_DECODE_BLOCKS_PER_SM");
        return e && std::atoi(e) > 0 ? std::atoi(e) : 2;
    }();
    const int grid = std::min(tiles(ksplit), per_sm * sm_count());
    launch(gemv_kernel, dim3(unsigned(grid)), dim3(kWarps * 32), size_t(smem), stream,
           "decode gemv", a, ksplit);
}

bool attn_supported(int head_dim) {
    return head_dim == 32 || head_dim == 64 || head_dim == 128;
}

int64_t attn_partial_floats(int n_head, int head_dim, int cap, int chunk) {
    const int64_t splits = (cap + chunk - 1) / chunk;
    return int64_t(n_head) * splits * (head_dim + 2);
}

void attention(const AttnArgs& a, void* stream) {
    FORGE_ASSERT(attn_supported(a.head_dim) && a.n_head % a.n_kv == 0 && a.n_head / a.n_kv <= 8);
    const int G = a.n_head / a.n_kv, splits = (a.cap + a.chunk - 1) / a.chunk;
    const dim3 grid(unsigned(a.n_kv), unsigned(splits));
    FORGE_ASSERT(a.chunk <= 64); // keeps the shared memory under 48 KB
    const size_t smem = size_t(2 * a.chunk * (a.head_dim + 8)) * 2 +
                        size_t(G) * (a.head_dim + a.chunk) * sizeof(float);
    auto* kernel = a.head_dim == 32   ? attn_kernel<32>
                   : a.head_dim == 64 ? attn_kernel<64>
                                      : attn_kernel<128>;
    launch(kernel, grid, dim3(128), smem, stream, "decode attention", a);
}

void embed(const void* wte, const float* wpe, int n_embd, const StepArgs* args, float* x,
           void* stream) {
    launch(embed_kernel, dim3(1), dim3(256), 0, stream, "decode embedding",
           static_cast<const __nv_bfloat16*>(wte), wpe, n_embd, args, x);
}

void finish(StepArgs* args, void* stream) {
    launch(finish_kernel, dim3(1), dim3(1), 0, stream, "decode finish", args);
}

} // namespace forge::cuda::decode
