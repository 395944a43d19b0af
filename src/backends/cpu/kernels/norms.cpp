// CpuBackend LayerNorm / RMSNorm, forward and backward: the f32 SIMD row kernels for the CPU's
// instruction set (simd/nn_rows.h), or the generic loops below for f64 and for CPUs without
// AVX2. OpenMP over rows; the weight/bias gradients are per-thread partial sums over rows added
// in thread order at the end (reproducible for a given thread count). Formulas: ref/norms.cpp.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include <omp.h>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/cpu_common.h"
#include "backends/cpu/simd/nn_kernels.h"

namespace forge::cpu {

namespace {

// Threads for a backward pass over rows x cols: one when small (OpenMP's start-up and the
// partial sums would cost more than they save), else at most one per row.
int backward_threads(int64_t rows, int64_t cols) {
    if (rows * cols < nn::kParallelMinElems || rows < 2)
        return 1;
    return int(std::min<int64_t>(omp_get_max_threads(), rows));
}

// out[c] = sum over t of partial[t * stride + c], t in thread order.
template <typename T>
void add_partials(const T* partial, int n_threads, int64_t stride, int64_t cols, T* out) {
    for (int64_t c = 0; c < cols; ++c) {
        T s = 0;
        for (int t = 0; t < n_threads; ++t)
            s += partial[int64_t(t) * stride + c];
        out[c] = s;
    }
}

template <typename T>
void layer_norm_generic(const T* x, const T* w, const T* b, float eps, T* y, T* mean, T* rstd,
                        int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols >= nn::kParallelMinElems && rows > 1)
    for (int64_t r = 0; r < rows; ++r) {
        const T* xr = x + r * cols;
        T* yr = y + r * cols;
        double s = 0;
        for (int64_t c = 0; c < cols; ++c)
            s += double(xr[c]);
        const T m = T(s / double(cols));
        double q = 0;
        for (int64_t c = 0; c < cols; ++c)
            q += double(xr[c] - m) * double(xr[c] - m);
        const T rs = T(1.0 / std::sqrt(q / double(cols) + double(eps)));
        for (int64_t c = 0; c < cols; ++c) {
            const T v = (xr[c] - m) * rs * w[c];
            yr[c] = b ? v + b[c] : v;
        }
        mean[r] = m;
        rstd[r] = rs;
    }
}

// scratch: n_threads * 2 * cols zeros (partial dw, db per thread).
template <typename T>
void layer_norm_backward_generic(const T* dy, const T* x, const T* w, const T* mean, const T* rstd,
                                 T* dx, T* scratch, int n_threads, int64_t rows, int64_t cols) {
#pragma omp parallel num_threads(n_threads)
    {
        T* pdw = scratch + int64_t(omp_get_thread_num()) * 2 * cols;
        T* pdb = pdw + cols;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            const T *xr = x + r * cols, *gr = dy + r * cols;
            T* dxr = dx + r * cols;
            const T m = mean[r], rs = rstd[r];
            double sg = 0, sgx = 0;
            for (int64_t c = 0; c < cols; ++c) {
                const T xh = (xr[c] - m) * rs, g = gr[c] * w[c];
                sg += double(g);
                sgx += double(g) * double(xh);
                pdw[c] += gr[c] * xh;
                pdb[c] += gr[c];
            }
            const T mg = T(sg / double(cols)), mgx = T(sgx / double(cols));
            for (int64_t c = 0; c < cols; ++c) {
                const T xh = (xr[c] - m) * rs;
                dxr[c] = rs * (gr[c] * w[c] - mg - xh * mgx);
            }
        }
    }
}

template <typename T>
void rms_norm_generic(const T* x, const T* w, float eps, T* y, T* rstd, int64_t rows,
                      int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols >= nn::kParallelMinElems && rows > 1)
    for (int64_t r = 0; r < rows; ++r) {
        const T* xr = x + r * cols;
        T* yr = y + r * cols;
        double q = 0;
        for (int64_t c = 0; c < cols; ++c)
            q += double(xr[c]) * double(xr[c]);
        const T rs = T(1.0 / std::sqrt(q / double(cols) + double(eps)));
        for (int64_t c = 0; c < cols; ++c)
            yr[c] = xr[c] * rs * w[c];
        rstd[r] = rs;
    }
}

// scratch: n_threads * cols zeros (partial dw per thread).
template <typename T>
void rms_norm_backward_generic(const T* dy, const T* x, const T* w, const T* rstd, T* dx,
                               T* scratch, int n_threads, int64_t rows, int64_t cols) {
#pragma omp parallel num_threads(n_threads)
    {
        T* pdw = scratch + int64_t(omp_get_thread_num()) * cols;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            const T *xr = x + r * cols, *gr = dy + r * cols;
            T* dxr = dx + r * cols;
            const T rs = rstd[r];
            double sgx = 0;
            for (int64_t c = 0; c < cols; ++c) {
                const T xh = xr[c] * rs;
                sgx += double(gr[c] * w[c]) * double(xh);
                pdw[c] += gr[c] * xh;
            }
            const T mgx = T(sgx / double(cols));
            for (int64_t c = 0; c < cols; ++c)
                dxr[c] = rs * (gr[c] * w[c] - xr[c] * rs * mgx);
        }
    }
}

} // namespace

// x: (R, C), w/b: (C) -> out (R, C), mean/rstd (R).
void CpuBackend::layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps,
                            const Tensor& out, const Tensor& mean, const Tensor& rstd) {
    const int64_t rows = x.size(0), cols = x.size(1);
    if (x.dtype() == DType::f32 && nn::active_isa() != nn::Isa::generic) {
        auto f =
            nn::active_isa() == nn::Isa::avx512 ? nn::avx512::layer_norm : nn::avx2::layer_norm;
        return f(x.data<float>(), w.data<float>(), b.defined() ? b.data<float>() : nullptr, eps,
                 out.data<float>(), mean.data<float>(), rstd.data<float>(), rows, cols);
    }
    visit_float(x.dtype(), [&]<typename T>() {
        layer_norm_generic(x.data<T>(), w.data<T>(), b.defined() ? b.data<T>() : nullptr, eps,
                           out.data<T>(), mean.data<T>(), rstd.data<T>(), rows, cols);
    });
}

void CpuBackend::layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                     const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                                     const Tensor& dw, const Tensor& db) {
    const int64_t rows = x.size(0), cols = x.size(1);
    const int n_threads = backward_threads(rows, cols);
    visit_float(x.dtype(), [&]<typename T>() {
        std::vector<T> scratch(size_t(n_threads) * 2 * size_t(cols), T(0));
        bool done = false;
        if constexpr (std::is_same_v<T, float>) {
            if (nn::active_isa() != nn::Isa::generic) {
                auto f = nn::active_isa() == nn::Isa::avx512 ? nn::avx512::layer_norm_backward
                                                             : nn::avx2::layer_norm_backward;
                f(dy.data<float>(), x.data<float>(), w.data<float>(), mean.data<float>(),
                  rstd.data<float>(), dx.data<float>(), scratch.data(), n_threads, rows, cols);
                done = true;
            }
        }
        if (!done) {
            layer_norm_backward_generic(dy.data<T>(), x.data<T>(), w.data<T>(), mean.data<T>(),
                                        rstd.data<T>(), dx.data<T>(), scratch.data(), n_threads,
                                        rows, cols);
        }
        add_partials(scratch.data(), n_threads, 2 * cols, cols, dw.data<T>());
        if (db.defined())
            add_partials(scratch.data() + cols, n_threads, 2 * cols, cols, db.data<T>());
    });
}

// x: (R, C), w: (C) -> out (R, C), rstd (R).
void CpuBackend::rms_norm(const Tensor& x, const Tensor& w, float eps, const Tensor& out,
                          const Tensor& rstd) {
    const int64_t rows = x.size(0), cols = x.size(1);
    if (x.dtype() == DType::f32 && nn::active_isa() != nn::Isa::generic) {
        auto f = nn::active_isa() == nn::Isa::avx512 ? nn::avx512::rms_norm : nn::avx2::rms_norm;
        return f(x.data<float>(), w.data<float>(), eps, out.data<float>(), rstd.data<float>(), rows,
                 cols);
    }
    visit_float(x.dtype(), [&]<typename T>() {
        rms_norm_generic(x.data<T>(), w.data<T>(), eps, out.data<T>(), rstd.data<T>(), rows, cols);
    });
}

void CpuBackend::rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                   const Tensor& rstd, const Tensor& dx, const Tensor& dw) {
    const int64_t rows = x.size(0), cols = x.size(1);
    const int n_threads = backward_threads(rows, cols);
    visit_float(x.dtype(), [&]<typename T>() {
        std::vector<T> scratch(size_t(n_threads) * size_t(cols), T(0));
        bool done = false;
        if constexpr (std::is_same_v<T, float>) {
            if (nn::active_isa() != nn::Isa::generic) {
                auto f = nn::active_isa() == nn::Isa::avx512 ? nn::avx512::rms_norm_backward
                                                             : nn::avx2::rms_norm_backward;
                f(dy.data<float>(), x.data<float>(), w.data<float>(), rstd.data<float>(),
                  dx.data<float>(), scratch.data(), n_threads, rows, cols);
                done = true;
            }
        }
        if (!done) {
            rms_norm_backward_generic(dy.data<T>(), x.data<T>(), w.data<T>(), rstd.data<T>(),
                                      dx.data<T>(), scratch.data(), n_threads, rows, cols);
        }
        add_partials(scratch.data(), n_threads, cols, cols, dw.data<T>());
    });
}

} // namespace forge::cpu
