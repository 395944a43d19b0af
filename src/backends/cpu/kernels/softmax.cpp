// CpuBackend::softmax: the f32 SIMD row kernel for the CPU's instruction set (simd/nn_rows.h),
// or the generic loops below for f64 and for CPUs without AVX2. OpenMP over rows.
#include <cmath>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/cpu_common.h"
#include "backends/cpu/simd/nn_kernels.h"

namespace forge::cpu {

namespace {

// Generic rows (R, C): three passes over each row; sums in double.
template <typename T> void softmax_generic(const T* x, T* y, int64_t rows, int64_t cols, bool log) {
#pragma omp parallel for schedule(static) if (rows * cols >= nn::kParallelMinElems && rows > 1)
    for (int64_t r = 0; r < rows; ++r) {
        const T* xr = x + r * cols;
        T* yr = y + r * cols;
        T m = -INFINITY;
        for (int64_t c = 0; c < cols; ++c)
            m = std::fmax(m, xr[c]);
        double s = 0;
        for (int64_t c = 0; c < cols; ++c)
            s += std::exp(double(xr[c] - m));
        if (log) {
            const T ls = T(std::log(s));
            for (int64_t c = 0; c < cols; ++c)
                yr[c] = (xr[c] - m) - ls;
        } else {
            const double inv = 1.0 / s;
            for (int64_t c = 0; c < cols; ++c)
                yr[c] = T(std::exp(double(xr[c] - m)) * inv);
        }
    }
}

} // namespace

// x, out: (R, C) contiguous.
void CpuBackend::softmax(const Tensor& x, const Tensor& out, bool log) {
    const int64_t rows = x.size(0), cols = x.size(1);
    if (x.dtype() == DType::f32) {
        const float* xp = x.data<float>();
        float* yp = out.data<float>();
        switch (nn::active_isa()) {
        case nn::Isa::avx512:
            return nn::avx512::softmax(xp, yp, rows, cols, log);
        case nn::Isa::avx2:
            return nn::avx2::softmax(xp, yp, rows, cols, log);
        case nn::Isa::generic:
            return softmax_generic(xp, yp, rows, cols, log);
        }
    }
    visit_float(x.dtype(), [&]<typename T>() {
        softmax_generic(x.data<T>(), out.data<T>(), rows, cols, log);
    });
}

} // namespace forge::cpu
