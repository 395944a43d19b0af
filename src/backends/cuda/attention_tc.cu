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
// ldmatrix rows of a warp fall in distinct banks. Fragment layouts (PTX ISA, "mma.m16n8k16"), g = lane / 4, c = lane % 4:
//   A (16x16, row): a0 (g, 2c..2c+1) a1 (g+8, 2c..) a2 (g, 2c+8..) a3 (g+8, 2c+8..)
//   B (16x8, col):  b0 (k 2c..2c+1, n g) b1 (k 2c+8.., n g)
//   C (16x8, f32):  c0,c1 (g, 2c..2c+1) c2,c3 (g+8, 2c..)
// so a C tile pair packs straight into an A fragment (P and dS never leave registers on the way
// to the next product), and the B fragments of two n-tiles come from one ldmatrix.x4 (.trans for
// operands stored [k][n]).
#include <atomic>

#include "backends/cuda/attention.cuh"
#include "backends/cuda/wgmma.cuh"

namespace forge::cuda {

namespace {

constexpr int kKeys = 64;  // forward: keys per streamed K/V tile
constexpr int kQRows = 64; // backward: queries per streamed Q/dO tile
// Warps per block of the mma.sync kernels (fa_fwd, fa_bwd): set_attention_tc_warps forces 4 or
// 8 for both passes; 0 takes these defaults, per head dim and pass the faster shape on an H200
// at T = 1024..8192 (every size in that run).
std::atomic<int> g_tc_warps{0};
constexpr int kFwdWarps64 = 4, kFwdWarps128 = 8, kBwdWarps64 = 8, kBwdWarps128 = 8;
// The kernels bf16 tensors take: set_attention_tc_fwd_config forces 1 (fa_fwd, mma.sync, the
// kernel of f32 tensors), 2 or 3 (fa_fwd_wg's block shapes, visit_fwd_wg); set_attention_tc_
// bwd_config 1 (fa_bwd, mma.sync), 2 or 3 (fa_bwd_wg with 1 or 2 warpgroups a block); 0 takes
// these defaults, the fastest on an H200 at every T = 1024..8192 (docs/PERF.md, session 7).
std::atomic<int> g_tc_fwd_config{0}, g_tc_bwd_config{0};
constexpr int kFwdDefault64 = 2, kFwdDefault128 = 3, kBwdDefault = 2;
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

// 2^x on the special-function unit alone (exp2f adds a denormal range fix-up around it without
// --use_fast_math); x = -inf gives 0, results below 2^-126 flush to 0.
__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Rows [r0, r0 + ROWS) of bf16 src (n_rows, D; rows `ld` elements apart) copied with cp.async
// into a 128-byte-swizzled tile (wgmma.cuh's layout: column half hf of row r at (hf ROWS + r) 64
// elements, its 16-byte chunk c at chunk c ^ (r % 8)), zero past n_rows, by NT threads.
template <int D, int ROWS, int NT>
__device__ __forceinline__ void fetch_bf16_sw128(bf16* tile, const bf16* __restrict__ src,
                                                 int64_t ld, int64_t r0, int64_t n_rows) {
    constexpr int kChunks = D / 8, kSteps = ROWS * kChunks / NT;
    static_assert(ROWS * kChunks % NT == 0, "tile chunks must split evenly over the threads");
#pragma unroll
    for (int step = 0; step < kSteps; ++step) {
        const int e = step * NT + int(threadIdx.x);
        const int r = e / kChunks, c = e - r * kChunks;
        const bool ok = r0 + r < n_rows;
        cp_async16(tile + ((c >> 3) * ROWS + r) * 64 + ((c & 7) ^ (r & 7)) * 8,
                   ok ? src + (r0 + r) * ld + c * 8 : src, ok);
    }
}

// Offset (elements) of element (r, d) in a 128-byte-swizzled tile of ROWS rows.
template <int ROWS> __device__ __forceinline__ int sw128_at(int r, int d) {
    return ((d >> 6) * ROWS + r) * 64 + (((d >> 3) & 7) ^ (r & 7)) * 8 + (d & 7);
}

// The forward on bf16 tensors with Hopper's warpgroup MMA (wgmma.cuh), for a positive scale:
// grid (ceil(Tq / 64 NWG), B * Hq), NWG warpgroups of 128 threads, each owning 64 query rows
// (warp w: rows 16 w..16 w + 15 of the block). Q, and K/V tiles of BN keys (double buffered:
// tile t + 1's cp.async copies are issued as tile t's math starts, so one barrier per tile
// suffices), sit in 128-byte-swizzled shared tiles the tensor cores read directly: S = Q K^T
// takes both from shared memory (K-major), O += P V takes P from registers (packed to bf16 from
// S's accumulator) and V from shared memory as stored, [key][d] (MN-major).
// The online softmax: the row max on the raw scores, P = 2^(S scale log2(e) - m) as one FFMA and
// one ex2. The running max m of a row moves only when a tile's max exceeds it by more than
// kSlack (P <= 2^kSlack: far from overflow, and bf16's relative precision does not depend on
// magnitude), and O is rescaled only when some row of the warp moved: after the first tiles the
// max rarely grows, so the rescale mostly drops out. Tiles wholly visible to a warp skip the
// mask; a warpgroup skips the tiles wholly above its causal diagonal. smem: 1 KB alignment
// slack, Q [D/64][64 NWG][64], K and V [2][D/64][BN][64], bf16; Q's rows stage the output.
template <int D, int BN, int NWG>
__global__ void __launch_bounds__(128 * NWG)
    fa_fwd_wg(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
              bf16* __restrict__ out, float* __restrict__ lse, TcGeo g) {
    constexpr int kBm = 64 * NWG, kNt = BN / 8, kDt = D / 8, NT = 128 * NWG;
    constexpr float kSlack = 8.f;
    constexpr uint32_t kAtom = 1024, kHalfV = BN * 128; // bytes: 8-row atom, V column half
    extern __shared__ __align__(16) unsigned char smem_tc[];
    const uint32_t mis = uint32_t(__cvta_generic_to_shared(smem_tc)) & (kAtom - 1);
    auto* Qs = reinterpret_cast<bf16*>(smem_tc + ((kAtom - mis) & (kAtom - 1)));
    bf16* Ks = Qs + kBm * D; // [2][BN * D]
    bf16* Vs = Ks + 2 * BN * D;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g4 = lane >> 2, c4 = lane & 3;
    const int wg = warp >> 2;
    const int64_t bh = blockIdx.y, b = bh / g.Hq, h = bh % g.Hq, hk = h / (g.Hq / g.Hkv);
    const int64_t q0 = (int64_t(gridDim.x) - 1 - blockIdx.x) * kBm; // last query blocks first
    const bf16* K = k + g.k.at(b, hk, 0);
    const bf16* V = v + g.v.at(b, hk, 0);
    const int64_t last_q = min64(g.Tq, q0 + kBm) - 1;
    const int64_t k_end = g.causal ? min64(g.Tk, g.Tk - g.Tq + last_q + 1) : g.Tk;
    const int n_tiles = int((k_end + BN - 1) / BN);
    fetch_bf16_sw128<D, kBm, NT>(Qs, q + g.q.at(b, h, 0), g.q.t, q0, g.Tq);
    fetch_bf16_sw128<D, BN, NT>(Ks, K, g.k.t, 0, g.Tk);
    fetch_bf16_sw128<D, BN, NT>(Vs, V, g.v.t, 0, g.Tk);
    cp_async_commit();
    const int m_w = warp * 16;
    const int64_t r_w = q0 + m_w;
    const int64_t diag0 = g.Tk - g.Tq + r_w; // causal: key k0 + kj visible iff kj - ri <= diag0 - k0
    // The last key this warpgroup's rows see (causal), for whole-tile skips.
    const int64_t wg_last_key = g.causal ? g.Tk - g.Tq + q0 + 64 * wg + 63 : g.Tk;
    const bf16* Qw = Qs + 64 * wg * 64; // this warpgroup's rows in each column half
    float o[kDt][4] = {};
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {};
    for (int t = 0; t < n_tiles; ++t) {
        const int buf = t & 1;
        cp_async_wait<0>();
        wg::fence_proxy_async();
        __syncthreads(); // tile t landed; every warpgroup is done with tile t - 1 (buffer buf ^ 1)
        const int64_t k0 = int64_t(t) * BN;
        if (t + 1 < n_tiles) {
            fetch_bf16_sw128<D, BN, NT>(Ks + (buf ^ 1) * BN * D, K, g.k.t, k0 + BN, g.Tk);
            fetch_bf16_sw128<D, BN, NT>(Vs + (buf ^ 1) * BN * D, V, g.v.t, k0 + BN, g.Tk);
        }
        cp_async_commit();
        if (k0 > wg_last_key) continue; // uniform over the warpgroup, as wgmma needs
        const int n_keys = int(min64(g.Tk - k0, BN));
        const int diag = int(max64(min64(diag0 - k0, BN), -16));
        const bool full = n_keys == BN && (!g.causal || diag >= BN - 1);
        const bf16* Kt = Ks + buf * BN * D;
        const bf16* Vt = Vs + buf * BN * D;
        // S = Q K^T: k-steps of 16 along D, 32 bytes apart within a 128-byte row.
        float s[kNt][4] = {};
        wg::wg_fence();
        wg::fence_operands(s);
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) {
            const int kc = (ks & 3) * 16;
            wg::mma_ss<BN>(s, wg::desc_sw128(Qw + (ks >> 2) * kBm * 64 + kc, 16, kAtom),
                           wg::desc_sw128(Kt + (ks >> 2) * BN * 64 + kc, 16, kAtom), ks > 0);
        }
        wg::wg_commit();
        wg::wg_wait<0>();
        wg::fence_operands(s);
        if (!full) {
#pragma unroll
            for (int nt = 0; nt < kNt; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int ri = g4 + (e >> 1) * 8, kj = nt * 8 + 2 * c4 + (e & 1);
                    if (kj >= n_keys || (g.causal && kj - ri > diag)) s[nt][e] = -INFINITY;
                }
        }
        float base[2], corr[2];
        bool moved = false;
        {
            float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int nt = 0; nt < kNt; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    mx[e >> 1] = fmaxf(mx[e >> 1], s[nt][e]);
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const float tile_max = quad_max(mx[r]) * g.scale_log2;
                corr[r] = 1.f;
                if (tile_max > m[r] + kSlack) {
                    corr[r] = ex2(m[r] - tile_max);
                    m[r] = tile_max;
                    moved = true;
                }
                base[r] = m[r] == -INFINITY ? 0.f : m[r];
            }
        }
        if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                l[r] *= corr[r];
#pragma unroll
                for (int dt = 0; dt < kDt; ++dt) {
                    o[dt][2 * r] *= corr[r];
                    o[dt][2 * r + 1] *= corr[r];
                }
            }
        }
        uint32_t pa[BN / 16][4];
#pragma unroll
        for (int nt = 0; nt < kNt; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float p = ex2(fmaf(s[nt][e], g.scale_log2, -base[e >> 1]));
                s[nt][e] = p;
                l[e >> 1] += p;
            }
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk)
            c_to_a(pa[kk], s[2 * kk], s[2 * kk + 1]);
        // O += P V: 16 keys (two 8-row atoms) a k-step; V's column halves kHalfV bytes apart.
        wg::wg_fence();
        wg::fence_operands(o);
        wg::fence_operands(pa);
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk)
            wg::mma_rs<D, 1>(o, pa[kk], wg::desc_sw128(Vt + kk * 16 * 64, kHalfV, kAtom));
        wg::wg_commit();
        wg::wg_wait<0>();
        wg::fence_operands(o);
        wg::fence_operands(pa);
    }
    cp_async_wait<0>(); // the last (empty) group
    __syncthreads();    // every warpgroup's products are done with Q
    // O / l in bf16 into this warp's own rows of Qs, then out in 16-byte row chunks.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int ri = g4 + 8 * r;
        const float lsum = quad_sum(l[r]);
        const float inv = lsum > 0.f ? 1.f / lsum : 0.f;
#pragma unroll
        for (int dt = 0; dt < kDt; ++dt)
            *reinterpret_cast<uint32_t*>(Qs + sw128_at<kBm>(m_w + ri, dt * 8 + 2 * c4)) =
                pack_bf16(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
        if (c4 == 0 && r_w + ri < g.Tq)
            lse[bh * g.Tq + r_w + ri] = (m[r] + log2f(lsum)) * kLn2;
    }
    __syncwarp();
    constexpr int kChunks = D / 8, kRowsPerStep = 32 / kChunks;
    const int cr = lane / kChunks, cd = (lane % kChunks) * 8;
#pragma unroll
    for (int r0 = 0; r0 < 16; r0 += kRowsPerStep) {
        const int64_t i = r_w + r0 + cr;
        if (i < g.Tq)
            *reinterpret_cast<uint4*>(out + g.o.at(b, h, i) + cd) =
                *reinterpret_cast<const uint4*>(Qs + sw128_at<kBm>(m_w + r0 + cr, cd));
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
    const int64_t bk = blockIdx.y, b = bk / g.Hkv, hk = bk % g.Hkv, group = g.Hq / g.Hkv;
    const int64_t j_first = int64_t(blockIdx.x) * kBn; // causal: low keys (most work) first
    // The first query that sees key j_first, rounded down to a tile; every tile from there on.
    const int64_t i_start = g.causal ? max64(0, j_first - (g.Tk - g.Tq)) / kQRows * kQRows : 0;
    const int64_t n_tiles = (g.Tq - i_start + kQRows - 1) / kQRows;
    const int64_t n_iter = group * n_tiles;
    // Iteration it: query head qh, first query i0.
    auto tile_of = [&](int64_t it, int64_t& qh, int64_t& i0) {
        qh = b * g.Hq + hk * group + it / n_tiles;
        i0 = i_start + (it % n_tiles) * kQRows;
    };
    auto fetch = [&](int64_t it, int buf) {
        int64_t qh, i0;
        tile_of(it, qh, i0);
        fetch_bf16_rows<D, kQRows, NT>(Qs + buf * kQRows * kLd, qb + qh * g.Tq * D, D, i0, g.Tq);
        fetch_bf16_rows<D, kQRows, NT>(Gs + buf * kQRows * kLd, gb + qh * g.Tq * D, D, i0, g.Tq);
        if (threadIdx.x < 2 * kQRows) { // lse2 by threads 0..63, delta by 64..127
            const int t = threadIdx.x % kQRows;
            const bool is_delta = threadIdx.x >= kQRows, ok = i0 + t < g.Tq;
            const float* src = (is_delta ? delta : lse2) + qh * g.Tq + (ok ? i0 + t : 0);
            cp_async4((is_delta ? Ds : Ls) + buf * kQRows + t, src, ok);
        }
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
        tile_of(it, qh, i0);
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

// The backward on bf16 tensors with Hopper's warpgroup MMA (wgmma.cuh): fa_bwd's algorithm,
// key-major, grid (ceil(Tk / 64 NWG), B * Hkv), NWG warpgroups of 128 threads, each owning 64
// keys (warp w: keys 16 w..16 w + 15 of its group, fa_bwd's register layout) and working on its
// own but for the shared, double-buffered Q / dO tiles of 64 queries (fa_bwd_prep's bf16 rows):
//   S^T = K Q^T, dP^T = V dO^T       (A = K, V and B = Q, dO from shared memory, K-major)
//   P^T, dS^T as in fa_bwd             (registers)
//   dV += P^T dO, dK += dS^T Q         (A from registers, B = dO, Q as stored: MN-major)
//   dS^T -> shared; dQ (64 x D) += dS K over the group's 64 keys (A = dS^T and B = K, both
//   MN-major), one 64-wide column half at a time, added to the f32 dq accumulator atomically.
// Every tile is 128-byte swizzled; smem: 1 KB alignment slack, K and V [D/64][64 NWG][64], Q and
// dO [2][D/64][64][64], dS^T [NWG][64][64] bf16, lse2 and delta [2][64] f32.
template <int D, int NWG, bool BULK>
__global__ void __launch_bounds__(128 * NWG, 1)
    fa_bwd_wg(const bf16* __restrict__ k, const bf16* __restrict__ v, const bf16* __restrict__ qb,
              const bf16* __restrict__ gb, const float* __restrict__ lse2,
              const float* __restrict__ delta, float* __restrict__ dq, bf16* __restrict__ dk,
              bf16* __restrict__ dv, TcGeo g, float scale) {
    constexpr int kBn = 64 * NWG, kNt = kQRows / 8, kDt = D / 8, NT = 128 * NWG;
    constexpr uint32_t kAtom = 1024, kHalfQ = kQRows * 128; // bytes: 8-row atom, Q column half
    static_assert(kQRows == 64, "one 64-query tile is one m64 operand");
    extern __shared__ __align__(16) unsigned char smem_tc[];
    const uint32_t mis = uint32_t(__cvta_generic_to_shared(smem_tc)) & (kAtom - 1);
    auto* Ks = reinterpret_cast<bf16*>(smem_tc + ((kAtom - mis) & (kAtom - 1)));
    bf16* Vs = Ks + kBn * D;
    bf16* Qs = Vs + kBn * D;              // [2][kQRows * D]
    bf16* Gs = Qs + 2 * kQRows * D;       // [2][kQRows * D]
    bf16* Ss = Gs + 2 * kQRows * D;       // [NWG][64][kQRows]
    auto* Ls = reinterpret_cast<float*>(Ss + kBn * kQRows); // [2][kQRows]
    float* Ds = Ls + 2 * kQRows;                            // [2][kQRows]
    static_assert(!BULK || D == 64, "bulk dQ: one 64-wide column half");
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g4 = lane >> 2, c4 = lane & 3;
    const int wg = warp >> 2, wq = warp & 3; // warpgroup; warp within it
    float* Dqw = Ds + 2 * kQRows + wg * kQRows * 64; // BULK: this group's dQ staging [64][64]
    const int64_t bk = blockIdx.y, b = bk / g.Hkv, hk = bk % g.Hkv, group = g.Hq / g.Hkv;
    const int64_t j_first = int64_t(blockIdx.x) * kBn; // causal: low keys (most work) first
    const int64_t i_start = g.causal ? max64(0, j_first - (g.Tk - g.Tq)) / kQRows * kQRows : 0;
    const int64_t n_tiles = (g.Tq - i_start + kQRows - 1) / kQRows;
    const int64_t n_iter = group * n_tiles;
    auto tile_of = [&](int64_t it, int64_t& qh, int64_t& i0) {
        qh = b * g.Hq + hk * group + it / n_tiles;
        i0 = i_start + (it % n_tiles) * kQRows;
    };
    auto fetch = [&](int64_t it, int buf) {
        int64_t qh, i0;
        tile_of(it, qh, i0);
        fetch_bf16_sw128<D, kQRows, NT>(Qs + buf * kQRows * D, qb + qh * g.Tq * D, D, i0, g.Tq);
        fetch_bf16_sw128<D, kQRows, NT>(Gs + buf * kQRows * D, gb + qh * g.Tq * D, D, i0, g.Tq);
        if (threadIdx.x < 2 * kQRows) { // lse2 by threads 0..63, delta by 64..127
            const int t = threadIdx.x % kQRows;
            const bool is_delta = threadIdx.x >= kQRows, ok = i0 + t < g.Tq;
            const float* src = (is_delta ? delta : lse2) + qh * g.Tq + (ok ? i0 + t : 0);
            cp_async4((is_delta ? Ds : Ls) + buf * kQRows + t, src, ok);
        }
    };
    fetch(0, 0);
    fetch_bf16_sw128<D, kBn, NT>(Ks, k + g.k.at(b, hk, 0), g.k.t, j_first, g.Tk);
    fetch_bf16_sw128<D, kBn, NT>(Vs, v + g.v.at(b, hk, 0), g.v.t, j_first, g.Tk);
    cp_async_commit();
    const int64_t j_g = j_first + 64 * wg; // this warpgroup's first key
    const int64_t j_w = j_g + wq * 16;     // this warp's: keys j_w + g4, j_w + g4 + 8
    const bf16* Kw = Ks + 64 * wg * 64;    // the group's rows in each column half
    const bf16* Vw = Vs + 64 * wg * 64;
    bf16* Sw = Ss + 64 * wg * kQRows;
    float ak[kDt][4] = {}, av[kDt][4] = {};
    for (int64_t it = 0; it < n_iter; ++it) {
        const int buf = int(it & 1);
        cp_async_wait<0>();
        wg::fence_proxy_async();
        __syncthreads(); // tile `it` landed; every warpgroup is done with tile it - 1
        if (it + 1 < n_iter) fetch(it + 1, buf ^ 1);
        cp_async_commit();
        int64_t qh, i0;
        tile_of(it, qh, i0);
        // Causal: no query of the tile sees the group's first key (uniform over the group).
        if (g.causal && i0 + kQRows - 1 + (g.Tk - g.Tq) < j_g) continue;
        const bf16* Qt = Qs + buf * kQRows * D;
        const bf16* Gt = Gs + buf * kQRows * D;
        const float* Lt = Ls + buf * kQRows;
        const float* Dt = Ds + buf * kQRows;
        float s[kNt][4] = {}, dp[kNt][4] = {};
        wg::wg_fence();
        wg::fence_operands(s);
        wg::fence_operands(dp);
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) {
            const int kc = (ks & 3) * 16;
            const int hk64 = (ks >> 2) * 64; // column half ks / 4: rows of the half follow
            wg::mma_ss<kQRows>(s, wg::desc_sw128(Kw + hk64 * kBn + kc, 16, kAtom),
                               wg::desc_sw128(Qt + hk64 * kQRows + kc, 16, kAtom), ks > 0);
            wg::mma_ss<kQRows>(dp, wg::desc_sw128(Vw + hk64 * kBn + kc, 16, kAtom),
                               wg::desc_sw128(Gt + hk64 * kQRows + kc, 16, kAtom), ks > 0);
        }
        wg::wg_commit();
        wg::wg_wait<0>();
        wg::fence_operands(s);
        wg::fence_operands(dp);
        const int n_q = int(min64(g.Tq - i0, kQRows)), n_k = int(min64(g.Tk - j_w, 16));
        const int diag = int(max64(min64(g.Tk - g.Tq + i0 - j_w, 16), -kQRows - 1));
        const bool full = n_q == kQRows && n_k == 16 && (!g.causal || diag >= 15);
#pragma unroll
        for (int nt = 0; nt < kNt; ++nt) {
            const int col = nt * 8 + 2 * c4;
            const float2 L = *reinterpret_cast<const float2*>(Lt + col);
            const float2 Dl = *reinterpret_cast<const float2*>(Dt + col);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float p = ex2(s[nt][e] * g.scale_log2 - (e & 1 ? L.y : L.x));
                if (!full) {
                    const int qi = col + (e & 1), kj = g4 + 8 * (e >> 1);
                    if (qi >= n_q || kj >= n_k || (g.causal && kj - qi > diag)) p = 0.f;
                }
                s[nt][e] = p;
                dp[nt][e] = p * (dp[nt][e] - (e & 1 ? Dl.y : Dl.x));
            }
        }
        uint32_t pa[kNt / 2][4], da[kNt / 2][4];
#pragma unroll
        for (int kk = 0; kk < kNt / 2; ++kk) {
            c_to_a(pa[kk], s[2 * kk], s[2 * kk + 1]);
            c_to_a(da[kk], dp[2 * kk], dp[2 * kk + 1]);
            // dS^T rows (keys) 16 wq + g4 (+ 8), queries 16 kk + 2 c4 (+ 8), swizzled.
            const int r = wq * 16 + g4, c = kk * 16 + 2 * c4;
            *reinterpret_cast<uint32_t*>(Sw + sw128_at<64>(r, c)) = da[kk][0];
            *reinterpret_cast<uint32_t*>(Sw + sw128_at<64>(r + 8, c)) = da[kk][1];
            *reinterpret_cast<uint32_t*>(Sw + sw128_at<64>(r, c + 8)) = da[kk][2];
            *reinterpret_cast<uint32_t*>(Sw + sw128_at<64>(r + 8, c + 8)) = da[kk][3];
        }
        // dV += P^T dO, dK += dS^T Q: 16 queries (two 8-row atoms) a k-step.
        wg::wg_fence();
        wg::fence_operands(av);
        wg::fence_operands(ak);
        wg::fence_operands(pa);
        wg::fence_operands(da);
#pragma unroll
        for (int kk = 0; kk < kNt / 2; ++kk) {
            wg::mma_rs<D, 1>(av, pa[kk], wg::desc_sw128(Gt + kk * 16 * 64, kHalfQ, kAtom));
            wg::mma_rs<D, 1>(ak, da[kk], wg::desc_sw128(Qt + kk * 16 * 64, kHalfQ, kAtom));
        }
        wg::wg_commit();
        // dS^T visible to the tensor cores, across the group's warps (named barrier 1 + wg);
        // with BULK, also the last tile's bulk reduction done reading dQ's staging.
        if constexpr (BULK)
            if ((threadIdx.x & 127) == 0)
                asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
        wg::fence_proxy_async();
        asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");
        // dQ rows i0 + 16 wq + g4 (+ 8) of the C tiles, one column half at a time.
        float* dq_head = dq + g.dq.at(b, qh - b * g.Hq, 0);
        const int64_t i_r = i0 + wq * 16 + g4;
#pragma unroll
        for (int hf = 0; hf < D / 64; ++hf) {
            float aq[8][4] = {};
            wg::wg_fence(); // aq's registers were last touched by ordinary code
            wg::fence_operands(aq);
#pragma unroll
            for (int kk = 0; kk < 4; ++kk)
                wg::mma_ss<64, 1, 1>(aq, wg::desc_sw128(Sw + kk * 16 * 64, 16, kAtom),
                                     wg::desc_sw128(Kw + hf * kBn * 64 + kk * 16 * 64, 16, kAtom),
                                     kk > 0);
            wg::wg_commit();
            wg::wg_wait<0>();
            wg::fence_operands(aq);
            if constexpr (BULK) {
                // dQ's tile scaled into shared memory, added to the (contiguous) accumulator by
                // one bulk reduction (the copy engine's f32 add) issued by the group's thread 0.
#pragma unroll
                for (int nt = 0; nt < 8; ++nt)
#pragma unroll
                    for (int r = 0; r < 2; ++r)
                        *reinterpret_cast<float2*>(Dqw + (wq * 16 + g4 + 8 * r) * 64 + nt * 8 +
                                                   2 * c4) =
                            make_float2(aq[nt][2 * r] * scale, aq[nt][2 * r + 1] * scale);
                wg::fence_proxy_async();
                asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");
                if ((threadIdx.x & 127) == 0) {
                    const uint32_t bytes = uint32_t(min64(g.Tq - i0, kQRows)) * 64 * 4;
                    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 "
                                 "[%0], [%1], %2;\n"
                                 "cp.async.bulk.commit_group;\n" ::"l"(dq_head + i0 * D),
                                 "r"(uint32_t(__cvta_generic_to_shared(Dqw))), "r"(bytes)
                                 : "memory");
                }
            } else {
                // Lane pairs (c, c ^ 1) trade halves: the even lane adds 4 columns of row g, the
                // odd one 4 of row g + 8, one 16-byte atomic each per n-tile.
                const bool odd = c4 & 1;
                const int64_t i = i_r + (odd ? 8 : 0);
                float* row = dq_head + i * g.dq.t + hf * 64 + 2 * (c4 & 2);
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) {
                    const float s0 = odd ? aq[nt][0] : aq[nt][2];
                    const float s1 = odd ? aq[nt][1] : aq[nt][3];
                    const float r0 = __shfl_xor_sync(0xffffffffu, s0, 1);
                    const float r1 = __shfl_xor_sync(0xffffffffu, s1, 1);
                    const float4 x = odd ? make_float4(r0, r1, aq[nt][2], aq[nt][3])
                                         : make_float4(aq[nt][0], aq[nt][1], r0, r1);
                    if (i < g.Tq)
                        atomicAdd(reinterpret_cast<float4*>(row + nt * 8),
                                  make_float4(x.x * scale, x.y * scale, x.z * scale, x.w * scale));
                }
            }
        }
        wg::fence_operands(av);
        wg::fence_operands(ak);
        wg::fence_operands(pa);
        wg::fence_operands(da);
    }
    cp_async_wait<0>(); // the last (empty) group
    if constexpr (BULK)
        if ((threadIdx.x & 127) == 0) asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int64_t j = j_w + g4 + 8 * r;
        if (j >= g.Tk) continue;
        bf16* krow = dk + g.dk.at(b, hk, j);
        bf16* vrow = dv + g.dv.at(b, hk, j);
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

template <typename K> void set_smem_tc(K kernel, size_t bytes) {
    FORGE_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
    // All of the unified L1 as shared memory: these kernels copy past L1 (cp.async.cg), and two
    // blocks per SM need up to 2 x 115 KB.
    FORGE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                          int(cudaSharedmemCarveoutMaxShared)));
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

// f.template operator()<D, BN, NWG>() for fa_fwd_wg's block shape of configuration c (2 or 3):
// 128 query rows, K/V tiles of BN keys.
template <typename F> void visit_fwd_wg(int64_t D, int c, F&& f) {
    if (D == 64) {
        if (c == 2) f.template operator()<64, 128, 2>();
        else f.template operator()<64, 64, 2>();
    } else {
        if (c == 2) f.template operator()<128, 64, 2>();
        else f.template operator()<128, 128, 2>();
    }
}

constexpr size_t tile_bytes(int D, int rows) { return size_t(rows) * (D + 8) * sizeof(bf16); }

} // namespace

void set_attention_tc_warps(int warps) {
    FORGE_CHECK(warps == 0 || warps == 4 || warps == 8,
                "[attention] tensor-core kernel warps must be 0 (default), 4 or 8, got ", warps);
    g_tc_warps.store(warps);
}

void set_attention_tc_fwd_config(int config) {
    FORGE_CHECK(config >= 0 && config <= 3,
                "[attention] tensor-core forward config must be 0 (default) to 3, got ", config);
    g_tc_fwd_config.store(config);
}

void set_attention_tc_bwd_config(int config) {
    FORGE_CHECK(config >= 0 && config <= 4,
                "[attention] tensor-core backward config must be 0 (default) to 4, got ", config);
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
        visit_fwd_wg(q.size(3), config, [&]<int D, int BN, int NWG>() {
            constexpr int kBm = 64 * NWG;
            const dim3 grid(unsigned((g.Tq + kBm - 1) / kBm), unsigned(g.B * g.Hq));
            const size_t smem = 1024 + size_t(kBm + 4 * BN) * D * sizeof(bf16);
            set_smem_tc(fa_fwd_wg<D, BN, NWG>, smem);
            fa_fwd_wg<D, BN, NWG><<<grid, 128 * NWG, smem, s>>>(
                q.data<bf16>(), k.data<bf16>(), v.data<bf16>(), out.data<bf16>(),
                lse.data<float>(), g);
        });
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
    auto wg_bwd = [&]<int HD, int NWG, bool BULK>() {
        constexpr int kBn = 64 * NWG;
        const size_t smem = 1024 +
                            size_t(2 * kBn * HD + 4 * kQRows * HD + kBn * kQRows) * sizeof(bf16) +
                            4 * kQRows * sizeof(float) + (BULK ? kBn * 64 * sizeof(float) : 0);
        set_smem_tc(fa_bwd_wg<HD, NWG, BULK>, smem);
        const dim3 grid(unsigned((g.Tk + kBn - 1) / kBn), unsigned(g.B * g.Hkv));
        fa_bwd_wg<HD, NWG, BULK><<<grid, 128 * NWG, smem, s>>>(
            k.data<bf16>(), v.data<bf16>(), qb, gb, lse2, delta, dq_f32, dk.data<bf16>(),
            dv.data<bf16>(), ga, scale);
    };
    if (half && bwd_config >= 2) {
        if (D == 64) {
            if (bwd_config == 2) wg_bwd.template operator()<64, 1, false>();
            else if (bwd_config == 3) wg_bwd.template operator()<64, 2, false>();
            else wg_bwd.template operator()<64, 1, true>();
        } else {
            if (bwd_config == 3) wg_bwd.template operator()<128, 2, false>();
            else wg_bwd.template operator()<128, 1, false>();
        }
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
