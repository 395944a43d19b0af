// LayerNorm and RMSNorm, forward and backward. x (R, C) contiguous. LayerNorm on f32 rows of
// C <= 1024 (C % 4 == 0) runs one warp per row with the row in registers: the forward reads x
// once and may write a half output (CUDA autocast hands the next GEMM its operand rounded), the
// backward takes dx and the block's share of dw/db in one pass. Otherwise one block per row for
// the row statistics and dx; the weight/bias gradients are column sums over the rows, done as a
// chunked two-pass column reduction (threads own adjacent columns: coalesced, no atomics,
// deterministic). Formulas as in src/backends/cpu/ref/norms.cpp:
//   layer_norm: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * w
//   rms_norm:   dx = rstd * (g - xhat * mean(g * xhat))
#include "backends/cuda/common.cuh"

namespace forge::cuda {

namespace {

template <typename T>
__global__ void layer_norm_fwd(const T* __restrict__ x, const T* __restrict__ w,
                               const T* __restrict__ b, T eps, int64_t cols, T* __restrict__ y,
                               T* __restrict__ mean, T* __restrict__ rstd) {
    __shared__ T scratch[32];
    const T* xr = x + blockIdx.x * cols;
    T* yr = y + blockIdx.x * cols;
    T s = 0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        s += xr[c];
    const T m = block_sum(s, scratch) / T(cols);
    T v = 0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        v += (xr[c] - m) * (xr[c] - m);
    const T rs = T(1) / ::sqrt(block_sum(v, scratch) / T(cols) + eps);
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        const T o = (xr[c] - m) * rs * w[c];
        yr[c] = b ? o + b[c] : o;
    }
    if (threadIdx.x == 0) {
        mean[blockIdx.x] = m;
        rstd[blockIdx.x] = rs;
    }
}

template <typename T>
__global__ void rms_norm_fwd(const T* __restrict__ x, const T* __restrict__ w, T eps,
                             int64_t cols, T* __restrict__ y, T* __restrict__ rstd) {
    __shared__ T scratch[32];
    const T* xr = x + blockIdx.x * cols;
    T* yr = y + blockIdx.x * cols;
    T ss = 0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        ss += xr[c] * xr[c];
    const T rs = T(1) / ::sqrt(block_sum(ss, scratch) / T(cols) + eps);
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        yr[c] = xr[c] * rs * w[c];
    if (threadIdx.x == 0) rstd[blockIdx.x] = rs;
}

// mean == nullptr: RMSNorm (xhat = x * rstd, no mean term).
template <typename T>
__global__ void norm_bwd_dx(const T* __restrict__ dy, const T* __restrict__ x,
                            const T* __restrict__ w, const T* __restrict__ mean,
                            const T* __restrict__ rstd, int64_t cols, T* __restrict__ dx) {
    __shared__ T scratch[32];
    const int64_t row = blockIdx.x;
    const T* xr = x + row * cols;
    const T* dyr = dy + row * cols;
    const T m = mean ? mean[row] : T(0), rs = rstd[row];
    T gs = 0, gxs = 0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        const T g = dyr[c] * w[c];
        gs += g;
        gxs += g * (xr[c] - m) * rs;
    }
    const T g_mean = mean ? block_sum(gs, scratch) / T(cols) : T(0);
    const T gx_mean = block_sum(gxs, scratch) / T(cols);
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        const T xhat = (xr[c] - m) * rs;
        dx[row * cols + c] = rs * (dyr[c] * w[c] - g_mean - xhat * gx_mean);
    }
}

// Partial column sums over rows [chunk * per, ...): dw += dy * xhat, db += dy.
template <typename T>
__global__ void norm_bwd_dw_partial(const T* __restrict__ dy, const T* __restrict__ x,
                                    const T* __restrict__ mean, const T* __restrict__ rstd,
                                    int64_t rows, int64_t cols, int64_t per, T* __restrict__ pdw,
                                    T* __restrict__ pdb) {
    const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
    if (c >= cols) return;
    const int64_t r0 = blockIdx.y * per, r1 = min64(rows, r0 + per);
    T dw = 0, db = 0;
    for (int64_t r = r0; r < r1; ++r) {
        const T d = dy[r * cols + c];
        dw += d * (x[r * cols + c] - (mean ? mean[r] : T(0))) * rstd[r];
        db += d;
    }
    pdw[blockIdx.y * cols + c] = dw;
    if (pdb) pdb[blockIdx.y * cols + c] = db;
}

template <typename T>
__global__ void sum_chunks(const T* __restrict__ p, int64_t chunks, int64_t cols,
                           T* __restrict__ out) {
    const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
    if (c >= cols) return;
    T s = 0;
    for (int64_t k = 0; k < chunks; ++k)
        s += p[k * cols + c];
    out[c] = s;
}

// ---------------------------------------------------------------- LayerNorm, a warp per row
// Lane l holds columns 4 (32 i + l) .. +3 for i < V (V float4 per lane covers C <= 128 V).

constexpr int kLnMaxV = 8;          // C <= 1024
constexpr int kLnFwdWarps = 4;      // rows per block in the forward
constexpr int kLnBwdWarps = 8;      // warps per block in the backward
constexpr int64_t kLnBwdBlocks = 264; // fixed, so the dw/db sums are the same on every GPU

__device__ __forceinline__ float4 f4(float a) { return make_float4(a, a, a, a); }
__device__ __forceinline__ float4 operator+(float4 a, float4 b) {
    return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}
__device__ __forceinline__ float4 operator-(float4 a, float4 b) {
    return make_float4(a.x - b.x, a.y - b.y, a.z - b.z, a.w - b.w);
}
__device__ __forceinline__ float4 operator*(float4 a, float4 b) {
    return make_float4(a.x * b.x, a.y * b.y, a.z * b.z, a.w * b.w);
}
__device__ __forceinline__ float hsum(float4 a) { return (a.x + a.y) + (a.z + a.w); }

template <int V, typename TO>
__global__ void __launch_bounds__(32 * kLnFwdWarps)
    ln_fwd_rows(const float* __restrict__ x, const float* __restrict__ w,
                const float* __restrict__ b, float eps, int64_t rows, int cols,
                TO* __restrict__ y, float* __restrict__ mean, float* __restrict__ rstd) {
    const int64_t row = int64_t(blockIdx.x) * kLnFwdWarps + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float* xr = x + row * cols;
    float4 v[V];
    float s = 0;
#pragma unroll
    for (int i = 0; i < V; ++i) {
        const int c = (32 * i + lane) * 4;
        v[i] = c < cols ? load4(xr + c) : f4(0);
        s += hsum(v[i]);
    }
    const float m = warp_sum(s) / float(cols);
    float q = 0;
#pragma unroll
    for (int i = 0; i < V; ++i)
        if ((32 * i + lane) * 4 < cols) q += hsum((v[i] - f4(m)) * (v[i] - f4(m)));
    const float rs = 1.0f / sqrtf(warp_sum(q) / float(cols) + eps);
    TO* yr = y + row * cols;
#pragma unroll
    for (int i = 0; i < V; ++i) {
        const int c = (32 * i + lane) * 4;
        if (c >= cols) continue;
        const float4 o = (v[i] - f4(m)) * f4(rs) * load4(w + c);
        store4(yr + c, b ? o + load4(b + c) : o);
    }
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = rs;
    }
}

// dx for the block's rows, and the block's column sums of dy * xhat (and dy) into row
// blockIdx.x of pdw (pdb), summed over the warps in a fixed order. dy f32 or a half type (the
// gradient of autocast's half output, widened here).
template <int V, typename Dy>
__global__ void __launch_bounds__(32 * kLnBwdWarps)
    ln_bwd_rows(const Dy* __restrict__ dy, const float* __restrict__ x,
                const float* __restrict__ w, const float* __restrict__ mean,
                const float* __restrict__ rstd, const float* __restrict__ dx_add, int64_t rows,
                int cols, float* __restrict__ dx, float* __restrict__ pdw,
                float* __restrict__ pdb) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float4 acc_w[V], acc_b[V];
#pragma unroll
    for (int i = 0; i < V; ++i)
        acc_w[i] = acc_b[i] = f4(0);
    for (int64_t row = int64_t(blockIdx.x) * kLnBwdWarps + warp; row < rows;
         row += int64_t(gridDim.x) * kLnBwdWarps) {
        const float m = mean[row], rs = rstd[row];
        float4 xh[V], g[V];
        float gs = 0, gxs = 0;
#pragma unroll
        for (int i = 0; i < V; ++i) {
            const int c = (32 * i + lane) * 4;
            if (c >= cols) continue;
            const float4 d = load4(dy + row * cols + c);
            xh[i] = (load4(x + row * cols + c) - f4(m)) * f4(rs);
            g[i] = d * load4(w + c);
            gs += hsum(g[i]);
            gxs += hsum(g[i] * xh[i]);
            acc_w[i] = acc_w[i] + d * xh[i];
            acc_b[i] = acc_b[i] + d;
        }
        gs = warp_sum(gs) / float(cols);
        gxs = warp_sum(gxs) / float(cols);
#pragma unroll
        for (int i = 0; i < V; ++i) {
            const int c = (32 * i + lane) * 4;
            if (c >= cols) continue;
            float4 d = f4(rs) * (g[i] - f4(gs) - xh[i] * f4(gxs));
            if (dx_add) d = load4(dx_add + row * cols + c) + d; // the order autograd adds in
            store4(dx + row * cols + c, d);
        }
    }
    __shared__ float4 red[kLnBwdWarps][V * 32];
    for (int pass = 0; pass < (pdb ? 2 : 1); ++pass) {
#pragma unroll
        for (int i = 0; i < V; ++i)
            red[warp][32 * i + lane] = pass == 0 ? acc_w[i] : acc_b[i];
        __syncthreads();
        float* out = (pass == 0 ? pdw : pdb) + int64_t(blockIdx.x) * cols;
        for (int c4 = threadIdx.x; c4 < cols / 4; c4 += blockDim.x) {
            float4 t = f4(0);
            for (int k = 0; k < kLnBwdWarps; ++k)
                t = t + red[k][c4];
            store4(out + 4 * c4, t);
        }
        __syncthreads();
    }
}

// The V of the kernel instance for C columns (the smallest instance that covers C), 0 when the
// warp-per-row kernels do not apply.
int ln_rows_v(int64_t cols) {
    if (cols % 4 != 0 || cols > 128 * kLnMaxV) return 0;
    for (int v : {1, 2, 3, 4, 6, 8})
        if (128 * v >= cols) return v;
    return 0;
}
template <typename F> void visit_ln_v(int v, F&& f) {
    switch (v) {
    case 1: f.template operator()<1>(); break;
    case 2: f.template operator()<2>(); break;
    case 3: f.template operator()<3>(); break;
    case 4: f.template operator()<4>(); break;
    case 6: f.template operator()<6>(); break;
    default: f.template operator()<8>(); break;
    }
}
bool aligned16(const Tensor& t) { return !t.defined() || cuda::aligned16(t.data_ptr()); }

// dw (and db) for either norm: two passes over row chunks.
template <typename T>
void norm_param_grads(CudaBackend& be, const Tensor& dy, const Tensor& x, const T* mean,
                      const Tensor& rstd, const Tensor& dw, const Tensor& db) {
    const int64_t rows = x.size(0), cols = x.size(1);
    cudaStream_t s = stream_of(x);
    int64_t chunks = std::max<int64_t>(1, (int64_t(1) << 17) / std::max<int64_t>(cols, 1));
    chunks = std::min<int64_t>({chunks, std::max<int64_t>(1, rows / 16), 65535});
    const int64_t per = (rows + chunks - 1) / chunks;
    chunks = (rows + per - 1) / per;
    const bool with_b = db.defined();
    auto buf = be.allocate(size_t(chunks * cols) * sizeof(T) * (with_b ? 2 : 1), x.device());
    T* pdw = static_cast<T*>(buf->data);
    T* pdb = with_b ? pdw + chunks * cols : nullptr;
    const dim3 grid(blocks_for(cols, 128, INT32_MAX), unsigned(chunks));
    norm_bwd_dw_partial<T><<<grid, 128, 0, s>>>(dy.data<T>(), x.data<T>(), mean, rstd.data<T>(),
                                                rows, cols, per, pdw, pdb);
    auto second_stage = [&](const T* p, const Tensor& out) {
        if constexpr (std::is_same_v<T, float>)
            sum_partial_rows(p, chunks, cols, out.data<float>(), s);
        else
            sum_chunks<T><<<blocks_for(cols, 128, INT32_MAX), 128, 0, s>>>(p, chunks, cols,
                                                                          out.data<T>());
    };
    second_stage(pdw, dw);
    if (with_b) second_stage(pdb, db);
}

} // namespace

void CudaBackend::layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps,
                             const Tensor& out, const Tensor& mean, const Tensor& rstd) {
    const int64_t rows = x.size(0), cols = x.size(1);
    cudaStream_t s = stream_of(x);
    const int v = ln_rows_v(cols);
    if (v && x.dtype() == DType::f32 && w.dtype() == DType::f32 && is_f32_or_half(out.dtype()) &&
        (!b.defined() || b.dtype() == DType::f32) && aligned16(x) && aligned16(w) &&
        aligned16(b) && aligned16(out)) {
        visit_f32_half(out.dtype(), [&]<typename TO>() {
            visit_ln_v(v, [&]<int V>() {
                ln_fwd_rows<V, TO><<<blocks_for(rows, kLnFwdWarps, INT32_MAX), 32 * kLnFwdWarps,
                                     0, s>>>(x.data<float>(), w.data<float>(),
                                             b.defined() ? b.data<float>() : nullptr, eps, rows,
                                             int(cols), out.data<TO>(), mean.data<float>(),
                                             rstd.data<float>());
            });
        });
        check_launch("layer_norm");
        return;
    }
    // Any other case: one dtype throughout; a half output of f32 rows goes through f32.
    const Tensor y = out.dtype() == x.dtype() ? out : Tensor::empty(out.shape(), x.dtype(),
                                                                     out.device());
    visit_float(x.dtype(), [&]<typename T>() {
        layer_norm_fwd<T><<<unsigned(rows), row_threads(cols), 0, s>>>(
            x.data<T>(), w.data<T>(), b.defined() ? b.data<T>() : nullptr, T(eps), cols,
            y.data<T>(), mean.data<T>(), rstd.data<T>());
    });
    check_launch("layer_norm");
    if (y.data_ptr() != out.data_ptr()) copy(y, out);
}

namespace {
// The warp-per-row backward where it applies (f32 x, f32 or half dy, C % 4 == 0, C <= 1024,
// 16-byte aligned); false otherwise.
bool ln_backward_rows(CudaBackend& be, const Tensor& dy, const Tensor& x, const Tensor& w,
                      const Tensor& mean, const Tensor& rstd, const Tensor& dx_add,
                      const Tensor& dx, const Tensor& dw, const Tensor& db) {
    const int64_t rows = x.size(0), cols = x.size(1);
    const int v = ln_rows_v(cols);
    if (!v || x.dtype() != DType::f32 || !is_f32_or_half(dy.dtype()) || !dy.is_contiguous() ||
        !aligned16(dy) || !aligned16(x) || !aligned16(w) ||
        !aligned16(dx) || (dx_add.defined() && (dx_add.dtype() != DType::f32 ||
                                                !dx_add.is_contiguous() || !aligned16(dx_add))))
        return false;
    cudaStream_t s = stream_of(x);
    const int64_t blocks =
        std::max<int64_t>(1, std::min(kLnBwdBlocks, (rows + kLnBwdWarps - 1) / kLnBwdWarps));
    const bool with_b = db.defined();
    auto buf = be.allocate(size_t(blocks * cols) * sizeof(float) * (with_b ? 2 : 1), x.device());
    float* pdw = static_cast<float*>(buf->data);
    float* pdb = with_b ? pdw + blocks * cols : nullptr;
    visit_f32_half(dy.dtype(), [&]<typename Dy>() {
        visit_ln_v(v, [&]<int V>() {
            ln_bwd_rows<V, Dy><<<unsigned(blocks), 32 * kLnBwdWarps, 0, s>>>(
                static_cast<const Dy*>(dy.data_ptr()), x.data<float>(), w.data<float>(),
                mean.data<float>(), rstd.data<float>(),
                dx_add.defined() ? dx_add.data<float>() : nullptr, rows, int(cols),
                dx.data<float>(), pdw, pdb);
        });
    });
    sum_partial_rows(pdw, blocks, cols, dw.data<float>(), s);
    if (with_b) sum_partial_rows(pdb, blocks, cols, db.data<float>(), s);
    check_launch("layer_norm_backward");
    return true;
}
} // namespace

void CudaBackend::layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                      const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                                      const Tensor& dw, const Tensor& db) {
    if (ln_backward_rows(*this, dy, x, w, mean, rstd, Tensor(), dx, dw, db)) return;
    const int64_t rows = x.size(0), cols = x.size(1);
    cudaStream_t s = stream_of(x);
    visit_float(x.dtype(), [&]<typename T>() {
        norm_bwd_dx<T><<<unsigned(rows), row_threads(cols), 0, s>>>(
            dy.data<T>(), x.data<T>(), w.data<T>(), mean.data<T>(), rstd.data<T>(), cols,
            dx.data<T>());
        norm_param_grads<T>(*this, dy, x, mean.data<T>(), rstd, dw, db);
    });
    check_launch("layer_norm_backward");
}

bool CudaBackend::layer_norm_backward_add(const Tensor& dy, const Tensor& x, const Tensor& w,
                                          const Tensor& mean, const Tensor& rstd,
                                          const Tensor& dx_add, const Tensor& dx,
                                          const Tensor& dw, const Tensor& db) {
    return ln_backward_rows(*this, dy, x, w, mean, rstd, dx_add, dx, dw, db);
}

void CudaBackend::rms_norm(const Tensor& x, const Tensor& w, float eps, const Tensor& out,
                           const Tensor& rstd) {
    const int64_t rows = x.size(0), cols = x.size(1);
    visit_float(x.dtype(), [&]<typename T>() {
        rms_norm_fwd<T><<<unsigned(rows), row_threads(cols), 0, stream_of(x)>>>(
            x.data<T>(), w.data<T>(), T(eps), cols, out.data<T>(), rstd.data<T>());
    });
    check_launch("rms_norm");
}

void CudaBackend::rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                    const Tensor& rstd, const Tensor& dx, const Tensor& dw) {
    const int64_t rows = x.size(0), cols = x.size(1);
    visit_float(x.dtype(), [&]<typename T>() {
        norm_bwd_dx<T><<<unsigned(rows), row_threads(cols), 0, stream_of(x)>>>(
            dy.data<T>(), x.data<T>(), w.data<T>(), nullptr, rstd.data<T>(), cols, dx.data<T>());
        norm_param_grads<T>(*this, dy, x, static_cast<const T*>(nullptr), rstd, dw, Tensor());
    });
    check_launch("rms_norm_backward");
}

} // namespace forge::cuda
