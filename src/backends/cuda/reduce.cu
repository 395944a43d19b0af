// Sum and max over any set of dims of a contiguous tensor. The output's elements walk the kept
// dims, the reduction walks the reduced ones (each coalesced into a StridedIndex). Two shapes:
// - the innermost dim is reduced: one block per output, threads stride along the rows;
// - it is kept (e.g. bias gradients, (N, C) -> (1, C)): threads own adjacent outputs, so reads
//   coalesce; the reduced range is split into chunks summed in a second pass, so a few hundred
//   outputs still fill the GPU. Deterministic: no atomics.
// Float sums accumulate in double (the CPU reference adds in order in the tensor's dtype).
#include <limits>

#include "backends/cuda/common.cuh"

namespace forge::cuda {

namespace {

template <typename T> struct Acc {
    using type = T;
};
template <> struct Acc<float> {
    using type = double;
};

template <typename A> __device__ __forceinline__ A combine(bool is_max, A acc, A v) {
    if (!is_max) return acc + v;
    if constexpr (std::is_floating_point_v<A>)
        return (v > acc || v != v) ? v : acc; // NaN propagates
    else
        return v > acc ? v : acc;
}
template <typename A> __device__ __forceinline__ A identity(bool is_max) {
    if (!is_max) return A(0);
    if constexpr (std::is_floating_point_v<A>) return A(-INFINITY);
    else return std::numeric_limits<A>::lowest();
}

// One block per output element.
template <typename T>
__global__ void reduce_rows(const T* __restrict__ x, T* __restrict__ out, StridedIndex<1> kept,
                            StridedIndex<1> red, int64_t n_red, bool is_max) {
    using A = typename Acc<T>::type;
    __shared__ A scratch[32];
    int64_t base[1];
    kept.offsets(blockIdx.x, base);
    A acc = identity<A>(is_max);
    for (int64_t r = threadIdx.x; r < n_red; r += blockDim.x) {
        int64_t off[1];
        red.offsets(r, off);
        acc = combine(is_max, acc, A(x[base[0] + off[0]]));
    }
    // Block combine through shared memory (a tree; NaN survives every max).
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1)
        acc = combine(is_max, acc, __shfl_xor_sync(0xffffffffu, acc, o));
    if (lane == 0) scratch[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        acc = lane < int(blockDim.x >> 5) ? scratch[lane] : identity<A>(is_max);
        for (int o = 16; o > 0; o >>= 1)
            acc = combine(is_max, acc, __shfl_xor_sync(0xffffffffu, acc, o));
        if (lane == 0) out[blockIdx.x] = T(acc);
    }
}

// Thread per (chunk, output): partial[chunk * n_out + o] over reduced elements
// [chunk * per, (chunk + 1) * per).
template <typename T, typename A>
__global__ void reduce_cols(const T* __restrict__ x, A* __restrict__ partial,
                            StridedIndex<1> kept, StridedIndex<1> red, int64_t n_out,
                            int64_t n_red, int64_t per, bool is_max) {
    const int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
    if (o >= n_out) return;
    int64_t base[1];
    kept.offsets(o, base);
    A acc = identity<A>(is_max);
    const int64_t r0 = blockIdx.y * per, r1 = min64(n_red, r0 + per);
    for (int64_t r = r0; r < r1; ++r) {
        int64_t off[1];
        red.offsets(r, off);
        acc = combine(is_max, acc, A(x[base[0] + off[0]]));
    }
    partial[blockIdx.y * n_out + o] = acc;
}

template <typename T, typename A>
__global__ void reduce_partials(const A* __restrict__ partial, T* __restrict__ out, int64_t n_out,
                                int64_t chunks, bool is_max) {
    const int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
    if (o >= n_out) return;
    A acc = identity<A>(is_max);
    for (int64_t c = 0; c < chunks; ++c)
        acc = combine(is_max, acc, partial[c * n_out + o]);
    out[o] = T(acc);
}

} // namespace

void CudaBackend::reduce(ReduceOp op, const Tensor& x, const std::vector<int64_t>& dims,
                         const Tensor& out) {
    const int64_t n_out = out.numel();
    if (n_out == 0) return;
    const bool is_max = op == ReduceOp::max;
    // Split x's dims into kept and reduced, each with x's (contiguous) strides.
    const Shape xs = contiguous_strides(x.shape());
    Shape kept_shape, kept_str, red_shape, red_str;
    std::vector<bool> reduced(size_t(x.dim()), false);
    for (auto d : dims)
        reduced[size_t(d)] = true;
    for (int64_t d = 0; d < x.dim(); ++d) {
        (reduced[size_t(d)] ? red_shape : kept_shape).push_back(x.shape()[d]);
        (reduced[size_t(d)] ? red_str : kept_str).push_back(xs[d]);
    }
    const int64_t n_red = shape_numel(red_shape);
    const auto kept = make_index<1>(kept_shape, {&kept_str});
    const auto red = make_index<1>(red_shape, {&red_str});
    const bool inner_reduced = x.dim() > 0 && reduced[size_t(x.dim() - 1)] && x.shape().back() > 1;
    cudaStream_t s = stream_of(out);
    visit_numeric(x.dtype(), [&]<typename T>() {
        using A = typename Acc<T>::type;
        if (n_red == 0) { // sum of nothing
            FORGE_CUDA_CHECK(cudaMemsetAsync(out.data_ptr(), 0, out.nbytes(), s));
            return;
        }
        if (inner_reduced || n_out == 1) {
            FORGE_CHECK(n_out <= int64_t(INT32_MAX), "[reduce] too many outputs");
            reduce_rows<T><<<unsigned(n_out), 256, 0, s>>>(x.data<T>(), out.data<T>(), kept, red,
                                                          n_red, is_max);
            return;
        }
        // Enough chunks for ~128K threads, each chunk at least 32 rows long.
        int64_t chunks = std::max<int64_t>(1, (int64_t(1) << 17) / n_out);
        chunks = std::min<int64_t>({chunks, std::max<int64_t>(1, n_red / 32), 65535});
        const int64_t per = (n_red + chunks - 1) / chunks;
        chunks = (n_red + per - 1) / per;
        auto buf = allocate(size_t(chunks * n_out) * sizeof(A), out.device());
        A* partial = static_cast<A*>(buf->data);
        const dim3 grid(blocks_for(n_out, 256, INT32_MAX), unsigned(chunks));
        reduce_cols<T, A><<<grid, 256, 0, s>>>(x.data<T>(), partial, kept, red, n_out, n_red, per,
                                               is_max);
        reduce_partials<T, A><<<blocks_for(n_out, 256, INT32_MAX), 256, 0, s>>>(
            partial, out.data<T>(), n_out, chunks, is_max);
    });
    check_launch("reduce");
}

namespace {

constexpr int kPartialLanes = 16; // threads per column in sum_partial_rows

// Block (32, kPartialLanes) over 32 columns: thread (x, y) adds rows y, y + kPartialLanes, ...
// of column x, then the lanes are added in order.
__global__ void sum_partial_rows_kernel(const float* __restrict__ partial, int64_t rows,
                                        int64_t cols, float* __restrict__ out) {
    __shared__ double lane_sums[kPartialLanes][33];
    const int64_t c = int64_t(blockIdx.x) * 32 + threadIdx.x;
    double s = 0.0;
    if (c < cols)
        for (int64_t r = threadIdx.y; r < rows; r += kPartialLanes)
            s += double(partial[r * cols + c]);
    lane_sums[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        double t = 0.0;
        for (int y = 0; y < kPartialLanes; ++y)
            t += lane_sums[y][threadIdx.x];
        out[c] = float(t);
    }
}

} // namespace

void sum_partial_rows(const float* partial, int64_t rows, int64_t cols, float* out,
                      void* stream) {
    if (cols == 0) return;
    sum_partial_rows_kernel<<<unsigned((cols + 31) / 32), dim3(32, kPartialLanes), 0,
                              cudaStream_t(stream)>>>(partial, rows, cols, out);
}

} // namespace forge::cuda
