// Embedding gather / scatter-add backward, and rotary position embedding (RoPE). Math as in
// src/backends/cpu/ref/{embedding,rope}.cpp; RoPE angles are computed in double like the
// reference, so f32 results match it to rounding.
#include "backends/cuda/common.cuh"

namespace forge::cuda {

namespace {

// out[n, c] = weight[ids[n], c], elements moved as raw words of the dtype's size.
template <typename W>
__global__ void gather_rows(const W* __restrict__ w, const int64_t* __restrict__ ids,
                            int64_t n_ids, int64_t cols, W* __restrict__ out) {
    const int64_t total = n_ids * cols;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
         i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t n = i / cols, c = i - n * cols;
        out[i] = w[ids[n] * cols + c];
    }
}

// dweight[ids[n], c] += dout[n, c]; repeated ids meet in atomics (order-dependent rounding).
template <typename T>
__global__ void scatter_add_rows(const T* __restrict__ dout, const int64_t* __restrict__ ids,
                                 int64_t n_ids, int64_t cols, T* __restrict__ dw) {
    const int64_t total = n_ids * cols;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
         i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t n = i / cols, c = i - n * cols;
        atomicAdd(dw + ids[n] * cols + c, dout[i]);
    }
}

// x, y: (rows = B*H*T, D). Per row: `half` rotated pairs, then D - rd features copied.
template <typename T>
__global__ void rope_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows,
                            int64_t seq, int64_t d, int64_t rd, double theta, int64_t pos_offset,
                            bool neox, bool inverse) {
    const int64_t half = rd / 2, per_row = half + (d - rd), total = rows * per_row;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
         i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t row = i / per_row, j = i - row * per_row;
        const T* xr = x + row * d;
        T* yr = y + row * d;
        if (j >= half) {
            const int64_t k = rd + (j - half);
            yr[k] = xr[k];
            continue;
        }
        const double pos = double(pos_offset + row % seq);
        const double angle = pos * ::pow(theta, -2.0 * double(j) / double(rd));
        double sn, cs;
        ::sincos(angle, &sn, &cs);
        if (inverse) sn = -sn;
        const int64_t i0 = neox ? j : 2 * j, i1 = neox ? j + half : 2 * j + 1;
        const double x0 = double(xr[i0]), x1 = double(xr[i1]);
        yr[i0] = T(x0 * cs - x1 * sn);
        yr[i1] = T(x0 * sn + x1 * cs);
    }
}

} // namespace

void CudaBackend::embedding(const Tensor& weight, const Tensor& ids, const Tensor& out) {
    const int64_t n_ids = ids.numel(), cols = weight.size(1);
    if (n_ids == 0 || cols == 0) return;
    cudaStream_t s = stream_of(out);
    const unsigned grid = blocks_for(n_ids * cols);
    const int64_t* ip = ids.data<int64_t>();
    // Rows of whole 16-byte words move as such (GPT-2's 768 f32: 48 per row).
    const int64_t row_bytes = cols * int64_t(dtype_size(weight.dtype()));
    if (row_bytes % 16 == 0 && ((reinterpret_cast<uintptr_t>(weight.data_ptr()) |
                                 reinterpret_cast<uintptr_t>(out.data_ptr())) & 15) == 0) {
        const int64_t words = row_bytes / 16;
        gather_rows<uint4><<<blocks_for(n_ids * words), kBlock, 0, s>>>(
            static_cast<const uint4*>(weight.data_ptr()), ip, n_ids, words,
            static_cast<uint4*>(out.data_ptr()));
        check_launch("embedding");
        return;
    }
    switch (dtype_size(weight.dtype())) {
    case 2:
        gather_rows<uint16_t><<<grid, kBlock, 0, s>>>(weight.data<uint16_t>(), ip, n_ids, cols,
                                                      out.data<uint16_t>());
        break;
    case 4:
        gather_rows<uint32_t><<<grid, kBlock, 0, s>>>(weight.data<uint32_t>(), ip, n_ids, cols,
                                                      out.data<uint32_t>());
        break;
    case 8:
        gather_rows<uint64_t><<<grid, kBlock, 0, s>>>(weight.data<uint64_t>(), ip, n_ids, cols,
                                                      out.data<uint64_t>());
        break;
    default: FORGE_ASSERT(false);
    }
    check_launch("embedding");
}

void CudaBackend::embedding_backward(const Tensor& dout, const Tensor& ids,
                                     const Tensor& dweight) {
    const int64_t n_ids = ids.numel(), cols = dweight.size(1);
    if (n_ids == 0 || cols == 0) return;
    visit_float(dweight.dtype(), [&]<typename T>() {
        scatter_add_rows<T><<<blocks_for(n_ids * cols), kBlock, 0, stream_of(dweight)>>>(
            dout.data<T>(), ids.data<int64_t>(), n_ids, cols, dweight.data<T>());
    });
    check_launch("embedding_backward");
}

void CudaBackend::rope(const Tensor& x, const RopeOptions& opts, const Tensor& out) {
    const int64_t seq = x.size(2), d = x.size(3), rows = x.size(0) * x.size(1) * seq;
    const int64_t rd = opts.rotary_dim == 0 ? d : opts.rotary_dim;
    const int64_t total = rows * (rd / 2 + (d - rd));
    if (total == 0) return;
    visit_float(x.dtype(), [&]<typename T>() {
        rope_kernel<T><<<blocks_for(total), kBlock, 0, stream_of(x)>>>(
            x.data<T>(), out.data<T>(), rows, seq, d, rd, double(opts.theta), opts.pos_offset,
            opts.layout == RopeLayout::neox, opts.inverse);
    });
    check_launch("rope");
}

} // namespace forge::cuda
