// Flash attention on Hopper's warpgroup MMA (wgmma.cuh), for bf16 tensors (autocast's): the
// FlashAttention-2 algorithms (attention_tc.cu has the mma.sync versions and the host side that
// picks a kernel) with the products issued as wgmma.mma_async on 128-byte-swizzled shared tiles,
// as in FlashAttention-3 (Shah et al. 2024, https://arxiv.org/abs/2407.08608), without its warp
// specialization and softmax/GEMM overlap.
#include "backends/cuda/attention_tc.cuh"
#include "backends/cuda/wgmma.cuh"

namespace forge::cuda::attn {

namespace {

// 2^x on the special-function unit alone (exp2f adds a denormal range fix-up around it without
// --use_fast_math); x = -inf gives 0, results below 2^-126 flush to 0.
__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// 2^x on the FMA pipes, to take part of the forward's exponentials off the special-function unit
// (16 a clock per SM on Hopper: at D = 64 the forward's 128 MACs per score leave the tensor cores
// waiting for it; FlashAttention-4 splits its exponentials the same way). x = i + f with
// i = round(x) from the 1.5 * 2^23 magic add and f in [-0.5, 0.5]; 2^f by a degree-3 polynomial
// (fitted here for relative error, max 1.0e-4: below bf16's 2^-9 rounding of P); 2^i added to
// the exponent bits. x below -125 (masked scores are -inf) gives 0.
__device__ __forceinline__ float ex2_fma(float x) {
    constexpr float kMagic = 12582912.f; // 1.5 * 2^23
    const float xc = fmaxf(x, -125.f);
    const float t = xc + kMagic; // round(xc) in the low mantissa bits of t
    const float f = xc - (t - kMagic);
    const float p = fmaf(fmaf(fmaf(0.0550089051f, f, 0.24221099f), f, 0.693282935f), f, 1.f);
    // t's bits are 0x4B400000 + i; shifted by 23 only i's part stays in 32 bits.
    const float r = __int_as_float(__float_as_int(p) + (__float_as_int(t) << 23));
    return x < -125.f ? 0.f : r;
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
template <int D, int BN, int NWG, int POLY>
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
    // Causal: key k0 + kj is visible to row r_w + ri iff kj - ri <= diag0 - k0.
    const int64_t diag0 = g.Tk - g.Tq + r_w;
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
                const float z = fmaf(s[nt][e], g.scale_log2, -base[e >> 1]);
                const float p = nt % 4 < POLY ? ex2_fma(z) : ex2(z); // POLY of every 4 n-tiles
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
template <int D, int NWG>
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
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g4 = lane >> 2, c4 = lane & 3;
    const int wg = warp >> 2, wq = warp & 3; // warpgroup; warp within it
    const int64_t bk = blockIdx.y, b = bk / g.Hkv, hk = bk % g.Hkv;
    const int64_t j_first = int64_t(blockIdx.x) * kBn; // causal: low keys (most work) first
    const BwdTiles tiles(g, b, hk, j_first);
    const int64_t n_iter = tiles.n_iter;
    auto fetch = [&](int64_t it, int buf) {
        int64_t qh, i0;
        tiles.at(it, qh, i0);
        fetch_bf16_sw128<D, kQRows, NT>(Qs + buf * kQRows * D, qb + qh * g.Tq * D, D, i0, g.Tq);
        fetch_bf16_sw128<D, kQRows, NT>(Gs + buf * kQRows * D, gb + qh * g.Tq * D, D, i0, g.Tq);
        fetch_lse_delta(Ls + buf * kQRows, Ds + buf * kQRows, lse2, delta, qh, i0, g.Tq);
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
        tiles.at(it, qh, i0);
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
        // dS^T visible to the tensor cores, across the group's warps (named barrier 1 + wg).
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
        wg::fence_operands(av);
        wg::fence_operands(ak);
        wg::fence_operands(pa);
        wg::fence_operands(da);
    }
    cp_async_wait<0>(); // the last (empty) group
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

// f.template operator()<D, BN, NWG, POLY>() for fa_fwd_wg's configuration c: 128 query rows,
// K/V tiles of BN keys. c 2, 3: the two tile widths (64 keys at D = 128 for 2, at D = 64 for 3),
// every exponential on the special-function unit; 4: 128-key tiles with a quarter of the
// exponentials on the FMA pipes (ex2_fma), 1-2% faster than 3 at D = 128 on an H200 and 3-4%
// slower than 2 at D = 64 (half of them on the FMA pipes was slower at both; PERF.md session 8).
template <typename F> void visit_fwd_wg(int64_t D, int c, F&& f) {
    if (D == 64) {
        if (c == 3) f.template operator()<64, 64, 2, 0>();
        else if (c == 4) f.template operator()<64, 128, 2, 1>();
        else f.template operator()<64, 128, 2, 0>();
    } else {
        if (c == 2) f.template operator()<128, 64, 2, 0>();
        else if (c == 4) f.template operator()<128, 128, 2, 1>();
        else f.template operator()<128, 128, 2, 0>();
    }
}

} // namespace

void launch_fa_fwd_wg(int config, int64_t D, const TcGeo& g, const bf16* q, const bf16* k,
                      const bf16* v, bf16* out, float* lse, cudaStream_t s) {
    visit_fwd_wg(D, config, [&]<int HD, int BN, int NWG, int POLY>() {
        constexpr int kBm = 64 * NWG;
        const dim3 grid(unsigned((g.Tq + kBm - 1) / kBm), unsigned(g.B * g.Hq));
        const size_t smem = 1024 + size_t(kBm + 4 * BN) * HD * sizeof(bf16);
        set_smem_tc(fa_fwd_wg<HD, BN, NWG, POLY>, smem);
        fa_fwd_wg<HD, BN, NWG, POLY><<<grid, 128 * NWG, smem, s>>>(q, k, v, out, lse, g);
    });
}

void launch_fa_bwd_wg(int config, int64_t D, const TcGeo& g, const bf16* k, const bf16* v,
                      const bf16* qb, const bf16* gb, const float* lse2, const float* delta,
                      float* dq, bf16* dk, bf16* dv, float scale, cudaStream_t s) {
    auto launch = [&]<int HD, int NWG>() {
        constexpr int kBn = 64 * NWG;
        const size_t smem = 1024 +
                            size_t(2 * kBn * HD + 4 * kQRows * HD + kBn * kQRows) * sizeof(bf16) +
                            4 * kQRows * sizeof(float);
        set_smem_tc(fa_bwd_wg<HD, NWG>, smem);
        const dim3 grid(unsigned((g.Tk + kBn - 1) / kBn), unsigned(g.B * g.Hkv));
        fa_bwd_wg<HD, NWG><<<grid, 128 * NWG, smem, s>>>(k, v, qb, gb, lse2, delta, dq, dk, dv, g,
                                                        scale);
    };
    if (D == 64)
        config == 3 ? launch.template operator()<64, 2>() : launch.template operator()<64, 1>();
    else
        config == 3 ? launch.template operator()<128, 2>() : launch.template operator()<128, 1>();
}

} // namespace forge::cuda::attn
