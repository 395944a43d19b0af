// Reference LayerNorm and RMSNorm, forward and backward: plain loops, double accumulation, no
// threads. The oracle for src/backends/cpu/kernels/norms*.cpp.
//   layer_norm: y = (x - mean) * rstd * w + b, rstd = 1/sqrt(var + eps) (biased variance)
//   rms_norm:   y = x * rstd * w,              rstd = 1/sqrt(mean(x^2) + eps)
// Backward, with xhat = normalised x and g = dy * w (per row of C):
//   layer_norm: dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   rms_norm:   dx = rstd * (g - xhat * mean(g * xhat))
//   dw = sum over rows of dy * xhat, db = sum over rows of dy.
#include <cmath>
#include <vector>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/cpu_common.h"

namespace forge::cpu {

// x: (R, C), w/b: (C) -> out (R, C), mean/rstd (R).
void CpuRefBackend::layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps,
                               const Tensor& out, const Tensor& mean, const Tensor& rstd) {
    const int64_t rows = x.size(0), cols = x.size(1);
    visit_float(x.dtype(), [&]<typename T>() {
        const T* xp = x.data<T>();
        const T* wp = w.data<T>();
        const T* bp = b.defined() ? b.data<T>() : nullptr;
        T* yp = out.data<T>();
        for (int64_t r = 0; r < rows; ++r) {
            const T* xr = xp + r * cols;
            double m = 0;
            for (int64_t c = 0; c < cols; ++c)
                m += double(xr[c]);
            m /= double(cols);
            double var = 0;
            for (int64_t c = 0; c < cols; ++c)
                var += (double(xr[c]) - m) * (double(xr[c]) - m);
            var /= double(cols);
            const double rs = 1.0 / std::sqrt(var + double(eps));
            for (int64_t c = 0; c < cols; ++c) {
                double v = (double(xr[c]) - m) * rs * double(wp[c]);
                yp[r * cols + c] = T(bp ? v + double(bp[c]) : v);
            }
            mean.data<T>()[r] = T(m);
            rstd.data<T>()[r] = T(rs);
        }
    });
}

void CpuRefBackend::layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                        const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                                        const Tensor& dw, const Tensor& db) {
    const int64_t rows = x.size(0), cols = x.size(1);
    visit_float(x.dtype(), [&]<typename T>() {
        const T *dyp = dy.data<T>(), *xp = x.data<T>(), *wp = w.data<T>();
        T* dxp = dx.data<T>();
        std::vector<double> dw_acc(size_t(cols), 0.0), db_acc(size_t(cols), 0.0);
        for (int64_t r = 0; r < rows; ++r) {
            const double m = double(mean.data<T>()[r]), rs = double(rstd.data<T>()[r]);
            double g_mean = 0, gx_mean = 0;
            for (int64_t c = 0; c < cols; ++c) {
                const double xhat = (double(xp[r * cols + c]) - m) * rs;
                const double g = double(dyp[r * cols + c]) * double(wp[c]);
                g_mean += g;
                gx_mean += g * xhat;
                dw_acc[size_t(c)] += double(dyp[r * cols + c]) * xhat;
                db_acc[size_t(c)] += double(dyp[r * cols + c]);
            }
            g_mean /= double(cols);
            gx_mean /= double(cols);
            for (int64_t c = 0; c < cols; ++c) {
                const double xhat = (double(xp[r * cols + c]) - m) * rs;
                const double g = double(dyp[r * cols + c]) * double(wp[c]);
                dxp[r * cols + c] = T(rs * (g - g_mean - xhat * gx_mean));
            }
        }
        for (int64_t c = 0; c < cols; ++c) {
            dw.data<T>()[c] = T(dw_acc[size_t(c)]);
            if (db.defined())
                db.data<T>()[c] = T(db_acc[size_t(c)]);
        }
    });
}

// x: (R, C), w: (C) -> out (R, C), rstd (R).
void CpuRefBackend::rms_norm(const Tensor& x, const Tensor& w, float eps, const Tensor& out,
                             const Tensor& rstd) {
    const int64_t rows = x.size(0), cols = x.size(1);
    visit_float(x.dtype(), [&]<typename T>() {
        const T *xp = x.data<T>(), *wp = w.data<T>();
        T* yp = out.data<T>();
        for (int64_t r = 0; r < rows; ++r) {
            double ss = 0;
            for (int64_t c = 0; c < cols; ++c)
                ss += double(xp[r * cols + c]) * double(xp[r * cols + c]);
            const double rs = 1.0 / std::sqrt(ss / double(cols) + double(eps));
            for (int64_t c = 0; c < cols; ++c)
                yp[r * cols + c] = T(double(xp[r * cols + c]) * rs * double(wp[c]));
            rstd.data<T>()[r] = T(rs);
        }
    });
}

void CpuRefBackend::rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                      const Tensor& rstd, const Tensor& dx, const Tensor& dw) {
    const int64_t rows = x.size(0), cols = x.size(1);
    visit_float(x.dtype(), [&]<typename T>() {
        const T *dyp = dy.data<T>(), *xp = x.data<T>(), *wp = w.data<T>();
        T* dxp = dx.data<T>();
        std::vector<double> dw_acc(size_t(cols), 0.0);
        for (int64_t r = 0; r < rows; ++r) {
            const double rs = double(rstd.data<T>()[r]);
            double gx_mean = 0;
            for (int64_t c = 0; c < cols; ++c) {
                const double xhat = double(xp[r * cols + c]) * rs;
                gx_mean += double(dyp[r * cols + c]) * double(wp[c]) * xhat;
                dw_acc[size_t(c)] += double(dyp[r * cols + c]) * xhat;
            }
            gx_mean /= double(cols);
            for (int64_t c = 0; c < cols; ++c) {
                const double xhat = double(xp[r * cols + c]) * rs;
                const double g = double(dyp[r * cols + c]) * double(wp[c]);
                dxp[r * cols + c] = T(rs * (g - xhat * gx_mean));
            }
        }
        for (int64_t c = 0; c < cols; ++c)
            dw.data<T>()[c] = T(dw_acc[size_t(c)]);
    });
}

} // namespace forge::cpu
