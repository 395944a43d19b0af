// Reference rotary embedding (RoPE, Su et al. 2021, https://arxiv.org/abs/2104.09864): plain
// loops, angles and rotations in double, no threads. The oracle for
// src/backends/cpu/kernels/rope*.cpp.
// Feature pair i (i < rd/2) of position p turns by p * theta^(-2i/rd):
//   neox:        pair (i, i + rd/2);  interleaved: pair (2i, 2i + 1).
// Features at or beyond rd (rotary_dim) pass through unchanged.
#include <cmath>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/cpu_common.h"

namespace forge::cpu {

// x, out: (B, H, T, D) contiguous.
void CpuRefBackend::rope(const Tensor& x, const RopeOptions& opts, const Tensor& out) {
    const int64_t bh = x.size(0) * x.size(1), seq = x.size(2), d = x.size(3);
    const int64_t rd = opts.rotary_dim == 0 ? d : opts.rotary_dim, half = rd / 2;
    const bool neox = opts.layout == RopeLayout::neox;
    visit_float(x.dtype(), [&]<typename T>() {
        const T* xp = x.data<T>();
        T* yp = out.data<T>();
        for (int64_t row = 0; row < bh * seq; ++row) {
            const double pos = double(opts.pos_offset + row % seq);
            const T* xr = xp + row * d;
            T* yr = yp + row * d;
            for (int64_t i = 0; i < half; ++i) {
                const double angle =
                    pos * std::pow(double(opts.theta), -2.0 * double(i) / double(rd));
                const double c = std::cos(angle);
                const double s = opts.inverse ? -std::sin(angle) : std::sin(angle);
                const int64_t i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
                const double x0 = double(xr[i0]), x1 = double(xr[i1]);
                yr[i0] = T(x0 * c - x1 * s);
                yr[i1] = T(x0 * s + x1 * c);
            }
            for (int64_t k = rd; k < d; ++k)
                yr[k] = xr[k];
        }
    });
}

} // namespace forge::cpu
