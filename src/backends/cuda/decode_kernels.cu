// The batch-1 decode step's kernels (decode_kernels.h). Batch-1 decode is a weight read: every
// GEMV streams its bf16 matrix once with 16-byte loads, accumulates in f32, and fuses the norm
// of its input (recomputed per block: K floats, cheap next to the weights) and its epilogue.
// The GEMV and attention bodies are device functions run two ways: one kernel per op (a GPT-2
// layer is five launches: qkv, attention, proj, fc, fc2), or as the phases of one persistent
// kernel per step, where a grid barrier replaces each kernel boundary.
#include "backends/cuda/decode_kernels.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "backends/cuda/common.cuh"
#include "backends/cuda/quant_gemv.cuh"

namespace forge::cuda::decode {

namespace {

constexpr int kWarps = 8; // GEMV block: 256 threads
constexpr int kThreads = kWarps * 32;
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

// Total order on floats as unsigned ints (for the packed argmax).
__device__ __forceinline__ uint32_t ordered(float f) {
    const uint32_t b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float gelu_tanh(float x) {
    const float k = 0.7978845608028654f; // sqrt(2 / pi)
    return 0.5f * x * (1.f + tanhf(k * (x + 0.044715f * x * x * x)));
}

// xs = norm(xs) in place (xs: the raw input, K floats of shared memory, written by the block).
__device__ void normalize(const GemvArgs& a, float* xs) {
    __shared__ float scratch[32];
    const int K = a.k;
    __syncthreads(); // xs may have been filled in another thread layout than the loops below
    if (a.norm == Norm::none)
        return;
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
    case Epilogue::residual: // read from L2: other blocks of a persistent step wrote it
        for (int r = 0; r < kRows; ++r)
            if (row + r < a.n)
                a.out[row + r] = __ldcg(a.out + row + r) + v[r];
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

// The GEMV over persistent tiles: each block (kWarps warps = kWarps / ksplit row groups x ksplit
// warps splitting K) loads and normalises the input once, then walks tiles blockIdx.x,
// + gridDim.x, ... as one stream of iterations, loading iteration i + 1's weights before
// computing iteration i. The first weights are requested before prepare(xs, busy), which waits
// for the input (the previous kernel, or a grid barrier) and, if busy (the block has a tile),
// writes the raw input into xs (K floats of shared memory). A lane's unit is a chunk of a row:
// 16 bytes of bf16, or 8 bytes of Q8_0 / Q4_0 values and their scale (quant_gemv.cuh); with
// I8 the normalised input is also rounded to int8 into the shared memory after xs (K bytes,
// then K / 32 float scales).
template <WeightFormat F = WeightFormat::bf16, bool I8 = false, class Prepare>
__device__ void gemv_tiles(const GemvArgs& a, int ksplit, float* xs, Prepare&& prepare) {
    const float4* x4 = reinterpret_cast<const float4*>(xs);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int groups = kWarps / ksplit, g = warp / ksplit, kp = warp % ksplit;
    // Chunks in flight per row per lane: file blocks' chunks carry 8 bytes, so twice as many.
    constexpr int kInFlight = F == WeightFormat::bf16 || quant::is_split(F) ? kUnroll : 2 * kUnroll;
    const int nchunk = a.k / quant::chunk_values(F), stride = 32 * ksplit,
              step = kInFlight * stride;
    const int iters = (nchunk + step - 1) / step; // per tile, the same for every warp
    const int ntile = (a.n + kRows * groups - 1) / (kRows * groups);
    const uint4* W = static_cast<const uint4*>(a.w);
    int8_t* xq = reinterpret_cast<int8_t*>(xs + a.k);
    float* xd = reinterpret_cast<float*>(xq + a.k);

    quant::Chunk<F> buf[kRows][kInFlight];
    auto load = [&](int t, int i) {
        const int row0 = (t * groups + g) * kRows;
#pragma unroll
        for (int u = 0; u < kInFlight; ++u)
#pragma unroll
            for (int r = 0; r < kRows; ++r) {
                const int c = i * step + kp * 32 + lane + u * stride;
                if (t < ntile && c < nchunk && row0 + r < a.n) {
                    if constexpr (F == WeightFormat::bf16)
                        buf[r][u] = quant::load_stream(W + int64_t(row0 + r) * nchunk + c);
                    else
                        buf[r][u] = quant::load_chunk<F>(a.w, a.n, a.k, row0 + r, c);
                } else {
                    buf[r][u] = quant::Chunk<F>{};
                }
            }
    };
    int t = blockIdx.x, i = 0;
    load(t, i); // weights never depend on the previous phase
    prepare(xs, t < ntile);
    if (t >= ntile)
        return;
    normalize(a, xs);
    if constexpr (I8)
        quant::quantize_input(xs, a.k, xq, xd);

    __shared__ float red[kWarps][kRows];
    float acc[kRows] = {};
    unsigned long long best = 0; // argmax over this lane's rows
    while (t < ntile) {
        quant::Chunk<F> cur[kRows][kInFlight];
#pragma unroll
        for (int u = 0; u < kInFlight; ++u)
#pragma unroll
            for (int r = 0; r < kRows; ++r)
                cur[r][u] = buf[r][u];
        int nt = t, ni = i + 1;
        if (ni == iters)
            ni = 0, nt += gridDim.x;
        load(nt, ni);
#pragma unroll
        for (int u = 0; u < kInFlight; ++u) {
            const int c = i * step + kp * 32 + lane + u * stride;
            if (c < nchunk) {
                if constexpr (F == WeightFormat::bf16) {
                    const float4 x0 = x4[2 * c], x1 = x4[2 * c + 1];
#pragma unroll
                    for (int r = 0; r < kRows; ++r)
                        acc[r] += dot8(cur[r][u], x0, x1);
                } else {
#pragma unroll
                    for (int r = 0; r < kRows; ++r)
                        acc[r] += I8 ? quant::dot_i8<F>(cur[r][u], c, xq, xd)
                                     : quant::dot_f32<F>(cur[r][u], c, xs);
                }
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

template <WeightFormat F, bool I8>
__global__ void __launch_bounds__(kThreads, 2) gemv_kernel(GemvArgs a, int ksplit) {
    extern __shared__ float4 smem4[];
    launch_dependents();
    gemv_tiles<F, I8>(a, ksplit, reinterpret_cast<float*>(smem4), [&](float* xs, bool) {
        wait_previous();
        for (int i = threadIdx.x; i < a.k; i += blockDim.x)
            xs[i] = a.x[i];
    });
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

// One split-K task of attention: the query heads of kv head kvh over positions [p0, p0 + chunk)
// of [0, len). The chunk's K and V rows come into shared memory with cp.async, all requests in
// flight at once (one memory latency, not one per position); then scores one thread per (query
// head, position), softmax of the chunk per query head (a warp each), P.V one thread per (query
// head, d); o, m, l go to the partials. Rows are padded by 16 bytes against bank conflicts.
// Rows before len - 1 are from earlier steps, so they are requested before wait(); the newest
// row and q (this step's qkv output, read from L2) after it.
template <int D, class Wait>
__device__ void attn_partial(const AttnArgs& a, int kvh, int split, int len, int max_splits,
                             float* smem, Wait&& wait) {
    constexpr int kRow = D + 8; // bf16 per padded row
    const int chunk = a.chunk, G = a.n_head / a.n_kv;
    const int p0 = split * chunk, n = min(len, p0 + chunk) - p0;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, n_warps = blockDim.x >> 5;
    auto* ks = reinterpret_cast<__nv_bfloat16*>(smem);       // (chunk, kRow)
    __nv_bfloat16* vs = ks + chunk * kRow;                   // (chunk, kRow)
    float* qs = reinterpret_cast<float*>(vs + chunk * kRow); // (G, D)
    float* ps = qs + G * D;                                  // (G, chunk)
    __shared__ float stat_m[8], stat_l[8];

    const auto* K = static_cast<const __nv_bfloat16*>(a.k_cache) + (int64_t(kvh) * a.cap + p0) * D;
    const auto* V = static_cast<const __nv_bfloat16*>(a.v_cache) + (int64_t(kvh) * a.cap + p0) * D;
    constexpr int kVecs = D / 8; // 16-byte pieces per row
    auto stage = [&](int r0, int r1) {
        for (int i = threadIdx.x; i < (r1 - r0) * kVecs; i += blockDim.x) {
            const int r = r0 + i / kVecs, c = (i % kVecs) * 8;
            cp_async16(ks + r * kRow + c, K + int64_t(r) * D + c);
            cp_async16(vs + r * kRow + c, V + int64_t(r) * D + c);
        }
        cp_async_commit();
    };
    const int n_old = min(n, len - 1 - p0);
    stage(0, n_old);
    wait();
    stage(n_old, n);
    for (int i = threadIdx.x; i < G * D; i += blockDim.x)
        qs[i] = __ldcg(a.q + kvh * G * D + i) * a.scale;
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
    for (int g = warp; g < G; g += n_warps) {
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
}

// Heads [h0, h1)'s attention output from the n split partials, one warp a head, 32 splits at a
// time with a running max: out[(h - h0) D + d] = sum_s e^(m_s - M) o_s[d] / sum_s e^(m_s - M) l_s.
// Other blocks wrote the partials: read from L2.
template <int D>
__device__ void attn_combine(const AttnArgs& a, int n, int max_splits, int h0, int h1, float* out) {
    const float* part_o = a.partial;
    const float* part_m = a.partial + int64_t(a.n_head) * max_splits * D;
    const float* part_l = part_m + a.n_head * max_splits;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, n_warps = blockDim.x >> 5;
    for (int h = h0 + warp; h < h1; h += n_warps) {
        float M = -INFINITY, L = 0.f, acc[D / 32] = {};
        for (int s0 = 0; s0 < n; s0 += 32) {
            const int s = s0 + lane, cnt = min(32, n - s0);
            const float m = s < n ? __ldcg(part_m + h * max_splits + s) : -INFINITY;
            const float l = s < n ? __ldcg(part_l + h * max_splits + s) : 0.f;
            const float M1 = fmaxf(M, warp_max(m)); // finite: split s0 exists
            const float e = __expf(m - M1), rescale = __expf(M - M1);
            L = L * rescale + warp_sum(e * l);
            const float* o = part_o + (int64_t(h) * max_splits + s0) * D + lane;
#pragma unroll
            for (int j = 0; j < D / 32; ++j)
                acc[j] *= rescale;
#pragma unroll 4
            for (int i = 0; i < cnt; ++i) {
                const float w = __shfl_sync(0xffffffffu, e, i);
#pragma unroll
                for (int j = 0; j < D / 32; ++j)
                    acc[j] = fmaf(w, __ldcg(o + i * D + 32 * j), acc[j]);
            }
            M = M1;
        }
#pragma unroll
        for (int j = 0; j < D / 32; ++j)
            out[(h - h0) * D + lane + 32 * j] = acc[j] / L;
    }
}

// Grid (kv head, split), 4 warps a block; the last block of each kv head to finish merges the
// partials (threadFenceReduction).
template <int D> __global__ void __launch_bounds__(128) attn_kernel(AttnArgs a) {
    extern __shared__ float4 sm4[];
    launch_dependents();
    wait_previous();
    const int kvh = blockIdx.x, split = blockIdx.y, chunk = a.chunk;
    const int len = a.args->pos + 1, n_active = (len + chunk - 1) / chunk;
    if (split >= n_active)
        return;
    attn_partial<D>(a, kvh, split, len, gridDim.y, reinterpret_cast<float*>(sm4), [] {});

    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0)
        last = atomicAdd(&a.counters[kvh], 1u) == unsigned(n_active - 1);
    __syncthreads();
    if (!last)
        return;
    __threadfence();
    const int G = a.n_head / a.n_kv;
    attn_combine<D>(a, n_active, gridDim.y, kvh * G, (kvh + 1) * G, a.out + kvh * G * D);
    if (threadIdx.x == 0)
        a.counters[kvh] = 0;
}

template <WeightFormat F>
__global__ void embed_kernel(const void* __restrict__ wte, int V, const float* __restrict__ wpe,
                             int C, const StepArgs* args, float* x) {
    launch_dependents();
    wait_previous();
    const int64_t t = args->token, p = args->pos;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float v;
        if constexpr (F == WeightFormat::bf16)
            v = __bfloat162float(static_cast<const __nv_bfloat16*>(wte)[t * C + c]);
        else
            v = quant::dequantize<F>(wte, V, C, t, c);
        x[c] = v + (wpe ? wpe[p * C + c] : 0.f);
    }
}

__global__ void finish_kernel(StepArgs* args) {
    launch_dependents();
    wait_previous();
    args->token = int32_t(~uint32_t(args->argmax & 0xffffffffu));
    args->argmax = 0;
    args->pos += 1;
}

// ---------------------------------------------------------------- the persistent step

__device__ __forceinline__ unsigned long long load_acquire(const unsigned long long* p) {
    unsigned long long v;
    asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}

// A barrier across the grid of a cooperative launch (every block resident), split in two so a
// block can request its next phase's weights between arriving and waiting. The arrival counter
// only grows (64 bits do not wrap), so no launch resets it: launch k's j-th barrier completes
// at base + (j + 1) * gridDim.x, base being the earlier launches' arrivals, a multiple of
// gridDim.x. A block reads base before its first arrival, when no block can have passed
// barrier 0, so the counter is below base + gridDim.x.
class GridBarrier {
  public:
    __device__ explicit GridBarrier(unsigned long long* count) : count_(count) {
        if (threadIdx.x == 0) {
            const unsigned long long v = load_acquire(count);
            target_ = v - v % gridDim.x;
        }
    }
    // Counts the block in once all its threads are done with the phase; the release makes
    // their writes visible to whoever acquires the count.
    __device__ void arrive() {
        __syncthreads();
        if (threadIdx.x == 0) {
            target_ += gridDim.x;
            asm volatile("red.release.gpu.global.add.u64 [%0], 1;" ::"l"(count_) : "memory");
        }
    }
    // Returns once every block has arrived.
    __device__ void wait() {
        if (threadIdx.x == 0)
            while (load_acquire(count_) < target_) {
            }
        __syncthreads();
    }

  private:
    unsigned long long* count_;
    unsigned long long target_ = 0; // thread 0's
};

// K split across warps and the shared-memory layout, fixed per model on the host.
struct StepPlan {
    int ksplit_qkv = 1, ksplit_proj = 1, ksplit_fc = 1, ksplit_fc2 = 1, ksplit_head = 1;
    int table_offset = 0; // floats: where the layer table starts in shared memory
};

// Vectors that other blocks of the step wrote come from L2 (__ldcg), never a stale L1 line.
__device__ void load_vec(const float* v, int n, float* xs) {
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        xs[i] = __ldcg(v + i);
}

// The decode step (PersistentStepArgs): embedding, layers, head, finish in one grid of
// kThreads-thread blocks; shared memory holds the phase's input vector or attention task, then
// the layer table. Every phase is followed by bar.arrive() and preceded by bar.wait(), inside
// prepare/wait callbacks after the phase has requested its first weights or K/V rows. Matrices
// in F: bf16, or split Q8_0 / Q4_0 with int8 dot products (I8).
template <int D, WeightFormat F>
__global__ void __launch_bounds__(kThreads, 2) step_kernel(PersistentStepArgs s, StepPlan p) {
    constexpr bool I8 = F != WeightFormat::bf16;
    extern __shared__ float4 smem4[];
    float* smem = reinterpret_cast<float*>(smem4);
    auto* layers = reinterpret_cast<StepLayer*>(smem + p.table_offset);
    GridBarrier bar(s.barrier);
    {
        constexpr int kWords = sizeof(StepLayer) / 8;
        const auto* src = reinterpret_cast<const unsigned long long*>(s.layers);
        auto* dst = reinterpret_cast<unsigned long long*>(layers);
        for (int i = threadIdx.x; i < s.n_layer * kWords; i += blockDim.x)
            dst[i] = src[i];
        __syncthreads();
    }
    const int C = s.n_embd, H = s.n_head, token = s.args->token, pos = s.args->pos, len = pos + 1;
    const int max_splits = (s.cap + s.chunk - 1) / s.chunk,
              n_active = (len + s.chunk - 1) / s.chunk;
    const AttnArgs attn{.q = s.q,
                        .n_head = H,
                        .n_kv = s.n_kv,
                        .head_dim = D,
                        .cap = s.cap,
                        .chunk = s.chunk,
                        .scale = float(1.0 / ::sqrt(double(D))),
                        .args = s.args,
                        .partial = s.partial};

    for (int l = 0; l < s.n_layer; ++l) {
        const StepLayer& w = layers[l];
        GemvArgs qkv{.w = w.qkv,
                     .n = (H + 2 * s.n_kv) * D,
                     .k = C,
                     .norm = s.norm,
                     .norm_w = w.norm1_w,
                     .norm_b = w.norm1_b,
                     .eps = s.eps,
                     .epi = Epilogue::qkv,
                     .bias = w.qkv_b,
                     .out = s.q};
        qkv.n_q = H, qkv.n_kv = s.n_kv, qkv.head_dim = D, qkv.rope_inv_freq = s.rope_inv_freq;
        qkv.k_cache = w.k_cache, qkv.v_cache = w.v_cache, qkv.cache_cap = s.cap, qkv.args = s.args;
        gemv_tiles<F, I8>(qkv, p.ksplit_qkv, smem, [&](float* xs, bool busy) {
            if (l > 0)
                bar.wait();
            if (!busy)
                return;
            if (l > 0)
                return load_vec(s.x, C, xs);
            for (int c = threadIdx.x; c < C; c += blockDim.x) { // the embedding
                float v;
                if constexpr (F == WeightFormat::bf16)
                    v = __bfloat162float(
                        static_cast<const __nv_bfloat16*>(s.wte)[int64_t(token) * C + c]);
                else
                    v = quant::dequantize<F>(s.wte, s.vocab, C, token, c);
                v += s.wpe ? s.wpe[int64_t(pos) * C + c] : 0.f;
                xs[c] = v;
                if (blockIdx.x == 0) // the residual stream
                    s.x[c] = v;
            }
        });
        bar.arrive();

        AttnArgs at = attn;
        at.k_cache = w.k_cache, at.v_cache = w.v_cache;
        bool waited = false;
        for (int task = blockIdx.x; task < s.n_kv * n_active; task += gridDim.x) {
            attn_partial<D>(at, task % s.n_kv, task / s.n_kv, len, max_splits, smem, [&] {
                if (!waited) {
                    bar.wait();
                    waited = true;
                }
            });
            __syncthreads(); // the next task restages shared memory
        }
        if (!waited)
            bar.wait();
        bar.arrive();

        gemv_tiles<F, I8>(GemvArgs{.w = w.proj,
                                   .n = C,
                                   .k = H * D,
                                   .epi = Epilogue::residual,
                                   .bias = w.proj_b,
                                   .out = s.x},
                          p.ksplit_proj, smem, [&](float* xs, bool busy) {
                              bar.wait();
                              if (busy)
                                  attn_combine<D>(at, n_active, max_splits, 0, H, xs);
                          });
        bar.arrive();
        gemv_tiles<F, I8>(GemvArgs{.w = w.fc,
                                   .n = s.ffn == Epilogue::swiglu ? 2 * s.n_ff : s.n_ff,
                                   .k = C,
                                   .norm = s.norm,
                                   .norm_w = w.norm2_w,
                                   .norm_b = w.norm2_b,
                                   .eps = s.eps,
                                   .epi = s.ffn,
                                   .bias = w.fc_b,
                                   .out = s.hid},
                          p.ksplit_fc, smem, [&](float* xs, bool busy) {
                              bar.wait();
                              if (busy)
                                  load_vec(s.x, C, xs);
                          });
        bar.arrive();
        gemv_tiles<F, I8>(GemvArgs{.w = w.fc2,
                                   .n = C,
                                   .k = s.n_ff,
                                   .epi = Epilogue::residual,
                                   .bias = w.fc2_b,
                                   .out = s.x},
                          p.ksplit_fc2, smem, [&](float* xs, bool busy) {
                              bar.wait();
                              if (busy)
                                  load_vec(s.hid, s.n_ff, xs);
                          });
        bar.arrive();
    }
    gemv_tiles<F, I8>(GemvArgs{.w = s.head,
                               .n = s.vocab,
                               .k = C,
                               .norm = s.norm,
                               .norm_w = s.lnf_w,
                               .norm_b = s.lnf_b,
                               .eps = s.eps,
                               .epi = Epilogue::store,
                               .out = s.logits,
                               .argmax = true,
                               .args = s.args},
                      p.ksplit_head, smem, [&](float* xs, bool busy) {
                          bar.wait();
                          if (busy)
                              load_vec(s.x, C, xs);
                      });
    bar.arrive();
    bar.wait();
    if (blockIdx.x == 0 && threadIdx.x == 0) { // finish_kernel's work: every block is done
        const unsigned long long best =
            __ldcg(reinterpret_cast<const unsigned long long*>(&s.args->argmax));
        s.args->token = int32_t(~uint32_t(best & 0xffffffffu));
        s.args->argmax = 0;
        s.args->pos = pos + 1;
    }
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

int device_attribute(cudaDeviceAttr what) {
    int dev = 0, v = 0;
    FORGE_CUDA_CHECK(cudaGetDevice(&dev));
    FORGE_CUDA_CHECK(cudaDeviceGetAttribute(&v, what, dev));
    return v;
}

// Blocks per multiprocessor of the GEMV and the persistent step: two, 2,555 tokens/s on GPT-2
// 124M against 2,161 with one for the per-op kernels (docs/PERF.md); FORGE_DECODE_BLOCKS_PER_SM
// overrides it for such experiments.
int blocks_per_sm() {
    static const int n = [] {
        const char* e = std::getenv("FORGE_DECODE_BLOCKS_PER_SM");
        return e && std::atoi(e) > 0 ? std::atoi(e) : 2;
    }();
    return n;
}

// ksplit of a persistent-step phase: the most warps per row (each lane with a chunk at least)
// that leaves no block more than one tile, so the phase is one round of weight loads, requested
// before its barrier; a matrix with more tiles than blocks (the head) streams with 1.
int phase_ksplit(int n, int k, int grid, WeightFormat f) {
    int best = 1;
    for (int ks = 2; ks <= kWarps; ks *= 2) {
        const int rows = kRows * (kWarps / ks), tiles = (n + rows - 1) / rows;
        if (tiles <= grid && 32 * ks <= k / quant::chunk_values(f))
            best = ks;
    }
    return best;
}

struct StepGeometry {
    void (*kernel)(PersistentStepArgs, StepPlan) = nullptr;
    size_t smem = 0;
    int grid = 0; // 0: cannot run
    StepPlan plan;
};

StepGeometry step_geometry(const PersistentStepArgs& a) {
    static const bool coop = device_attribute(cudaDevAttrCooperativeLaunch) != 0;
    static const int smem_max = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
    const int D = a.head_dim, G = a.n_head / a.n_kv;
    StepGeometry g;
    // Shared memory: the largest phase input (floats; with int8 dot products its int8 copy and
    // scales after it) or attention task, then the layer table.
    const bool i8 = a.format != WeightFormat::bf16;
    const int k_max = std::max({a.n_embd, a.n_ff, a.n_head * D});
    const int xs = k_max + (i8 ? (k_max + k_max / 8 + 3) / 4 : 0);
    const int attn = a.chunk * (D + 8) + G * (D + a.chunk); // K, V rows as bf16; q, p
    g.plan.table_offset = (std::max(xs, attn) + 3) / 4 * 4;
    g.smem = size_t(g.plan.table_offset) * sizeof(float) + size_t(a.n_layer) * sizeof(StepLayer);
    using W = WeightFormat;
    static void (*const kernels[3][3])(PersistentStepArgs, StepPlan) = {
        {step_kernel<32, W::bf16>, step_kernel<32, W::q8_0_split>, step_kernel<32, W::q4_0_split>},
        {step_kernel<64, W::bf16>, step_kernel<64, W::q8_0_split>, step_kernel<64, W::q4_0_split>},
        {step_kernel<128, W::bf16>, step_kernel<128, W::q8_0_split>,
         step_kernel<128, W::q4_0_split>}};
    FORGE_ASSERT(a.format == W::bf16 || quant::is_split(a.format));
    g.kernel = kernels[D == 32   ? 0
                       : D == 64 ? 1
                                 : 2][a.format == W::bf16         ? 0
                                      : a.format == W::q8_0_split ? 1
                                                                  : 2];
    if (!coop || g.smem > size_t(smem_max))
        return g;
    if (g.smem > 48 * 1024)
        FORGE_CUDA_CHECK(cudaFuncSetAttribute(g.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              int(g.smem)));
    int occupancy = 0;
    FORGE_CUDA_CHECK(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occupancy, g.kernel, kThreads, g.smem));
    g.grid = sm_count() * std::min(occupancy, blocks_per_sm());
    const int fc_rows = a.ffn == Epilogue::swiglu ? 2 * a.n_ff : a.n_ff;
    g.plan.ksplit_qkv = phase_ksplit((a.n_head + 2 * a.n_kv) * D, a.n_embd, g.grid, a.format);
    g.plan.ksplit_proj = phase_ksplit(a.n_embd, a.n_head * D, g.grid, a.format);
    g.plan.ksplit_fc = phase_ksplit(fc_rows, a.n_embd, g.grid, a.format);
    g.plan.ksplit_fc2 = phase_ksplit(a.n_embd, a.n_ff, g.grid, a.format);
    g.plan.ksplit_head = phase_ksplit(a.vocab, a.n_embd, g.grid, a.format);
    return g;
}

} // namespace

int64_t weight_bytes(WeightFormat f, int64_t n, int64_t k) {
    return f == WeightFormat::bf16 ? n * k * 2 : n * (k / 32) * quant::block_bytes(f);
}

void split_blocks(WeightFormat split, const void* blocks, int64_t n, int64_t k, void* out) {
    FORGE_ASSERT(quant::is_split(split) && k % 32 == 0);
    const int bb = quant::block_bytes(split), qb = bb - 2; // scale, then values
    const auto* src = static_cast<const uint8_t*>(blocks);
    auto* values = static_cast<uint8_t*>(out);
    uint8_t* scales = values + n * quant::split_row_bytes(split, k);
    for (int64_t b = 0; b < n * (k / 32); ++b) { // blocks in row order either way
        std::memcpy(scales + 2 * b, src + b * bb, 2);
        std::memcpy(values + b * qb, src + b * bb + 2, size_t(qb));
    }
}

void gemv(const GemvArgs& a, void* stream) {
    const bool blocks = a.format != WeightFormat::bf16;
    FORGE_ASSERT(a.k % (blocks ? 32 : 8) == 0 && a.n > 0);
    FORGE_ASSERT((a.epi != Epilogue::swiglu && a.epi != Epilogue::qkv) || a.n % 2 == 0);
    const bool i8 = blocks && a.int8_dot;
    // The variants, each with its own shared memory limit: xs (K floats), with i8 xq and xd.
    using W = WeightFormat;
    static void (*const kernels[9])(GemvArgs, int) = {
        gemv_kernel<W::bf16, false>,      gemv_kernel<W::q8_0, false>,
        gemv_kernel<W::q8_0, true>,       gemv_kernel<W::q4_0, false>,
        gemv_kernel<W::q4_0, true>,       gemv_kernel<W::q8_0_split, false>,
        gemv_kernel<W::q8_0_split, true>, gemv_kernel<W::q4_0_split, false>,
        gemv_kernel<W::q4_0_split, true>};
    static int smem_set[9] = {};
    const int v = a.format == W::bf16 ? 0 : 1 + 2 * (int(a.format) - 1) + int(i8);
    const int smem = (a.k * int(sizeof(float)) + (i8 ? a.k + a.k / 8 : 0) + 15) / 16 * 16;
    if (smem > 48 * 1024 && smem > smem_set[v]) {
        FORGE_CUDA_CHECK(
            cudaFuncSetAttribute(kernels[v], cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        smem_set[v] = smem;
    }
    // Split K across warps until there are tiles for two blocks per multiprocessor, leaving at
    // most half the warps without a chunk per lane.
    const int nchunk = a.k / quant::chunk_values(a.format);
    auto tiles = [&](int ks) {
        return (a.n + kRows * (kWarps / ks) - 1) / (kRows * (kWarps / ks));
    };
    int ksplit = 1;
    while (ksplit < kWarps && tiles(ksplit) < 2 * sm_count() && 32 * 2 * ksplit < 2 * nchunk)
        ksplit *= 2;
    const int grid = std::min(tiles(ksplit), blocks_per_sm() * sm_count());
    launch(kernels[v], dim3(unsigned(grid)), dim3(kWarps * 32), size_t(smem), stream, "decode gemv",
           a, ksplit);
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

void embed(const void* wte, WeightFormat wte_format, int n_vocab, const float* wpe, int n_embd,
           const StepArgs* args, float* x, void* stream) {
    using W = WeightFormat;
    static void (*const kernels[5])(const void*, int, const float*, int, const StepArgs*,
                                    float*) = {embed_kernel<W::bf16>, embed_kernel<W::q8_0>,
                                               embed_kernel<W::q4_0>, embed_kernel<W::q8_0_split>,
                                               embed_kernel<W::q4_0_split>};
    launch(kernels[int(wte_format)], dim3(1), dim3(256), 0, stream, "decode embedding", wte,
           n_vocab, wpe, n_embd, args, x);
}

void finish(StepArgs* args, void* stream) {
    launch(finish_kernel, dim3(1), dim3(1), 0, stream, "decode finish", args);
}

int persistent_grid(const PersistentStepArgs& a) {
    return attn_supported(a.head_dim) ? step_geometry(a).grid : 0;
}

void persistent_step(const PersistentStepArgs& a, void* stream) {
    const StepGeometry g = step_geometry(a);
    FORGE_ASSERT(attn_supported(a.head_dim) && g.grid > 0 && a.n_head / a.n_kv <= 8);
    cudaLaunchAttribute attr{};
    attr.id = cudaLaunchAttributeCooperative; // every block resident, or the launch fails
    attr.val.cooperative = 1;
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = dim3(unsigned(g.grid)), cfg.blockDim = dim3(kThreads);
    cfg.dynamicSmemBytes = g.smem, cfg.stream = cudaStream_t(stream);
    cfg.attrs = &attr, cfg.numAttrs = 1;
    FORGE_CUDA_CHECK(cudaLaunchKernelEx(&cfg, g.kernel, a, g.plan));
    check_launch("decode step");
}

} // namespace forge::cuda::decode
