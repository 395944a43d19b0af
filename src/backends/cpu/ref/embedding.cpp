// Reference embedding lookup and its scatter-add backward: plain loops, no threads. The oracle
// for src/backends/cpu/kernels/embedding.cpp.
#include <cstring>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/cpu_common.h"

namespace forge::cpu {

// weight (V, C), ids (N) i64 -> out (N, C). A gather of rows: any dtype (copied as bytes).
void CpuRefBackend::embedding(const Tensor& weight, const Tensor& ids, const Tensor& out) {
    const int64_t n_ids = ids.numel(), cols = weight.size(1);
    const size_t row_bytes = size_t(cols) * dtype_size(weight.dtype());
    const int64_t* ip = ids.data<int64_t>();
    const char* wp = static_cast<const char*>(weight.data_ptr());
    char* op = static_cast<char*>(out.data_ptr());
    for (int64_t n = 0; n < n_ids; ++n)
        for (size_t b = 0; b < row_bytes; ++b)
            op[size_t(n) * row_bytes + b] = wp[size_t(ip[n]) * row_bytes + b];
}

// dweight (V, C), zero on entry: dweight[ids[n]] += dout[n], rows in order n = 0, 1, ...
void CpuRefBackend::embedding_backward(const Tensor& dout, const Tensor& ids,
                                       const Tensor& dweight) {
    const int64_t n_ids = ids.numel(), cols = dweight.size(1);
    const int64_t* ip = ids.data<int64_t>();
    visit_float(dweight.dtype(), [&]<typename T>() {
        const T* gp = dout.data<T>();
        T* dwp = dweight.data<T>();
        for (int64_t n = 0; n < n_ids; ++n)
            for (int64_t c = 0; c < cols; ++c)
                dwp[ip[n] * cols + c] += gp[n * cols + c];
    });
}

} // namespace forge::cpu
