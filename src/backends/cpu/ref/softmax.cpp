// Reference softmax / log-softmax: plain loops, double accumulation, no threads. The oracle
// for src/backends/cpu/kernels/softmax*.cpp.
#include <cmath>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/cpu_common.h"

namespace forge::cpu {

// x, out: (R, C) contiguous. softmax = exp(x - max) / sum; log_softmax = x - max - log(sum).
void CpuRefBackend::softmax(const Tensor& x, const Tensor& out, bool log) {
    const int64_t rows = x.size(0), cols = x.size(1);
    visit_float(x.dtype(), [&]<typename T>() {
        const T* xp = x.data<T>();
        T* yp = out.data<T>();
        for (int64_t r = 0; r < rows; ++r) {
            const T* xr = xp + r * cols;
            T* yr = yp + r * cols;
            double m = -INFINITY;
            for (int64_t c = 0; c < cols; ++c)
                m = std::fmax(m, double(xr[c]));
            double s = 0;
            for (int64_t c = 0; c < cols; ++c)
                s += std::exp(double(xr[c]) - m);
            for (int64_t c = 0; c < cols; ++c)
                yr[c] =
                    log ? T(double(xr[c]) - m - std::log(s)) : T(std::exp(double(xr[c]) - m) / s);
        }
    });
}

} // namespace forge::cpu
