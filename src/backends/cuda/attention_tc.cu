// Flash attention on bf16 tensor cores (FlashAttention-2, Dao 2023,
// https://arxiv.org/abs/2307.08691; on bf16 tensors with Hopper's warpgroup MMA, as in
// FlashAttention-3, Shah et al. 2024, https://arxiv.org/abs/2407.08608): bf16 x bf16 -> f32 for
// every product, the online softmax and all accumulators in f32. Head dims 64 and 128, causal or
// full, GQA, any Tq <= Tk for causal (query i sits at position Tk - Tq + i, as in attention.cu).
// Not the exact kernel: attention.cu is, and picks this one only under reduced precision or
// autocast.
//
// q, k, v (and out, dq, dk, dv, in their type) are f32 or bf16 (autocast's qkv projection is
// bf16); dout is f32 or their type; lse is f32. f32 inputs are rounded to bf16 on their way into
// shared memory, so results carry bf16 input rounding: about 1e-2 relative error against the f32
// reference (tests/cuda/ops_test.cpp checks that bound). q, k, v, out, dout, dq, dk, dv are rows
// at any B, H, T strides (attention.cuh) whose starts are 16-byte aligned
// (attention_tc_supported checks); lse is contiguous.
//
// bf16 tensors (autocast's) take the wgmma kernels. Forward (fa_fwd_wg): 128 query rows a block
// (two warpgroups of 64), K/V tiles double buffered with cp.async straight into 128-byte-swizzled
// shared tiles the tensor cores read, P kept in registers as the A operand of O += P V, exp2 with
// the scale folded into one FFMA, the running max moved (and O rescaled) only when a tile's max
// exceeds it by a margin, masks only on tiles that need them, the output staged through shared
// memory for 16-byte stores. Backward (fa_bwd_wg): a block of 64 keys (one warpgroup) streams
// 64-query tiles of Q and dO; P^T and dS^T stay in registers as the A operands of dV and dK; dS^T
// goes through shared memory for dQ.
// f32 tensors (and bf16 ones when forced, set_attention_tc_fwd_config / _bwd_config) take the
// mma.sync m16n8k16 kernels. Forward (fa_fwd): 128 query rows (4 warps of 32 rows, or 8 of 16)
// and 64-key tiles; f32 tiles come in with cp.async into a staging area while the previous tile
// is multiplied, and are converted to bf16 in shared memory (F32Stage). Both forwards start with
// the last query blocks (the most keys under causal masking).
// Backward (fa_bwd; 5 matmuls, FlashAttention-2's Algorithm 2): a block owns 16 W keys (W warps
// of 16) and streams 64-query tiles of Q, dO (both backwards read them rounded to bf16 once by
// fa_bwd_prep, cp.async double buffered), computing P once per tile: dV and dK stay in
// registers, dQ goes to global memory with f32 atomics (so dQ's summation order, and its last
// bits, vary from run to run): into dq itself when it is f32, else into an f32 accumulator that
// fa_bwd_dq_out rounds to bf16.
//
// The mma.sync kernels' shared rows are padded by 8 bf16 (16 bytes), so the fragment loads and
// ldmatrix rows of a warp fall in distinct banks. Fragment layouts (PTX ISA, "mma.m16n8k16"),
// g = lane / 4, c = lane % 4:
//   A (16x16, row): a0 (g, 2c..2c+1) a1 (g+8, 2c..) a2 (g, 2c+8..) a3 (g+8, 2c+8..)
//   B (16x8, col):  b0 (k 2c..2c+1, n g) b1 (k 2c+8.., n g)
//   C (16x8, f32):  c0,c1 (g, 2c..2c+1) c2,c3 (g+8, 2c..)
// so a C tile pair packs straight into an A fragment (P and dS never leave registers on the way
// to the next product), and the B fragments of two n-tiles come from one ldmatrix.x4 (.trans for
// operands stored [k][n]).
#include <atomic>

#include "backends/cuda/attention_tc.cuh"

namespace forge::cuda {

using namespace attn;

namespace {

constexpr int kKeys = 64; // forward: keys per streamed K/V tile
// Warps per block of the mma.sync kernels (fa_fwd, fa_bwd): set_attention_tc_warps forces 4 or
// 8 for both passes; 0 takes these defaults, per head dim and pass the faster shape on an H200
// at T = 1024..8192 (every size in that run).
std::atomic<int> g_tc_warps{0};
constexpr int kFwdWarps64 = 4, kFwdWarps128 = 8, kBwdWarps64 = 8, kBwdWarps128 = 8;
// The kernels bf16 tensors take: set_attention_tc_fwd_config forces 1 (fa_fwd, mma.sync, the
// kernel of f32 tensors), 2 to 4 (fa_fwd_wg's configurations, visit_fwd_wg); set_attention_tc_
// bwd_config 1 (fa_bwd, mma.sync), 2 or 3 (fa_bwd_wg with 1 or 2 warpgroups a block); 0 takes
// these defaults, the fastest on an H200 at every T = 1024..8192 (docs/PERF.md, sessions 7, 8).
std::atomic<int> g_tc_fwd_config{0}, g_tc_bwd_config{0};
constexpr int kFwdDefault64 = 2, kFwdDefault128 = 4, kBwdDefault = 2;
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
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

// A fragment of rows [m0, m0+16), k [k0, k0+16). Tile stored [m][k]: matrix i = lane / 8 covers
// rows m0 + 8 (i % 2), cols k0 + 8 (i / 2), in a0..a3 order.
__device__ __forceinline__ void load_a_mk(uint32_t (&a)[4], const bf16* s, int ld, int m0, int k0,
                                          int lane) {
    const int i = lane >> 3, r = lane & 7;
    ldsm_x4(a, s + (m0 + (i & 1) * 8 + r) * ld + k0 + (i >> 1) * 8);
}
// Tile stored [k][m], transposed: matrix i covers rows k0 + 8 (i / 2), cols m0 + 8 (i % 2).
__device__ __forceinline__ void load_a_km(uint32_t (&a)[4], const bf16* s, int ld, int k0, int m0,
                                          int lane) {
    const int i = lane >> 3, r = lane & 7;
    ldsm_x4_trans(a, s + (k0 + (i >> 1) * 8 + r) * ld + m0 + (i & 1) * 8);
}

// B fragments of two n-tiles at once, one ldmatrix: b[0], b[1] for n [n0, n0+8) and b[2], b[3]
// for n [n0+8, n0+16), k [k0, k0+16).
// Tile stored [n][k]: matrix i = lane / 8 covers rows n0 + 8 (i / 2), cols k0 + 8 (i % 2).
__device__ __forceinline__ void load_b2_nk(uint32_t (&b)[4], const bf16* s, int ld, int n0, int k0,
                                           int lane) {
    const int i = lane >> 3, r = lane & 7;
    ldsm_x4(b, s + (n0 + (i >> 1) * 8 + r) * ld + k0 + (i & 1) * 8);
}
// Tile stored [k][n], transposed: matrix i covers rows k0 + 8 (i % 2), cols n0 + 8 (i / 2).
__device__ __forceinline__ void load_b2_kn(uint32_t (&b)[4], const bf16* s, int ld, int k0, int n0,
                                           int lane) {
    const int i = lane >> 3, r = lane & 7;
    ldsm_x4_trans(b, s + (k0 + (i & 1) * 8 + r) * ld + n0 + (i >> 1) * 8);
}

// Rows [r0, r0 + ROWS) of f32 or bf16 src (n_rows, D; rows `ld` elements apart, 16-byte
// aligned) into a bf16 tile [ROWS][D + 8], zero past n_rows,
// by NT threads, synchronously: 8 elements per thread per step (one 16-byte shared store). The
// trip count is a constant so the loop unrolls and the global loads of all steps are in flight
// together. For tiles read once per block (forward Q, backward K and V).
template <int D, int ROWS, int NT, typename T>
__device__ __forceinline__ void stage_tile(bf16* tile, const T* __restrict__ src, int64_t ld,
                                           int64_t r0, int64_t n_rows) {
    constexpr int kLd = D + 8, kChunks = D / 8, kSteps = ROWS * kChunks / NT;
    static_assert(ROWS * kChunks % NT == 0, "tile chunks must split evenly over the threads");
#pragma unroll
    for (int step = 0; step < kSteps; ++step) {
        const int e = step * NT + int(threadIdx.x);
        const int r = e / kChunks, d = (e - r * kChunks) * 8;
        uint4 packed = make_uint4(0, 0, 0, 0);
        if (r0 + r < n_rows) {
            const T* p = src + (r0 + r) * ld + d;
            if constexpr (std::is_same_v<T, bf16>) { // already bf16: 8 elements as they are
                packed = *reinterpret_cast<const uint4*>(p);
            } else {
                const float4 x0 = *reinterpret_cast<const float4*>(p);
                const float4 x1 = *reinterpret_cast<const float4*>(p + 4);
                packed = make_uint4(pack_bf16(x0.x, x0.y), pack_bf16(x0.z, x0.w),
                                    pack_bf16(x1.x, x1.y), pack_bf16(x1.z, x1.w));
            }
        }
        *reinterpret_cast<uint4*>(tile + r * kLd + d) = packed;
    }
}

// An f32 tile of ROWS rows of (n_rows, D; rows `ld` floats apart) staged asynchronously, then
// rounded to a bf16 tile [ROWS][D + 8], by NT threads. fetch() issues cp.async into `stage`
// (ROWS * D floats) without passing through registers; after cp_async_wait the same thread
// converts the same chunks, so neither step needs a barrier of its own and `stage` is free again
// as soon as a thread has converted its chunks. Chunk e = step * NT + tid is row e / (D / 8),
// cols 8 (e % (D / 8)) + 0..7; its two float4 sit in slots (2 step) NT + tid and (2 step + 1)
// NT + tid, so a warp's shared accesses are 512 contiguous bytes and its global reads 1 KiB of
// whole rows.
template <int D, int ROWS, int NT> struct F32Stage {
    static constexpr int kChunks = D / 8, kSteps = ROWS * kChunks / NT;
    static_assert(ROWS * kChunks % NT == 0, "tile chunks must split evenly over the threads");

    // A thread's chunks share their columns and lie kRowStep rows apart: one 64-bit multiply by
    // the (runtime) row stride per tile, then a pointer bump per step.
    static constexpr int kRowStep = NT / kChunks;
    static_assert(NT % kChunks == 0, "a thread's chunks must share their columns");
    __device__ __forceinline__ static void fetch(float* stage, const float* __restrict__ src,
                                                 int64_t ld, int64_t r0, int64_t n_rows) {
        const int r_first = int(threadIdx.x) / kChunks;
        const int d = (int(threadIdx.x) - r_first * kChunks) * 8;
        const float* p = src + (r0 + r_first) * ld + d;
#pragma unroll
        for (int step = 0; step < kSteps; ++step) {
            const bool ok = r0 + r_first + step * kRowStep < n_rows;
            const float* q = ok ? p : src; // nothing is read when !ok
            cp_async16(stage + ((2 * step) * NT + threadIdx.x) * 4, q, ok);
            cp_async16(stage + ((2 * step + 1) * NT + threadIdx.x) * 4, q + 4, ok);
            p += kRowStep * ld;
        }
    }
    __device__ __forceinline__ static void to_bf16(bf16* tile, const float* stage) {
#pragma unroll
        for (int step = 0; step < kSteps; ++step) {
            const int e = step * NT + int(threadIdx.x);
            const int r = e / kChunks, d = (e - r * kChunks) * 8;
            const float4 x0 =
                *reinterpret_cast<const float4*>(stage + ((2 * step) * NT + threadIdx.x) * 4);
            const float4 x1 =
                *reinterpret_cast<const float4*>(stage + ((2 * step + 1) * NT + threadIdx.x) * 4);
            *reinterpret_cast<uint4*>(tile + r * (D + 8) + d) =
                make_uint4(pack_bf16(x0.x, x0.y), pack_bf16(x0.z, x0.w), pack_bf16(x1.x, x1.y),
                           pack_bf16(x1.z, x1.w));
        }
    }
};

// Rows [r0, r0 + ROWS) of bf16 src (n_rows, D; rows `ld` elements apart) copied with cp.async
// straight into the tile [ROWS][D + 8], zero past n_rows, by NT threads (the bf16 counterpart of
// F32Stage: no staging, no conversion); the caller commits, waits and synchronises before
// reading, and before overwriting a tile in use.
template <int D, int ROWS, int NT>
__device__ __forceinline__ void fetch_bf16_rows(bf16* tile, const bf16* __restrict__ src,
                                                int64_t ld, int64_t r0, int64_t n_rows) {
    constexpr int kChunks = D / 8, kSteps = ROWS * kChunks / NT;
    static_assert(ROWS * kChunks % NT == 0, "tile chunks must split evenly over the threads");
#pragma unroll
    for (int step = 0; step < kSteps; ++step) {
        const int e = step * NT + int(threadIdx.x);
        const int r = e / kChunks, d = (e - r * kChunks) * 8;
        const bool ok = r0 + r < n_rows;
        cp_async16(tile + r * (D + 8) + d, ok ? src + (r0 + r) * ld + d : src, ok);
    }
}

// ---------------------------------------------------------------- forward

// grid (ceil(Tq / 128), B * Hq), 32 W threads; a warp owns M = 8 / W m-tiles (16 M query rows),
// the block 128. smem: f32 staging [64 * D], Q [128][D + 8], K, V [64][D + 8] bf16.
// Per 64-key tile: K's copy landed -> bf16, V's copy starts; S = Q K^T and the online softmax;
// V's copy landed -> bf16, the next K's copy starts; O += P V. So each copy has half a tile's
// work to land in, and the staging area holds one tile.
template <int D, int W, typename T>
__global__ void __launch_bounds__(32 * W)
    fa_fwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
           T* __restrict__ out, float* __restrict__ lse, TcGeo g) {
    constexpr int M = 8 / W, kLd = D + 8, kNt = kKeys / 8, kDt = D / 8, kBm = 16 * M * W;
    constexpr int NT = 32 * W;
    constexpr bool kBf16 = std::is_same_v<T, bf16>; // K/V copied straight into their tiles
    using KV = F32Stage<D, kKeys, NT>;
    extern __shared__ __align__(16) unsigned char smem_tc[];
    auto* Fs = reinterpret_cast<float*>(smem_tc); // f32 staging (f32 inputs only)
    auto* Qs = reinterpret_cast<bf16*>(Fs + (kBf16 ? 0 : kKeys * D));
    bf16* Ks = Qs + kBm * kLd;
    bf16* Vs = Ks + kKeys * kLd;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g4 = lane >> 2, c4 = lane & 3;
    const int64_t bh = blockIdx.y, b = bh / g.Hq, h = bh % g.Hq, hk = h / (g.Hq / g.Hkv);
    // The last query tiles (most keys under causal masking) start first.
    const int64_t q0 = (int64_t(gridDim.x) - 1 - blockIdx.x) * kBm;
    const T* K = k + g.k.at(b, hk, 0);
    const T* V = v + g.v.at(b, hk, 0);
    const int64_t last_q = min64(g.Tq, q0 + kBm) - 1;
    const int64_t k_end = g.causal ? min64(g.Tk, g.Tk - g.Tq + last_q + 1) : g.Tk;
    if constexpr (kBf16)
        fetch_bf16_rows<D, kKeys, NT>(Ks, K, g.k.t, 0, g.Tk);
    else
        KV::fetch(Fs, K, g.k.t, 0, g.Tk);
    cp_async_commit();
    stage_tile<D, kBm, NT>(Qs, q + g.q.at(b, h, 0), g.q.t, q0, g.Tq);
    // This warp's rows: r_w + 16 mi + g4 (c0, c1) and + 8 (c2, c3) of m-tile mi.
    const int64_t r_w = q0 + warp * 16 * M;
    float o[M][kDt][4] = {};
    float m[M][2], l[M][2] = {};
#pragma unroll
    for (int mi = 0; mi < M; ++mi)
        m[mi][0] = m[mi][1] = -INFINITY;
    for (int64_t k0 = 0; k0 < k_end; k0 += kKeys) {
        cp_async_wait<0>();
        if constexpr (kBf16) {
            __syncthreads(); // Ks (and Qs) complete; every warp is done with Vs
            fetch_bf16_rows<D, kKeys, NT>(Vs, V, g.v.t, k0, g.Tk);
            cp_async_commit();
        } else {
            KV::to_bf16(Ks, Fs);
            KV::fetch(Fs, V, g.v.t, k0, g.Tk);
            cp_async_commit();
            __syncthreads(); // Ks (and Qs, on the first tile) complete
        }
        float s[M][kNt][4] = {};
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            uint32_t a[M][4];
#pragma unroll
            for (int mi = 0; mi < M; ++mi)
                load_a_mk(a[mi], Qs, kLd, warp * 16 * M + 16 * mi, kk * 16, lane);
#pragma unroll
            for (int nt = 0; nt < kNt; nt += 2) {
                uint32_t bk[4];
                load_b2_nk(bk, Ks, kLd, nt * 8, kk * 16, lane);
#pragma unroll
                for (int mi = 0; mi < M; ++mi) {
                    mma_bf16(s[mi][nt], a[mi], bk[0], bk[1]);
                    mma_bf16(s[mi][nt + 1], a[mi], bk[2], bk[3]);
                }
            }
        }
        // The mask in tile coordinates (32-bit): key k0 + kj is visible to row r_w + ri iff
        // kj < n_keys and, causal, kj - ri <= diag (clamped: kj - ri lies in [1 - 16 M, 63]).
        // `full`: every key of the tile visible to every row of this warp, no per-element mask.
        const int n_keys = int(min64(g.Tk - k0, kKeys));
        const int diag = int(max64(min64(g.Tk - g.Tq + r_w - k0, kKeys), -kBm));
        const bool full = n_keys == kKeys && (!g.causal || diag >= kKeys - 1);
        float base[M][2];
#pragma unroll
        for (int mi = 0; mi < M; ++mi) {
            float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int nt = 0; nt < kNt; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    float x = s[mi][nt][e] * g.scale_log2;
                    if (!full) {
                        const int ri = 16 * mi + g4 + (e >> 1) * 8, kj = nt * 8 + 2 * c4 + (e & 1);
                        if (kj >= n_keys || (g.causal && kj - ri > diag)) x = -INFINITY;
                    }
                    s[mi][nt][e] = x;
                    mx[e >> 1] = fmaxf(mx[e >> 1], x);
                }
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const float m_new = fmaxf(m[mi][r], quad_max(mx[r]));
                base[mi][r] = m_new == -INFINITY ? 0.f : m_new; // nothing visible yet
                const float corr = exp2f(m[mi][r] - base[mi][r]);
                m[mi][r] = m_new;
                l[mi][r] *= corr;
#pragma unroll
                for (int dt = 0; dt < kDt; ++dt) {
                    o[mi][dt][2 * r] *= corr;
                    o[mi][dt][2 * r + 1] *= corr;
                }
            }
#pragma unroll
            for (int nt = 0; nt < kNt; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    s[mi][nt][e] = exp2f(s[mi][nt][e] - base[mi][e >> 1]);
                    l[mi][e >> 1] += s[mi][nt][e];
                }
        }
        cp_async_wait<0>();
        if constexpr (kBf16) {
            __syncthreads(); // Vs complete; every warp is done with Ks
            if (k0 + kKeys < k_end) fetch_bf16_rows<D, kKeys, NT>(Ks, K, g.k.t, k0 + kKeys, g.Tk);
            cp_async_commit();
        } else {
            KV::to_bf16(Vs, Fs);
            if (k0 + kKeys < k_end) KV::fetch(Fs, K, g.k.t, k0 + kKeys, g.Tk);
            cp_async_commit();
            __syncthreads(); // Vs complete; every warp is done with Ks
        }
        // O += P V: P from registers, V stored [key][d] = [k][n].
#pragma unroll
        for (int kk = 0; kk < kNt / 2; ++kk) {
            uint32_t a[M][4];
#pragma unroll
            for (int mi = 0; mi < M; ++mi)
                c_to_a(a[mi], s[mi][2 * kk], s[mi][2 * kk + 1]);
#pragma unroll
            for (int dt = 0; dt < kDt; dt += 2) {
                uint32_t bv[4];
                load_b2_kn(bv, Vs, kLd, kk * 16, dt * 8, lane);
#pragma unroll
                for (int mi = 0; mi < M; ++mi) {
                    mma_bf16(o[mi][dt], a[mi], bv[0], bv[1]);
                    mma_bf16(o[mi][dt + 1], a[mi], bv[2], bv[3]);
                }
            }
        }
    }
#pragma unroll
    for (int mi = 0; mi < M; ++mi)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int64_t i = r_w + 16 * mi + g4 + 8 * r;
            const float lsum = quad_sum(l[mi][r]);
            if (i >= g.Tq) continue;
            const float inv = 1.f / lsum;
            T* orow = out + g.o.at(b, h, i);
#pragma unroll
            for (int dt = 0; dt < kDt; ++dt)
                store2(orow + dt * 8 + 2 * c4, o[mi][dt][2 * r] * inv, o[mi][dt][2 * r + 1] * inv);
            if (c4 == 0) lse[bh * g.Tq + i] = (m[mi][r] + log2f(lsum)) * kLn2;
        }
}

// ---------------------------------------------------------------- backward

// Per query row (B Hq Tq rows of D, one warp each, grid-stride): delta = dO . O in f32,
// lse2 = lse * log2(e) (the log2-domain statistic fa_bwd subtracts), and Q and dO rounded to bf16
// once, since fa_bwd reads every query tile once per key block; qb, gb, lse2 and delta are
// contiguous (B, Hq, Tq, ...). Also zeroes the row of dq (at g.dq: dq itself when f32, else the
// f32 accumulator fa_bwd_dq_out rounds), which fa_bwd adds to atomically (a memset could not skip
// the other rows of a strided dq). dout is f32, or bf16 like q.
template <int D, typename T, typename TG>
__global__ void fa_bwd_prep(const T* __restrict__ q, const TG* __restrict__ dout,
                            const T* __restrict__ out, const float* __restrict__ lse,
                            float* __restrict__ dq, bf16* __restrict__ qb, bf16* __restrict__ gb,
                            float* __restrict__ lse2, float* __restrict__ delta, int64_t rows,
                            TcGeo g) {
    const int lane = threadIdx.x & 31;
    const int64_t n_warps = int64_t(gridDim.x) * blockDim.x / 32;
    for (int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; row < rows;
         row += n_warps) {
        const int64_t bh = row / g.Tq, i = row % g.Tq, b = bh / g.Hq, h = bh % g.Hq;
        const T* qr = q + g.q.at(b, h, i);
        const TG* gr = dout + g.g.at(b, h, i);
        const T* orow = out + g.o.at(b, h, i);
        float* dqr = dq + g.dq.at(b, h, i);
        float s = 0;
#pragma unroll
        for (int p = 0; p < D / 64; ++p) {
            const int64_t d = 2 * (p * 32 + lane), at = row * D + d;
            const float2 go = load2(gr + d);
            const float2 o = load2(orow + d);
            const float2 x = load2(qr + d);
            s += go.x * o.x + go.y * o.y;
            *reinterpret_cast<uint32_t*>(gb + at) = pack_bf16(go.x, go.y);
            *reinterpret_cast<uint32_t*>(qb + at) = pack_bf16(x.x, x.y);
            *reinterpret_cast<float2*>(dqr + d) = make_float2(0.f, 0.f);
        }
        s = warp_sum(s);
        if (lane == 0) {
            delta[row] = s;
            lse2[row] = lse[row] * kLog2e;
        }
    }
}

// dK, dV and dQ, key-major: grid (ceil(Tk / 16 W), B * Hkv), 32 W threads; a warp owns 16 keys.
// The block loops over the 64-query tiles of every query head of its group that see its keys;
// per tile (Q, dO, lse2, delta in shared memory, the next tile's copy in flight):
//   S^T = K Q^T, dP^T = V dO^T            (16 keys x 64 queries per warp)
//   P^T = exp2(S^T scale_log2 - lse2), dS^T = P^T (dP^T - delta)
//   dV += P^T dO, dK += dS^T Q              (registers)
//   dS^T -> shared, then dQ (64 x D) += dS K, split over the warps, added to dq atomically.
// smem: K, V [16 W][D + 8]; Q, dO [2][64][D + 8] bf16; dS^T [16 W][64 + 8] bf16; lse2, delta
// [2][64] f32. dq (f32, at g.dq) must be zero on entry; dk, dv (in k's type) are written whole.
template <int D, int W, typename T>
__global__ void __launch_bounds__(32 * W)
    fa_bwd(const T* __restrict__ k, const T* __restrict__ v, const bf16* __restrict__ qb,
           const bf16* __restrict__ gb, const float* __restrict__ lse2,
           const float* __restrict__ delta, float* __restrict__ dq, T* __restrict__ dk,
           T* __restrict__ dv, TcGeo g, float scale) {
    constexpr int kLd = D + 8, kNt = kQRows / 8, kDt = D / 8, kBn = 16 * W, kLdS = kQRows + 8;
    constexpr int NT = 32 * W;
    // dQ's split: warp w takes query m-tile w % 4 and d n-tiles [(w / 4) kDq, + kDq).
    constexpr int kDq = kDt / (W / 4), kDc = kDq < 8 ? kDq : 8;
    static_assert(NT >= 2 * kQRows && kDq % kDc == 0 && kDc % 2 == 0, "4 or 8 warps");
    extern __shared__ __align__(16) unsigned char smem_tc[];
    auto* Ks = reinterpret_cast<bf16*>(smem_tc);
    bf16* Vs = Ks + kBn * kLd;
    bf16* Qs = Vs + kBn * kLd;                            // [2][kQRows][kLd]
    bf16* Gs = Qs + 2 * kQRows * kLd;                     // [2][kQRows][kLd]
    bf16* Ss = Gs + 2 * kQRows * kLd;                     // [kBn][kLdS]
    auto* Ls = reinterpret_cast<float*>(Ss + kBn * kLdS); // [2][kQRows]
    float* Ds = Ls + 2 * kQRows;                          // [2][kQRows]
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g4 = lane >> 2, c4 = lane & 3;
    const int64_t bk = blockIdx.y, b = bk / g.Hkv, hk = bk % g.Hkv;
    const int64_t j_first = int64_t(blockIdx.x) * kBn; // causal: low keys (most work) first
    const BwdTiles tiles(g, b, hk, j_first);
    const int64_t n_iter = tiles.n_iter;
    auto fetch = [&](int64_t it, int buf) {
        int64_t qh, i0;
        tiles.at(it, qh, i0);
        fetch_bf16_rows<D, kQRows, NT>(Qs + buf * kQRows * kLd, qb + qh * g.Tq * D, D, i0, g.Tq);
        fetch_bf16_rows<D, kQRows, NT>(Gs + buf * kQRows * kLd, gb + qh * g.Tq * D, D, i0, g.Tq);
        fetch_lse_delta(Ls + buf * kQRows, Ds + buf * kQRows, lse2, delta, qh, i0, g.Tq);
    };
    fetch(0, 0);
    cp_async_commit();
    stage_tile<D, kBn, NT>(Ks, k + g.k.at(b, hk, 0), g.k.t, j_first, g.Tk);
    stage_tile<D, kBn, NT>(Vs, v + g.v.at(b, hk, 0), g.v.t, j_first, g.Tk);
    // Keys of this thread's C rows: j_w + g4 and j_w + g4 + 8.
    const int64_t j_w = j_first + warp * 16;
    float ak[kDt][4] = {}, av[kDt][4] = {};
    for (int64_t it = 0; it < n_iter; ++it) {
        const int buf = int(it & 1);
        // Buffer buf ^ 1 was last read before the previous iteration's second barrier.
        if (it + 1 < n_iter) fetch(it + 1, buf ^ 1);
        cp_async_commit();
        cp_async_wait<1>(); // this thread's copies of tile `it` landed
        __syncthreads();    // everyone's (and K, V on the first pass)
        int64_t qh, i0;
        tiles.at(it, qh, i0);
        float* dq_head = dq + g.dq.at(b, qh - b * g.Hq, 0); // no division in the loop below
        const bf16* Qt = Qs + buf * kQRows * kLd;
        const bf16* Gt = Gs + buf * kQRows * kLd;
        const float* Lt = Ls + buf * kQRows;
        const float* Dt = Ds + buf * kQRows;
        float s[kNt][4] = {}, dp[kNt][4] = {};
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            uint32_t ka[4], va[4];
            load_a_mk(ka, Ks, kLd, warp * 16, kk * 16, lane);
            load_a_mk(va, Vs, kLd, warp * 16, kk * 16, lane);
#pragma unroll
            for (int nt = 0; nt < kNt; nt += 2) {
                uint32_t bq[4];
                load_b2_nk(bq, Qt, kLd, nt * 8, kk * 16, lane);
                mma_bf16(s[nt], ka, bq[0], bq[1]);
                mma_bf16(s[nt + 1], ka, bq[2], bq[3]);
                load_b2_nk(bq, Gt, kLd, nt * 8, kk * 16, lane);
                mma_bf16(dp[nt], va, bq[0], bq[1]);
                mma_bf16(dp[nt + 1], va, bq[2], bq[3]);
            }
        }
        // The mask in tile coordinates (32-bit): query i0 + qi sees key j_w + kj iff qi < n_q,
        // kj < n_k and, causal, kj - qi <= diag (clamped: kj - qi lies in [-63, 15]). `full`:
        // every pair of this warp's 16 x 64 block is a real, visible one.
        const int n_q = int(min64(g.Tq - i0, kQRows)), n_k = int(min64(g.Tk - j_w, 16));
        const int diag = int(max64(min64(g.Tk - g.Tq + i0 - j_w, 16), -kQRows - 1));
        const bool full = n_q == kQRows && n_k == 16 && (!g.causal || diag >= 15);
#pragma unroll
        for (int nt = 0; nt < kNt; ++nt) {
            const int col = nt * 8 + 2 * c4; // queries i0 + col, i0 + col + 1
            const float2 L = *reinterpret_cast<const float2*>(Lt + col);
            const float2 Dl = *reinterpret_cast<const float2*>(Dt + col);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float p = exp2f(s[nt][e] * g.scale_log2 - (e & 1 ? L.y : L.x));
                if (!full) {
                    const int qi = col + (e & 1), kj = g4 + 8 * (e >> 1);
                    if (qi >= n_q || kj >= n_k || (g.causal && kj - qi > diag)) p = 0.f;
                }
                s[nt][e] = p;                                        // P^T
                dp[nt][e] = p * (dp[nt][e] - (e & 1 ? Dl.y : Dl.x)); // dS^T
            }
        }
        // dV += P^T dO, dK += dS^T Q (dO, Q stored [query][d] = [k][n]); dS^T's A fragments go to
        // shared memory as they are, rows = keys, for dQ.
#pragma unroll
        for (int kk = 0; kk < kNt / 2; ++kk) {
            uint32_t ap[4], ad[4];
            c_to_a(ap, s[2 * kk], s[2 * kk + 1]);
            c_to_a(ad, dp[2 * kk], dp[2 * kk + 1]);
            bf16* srow = Ss + (warp * 16 + g4) * kLdS + kk * 16 + 2 * c4;
            *reinterpret_cast<uint32_t*>(srow) = ad[0];
            *reinterpret_cast<uint32_t*>(srow + 8 * kLdS) = ad[1];
            *reinterpret_cast<uint32_t*>(srow + 8) = ad[2];
            *reinterpret_cast<uint32_t*>(srow + 8 * kLdS + 8) = ad[3];
#pragma unroll
            for (int dt = 0; dt < kDt; dt += 2) {
                uint32_t bb[4];
                load_b2_kn(bb, Gt, kLd, kk * 16, dt * 8, lane);
                mma_bf16(av[dt], ap, bb[0], bb[1]);
                mma_bf16(av[dt + 1], ap, bb[2], bb[3]);
                load_b2_kn(bb, Qt, kLd, kk * 16, dt * 8, lane);
                mma_bf16(ak[dt], ad, bb[0], bb[1]);
                mma_bf16(ak[dt + 1], ad, bb[2], bb[3]);
            }
        }
        __syncthreads(); // dS^T complete; every warp is done with Qt, Gt
        // dQ rows i0 + 16 (warp % 4) + 0..15, d n-tiles [dn0, dn0 + kDq) in chunks of kDc (at
        // most 8: dK and dV hold 8 kDt registers meanwhile): A = dS (stored [key][query] =
        // [k][m]), B = K (stored [key][d] = [k][n]), k = the block's 16 W keys.
        const int mt = warp % 4;
        const int64_t i_r = i0 + mt * 16 + g4; // rows i_r, i_r + 8 of the C tiles
#pragma unroll
        for (int dn0 = (warp / 4) * kDq; dn0 < (warp / 4 + 1) * kDq; dn0 += kDc) {
            float aq[kDc][4] = {};
#pragma unroll
            for (int kk = 0; kk < W; ++kk) {
                uint32_t a[4];
                load_a_km(a, Ss, kLdS, kk * 16, mt * 16, lane);
#pragma unroll
                for (int dt = 0; dt < kDc; dt += 2) {
                    uint32_t bb[4];
                    load_b2_kn(bb, Ks, kLd, kk * 16, (dn0 + dt) * 8, lane);
                    mma_bf16(aq[dt], a, bb[0], bb[1]);
                    mma_bf16(aq[dt + 1], a, bb[2], bb[3]);
                }
            }
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                if (i_r + 8 * r >= g.Tq) continue;
                float* row = dq_head + (i_r + 8 * r) * g.dq.t + dn0 * 8 + 2 * c4;
#pragma unroll
                for (int dt = 0; dt < kDc; ++dt)
                    atomicAdd(reinterpret_cast<float2*>(row + dt * 8),
                              make_float2(aq[dt][2 * r] * scale, aq[dt][2 * r + 1] * scale));
            }
        }
        // Ss is rewritten only after the next iteration's first barrier, which every warp
        // reaches after its dQ product.
    }
    cp_async_wait<0>(); // the last (empty) group
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int64_t j = j_w + g4 + 8 * r;
        if (j >= g.Tk) continue;
        T* krow = dk + g.dk.at(b, hk, j);
        T* vrow = dv + g.dv.at(b, hk, j);
#pragma unroll
        for (int dt = 0; dt < kDt; ++dt) {
            store2(krow + dt * 8 + 2 * c4, ak[dt][2 * r] * scale, ak[dt][2 * r + 1] * scale);
            store2(vrow + dt * 8 + 2 * c4, av[dt][2 * r], av[dt][2 * r + 1]);
        }
    }
}

// bf16 dq (B, Hq, Tq, D; any row strides) from fa_bwd's f32 accumulator (contiguous): 8 elements
// per thread, grid-stride.
template <int D>
__global__ void fa_bwd_dq_out(const float* __restrict__ acc, bf16* __restrict__ dq, int64_t rows,
                              TcGeo g) {
    constexpr int kChunks = D / 8;
    const int64_t n = rows * kChunks, stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride) {
        const int64_t row = e / kChunks, d = (e - row * kChunks) * 8;
        const int64_t bh = row / g.Tq, i = row - bh * g.Tq, b = bh / g.Hq, h = bh - b * g.Hq;
        const float4 x0 = *reinterpret_cast<const float4*>(acc + row * D + d);
        const float4 x1 = *reinterpret_cast<const float4*>(acc + row * D + d + 4);
        *reinterpret_cast<uint4*>(dq + g.dq.at(b, h, i) + d) =
            make_uint4(pack_bf16(x0.x, x0.y), pack_bf16(x0.z, x0.w), pack_bf16(x1.x, x1.y),
                       pack_bf16(x1.z, x1.w));
    }
}

// Every row start 16-byte aligned (cp.async and 16-byte loads): the base and the B, H, T
// strides; and the last dim contiguous.
bool rows_aligned16(const Tensor& t) {
    if (t.dim() != 4 || t.strides()[3] != 1 || (reinterpret_cast<uintptr_t>(t.data_ptr()) & 15))
        return false;
    const int64_t per16 = 16 / int64_t(dtype_size(t.dtype()));
    for (int d = 0; d < 3; ++d)
        if (t.size(d) > 1 && t.strides()[size_t(d)] % per16 != 0) return false;
    return true;
}

// f.template operator()<T>() for the inputs' storage type (f32 or bf16).
template <typename F> void visit_input(DType dt, F&& f) {
    if (dt == DType::bf16) f.template operator()<bf16>();
    else f.template operator()<float>();
}

// f.template operator()<D, W>() for head dim D (64 or 128) and the warps per block of the pass.
template <typename F> void visit_shape(int64_t D, bool backward, F&& f) {
    const int forced = g_tc_warps.load();
    const int dflt = D == 64 ? (backward ? kBwdWarps64 : kFwdWarps64)
                             : (backward ? kBwdWarps128 : kFwdWarps128);
    const bool eight = (forced ? forced : dflt) == 8;
    if (D == 64) eight ? f.template operator()<64, 8>() : f.template operator()<64, 4>();
    else eight ? f.template operator()<128, 8>() : f.template operator()<128, 4>();
}

// The forward's configuration for head dim D: set_attention_tc_fwd_config's choice, else the
// default.
int fwd_config(int64_t D) {
    const int c = g_tc_fwd_config.load();
    return c ? c : (D == 64 ? kFwdDefault64 : kFwdDefault128);
}

constexpr size_t tile_bytes(int D, int rows) { return size_t(rows) * (D + 8) * sizeof(bf16); }

} // namespace

void set_attention_tc_warps(int warps) {
    FORGE_CHECK(warps == 0 || warps == 4 || warps == 8,
                "[attention] tensor-core kernel warps must be 0 (default), 4 or 8, got ", warps);
    g_tc_warps.store(warps);
}

void set_attention_tc_fwd_config(int config) {
    FORGE_CHECK(config >= 0 && config <= 4,
                "[attention] tensor-core forward config must be 0 (default) to 4, got ", config);
    g_tc_fwd_config.store(config);
}

void set_attention_tc_bwd_config(int config) {
    FORGE_CHECK(config >= 0 && config <= 3,
                "[attention] tensor-core backward config must be 0 (default) to 3, got ", config);
    g_tc_bwd_config.store(config);
}

bool attention_tc_supported(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                            std::initializer_list<const Tensor*> others) {
    const int64_t D = q.size(3), Tq = q.size(2), Tk = k.size(2);
    const DType dt = q.dtype();
    bool ok = (dt == DType::f32 || dt == DType::bf16) && k.dtype() == dt && v.dtype() == dt &&
              (D == 64 || D == 128) && !(causal && Tq > Tk) && Tq > 0 && Tk > 0 &&
              q.size(0) * q.size(1) < 65536 && rows_aligned16(q) && rows_aligned16(k) &&
              rows_aligned16(v);
    for (const Tensor* t : others)
        ok = ok && rows_aligned16(*t);
    return ok;
}

void attention_tc_forward(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                          bool causal, const Tensor& out, const Tensor& lse) {
    TcGeo g{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), scale * kLog2e, causal};
    g.q = head_rows(q), g.k = head_rows(k), g.v = head_rows(v), g.o = head_rows(out);
    cudaStream_t s = stream_of(q);
    const int config = fwd_config(q.size(3));
    if (q.dtype() == DType::bf16 && scale > 0.f && config >= 2) {
        launch_fa_fwd_wg(config, q.size(3), g, q.data<bf16>(), k.data<bf16>(), v.data<bf16>(),
                         out.data<bf16>(), lse.data<float>(), s);
        check_launch("attention (tensor cores, wgmma)");
        return;
    }
    visit_input(q.dtype(), [&]<typename T>() {
        visit_shape(q.size(3), false, [&]<int D, int W>() {
            constexpr int kBm = 128; // 16 rows x 8 / W m-tiles x W warps
            const dim3 grid(unsigned((g.Tq + kBm - 1) / kBm), unsigned(g.B * g.Hq));
            const size_t staging = std::is_same_v<T, bf16> ? 0 : size_t(kKeys) * D * sizeof(float);
            const size_t smem = staging + tile_bytes(D, kBm) + 2 * tile_bytes(D, kKeys);
            set_smem_tc(fa_fwd<D, W, T>, smem);
            fa_fwd<D, W, T><<<grid, 32 * W, smem, s>>>(q.data<T>(), k.data<T>(), v.data<T>(),
                                                       out.data<T>(), lse.data<float>(), g);
        });
    });
    check_launch("attention (tensor cores)");
}

void attention_tc_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                           const Tensor& lse, const Tensor& dout, float scale, bool causal,
                           const Tensor& dq, const Tensor& dk, const Tensor& dv) {
    TcGeo g{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), scale * kLog2e, causal};
    g.q = head_rows(q), g.k = head_rows(k), g.v = head_rows(v), g.o = head_rows(out);
    g.g = head_rows(dout), g.dq = head_rows(dq), g.dk = head_rows(dk), g.dv = head_rows(dv);
    const int D = int(q.size(3));
    const bool half = q.dtype() == DType::bf16;
    cudaStream_t s = stream_of(q);
    // Scratch: for bf16 dq its f32 accumulator (rows x D, first: 16-byte aligned); Q and dO in
    // bf16 (rows x D each), lse2 and delta (rows each).
    const int64_t rows = g.B * g.Hq * g.Tq;
    const size_t acc_bytes = half ? size_t(rows) * D * sizeof(float) : 0;
    auto scratch = backend().allocate(
        acc_bytes + size_t(rows) * (2 * D * sizeof(bf16) + 2 * sizeof(float)), q.device());
    auto* acc = static_cast<float*>(scratch->data);
    auto* qb = reinterpret_cast<bf16*>(static_cast<unsigned char*>(scratch->data) + acc_bytes);
    bf16* gb = qb + rows * D;
    auto* lse2 = reinterpret_cast<float*>(gb + rows * D);
    float* delta = lse2 + rows;
    // Where fa_bwd adds dq: dq itself (f32), or the accumulator, contiguous (B, Hq, Tq, D).
    TcGeo ga = g;
    float* dq_f32 = half ? acc : dq.data<float>();
    if (half) ga.dq = HeadRows{g.Hq * g.Tq * D, g.Tq * D, D};
    const unsigned prep_blocks = blocks_for(rows * 32);
    auto prep = [&]<typename T, typename TG>() {
        if (D == 64)
            fa_bwd_prep<64, T, TG><<<prep_blocks, kBlock, 0, s>>>(
                q.data<T>(), dout.data<TG>(), out.data<T>(), lse.data<float>(), dq_f32, qb, gb,
                lse2, delta, rows, ga);
        else
            fa_bwd_prep<128, T, TG><<<prep_blocks, kBlock, 0, s>>>(
                q.data<T>(), dout.data<TG>(), out.data<T>(), lse.data<float>(), dq_f32, qb, gb,
                lse2, delta, rows, ga);
    };
    if (!half) prep.template operator()<float, float>();
    else if (dout.dtype() == DType::bf16) prep.template operator()<bf16, bf16>();
    else prep.template operator()<bf16, float>();
    const int forced = g_tc_bwd_config.load(), bwd_config = forced ? forced : kBwdDefault;
    if (half && bwd_config >= 2) {
        launch_fa_bwd_wg(bwd_config, D, ga, k.data<bf16>(), v.data<bf16>(), qb, gb, lse2, delta,
                         dq_f32, dk.data<bf16>(), dv.data<bf16>(), scale, s);
    } else {
        visit_input(q.dtype(), [&]<typename T>() {
            visit_shape(D, true, [&]<int HD, int W>() {
                constexpr int kBn = 16 * W;
                const size_t smem = 2 * tile_bytes(HD, kBn) + 4 * tile_bytes(HD, kQRows) +
                                    size_t(kBn) * (kQRows + 8) * sizeof(bf16) +
                                    4 * kQRows * sizeof(float);
                set_smem_tc(fa_bwd<HD, W, T>, smem);
                const dim3 grid(unsigned((g.Tk + kBn - 1) / kBn), unsigned(g.B * g.Hkv));
                fa_bwd<HD, W, T><<<grid, 32 * W, smem, s>>>(k.data<T>(), v.data<T>(), qb, gb,
                                                            lse2, delta, dq_f32, dk.data<T>(),
                                                            dv.data<T>(), ga, scale);
            });
        });
    }
    if (half) {
        const unsigned blocks = blocks_for(rows * (D / 8));
        if (D == 64)
            fa_bwd_dq_out<64><<<blocks, kBlock, 0, s>>>(acc, dq.data<bf16>(), rows, g);
        else
            fa_bwd_dq_out<128><<<blocks, kBlock, 0, s>>>(acc, dq.data<bf16>(), rows, g);
    }
    check_launch("attention_backward (tensor cores)");
}

} // namespace forge::cuda
