// Flash attention on bf16 tensor cores (FlashAttention-2 layout, Dao 2023,
// https://arxiv.org/abs/2307.08691): mma.sync m16n8k16 (bf16 x bf16 -> f32) for every product,
// the online softmax and all accumulators in f32. Head dims 64 and 128, causal or full, GQA,
// any Tq <= Tk for causal (query i sits at position Tk - Tq + i, as in attention.cu).
//
// Inputs are f32 in global memory (stage_tile also takes bf16; only f32 is instantiated) and
// are rounded to bf16 as tiles are staged in shared memory, so results carry bf16 input rounding: about 1e-2 relative error against the
// f32 reference (tests/cuda/ops_test.cpp checks that bound). Outputs, lse and gradients are f32.
//
// Blocks of W = 4 or 8 warps; a warp owns 16 rows of the block's 16 W (query rows in the
// forward and dq kernels, key rows in the dk/dv kernel) and the block loops over 64-row tiles of
// the other side.
// Shared rows are padded by 8 bf16 (16 bytes), so the fragment loads and ldmatrix rows of a warp
// fall in distinct banks. Fragment layouts (PTX ISA, "mma.m16n8k16"), g = lane / 4, c = lane % 4:
//   A (16x16, row): a0 (g, 2c..2c+1) a1 (g+8, 2c..) a2 (g, 2c+8..) a3 (g+8, 2c+8..)
//   B (16x8, col):  b0 (k 2c..2c+1, n g) b1 (k 2c+8.., n g)
//   C (16x8, f32):  c0,c1 (g, 2c..2c+1) c2,c3 (g+8, 2c..)
// so a C tile pair packs straight into an A fragment (P and dS never leave registers), and the B
// fragments of two n-tiles come from one ldmatrix.x4 (.trans for operands stored [k][n]).
// The backward is two kernels: dq (query-major, like the forward) and dk/dv (key-major); each
// recomputes the probabilities from the saved log-sum-exp, so no atomics and deterministic.
#include <atomic>

#include "backends/cuda/common.cuh"

namespace forge::cuda {

namespace {

// W warps per block, 16 rows each: a block owns 16 W rows (queries, or keys for dk/dv) and
// streams tiles of kRows rows of the other side. W = 4 for head dim 64 and 8 for 128 (on an H200,
// docs/PERF.md: the faster shape at T = 1024..8192, except D = 128 forward+backward at T = 1024
// where 4 warps won by 1%) unless set_attention_tc_warps forces one (0 = that default).
constexpr int kRows = 64;
std::atomic<int> g_tc_warps{0};
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct TcGeo {
    int64_t B, Hq, Hkv, Tq, Tk;
    float scale_log2; // softmax scale * log2(e): scores live in the log2 domain
    bool causal;
    // Key j is visible to query i.
    __device__ __forceinline__ bool visible(int64_t i, int64_t j) const {
        return j < Tk && (!causal || j <= Tk - Tq + i);
    }
};

__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); // .x (low half) = lo
    return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ uint32_t lds32(const __nv_bfloat16* p) {
    return *reinterpret_cast<const uint32_t*>(p);
}

// A fragment of rows [r0, r0+16), k [k0, k0+16) of a row-major [row][k] tile (ld elements).
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const __nv_bfloat16* s, int ld, int r0,
                                       int k0, int lane) {
    const int g = lane >> 2, c = lane & 3;
    const __nv_bfloat16* p = s + (r0 + g) * ld + k0 + 2 * c;
    a[0] = lds32(p);
    a[1] = lds32(p + 8 * ld);
    a[2] = lds32(p + 8);
    a[3] = lds32(p + 8 * ld + 8);
}

// Four 8x8 b16 matrices; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
    const uint32_t addr = uint32_t(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
    const uint32_t addr = uint32_t(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// B fragments of two n-tiles at once, one ldmatrix: b[0], b[1] for n [n0, n0+8) and b[2], b[3]
// for n [n0+8, n0+16), k [k0, k0+16).
// Tile stored [n][k]: matrix m = lane / 8 covers rows n0 + 8 (m / 2), cols k0 + 8 (m % 2).
__device__ __forceinline__ void load_b2_nk(uint32_t (&b)[4], const __nv_bfloat16* s, int ld,
                                           int n0, int k0, int lane) {
    const int m = lane >> 3, r = lane & 7;
    ldsm_x4(b, s + (n0 + (m >> 1) * 8 + r) * ld + k0 + (m & 1) * 8);
}
// Tile stored [k][n], transposed: matrix m covers rows k0 + 8 (m % 2), cols n0 + 8 (m / 2).
__device__ __forceinline__ void load_b2_kn(uint32_t (&b)[4], const __nv_bfloat16* s, int ld,
                                           int k0, int n0, int lane) {
    const int m = lane >> 3, r = lane & 7;
    ldsm_x4_trans(b, s + (k0 + (m & 1) * 8 + r) * ld + n0 + (m >> 1) * 8);
}

// A C tile pair (n-tiles 2kk, 2kk+1 of 16x8) as the A fragment of k-chunk kk.
__device__ __forceinline__ void c_to_a(uint32_t (&a)[4], const float (&c0)[4],
                                       const float (&c1)[4]) {
    a[0] = pack_bf16(c0[0], c0[1]);
    a[1] = pack_bf16(c0[2], c0[3]);
    a[2] = pack_bf16(c1[0], c1[1]);
    a[3] = pack_bf16(c1[2], c1[3]);
}

template <typename T> __device__ __forceinline__ float to_f(T v) {
    if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(v);
    else return float(v);
}

// Rows [r0, r0 + ROWS) of src (n_rows, D) into a bf16 tile [ROWS][D + 8], zero past n_rows,
// by NT threads: 8 elements per thread per step (one 16-byte shared store). The trip count is a
// constant so the loop unrolls and the global loads of all steps are in flight together.
template <typename T, int D, int ROWS, int NT>
__device__ __forceinline__ void stage_tile(__nv_bfloat16* tile, const T* __restrict__ src,
                                           int64_t r0, int64_t n_rows) {
    constexpr int kLd = D + 8, kChunks = D / 8, kSteps = ROWS * kChunks / NT;
    static_assert(ROWS * kChunks % NT == 0, "tile chunks must split evenly over the threads");
#pragma unroll
    for (int step = 0; step < kSteps; ++step) {
        const int e = step * NT + int(threadIdx.x);
        const int r = e / kChunks, d = (e - r * kChunks) * 8;
        uint4 packed = make_uint4(0, 0, 0, 0);
        if (r0 + r < n_rows) {
            const T* p = src + (r0 + r) * D + d;
            if constexpr (std::is_same_v<T, float>) {
                const float4 x0 = *reinterpret_cast<const float4*>(p);
                const float4 x1 = *reinterpret_cast<const float4*>(p + 4);
                packed = make_uint4(pack_bf16(x0.x, x0.y), pack_bf16(x0.z, x0.w),
                                    pack_bf16(x1.x, x1.y), pack_bf16(x1.z, x1.w));
            } else {
                packed = *reinterpret_cast<const uint4*>(p);
            }
        }
        *reinterpret_cast<uint4*>(tile + r * kLd + d) = packed;
    }
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

// The q tile this block takes: the last tiles (most keys under causal masking) start first.
__device__ __forceinline__ int64_t tile_index() { return int64_t(gridDim.x) - 1 - blockIdx.x; }

// ---------------------------------------------------------------- forward

// grid (ceil(Tq / 64), B * Hq); smem Q, K, V tiles [64][D + 8] bf16.
template <typename T, int D, int W>
__global__ void __launch_bounds__(32 * W)
    fa_fwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
           float* __restrict__ out, float* __restrict__ lse, TcGeo g) {
    constexpr int kLd = D + 8, kNt = kRows / 8, kDt = D / 8, kOwn = 16 * W;
    extern __shared__ __align__(16) unsigned char smem_tc[];
    auto* Qs = reinterpret_cast<__nv_bfloat16*>(smem_tc);
    __nv_bfloat16* Ks = Qs + kOwn * kLd;
    __nv_bfloat16* Vs = Ks + kRows * kLd;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g4 = lane >> 2, c4 = lane & 3;
    const int64_t bh = blockIdx.y, b = bh / g.Hq, h = bh % g.Hq;
    const int64_t kvh = b * g.Hkv + h / (g.Hq / g.Hkv);
    const int64_t q0 = tile_index() * kOwn;
    const T* K = k + kvh * g.Tk * D;
    const T* V = v + kvh * g.Tk * D;
    stage_tile<T, D, kOwn, 32 * W>(Qs, q + bh * g.Tq * D, q0, g.Tq);
    // Rows of this thread: i0 (c0, c1) and i0 + 8 (c2, c3).
    const int64_t i0 = q0 + warp * 16 + g4;
    const int64_t last_q = min64(g.Tq, q0 + kOwn) - 1;
    const int64_t k_end = g.causal ? min64(g.Tk, g.Tk - g.Tq + last_q + 1) : g.Tk;
    float o[kDt][4] = {};
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    uint32_t qf[D / 16][4]; // this warp's Q rows stay in registers
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
        load_a(qf[kk], Qs, kLd, warp * 16, kk * 16, lane);
    for (int64_t k0 = 0; k0 < k_end; k0 += kRows) {
        __syncthreads(); // the previous tiles are read
        stage_tile<T, D, kRows, 32 * W>(Ks, K, k0, g.Tk);
        stage_tile<T, D, kRows, 32 * W>(Vs, V, k0, g.Tk);
        __syncthreads();
        float s[kNt][4] = {};
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
            for (int nt = 0; nt < kNt; nt += 2) {
                uint32_t b[4];
                load_b2_nk(b, Ks, kLd, nt * 8, kk * 16, lane);
                mma_bf16(s[nt], qf[kk], b[0], b[1]);
                mma_bf16(s[nt + 1], qf[kk], b[2], b[3]);
            }
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < kNt; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int64_t i = i0 + (e >> 1) * 8, j = k0 + nt * 8 + 2 * c4 + (e & 1);
                s[nt][e] = g.visible(i, j) ? s[nt][e] * g.scale_log2 : -INFINITY;
                mx[e >> 1] = fmaxf(mx[e >> 1], s[nt][e]);
            }
        float base[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float m_new = fmaxf(m[r], quad_max(mx[r]));
            base[r] = m_new == -INFINITY ? 0.f : m_new; // a row with nothing visible yet
            const float corr = exp2f(m[r] - base[r]);
            m[r] = m_new;
            l[r] *= corr;
#pragma unroll
            for (int dt = 0; dt < kDt; ++dt) {
                o[dt][2 * r] *= corr;
                o[dt][2 * r + 1] *= corr;
            }
        }
#pragma unroll
        for (int nt = 0; nt < kNt; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[nt][e] = exp2f(s[nt][e] - base[e >> 1]);
                l[e >> 1] += s[nt][e];
            }
        // O += P V: P from registers, V stored [key][d] = [k][n].
#pragma unroll
        for (int kk = 0; kk < kNt / 2; ++kk) {
            uint32_t a[4];
            c_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
            for (int dt = 0; dt < kDt; dt += 2) {
                uint32_t b[4];
                load_b2_kn(b, Vs, kLd, kk * 16, dt * 8, lane);
                mma_bf16(o[dt], a, b[0], b[1]);
                mma_bf16(o[dt + 1], a, b[2], b[3]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int64_t i = i0 + 8 * r;
        const float lsum = quad_sum(l[r]);
        if (i >= g.Tq) continue;
        const float inv = 1.f / lsum;
        float* orow = out + (bh * g.Tq + i) * D;
#pragma unroll
        for (int dt = 0; dt < kDt; ++dt)
            *reinterpret_cast<float2*>(orow + dt * 8 + 2 * c4) =
                make_float2(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
        if (c4 == 0) lse[bh * g.Tq + i] = (m[r] + log2f(lsum)) * kLn2;
    }
}

// ---------------------------------------------------------------- backward

// delta[row] = dO[row] . O[row] (f32), one warp per row.
__global__ void fa_delta(const float* __restrict__ dout, const float* __restrict__ out,
                         float* __restrict__ delta, int64_t rows, int D) {
    const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    float s = 0;
    for (int d = lane; d < D; d += 32)
        s += dout[row * D + d] * out[row * D + d];
    for (int o = 16; o > 0; o >>= 1)
        s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) delta[row] = s;
}

// dq, query-major: per key tile S = Q K^T, P = exp(S - lse), dP = dO V^T, dS = P (dP - delta),
// dQ += dS K. grid (ceil(Tq / 64), B * Hq); smem Q, dO, K, V tiles.
template <typename T, int D, int W>
__global__ void __launch_bounds__(32 * W)
    fa_bwd_dq(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
              const float* __restrict__ dout, const float* __restrict__ lse,
              const float* __restrict__ delta, float* __restrict__ dq, TcGeo g, float scale) {
    constexpr int kLd = D + 8, kNt = kRows / 8, kDt = D / 8, kOwn = 16 * W;
    extern __shared__ __align__(16) unsigned char smem_tc[];
    auto* Qs = reinterpret_cast<__nv_bfloat16*>(smem_tc);
    __nv_bfloat16* Gs = Qs + kOwn * kLd;
    __nv_bfloat16* Ks = Gs + kOwn * kLd;
    __nv_bfloat16* Vs = Ks + kRows * kLd;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g4 = lane >> 2, c4 = lane & 3;
    const int64_t bh = blockIdx.y, b = bh / g.Hq, h = bh % g.Hq;
    const int64_t kvh = b * g.Hkv + h / (g.Hq / g.Hkv);
    const int64_t q0 = tile_index() * kOwn;
    const T* K = k + kvh * g.Tk * D;
    const T* V = v + kvh * g.Tk * D;
    stage_tile<T, D, kOwn, 32 * W>(Qs, q + bh * g.Tq * D, q0, g.Tq);
    stage_tile<float, D, kOwn, 32 * W>(Gs, dout + bh * g.Tq * D, q0, g.Tq);
    const int64_t i0 = q0 + warp * 16 + g4;
    float L[2], Dl[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int64_t i = i0 + 8 * r;
        L[r] = i < g.Tq ? lse[bh * g.Tq + i] * kLog2e : 0.f;
        Dl[r] = i < g.Tq ? delta[bh * g.Tq + i] : 0.f;
    }
    const int64_t last_q = min64(g.Tq, q0 + kOwn) - 1;
    const int64_t k_end = g.causal ? min64(g.Tk, g.Tk - g.Tq + last_q + 1) : g.Tk;
    float acc[kDt][4] = {};
    for (int64_t k0 = 0; k0 < k_end; k0 += kRows) {
        __syncthreads();
        stage_tile<T, D, kRows, 32 * W>(Ks, K, k0, g.Tk);
        stage_tile<T, D, kRows, 32 * W>(Vs, V, k0, g.Tk);
        __syncthreads();
        float s[kNt][4] = {}, dp[kNt][4] = {};
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            uint32_t a[4], ag[4];
            load_a(a, Qs, kLd, warp * 16, kk * 16, lane);
            load_a(ag, Gs, kLd, warp * 16, kk * 16, lane);
#pragma unroll
            for (int nt = 0; nt < kNt; nt += 2) {
                uint32_t b[4];
                load_b2_nk(b, Ks, kLd, nt * 8, kk * 16, lane);
                mma_bf16(s[nt], a, b[0], b[1]);
                mma_bf16(s[nt + 1], a, b[2], b[3]);
                load_b2_nk(b, Vs, kLd, nt * 8, kk * 16, lane);
                mma_bf16(dp[nt], ag, b[0], b[1]);
                mma_bf16(dp[nt + 1], ag, b[2], b[3]);
            }
        }
#pragma unroll
        for (int nt = 0; nt < kNt; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e >> 1;
                const int64_t i = i0 + 8 * r, j = k0 + nt * 8 + 2 * c4 + (e & 1);
                const float p = g.visible(i, j) ? exp2f(s[nt][e] * g.scale_log2 - L[r]) : 0.f;
                s[nt][e] = p * (dp[nt][e] - Dl[r]); // dS
            }
        // dQ += dS K: K stored [key][d] = [k][n].
#pragma unroll
        for (int kk = 0; kk < kNt / 2; ++kk) {
            uint32_t a[4];
            c_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
            for (int dt = 0; dt < kDt; dt += 2) {
                uint32_t b[4];
                load_b2_kn(b, Ks, kLd, kk * 16, dt * 8, lane);
                mma_bf16(acc[dt], a, b[0], b[1]);
                mma_bf16(acc[dt + 1], a, b[2], b[3]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int64_t i = i0 + 8 * r;
        if (i >= g.Tq) continue;
        float* row = dq + (bh * g.Tq + i) * D;
#pragma unroll
        for (int dt = 0; dt < kDt; ++dt)
            *reinterpret_cast<float2*>(row + dt * 8 + 2 * c4) =
                make_float2(acc[dt][2 * r] * scale, acc[dt][2 * r + 1] * scale);
    }
}

// dk, dv, key-major: a warp owns 16 keys; per query tile (of every query head of the group)
// S^T = K Q^T, P^T = exp(S^T - lse), dP^T = V dO^T, dS^T = P^T (dP^T - delta),
// dV += P^T dO, dK += dS^T Q. grid (ceil(Tk / 64), B * Hkv); smem K, V, Q, dO tiles, lse, delta.
template <typename T, int D, int W>
__global__ void __launch_bounds__(32 * W)
    fa_bwd_dkv(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
               const float* __restrict__ dout, const float* __restrict__ lse,
               const float* __restrict__ delta, float* __restrict__ dk, float* __restrict__ dv,
               TcGeo g, float scale) {
    constexpr int kLd = D + 8, kNt = kRows / 8, kDt = D / 8, kOwn = 16 * W;
    extern __shared__ __align__(16) unsigned char smem_tc[];
    auto* Ks = reinterpret_cast<__nv_bfloat16*>(smem_tc);
    __nv_bfloat16* Vs = Ks + kOwn * kLd;
    __nv_bfloat16* Qs = Vs + kOwn * kLd;
    __nv_bfloat16* Gs = Qs + kRows * kLd;
    float* Ls = reinterpret_cast<float*>(Gs + kRows * kLd);
    float* Ds = Ls + kRows;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g4 = lane >> 2, c4 = lane & 3;
    const int64_t bk = blockIdx.y, b = bk / g.Hkv, hk = bk % g.Hkv, group = g.Hq / g.Hkv;
    const int64_t j_first = int64_t(blockIdx.x) * kOwn; // causal: low keys (most work) first
    stage_tile<T, D, kOwn, 32 * W>(Ks, k + bk * g.Tk * D, j_first, g.Tk);
    stage_tile<T, D, kOwn, 32 * W>(Vs, v + bk * g.Tk * D, j_first, g.Tk);
    // Keys of this thread's C rows: j0 and j0 + 8.
    const int64_t j0 = j_first + warp * 16 + g4;
    // The first query that sees key j_first, rounded down to a tile.
    const int64_t i_start = g.causal ? max64(0, j_first - (g.Tk - g.Tq)) / kRows * kRows : 0;
    float ak[kDt][4] = {}, av[kDt][4] = {};
    for (int64_t hh = 0; hh < group; ++hh) {
        const int64_t qh = b * g.Hq + hk * group + hh;
        for (int64_t i0 = i_start; i0 < g.Tq; i0 += kRows) {
            __syncthreads();
            stage_tile<T, D, kRows, 32 * W>(Qs, q + qh * g.Tq * D, i0, g.Tq);
            stage_tile<float, D, kRows, 32 * W>(Gs, dout + qh * g.Tq * D, i0, g.Tq);
            if (threadIdx.x < kRows) {
                const int64_t i = i0 + threadIdx.x;
                Ls[threadIdx.x] = i < g.Tq ? lse[qh * g.Tq + i] * kLog2e : 0.f;
                Ds[threadIdx.x] = i < g.Tq ? delta[qh * g.Tq + i] : 0.f;
            }
            __syncthreads();
            float s[kNt][4] = {}, dp[kNt][4] = {};
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                uint32_t a[4], av4[4];
                load_a(a, Ks, kLd, warp * 16, kk * 16, lane);
                load_a(av4, Vs, kLd, warp * 16, kk * 16, lane);
#pragma unroll
                for (int nt = 0; nt < kNt; nt += 2) {
                    uint32_t b[4];
                    load_b2_nk(b, Qs, kLd, nt * 8, kk * 16, lane);
                    mma_bf16(s[nt], a, b[0], b[1]);
                    mma_bf16(s[nt + 1], a, b[2], b[3]);
                    load_b2_nk(b, Gs, kLd, nt * 8, kk * 16, lane);
                    mma_bf16(dp[nt], av4, b[0], b[1]);
                    mma_bf16(dp[nt + 1], av4, b[2], b[3]);
                }
            }
#pragma unroll
            for (int nt = 0; nt < kNt; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int col = nt * 8 + 2 * c4 + (e & 1);
                    const int64_t j = j0 + 8 * (e >> 1), i = i0 + col;
                    const bool vis = i < g.Tq && g.visible(i, j);
                    const float p = vis ? exp2f(s[nt][e] * g.scale_log2 - Ls[col]) : 0.f;
                    s[nt][e] = p;                       // P^T
                    dp[nt][e] = p * (dp[nt][e] - Ds[col]); // dS^T
                }
            // dV += P^T dO, dK += dS^T Q: dO and Q stored [query][d] = [k][n].
#pragma unroll
            for (int kk = 0; kk < kNt / 2; ++kk) {
                uint32_t ap[4], ad[4];
                c_to_a(ap, s[2 * kk], s[2 * kk + 1]);
                c_to_a(ad, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
                for (int dt = 0; dt < kDt; dt += 2) {
                    uint32_t b[4];
                    load_b2_kn(b, Gs, kLd, kk * 16, dt * 8, lane);
                    mma_bf16(av[dt], ap, b[0], b[1]);
                    mma_bf16(av[dt + 1], ap, b[2], b[3]);
                    load_b2_kn(b, Qs, kLd, kk * 16, dt * 8, lane);
                    mma_bf16(ak[dt], ad, b[0], b[1]);
                    mma_bf16(ak[dt + 1], ad, b[2], b[3]);
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int64_t j = j0 + 8 * r;
        if (j >= g.Tk) continue;
        float* krow = dk + (bk * g.Tk + j) * D;
        float* vrow = dv + (bk * g.Tk + j) * D;
#pragma unroll
        for (int dt = 0; dt < kDt; ++dt) {
            *reinterpret_cast<float2*>(krow + dt * 8 + 2 * c4) =
                make_float2(ak[dt][2 * r] * scale, ak[dt][2 * r + 1] * scale);
            *reinterpret_cast<float2*>(vrow + dt * 8 + 2 * c4) =
                make_float2(av[dt][2 * r], av[dt][2 * r + 1]);
        }
    }
}

template <typename K> void set_smem_tc(K kernel, size_t bytes) {
    FORGE_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

bool aligned16(const Tensor& t) { return (reinterpret_cast<uintptr_t>(t.data_ptr()) & 15) == 0; }

// f.template operator()<D, W>() for head dim D (64 or 128) and the current warps per block.
template <typename F> void visit_shape(int64_t D, F&& f) {
    const int forced = g_tc_warps.load();
    const bool eight = forced ? forced == 8 : D == 128;
    if (D == 64) eight ? f.template operator()<64, 8>() : f.template operator()<64, 4>();
    else eight ? f.template operator()<128, 8>() : f.template operator()<128, 4>();
}

constexpr size_t tile_bytes(int D, int rows) {
    return size_t(rows) * (D + 8) * sizeof(__nv_bfloat16);
}

} // namespace

void set_attention_tc_warps(int warps) {
    FORGE_CHECK(warps == 0 || warps == 4 || warps == 8,
                "[attention] tensor-core kernel warps must be 0 (default), 4 or 8, got ", warps);
    g_tc_warps.store(warps);
}

bool attention_tc_supported(const Tensor& q, const Tensor& k, const Tensor& v, bool causal) {
    const int64_t D = q.size(3), Tq = q.size(2), Tk = k.size(2);
    return q.dtype() == DType::f32 && k.dtype() == DType::f32 && v.dtype() == DType::f32 &&
           (D == 64 || D == 128) && !(causal && Tq > Tk) && Tq > 0 && Tk > 0 &&
           q.size(0) * q.size(1) < 65536 && aligned16(q) && aligned16(k) && aligned16(v);
}

void attention_tc_forward(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                          bool causal, const Tensor& out, const Tensor& lse) {
    const TcGeo g{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), scale * kLog2e, causal};
    cudaStream_t s = stream_of(q);
    visit_shape(q.size(3), [&]<int D, int W>() {
        constexpr int kOwn = 16 * W;
        const dim3 grid(unsigned((g.Tq + kOwn - 1) / kOwn), unsigned(g.B * g.Hq));
        const size_t smem = tile_bytes(D, kOwn) + 2 * tile_bytes(D, kRows);
        set_smem_tc(fa_fwd<float, D, W>, smem);
        fa_fwd<float, D, W><<<grid, 32 * W, smem, s>>>(q.data<float>(), k.data<float>(),
                                                       v.data<float>(), out.data<float>(),
                                                       lse.data<float>(), g);
    });
    check_launch("attention (tensor cores)");
}

void attention_tc_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                           const Tensor& lse, const Tensor& dout, float scale, bool causal,
                           const Tensor& dq, const Tensor& dk, const Tensor& dv) {
    const TcGeo g{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), scale * kLog2e, causal};
    const int D = int(q.size(3));
    cudaStream_t s = stream_of(q);
    const int64_t rows = g.B * g.Hq * g.Tq;
    auto delta_buf = backend().allocate(size_t(rows) * sizeof(float), q.device());
    auto* delta = static_cast<float*>(delta_buf->data);
    fa_delta<<<blocks_for(rows * 32), kBlock, 0, s>>>(dout.data<float>(), out.data<float>(), delta,
                                                      rows, D);
    visit_shape(D, [&]<int HD, int W>() {
        constexpr int kOwn = 16 * W;
        const size_t smem_q = 2 * tile_bytes(HD, kOwn) + 2 * tile_bytes(HD, kRows);
        set_smem_tc(fa_bwd_dq<float, HD, W>, smem_q);
        const dim3 grid_q(unsigned((g.Tq + kOwn - 1) / kOwn), unsigned(g.B * g.Hq));
        fa_bwd_dq<float, HD, W><<<grid_q, 32 * W, smem_q, s>>>(
            q.data<float>(), k.data<float>(), v.data<float>(), dout.data<float>(),
            lse.data<float>(), delta, dq.data<float>(), g, scale);
        const size_t smem_kv =
            2 * tile_bytes(HD, kOwn) + 2 * tile_bytes(HD, kRows) + 2 * kRows * sizeof(float);
        set_smem_tc(fa_bwd_dkv<float, HD, W>, smem_kv);
        const dim3 grid_kv(unsigned((g.Tk + kOwn - 1) / kOwn), unsigned(g.B * g.Hkv));
        fa_bwd_dkv<float, HD, W><<<grid_kv, 32 * W, smem_kv, s>>>(
            q.data<float>(), k.data<float>(), v.data<float>(), dout.data<float>(),
            lse.data<float>(), delta, dk.data<float>(), dv.data<float>(), g, scale);
    });
    check_launch("attention_backward (tensor cores)");
}

} // namespace forge::cuda
