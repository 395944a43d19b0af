// Default implementations of the fused Backend kernels, written with the backend's own basic
// kernels so a backend without a fused version (CUDA today) still runs the op.
#include "backends/backend.h"

#include <algorithm>
#include <atomic>

#include <forge/autograd/autograd.h>
#include <forge/core/ops.h>
#include <forge/core/tensor.h>

namespace forge {

void Backend::matmul_bias(const Tensor& a, const Tensor& b, const Tensor& bias,
                          const Tensor& out) {
    matmul(a, b, out);
    const int64_t N = out.size(2), R = out.numel() / std::max<int64_t>(N, 1);
    if (R > 0 && N > 0) bias_act(out.view({R, N}), bias, false, out.view({R, N}));
}

namespace {
std::atomic<int64_t> g_ce_chunk_elements{0};
} // namespace

void Backend::set_linear_ce_chunk_elements(int64_t n) { g_ce_chunk_elements.store(n); }
int64_t Backend::linear_ce_chunk_elements() {
    const int64_t n = g_ce_chunk_elements.load();
    return n > 0 ? n : int64_t(1) << 26;
}

void Backend::linear_cross_entropy(const Tensor& x, const Tensor& w, const Tensor& targets,
                                   int64_t ignore_index, double grad_scale, const Tensor& losses,
                                   const Tensor& dx, const Tensor& dw) {
    const int64_t N = x.size(0), V = w.size(0);
    // Rows per chunk: about 64M logits (256 MiB in f32), the whole batch for small vocabularies.
    const int64_t chunk = std::max<int64_t>(1, linear_ce_chunk_elements() / std::max<int64_t>(V, 1));
    const bool grads = dx.defined();
    NoGradGuard no_grad; // the products below go through the public ops (any strides, autocast)
    Tensor dloss;
    if (grads) {
        dloss = Tensor::ones({1}, x.dtype(), x.device());
        fill(dw, 0.0);
    }
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
        const int64_t n = std::min(chunk, N - r0);
        const Tensor xc = x.narrow(0, r0, n), tc = targets.narrow(0, r0, n);
        const Tensor logits = forge::matmul(xc, w.t()); // (n, V)
        Tensor lse = Tensor::empty({n}, x.dtype(), x.device());
        cross_entropy(logits, tc, ignore_index, losses.narrow(0, r0, n), lse);
        if (!grads) continue;
        Tensor dl = Tensor::empty({n, V}, x.dtype(), x.device());
        cross_entropy_backward(logits, tc, lse, ignore_index, dloss, grad_scale, dl);
        copy(forge::matmul(dl, w), dx.narrow(0, r0, n));              // (n, V) x (V, C)
        binary(BinaryOp::add, dw, forge::matmul(dl.t(), xc), dw);      // (V, n) x (n, C)
    }
}

void Backend::bias_act(const Tensor& x, const Tensor& b, bool gelu, const Tensor& out) {
    binary(BinaryOp::add, x, b.reshape({1, b.numel()}).expand(x.shape()), out);
    if (gelu) unary(UnaryOp::gelu_tanh, out, out, 0.0);
}

void Backend::bias_act_backward(const Tensor& dy, const Tensor& x, const Tensor& b, bool gelu,
                                const Tensor& dx, const Tensor& db) {
    if (gelu) {
        Tensor slope = Tensor::empty(x.shape(), x.dtype(), x.device());
        if (b.defined())
            binary(BinaryOp::add, x, b.reshape({1, b.numel()}).expand(x.shape()), slope);
        else
            copy(x, slope);
        unary(UnaryOp::gelu_tanh_grad, slope, slope, 0.0);
        binary(BinaryOp::mul, dy, slope, dx);
    } else if (dx.data_ptr() != dy.data_ptr()) {
        copy(dy, dx);
    }
    reduce(ReduceOp::sum, dx, {0}, db.reshape({1, db.numel()}));
}

} // namespace forge
