// LayerNorm and RMSNorm, forward and backward. x (R, C) contiguous, one block per row for the
// row statistics and dx; the weight/bias gradients are column sums over the rows, done as a
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
    sum_chunks<T><<<blocks_for(cols, 128, INT32_MAX), 128, 0, s>>>(pdw, chunks, cols,
                                                                  dw.data<T>());
    if (with_b)
        sum_chunks<T><<<blocks_for(cols, 128, INT32_MAX), 128, 0, s>>>(pdb, chunks, cols,
                                                                      db.data<T>());
}

} // namespace

void CudaBackend::layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps,
                             const Tensor& out, const Tensor& mean, const Tensor& rstd) {
    const int64_t rows = x.size(0), cols = x.size(1);
    visit_float(x.dtype(), [&]<typename T>() {
        layer_norm_fwd<T><<<unsigned(rows), row_threads(cols), 0, stream_of(x)>>>(
            x.data<T>(), w.data<T>(), b.defined() ? b.data<T>() : nullptr, T(eps), cols,
            out.data<T>(), mean.data<T>(), rstd.data<T>());
    });
    check_launch("layer_norm");
}

void CudaBackend::layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                      const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                                      const Tensor& dw, const Tensor& db) {
    const int64_t rows = x.size(0), cols = x.size(1);
    visit_float(x.dtype(), [&]<typename T>() {
        norm_bwd_dx<T><<<unsigned(rows), row_threads(cols), 0, stream_of(x)>>>(
            dy.data<T>(), x.data<T>(), w.data<T>(), mean.data<T>(), rstd.data<T>(), cols,
            dx.data<T>());
        norm_param_grads<T>(*this, dy, x, mean.data<T>(), rstd, dw, db);
    });
    check_launch("layer_norm_backward");
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
