// CpuBackend::embedding(_backward). The lookup is a gather of rows, copied as bytes (any
// dtype), OpenMP over ids. The backward scatter-adds rows of dout into dweight; ids repeat, so
// threads split the columns instead of the ids: no two threads touch one element and every
// element sums its rows in id order, the reference kernel's order (bitwise equal results).
#include <algorithm>
#include <cstring>

#include <omp.h>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/cpu_common.h"
#include "backends/cpu/simd/nn_kernels.h"

namespace forge::cpu {

// weight (V, C), ids (N) i64 -> out (N, C).
void CpuBackend::embedding(const Tensor& weight, const Tensor& ids, const Tensor& out) {
    const int64_t n_ids = ids.numel(), cols = weight.size(1);
    const size_t row_bytes = size_t(cols) * dtype_size(weight.dtype());
    const int64_t* ip = ids.data<int64_t>();
    const char* wp = static_cast<const char*>(weight.data_ptr());
    char* op = static_cast<char*>(out.data_ptr());
#pragma omp parallel for schedule(static) if (n_ids * cols >= nn::kParallelMinElems && n_ids > 1)
    for (int64_t n = 0; n < n_ids; ++n)
        std::memcpy(op + size_t(n) * row_bytes, wp + size_t(ip[n]) * row_bytes, row_bytes);
}

// dweight (V, C) zero on entry; dweight[ids[n]] += dout[n].
void CpuBackend::embedding_backward(const Tensor& dout, const Tensor& ids, const Tensor& dweight) {
    const int64_t n_ids = ids.numel(), cols = dweight.size(1);
    const int64_t* ip = ids.data<int64_t>();
    visit_float(dweight.dtype(), [&]<typename T>() {
        const T* gp = dout.data<T>();
        T* dwp = dweight.data<T>();
        // One column block per thread (a multiple of 16 elements: whole cache lines for f32),
        // so each thread streams through dout once. Any split gives the same sums.
        const bool par = n_ids * cols >= nn::kParallelMinElems;
        const int64_t n_threads = par ? omp_get_max_threads() : 1;
        const int64_t block = std::max<int64_t>(16, (cols / n_threads + 15) / 16 * 16);
        const int64_t n_blocks = (cols + block - 1) / block;
#pragma omp parallel for schedule(static) if (par && n_blocks > 1)
        for (int64_t bk = 0; bk < n_blocks; ++bk) {
            const int64_t c0 = bk * block, c1 = std::min(cols, c0 + block);
            for (int64_t n = 0; n < n_ids; ++n) {
                const T* g = gp + n * cols;
                T* d = dwp + ip[n] * cols;
                for (int64_t c = c0; c < c1; ++c)
                    d[c] += g[c];
            }
        }
    });
}

} // namespace forge::cpu
