// A linear layer's epilogue on CUDA in one pass: out = act(x + b) and its backward, dx = dy *
// act'(x + b) with db = the column sums of dx. act is GELU-tanh (the CPU kernels' form,
// src/backends/cpu/kernels/activations_impl.h: 0.5 z (1 + tanh(u)) = z sigmoid(2u), u = sqrt(2/pi)
// (z + 0.044715 z^3)) or identity. f32 in (without an activation, dy may also be bf16 / f16: the
// gradient of autocast's half output); out and dx may be bf16 or f16 (rounded on the store, db
// summed from the f32 values); f64 and strided tensors take Backend's default.
// db is a deterministic two-stage sum: per-block partials over fixed row tiles, then one pass
// adding the tiles in order (no atomics), so training stays bit-reproducible.
#include "backends/cuda/common.cuh"

namespace forge::cuda {

namespace {

constexpr float kGeluK0 = 0.7978845608028654f; // sqrt(2/pi)
constexpr float kGeluK1 = 0.044715f;

// z sigmoid(2u): one exp and one divide, no cancellation near 0 (1 + tanh(u) never subtracts).
__device__ __forceinline__ float gelu_tanh(float z) {
    const float u2 = 2.0f * kGeluK0 * fmaf(kGeluK1 * z * z, z, z);
    return z / (1.0f + expf(-u2));
}
// d/dz: 0.5 (1 + t) + 0.5 z (1 - t^2) u' with s = sigmoid(2u): s + 2 z s (1 - s) u'.
__device__ __forceinline__ float gelu_tanh_grad(float z) {
    const float z2 = z * z;
    const float u2 = 2.0f * kGeluK0 * fmaf(kGeluK1 * z2, z, z);
    const float s = 1.0f / (1.0f + expf(-u2));
    const float du = kGeluK0 * fmaf(3.0f * kGeluK1, z2, 1.0f);
    return fmaf((z + z) * s * (1.0f - s), du, s);
}

// VEC consecutive values as floats (VEC 4: one 16-byte access for f32, 8 for a half type).
template <int VEC> struct Vec {
    float v[VEC];
    template <typename T> __device__ __forceinline__ static Vec load(const T* p) {
        Vec r;
        if constexpr (VEC == 4) {
            const float4 x = load4(p);
            r.v[0] = x.x, r.v[1] = x.y, r.v[2] = x.z, r.v[3] = x.w;
        } else {
#pragma unroll
            for (int i = 0; i < VEC; ++i)
                r.v[i] = half_to_float(p[i]);
        }
        return r;
    }
    __device__ __forceinline__ void store(float* p) const {
        if constexpr (VEC == 4) {
            *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
        } else {
#pragma unroll
            for (int i = 0; i < VEC; ++i)
                p[i] = v[i];
        }
    }
};

// VEC values rounded to a half type H (round to nearest even), one 8-byte store for VEC 4.
template <typename H, int VEC> __device__ __forceinline__ void store_half(const Vec<VEC>& z, H* p) {
    struct alignas(VEC == 4 ? 8 : alignof(H)) Pack {
        H h[VEC];
    } pk;
#pragma unroll
    for (int t = 0; t < VEC; ++t)
        pk.h[t] = float_to_half<H>(z.v[t]);
    *reinterpret_cast<Pack*>(p) = pk;
}

// out (R, N) = act(x + b), grid-stride over groups of VEC elements (N % VEC == 0). Out is f32
// (it may be x) or a half type: linear() under autocast hands the next GEMM its operand rounded.
template <int VEC, bool GELU, typename Out, typename X>
__global__ void bias_act_fwd(const X* x, const float* __restrict__ b, Out* out,
                             int64_t n_groups, int64_t N) { // out may be x
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    const bool narrow = n_groups * VEC <= UINT32_MAX; // a 32-bit modulo, far cheaper
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n_groups; i += stride) {
        const int64_t e = i * VEC;
        const int64_t c = narrow ? int64_t(uint32_t(e) % uint32_t(N)) : e % N;
        Vec<VEC> z = Vec<VEC>::load(x + e);
        const Vec<VEC> bb = Vec<VEC>::load(b + c);
#pragma unroll
        for (int t = 0; t < VEC; ++t) {
            z.v[t] += bb.v[t];
            if (GELU) z.v[t] = gelu_tanh(z.v[t]);
        }
        if constexpr (std::is_same_v<Out, float>)
            z.store(out + e);
        else
            store_half<Out, VEC>(z, out + e);
    }
}

// Backward, stage 1. Block (32, kRowLanes): threadIdx.x owns VEC columns of the block's 32 VEC,
// threadIdx.y every kRowLanes-th row of row tile blockIdx.y (rows [y rows_per_tile, + rows)).
// Writes dx (unless it is dy, identity) and partial[blockIdx.y][col], the tile's column sums,
// each added in row order within a lane and over the lanes in order.
constexpr int kRowLanes = 8;
template <int VEC, bool GELU, typename Dx, typename Dy, typename X>
__global__ void __launch_bounds__(32 * kRowLanes)
    bias_act_bwd_tiles(const Dy* dy, const X* __restrict__ x, // dx may be dy
                       const float* __restrict__ b, Dx* dx, float* __restrict__ partial,
                       int64_t R, int64_t N, int64_t rows_per_tile, bool write_dx) {
    __shared__ float sums[kRowLanes][32 * VEC];
    const int64_t c0 = (int64_t(blockIdx.x) * 32 + threadIdx.x) * VEC;
    const bool col_ok = c0 < N; // N % VEC == 0: a group is all in or all out
    const int64_t r_begin = int64_t(blockIdx.y) * rows_per_tile;
    const int64_t r_end = min64(R, r_begin + rows_per_tile);
    float acc[VEC] = {};
    if (col_ok) {
        Vec<VEC> bb{}; // zero without b: x is the GELU's input itself
        if (GELU && b) bb = Vec<VEC>::load(b + c0);
#pragma unroll 4
        for (int64_t r = r_begin + threadIdx.y; r < r_end; r += kRowLanes) {
            const int64_t e = r * N + c0;
            Vec<VEC> g = Vec<VEC>::load(dy + e);
            if (GELU) {
                const Vec<VEC> z = Vec<VEC>::load(x + e);
#pragma unroll
                for (int t = 0; t < VEC; ++t)
                    g.v[t] *= gelu_tanh_grad(z.v[t] + bb.v[t]);
            }
            if (write_dx) {
                if constexpr (std::is_same_v<Dx, float>)
                    g.store(dx + e);
                else
                    store_half<Dx, VEC>(g, dx + e); // db still sums the f32 values
            }
#pragma unroll
            for (int t = 0; t < VEC; ++t)
                acc[t] += g.v[t];
        }
    }
#pragma unroll
    for (int t = 0; t < VEC; ++t)
        sums[threadIdx.y][threadIdx.x * VEC + t] = acc[t];
    __syncthreads();
    // Thread (x, y) adds column x + 32 y (of the block's 32 VEC) over the lanes, in lane order.
    for (int col = threadIdx.y * 32 + threadIdx.x; col < 32 * VEC; col += 32 * kRowLanes) {
        const int64_t c = int64_t(blockIdx.x) * 32 * VEC + col;
        if (c >= N) continue;
        float s = 0.0f;
#pragma unroll
        for (int y = 0; y < kRowLanes; ++y)
            s += sums[y][col];
        partial[int64_t(blockIdx.y) * N + c] = s;
    }
}

// The stage-1 grid aims at this many blocks (a constant, not the device's SM count, so db's
// summation order depends on the shape alone).
constexpr int64_t kTargetBlocks = 1024;

} // namespace

void CudaBackend::bias_act(const Tensor& x, const Tensor& b, bool gelu, const Tensor& out) {
    const DType od = out.dtype();
    if (!is_f32_or_half(x.dtype()) || b.dtype() != DType::f32 || !x.is_contiguous() ||
        !b.is_contiguous() || !out.is_contiguous() || !is_f32_or_half(od))
        return Backend::bias_act(x, b, gelu, out);
    const int64_t N = b.numel(), n = x.numel();
    if (n == 0) return;
    const bool vec = N % 4 == 0 && aligned16(x.data_ptr()) && aligned16(b.data_ptr()) &&
                     reinterpret_cast<uintptr_t>(out.data_ptr()) % (od == DType::f32 ? 16 : 8) == 0;
    const int64_t groups = vec ? n / 4 : n;
    const unsigned blocks = blocks_for(groups);
    cudaStream_t s = stream_of(x);
    const float* bp = b.data<float>();
    visit_f32_half(x.dtype(), [&]<typename X>() {
        const auto* xp = static_cast<const X*>(x.data_ptr());
        visit_f32_half(od, [&]<typename Out>() {
            auto* op = static_cast<Out*>(out.data_ptr());
            if (vec && gelu)
                bias_act_fwd<4, true><<<blocks, kBlock, 0, s>>>(xp, bp, op, groups, N);
            else if (vec)
                bias_act_fwd<4, false><<<blocks, kBlock, 0, s>>>(xp, bp, op, groups, N);
            else if (gelu)
                bias_act_fwd<1, true><<<blocks, kBlock, 0, s>>>(xp, bp, op, groups, N);
            else
                bias_act_fwd<1, false><<<blocks, kBlock, 0, s>>>(xp, bp, op, groups, N);
        });
    });
    check_launch("bias_act");
}

void CudaBackend::bias_act_backward(const Tensor& dy, const Tensor& x, const Tensor& b,
                                    bool gelu, const Tensor& dx, const Tensor& db) {
    const DType dd = dx.dtype();
    // dy may be a half type (the gradient of autocast's half output); with GELU, x (the saved
    // product, or with b undefined the GELU's input) may be one, and a half dy then has x's type.
    if (!is_f32_or_half(dy.dtype()) ||
        (gelu && dy.dtype() != DType::f32 && dy.dtype() != x.dtype()) ||
        !is_f32_or_half(x.dtype()) || !dy.is_contiguous() || !x.is_contiguous() ||
        (b.defined() && (!b.is_contiguous() || b.dtype() != DType::f32)) || !dx.is_contiguous() ||
        !db.is_contiguous() || !is_f32_or_half(dd) || db.dtype() != DType::f32)
        return Backend::bias_act_backward(dy, x, b, gelu, dx, db);
    const int64_t N = db.numel(), R = dy.numel() / std::max<int64_t>(N, 1);
    cudaStream_t s = stream_of(dy);
    if (N == 0) return;
    if (R == 0) {
        FORGE_CUDA_CHECK(cudaMemsetAsync(db.data_ptr(), 0, size_t(N) * sizeof(float), s));
        return;
    }
    const float* bp = b.defined() ? b.data<float>() : nullptr;
    const bool vec = N % 4 == 0 && aligned16(dy.data_ptr()) && aligned16(x.data_ptr()) &&
                     (!bp || aligned16(bp)) &&
                     reinterpret_cast<uintptr_t>(dx.data_ptr()) % (dd == DType::f32 ? 16 : 8) == 0;
    const int vw = vec ? 4 : 1;
    const int64_t col_blocks = (N + 32 * vw - 1) / (32 * vw);
    // Row tiles: enough blocks to fill the device, at least one row per lane.
    const int64_t want_tiles = std::max<int64_t>(1, kTargetBlocks / col_blocks);
    int64_t rows_per_tile = (R + want_tiles - 1) / want_tiles;
    rows_per_tile = std::max<int64_t>(kRowLanes, (rows_per_tile + kRowLanes - 1) / kRowLanes *
                                                     kRowLanes);
    const int64_t n_tiles = (R + rows_per_tile - 1) / rows_per_tile;
    FORGE_CHECK(n_tiles < 65536 && col_blocks < (int64_t(1) << 31), "[bias_act_backward] ",
                R, " x ", N, " exceeds the CUDA kernel's grid");
    auto partial_buf = allocate(size_t(n_tiles * N) * sizeof(float), dy.device());
    auto* partial = static_cast<float*>(partial_buf->data);
    const bool write_dx = gelu || dx.data_ptr() != dy.data_ptr();
    const dim3 grid{unsigned(col_blocks), unsigned(n_tiles)}, block{32, kRowLanes};
    visit_f32_half(dd, [&]<typename Dx>() {
        auto* dxp = static_cast<Dx*>(dx.data_ptr());
        const int64_t rpt = rows_per_tile;
        if (gelu) { // x, the product, f32 or half; dy f32 or x's type
            visit_f32_half(x.dtype(), [&]<typename X>() {
                const auto* xp = static_cast<const X*>(x.data_ptr());
                auto launch = [&]<typename Dy>(const Dy* dyp) {
                    if (vec)
                        bias_act_bwd_tiles<4, true, Dx, Dy, X><<<grid, block, 0, s>>>(
                            dyp, xp, bp, dxp, partial, R, N, rpt, write_dx);
                    else
                        bias_act_bwd_tiles<1, true, Dx, Dy, X><<<grid, block, 0, s>>>(
                            dyp, xp, bp, dxp, partial, R, N, rpt, write_dx);
                };
                if (dy.dtype() == DType::f32)
                    launch(dy.data<float>());
                else if constexpr (!std::is_same_v<X, float>)
                    launch(static_cast<const X*>(dy.data_ptr()));
            });
            return;
        }
        visit_f32_half(dy.dtype(), [&]<typename Dy>() { // x unread
            const auto* dyp = static_cast<const Dy*>(dy.data_ptr());
            if (vec)
                bias_act_bwd_tiles<4, false, Dx, Dy, float>
                    <<<grid, block, 0, s>>>(dyp, nullptr, bp, dxp, partial, R, N, rpt, write_dx);
            else
                bias_act_bwd_tiles<1, false, Dx, Dy, float>
                    <<<grid, block, 0, s>>>(dyp, nullptr, bp, dxp, partial, R, N, rpt, write_dx);
        });
    });
    sum_partial_rows(partial, n_tiles, N, db.data<float>(), s); // stage 2, a fixed order
    check_launch("bias_act_backward");
}

} // namespace forge::cuda
