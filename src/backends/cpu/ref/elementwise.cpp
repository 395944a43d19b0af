// Reference element-wise and reduction kernels: strided loops, one element at a time.
#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/cpu_common.h"
#include "backends/cpu/elementwise_math.h"

namespace forge::cpu {

void CpuRefBackend::unary(UnaryOp op, const Tensor& x, const Tensor& out, double alpha) {
    visit_float(x.dtype(), [&]<typename T>() {
        visit_unary(op, [&]<UnaryOp O>() {
            const T* xp = x.data<T>();
            T* op_ = out.data<T>();
            for_each_row<2>(out.shape(), {&x.strides(), &out.strides()},
                            [&](auto off, int64_t n, auto in) {
                                for (int64_t i = 0; i < n; ++i)
                                    op_[off[1] + i * in[1]] =
                                        unary_fn<O, T>(xp[off[0] + i * in[0]], T(alpha));
                            });
        });
    });
}

void CpuRefBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
    visit_numeric(a.dtype(), [&]<typename T>() {
        visit_binary(op, [&]<BinaryOp O>() {
            using R = decltype(binary_fn<O, T>(T(), T()));
            const T* ap = a.data<T>();
            const T* bp = b.data<T>();
            R* op_ = out.data<R>();
            for_each_row<3>(out.shape(), {&a.strides(), &b.strides(), &out.strides()},
                            [&](auto off, int64_t n, auto in) {
                                for (int64_t i = 0; i < n; ++i)
                                    op_[off[2] + i * in[2]] = binary_fn<O, T>(
                                        ap[off[0] + i * in[0]], bp[off[1] + i * in[1]]);
                            });
        });
    });
}

void CpuRefBackend::where(const Tensor& cond, const Tensor& a, const Tensor& b,
                          const Tensor& out) {
    visit_numeric(out.dtype(), [&]<typename T>() {
        const uint8_t* cp = cond.data<uint8_t>();
        const T* ap = a.data<T>();
        const T* bp = b.data<T>();
        T* op_ = out.data<T>();
        for_each_row<4>(out.shape(), {&cond.strides(), &a.strides(), &b.strides(), &out.strides()},
                        [&](auto off, int64_t n, auto in) {
                            for (int64_t i = 0; i < n; ++i)
                                op_[off[3] + i * in[3]] = cp[off[0] + i * in[0]]
                                                              ? ap[off[1] + i * in[1]]
                                                              : bp[off[2] + i * in[2]];
                        });
    });
}

void CpuRefBackend::reduce(ReduceOp op, const Tensor& x, const std::vector<int64_t>& dims,
                           const Tensor& out) {
    // For every input element, find its output slot by zeroing the reduced coordinates.
    visit_numeric(x.dtype(), [&]<typename T>() {
        const int64_t n = x.numel(), rank = x.dim();
        const T* xp = x.data<T>();
        T* op_ = out.data<T>();
        std::vector<bool> seen(size_t(out.numel()), false);
        const Shape ost = contiguous_strides(out.shape());
        std::vector<bool> reduced(size_t(rank), false);
        for (auto d : dims)
            reduced[size_t(d)] = true;
        for (int64_t i = 0; i < n; ++i) {
            int64_t rem = i, o = 0;
            for (int64_t d = rank - 1; d >= 0; --d) {
                int64_t c = rem % x.shape()[d];
                rem /= x.shape()[d];
                if (!reduced[size_t(d)]) o += c * ost[d];
            }
            T v = xp[i];
            if (!seen[size_t(o)]) {
                op_[o] = v;
                seen[size_t(o)] = true;
            } else if (op == ReduceOp::sum) {
                op_[o] += v;
            } else if (v > op_[o] || v != v) {
                op_[o] = v; // NaN propagates
            }
        }
        if (op == ReduceOp::sum)
            for (int64_t o = 0; o < out.numel(); ++o)
                if (!seen[size_t(o)]) op_[o] = T(0);
    });
}

} // namespace forge::cpu
