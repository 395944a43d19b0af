// Default implementations of the fused Backend kernels, written with the backend's own basic
// kernels so a backend without a fused version (CUDA today) still runs the op.
#include "backends/backend.h"

#include <algorithm>

namespace forge {

void Backend::matmul_bias(const Tensor& a, const Tensor& b, const Tensor& bias,
                          const Tensor& out) {
    matmul(a, b, out);
    const int64_t N = out.size(2), R = out.numel() / std::max<int64_t>(N, 1);
    if (R > 0 && N > 0) bias_act(out.view({R, N}), bias, false, out.view({R, N}));
}

void Backend::bias_act(const Tensor& x, const Tensor& b, bool gelu, const Tensor& out) {
    binary(BinaryOp::add, x, b.reshape({1, b.numel()}).expand(x.shape()), out);
    if (gelu) unary(UnaryOp::gelu_tanh, out, out, 0.0);
}

void Backend::bias_act_backward(const Tensor& dy, const Tensor& x, const Tensor& b, bool gelu,
                                const Tensor& dx, const Tensor& db) {
    if (gelu) {
        Tensor slope = Tensor::empty(x.shape(), x.dtype(), x.device());
        binary(BinaryOp::add, x, b.reshape({1, b.numel()}).expand(x.shape()), slope);
        unary(UnaryOp::gelu_tanh_grad, slope, slope, 0.0);
        binary(BinaryOp::mul, dy, slope, dx);
    } else if (dx.data_ptr() != dy.data_ptr()) {
        copy(dy, dx);
    }
    reduce(ReduceOp::sum, dx, {0}, db.reshape({1, db.numel()}));
}

} // namespace forge
