// Reference fused cross-entropy, forward and backward: plain loops, double accumulation, no
// threads. The oracle for src/backends/cpu/kernels/cross_entropy*.cpp.
//   lse = log(sum_v exp(x_v)), loss = lse - x_target; dlogits = (exp(x - lse) - onehot) * scale.
// Ignored rows get loss 0, lse 0 and a zero gradient row.
#include <cmath>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/cpu_common.h"

namespace forge::cpu {

// logits (N, V), targets (N) i64 -> losses (N), lse (N).
void CpuRefBackend::cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                                  const Tensor& losses, const Tensor& lse) {
    const int64_t rows = logits.size(0), cols = logits.size(1);
    const int64_t* tp = targets.data<int64_t>();
    visit_float(logits.dtype(), [&]<typename T>() {
        const T* xp = logits.data<T>();
        for (int64_t n = 0; n < rows; ++n) {
            if (tp[n] == ignore_index) {
                losses.data<T>()[n] = T(0);
                lse.data<T>()[n] = T(0);
                continue;
            }
            const T* xr = xp + n * cols;
            double m = -INFINITY;
            for (int64_t v = 0; v < cols; ++v)
                m = std::fmax(m, double(xr[v]));
            double s = 0;
            for (int64_t v = 0; v < cols; ++v)
                s += std::exp(double(xr[v]) - m);
            const double l = m + std::log(s);
            lse.data<T>()[n] = T(l);
            losses.data<T>()[n] = T(l - double(xr[tp[n]]));
        }
    });
}

// dlogits (N, V) = (softmax - onehot) * dloss * inv_count; 0 on ignored rows.
void CpuRefBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                           const Tensor& lse, int64_t ignore_index,
                                           const Tensor& dloss, double inv_count,
                                           const Tensor& dlogits) {
    const int64_t rows = logits.size(0), cols = logits.size(1);
    const int64_t* tp = targets.data<int64_t>();
    visit_float(logits.dtype(), [&]<typename T>() {
        const T* xp = logits.data<T>();
        T* dp = dlogits.data<T>();
        const double scale = double(dloss.data<T>()[0]) * inv_count;
        for (int64_t n = 0; n < rows; ++n) {
            const bool ignored = tp[n] == ignore_index;
            const double l = double(lse.data<T>()[n]);
            for (int64_t v = 0; v < cols; ++v) {
                const double p = std::exp(double(xp[n * cols + v]) - l);
                dp[n * cols + v] = ignored ? T(0) : T((p - (v == tp[n] ? 1.0 : 0.0)) * scale);
            }
        }
    });
}

} // namespace forge::cpu
