// Row-wise softmax / log-softmax and the fused cross-entropy over the vocabulary (forward:
// losses and log-sum-exp per row; backward: the whole dlogits row from logits and lse, never a
// softmax matrix). One block per row; x (R, C) contiguous. Math as in
// src/backends/cpu/ref/{softmax,cross_entropy}.cpp.
#include "backends/cuda/common.cuh"

namespace forge::cuda {

namespace {

// max and log(sum(exp(x - max))) of a row, on every thread of the block.
template <typename T>
__device__ void row_max_sum(const T* __restrict__ xr, int64_t cols, T* scratch, T& m, T& s) {
    T mx = T(-INFINITY);
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        mx = ::fmax(mx, xr[c]);
    m = block_max(mx, scratch);
    T sum = 0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        sum += ::exp(xr[c] - m);
    s = block_sum(sum, scratch);
}

template <typename T>
__global__ void softmax_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t cols,
                               bool log_out) {
    __shared__ T scratch[32];
    const T* xr = x + blockIdx.x * cols;
    T* yr = y + blockIdx.x * cols;
    T m, s;
    row_max_sum(xr, cols, scratch, m, s);
    const T ls = ::log(s), inv = T(1) / s;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        yr[c] = log_out ? xr[c] - m - ls : ::exp(xr[c] - m) * inv;
}

template <typename T>
__global__ void ce_forward(const T* __restrict__ x, const int64_t* __restrict__ targets,
                           int64_t cols, int64_t ignore_index, T* __restrict__ losses,
                           T* __restrict__ lse) {
    __shared__ T scratch[32];
    const int64_t row = blockIdx.x, t = targets[row];
    if (t == ignore_index) {
        if (threadIdx.x == 0) losses[row] = lse[row] = T(0);
        return;
    }
    const T* xr = x + row * cols;
    T m, s;
    row_max_sum(xr, cols, scratch, m, s);
    if (threadIdx.x == 0) {
        const T l = m + ::log(s);
        lse[row] = l;
        losses[row] = l - xr[t];
    }
}

template <typename T>
__global__ void ce_backward(const T* __restrict__ x, const int64_t* __restrict__ targets,
                            const T* __restrict__ lse, int64_t cols, int64_t ignore_index,
                            const T* __restrict__ dloss, T inv_count, T* __restrict__ dx) {
    const int64_t row = blockIdx.x, t = targets[row];
    T* dr = dx + row * cols;
    if (t == ignore_index) {
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
            dr[c] = T(0);
        return;
    }
    const T* xr = x + row * cols;
    const T l = lse[row], scale = dloss[0] * inv_count;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        dr[c] = (::exp(xr[c] - l) - (c == t ? T(1) : T(0))) * scale;
}

} // namespace

void CudaBackend::softmax(const Tensor& x, const Tensor& out, bool log) {
    const int64_t rows = x.size(0), cols = x.size(1);
    if (rows == 0 || cols == 0) return;
    visit_float(x.dtype(), [&]<typename T>() {
        softmax_kernel<T><<<unsigned(rows), row_threads(cols), 0, stream_of(x)>>>(
            x.data<T>(), out.data<T>(), cols, log);
    });
    check_launch("softmax");
}

void CudaBackend::cross_entropy(const Tensor& logits, const Tensor& targets,
                                int64_t ignore_index, const Tensor& losses, const Tensor& lse) {
    const int64_t rows = logits.size(0), cols = logits.size(1);
    if (rows == 0) return;
    visit_float(logits.dtype(), [&]<typename T>() {
        ce_forward<T><<<unsigned(rows), row_threads(cols), 0, stream_of(logits)>>>(
            logits.data<T>(), targets.data<int64_t>(), cols, ignore_index, losses.data<T>(),
            lse.data<T>());
    });
    check_launch("cross_entropy");
}

void CudaBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                         const Tensor& lse, int64_t ignore_index,
                                         const Tensor& dloss, double inv_count,
                                         const Tensor& dlogits) {
    const int64_t rows = logits.size(0), cols = logits.size(1);
    if (rows == 0 || cols == 0) return;
    visit_float(logits.dtype(), [&]<typename T>() {
        ce_backward<T><<<unsigned(rows), row_threads(cols), 0, stream_of(logits)>>>(
            logits.data<T>(), targets.data<int64_t>(), lse.data<T>(), cols, ignore_index,
            dloss.data<T>(), T(inv_count), dlogits.data<T>());
    });
    check_launch("cross_entropy_backward");
}

} // namespace forge::cuda
