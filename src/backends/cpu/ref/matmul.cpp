// Reference matmul: a plain triple loop with double accumulation, reading a and b through their
// strides. The oracle for the BLAS kernel; no BLAS, no threads, no intrinsics.
#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/cpu_common.h"

namespace forge::cpu {

// a: (Bt, M, K), b: (Bt, K, N), any strides (batch stride 0 when broadcast); out: (Bt, M, N)
// contiguous.
void CpuRefBackend::matmul(const Tensor& a, const Tensor& b, const Tensor& out) {
    const int64_t Bt = a.size(0), M = a.size(1), K = a.size(2), N = b.size(2);
    const Shape &sa = a.strides(), &sb = b.strides();
    visit_float(out.dtype(), [&]<typename T>() {
        const T* ap = a.data<T>();
        const T* bp = b.data<T>();
        T* op = out.data<T>();
        for (int64_t bt = 0; bt < Bt; ++bt)
            for (int64_t i = 0; i < M; ++i)
                for (int64_t j = 0; j < N; ++j) {
                    double acc = 0;
                    for (int64_t k = 0; k < K; ++k)
                        acc += double(ap[bt * sa[0] + i * sa[1] + k * sa[2]]) *
                               double(bp[bt * sb[0] + k * sb[1] + j * sb[2]]);
                    op[(bt * M + i) * N + j] = T(acc);
                }
    });
}

} // namespace forge::cpu
