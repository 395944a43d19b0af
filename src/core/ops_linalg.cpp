// forge::matmul: validation, batch broadcasting, half widening and the gradient. The kernels
// (src/backends/cpu/{ref,kernels}/matmul.cpp) only ever see (Bt, M, K) x (Bt, K, N) views with
// one batch stride; this file turns any broadcast/strided input into such views without copying
// where the strides allow it.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/op_helpers.h"
#include <forge/autograd/autograd.h>
#include <forge/core/device.h>
#include <forge/core/ops.h>
#include <forge/core/tensor.h>

namespace forge {

namespace {

constexpr const char* kOp = "matmul";

// A view of base's storage with explicit geometry (offset in elements from the storage start).
// Only for kernel arguments: it carries no autograd state.
Tensor strided_view(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset) {
    auto impl = std::make_shared<TensorImpl>();
    impl->storage = base.storage();
    impl->shape = shape;
    impl->strides = strides;
    impl->offset = offset;
    impl->dtype = base.dtype();
    return Tensor(std::move(impl));
}

// Makes the (rows x cols) matrix with strides (rs, cs) a valid BLAS operand if it can be one:
// row-major needs cs == 1 and rs >= cols, column-major rs == 1 and cs >= rows. A size-1 dim's
// stride never addresses memory, so it is rewritten to whatever makes the layout valid.
bool normalise_matrix_strides(int64_t rows, int64_t cols, int64_t& rs, int64_t& cs) {
    const int64_t r1 = std::max<int64_t>(rows, 1), c1 = std::max<int64_t>(cols, 1);
    if ((cols <= 1 || cs == 1) && (rows <= 1 || rs >= c1)) { // row-major
        cs = 1;
        if (rows <= 1)
            rs = c1;
        return true;
    }
    if ((rows <= 1 || rs == 1) && (cols <= 1 || cs >= r1)) { // column-major
        rs = 1;
        if (cols <= 1)
            cs = r1;
        return true;
    }
    return false;
}

// Strides of x (rank >= 2) broadcast to batch + [rows, cols]: missing or size-1 batch dims get
// stride 0; the two matrix strides are normalised for BLAS. Returns false if the matrix
// strides can't be (the caller then makes x contiguous).
bool kernel_strides(const Tensor& x, const Shape& batch, Shape& out) {
    const int64_t nb = int64_t(batch.size()), xr = x.dim(), xb = xr - 2;
    out.assign(size_t(nb + 2), 0);
    for (int64_t i = 0; i < xb; ++i) {
        const int64_t d = nb - xb + i; // batch dims align from the right
        out[d] = x.shape()[i] == 1 ? 0 : x.strides()[i];
    }
    int64_t rs = x.strides()[xr - 2], cs = x.strides()[xr - 1];
    if (!normalise_matrix_strides(x.shape()[xr - 2], x.shape()[xr - 1], rs, cs))
        return false;
    out[nb] = rs;
    out[nb + 1] = cs;
    return true;
}

// The product of a (..., M, K) and b (..., K, N), both rank >= 2 and validated, into a new
// contiguous (batch..., M, N) tensor of the compute dtype. No autograd.
Tensor matmul_forward(Tensor a, Tensor b, const Shape& batch) {
    const int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
    const int64_t nb = int64_t(batch.size());
    Shape out_shape = batch;
    out_shape.push_back(M);
    out_shape.push_back(N);
    Tensor out = detail::empty_on(a, out_shape, a.dtype());
    if (out.numel() == 0)
        return out;
    if (K == 0) {
        out.fill_(0.0);
        return out;
    }

    Shape sa, sb;
    if (!kernel_strides(a, batch, sa)) {
        a = a.contiguous();
        FORGE_ASSERT(kernel_strides(a, batch, sa));
    }
    if (!kernel_strides(b, batch, sb)) {
        b = b.contiguous();
        FORGE_ASSERT(kernel_strides(b, batch, sb));
    }
    const Shape so = contiguous_strides(out_shape);

    // Collapse batch dims into groups with one stride each (a, b and out alike), dropping size-1
    // dims. The innermost group becomes the kernel's batch dim; outer groups are looped here.
    // E.g. a broadcast (8, 12) batch of a contiguous weight is one group of 96 with stride 0.
    struct Group {
        int64_t n, sa, sb, so;
    };
    std::vector<Group> groups; // outermost first
    for (int64_t d = 0; d < nb; ++d) {
        if (batch[d] == 1)
            continue;
        Group g{batch[d], sa[d], sb[d], so[d]};
        if (!groups.empty()) {
            Group& p = groups.back();
            if (p.sa == g.sa * g.n && p.sb == g.sb * g.n && p.so == g.so * g.n) {
                p = Group{p.n * g.n, g.sa, g.sb, g.so};
                continue;
            }
        }
        groups.push_back(g);
    }
    Group inner = groups.empty() ? Group{1, 0, 0, 0} : groups.back();
    if (!groups.empty())
        groups.pop_back();

    // A weight shared by the whole inner batch (x (B, T, K) @ w (K, N)) over row-major a whose
    // batch steps are whole matrices: fold the batch into the rows, one (B*T, K) x (K, N) GEMM
    // instead of B small ones (decisive when T is 1, as in decoding).
    int64_t Mk = M;
    if (inner.n > 1 && inner.sb == 0 && sa[nb + 1] == 1 && inner.sa == M * sa[nb] &&
        inner.so == M * N) {
        Mk = inner.n * M;
        inner = Group{1, 0, 0, 0};
    }

    Backend& be = detail::backend_of(a);
    const Shape a_shape{inner.n, Mk, K}, b_shape{inner.n, K, N}, o_shape{inner.n, Mk, N};
    const Shape a_str{inner.sa, sa[nb], sa[nb + 1]}, b_str{inner.sb, sb[nb], sb[nb + 1]};
    const Shape o_str{inner.so, N, 1};
    // Odometer over the outer groups.
    std::vector<int64_t> idx(groups.size(), 0);
    int64_t oa = 0, ob = 0, oo = 0;
    while (true) {
        be.matmul(strided_view(a, a_shape, a_str, a.offset() + oa),
                  strided_view(b, b_shape, b_str, b.offset() + ob),
                  strided_view(out, o_shape, o_str, out.offset() + oo));
        int64_t d = int64_t(groups.size()) - 1;
        for (; d >= 0; --d) {
            const Group& g = groups[size_t(d)];
            oa += g.sa, ob += g.sb, oo += g.so;
            if (++idx[size_t(d)] < g.n)
                break;
            oa -= g.sa * g.n, ob -= g.sb * g.n, oo -= g.so * g.n;
            idx[size_t(d)] = 0;
        }
        if (d < 0)
            break;
    }
    return out;
}

// Batch shape of a (..., M, K) and b (..., K, N) (both rank >= 2) or a named error.
Shape batch_shape(const Tensor& a, const Tensor& b, const Shape& a_orig, const Shape& b_orig) {
    const Shape ba(a.shape().begin(), a.shape().end() - 2);
    const Shape bb(b.shape().begin(), b.shape().end() - 2);
    const size_t n = std::max(ba.size(), bb.size());
    Shape out(n);
    for (size_t i = 0; i < n; ++i) {
        const int64_t da = i < n - ba.size() ? 1 : ba[i - (n - ba.size())];
        const int64_t db = i < n - bb.size() ? 1 : bb[i - (n - bb.size())];
        FORGE_CHECK(da == db || da == 1 || db == 1, "[matmul] shapes ", shape_str(a_orig), " and ",
                    shape_str(b_orig), ": batch dims ", shape_str(ba), " and ", shape_str(bb),
                    " do not broadcast");
        out[i] = da == 1 ? db : da;
    }
    return out;
}

// matmul of two tensors of rank >= 2 (the 1-D cases are views around this), with its gradient.
Tensor matmul_nd(const Tensor& a, const Tensor& b, const Shape& batch) {
    const DType dt = a.dtype();
    Tensor out;
    {
        NoGradGuard no_grad; // the kernel arguments below are temporaries, never graph nodes
        Tensor a_c = a.detach(), b_c = b.detach();
        if (is_half(dt)) { // widen once, accumulate in f32, round once
            a_c = a_c.to(DType::f32);
            b_c = b_c.to(DType::f32);
        }
        out = matmul_forward(a_c, b_c, batch);
        if (is_half(dt))
            out = out.to(dt);
    }
    if (autograd::needs_grad({a, b})) {
        const bool need_a = a.requires_grad(), need_b = b.requires_grad();
        // Capture only what each gradient needs. dA = dC B^T, dB = A^T dC, each summed over
        // the batch dims its input was broadcast along.
        Tensor a_saved = need_b ? a.detach() : Tensor();
        Tensor b_saved = need_a ? b.detach() : Tensor();
        autograd::record("matmul", out, {a, b},
                         [a_saved, b_saved, need_a, need_b, a_shape = a.shape(),
                          b_shape = b.shape()](const Tensor& g) -> std::vector<Tensor> {
                             Tensor ga, gb;
                             if (need_a)
                                 ga = sum_to(matmul(g, b_saved.transpose(-2, -1)), a_shape);
                             if (need_b) {
                                 if (b_shape.size() == 2 && a_shape.size() > 2) {
                                     // A weight shared across the batch (x @ W): one (K, R) x (R,
                                     // N) GEMM over all R = prod(batch) * M rows instead of a batch
                                     // of products summed afterwards.
                                     const int64_t K = a_shape.back(), N = b_shape.back();
                                     const int64_t R =
                                         shape_numel(a_shape) / std::max<int64_t>(K, 1);
                                     gb = matmul(a_saved.reshape({R, K}).t(), g.reshape({R, N}));
                                 } else {
                                     gb = sum_to(matmul(a_saved.transpose(-2, -1), g), b_shape);
                                 }
                             }
                             return {ga, gb};
                         });
    }
    return out;
}

} // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
    detail::check_float(kOp, a);
    detail::check_float(kOp, b);
    detail::check_same_device(kOp, {a, b});
    FORGE_CHECK(a.dtype() == b.dtype(), "[matmul] dtypes differ: ", dtype_name(a.dtype()), " ",
                shape_str(a.shape()), " and ", dtype_name(b.dtype()), " ", shape_str(b.shape()));
    FORGE_CHECK(a.dim() >= 1 && b.dim() >= 1, "[matmul] shapes ", shape_str(a.shape()), " and ",
                shape_str(b.shape()), ": both need at least one dim");
    const int64_t ka = a.size(-1), kb = b.dim() == 1 ? b.size(0) : b.size(-2);
    FORGE_CHECK(ka == kb, "[matmul] shapes ", shape_str(a.shape()), " and ", shape_str(b.shape()),
                ": inner dims ", ka, " and ", kb, " differ");

    // 1-D operands as in numpy: a (K) is a (1, K) row, b (K) a (K, 1) column; the added dim
    // is dropped from the result. Views are differentiable, so the gradient flows through.
    const Tensor a2 = a.dim() == 1 ? a.unsqueeze(0) : a;
    const Tensor b2 = b.dim() == 1 ? b.unsqueeze(1) : b;
    const Shape batch = batch_shape(a2, b2, a.shape(), b.shape());
    Tensor out = matmul_nd(a2, b2, batch);
    if (b.dim() == 1)
        out = out.squeeze(-1);
    if (a.dim() == 1)
        out = out.squeeze(-1 - (b.dim() == 1 ? 0 : 1));
    return out;
}

namespace {

// (M, N) = a (M, K) x b (K, N), a and b of one half type with BLAS-valid strides: the
// backend's GEMM on them as they are (no rounding pass of its own); out f32 or their type.
Tensor half_matmul(const Tensor& a, const Tensor& b, DType out_dtype = DType::f32) {
    Tensor out = detail::empty_on(a, {a.size(0), b.size(1)}, out_dtype);
    if (out.numel() > 0)
        detail::backend_of(a).matmul(a.unsqueeze(0), b.unsqueeze(0), out.unsqueeze(0));
    return out;
}

// linear() under CUDA's bf16/f16 autocast: operands rounded to nearest even, f32 accumulation,
// each operand rounded once: x and w in the forward, x kept in half for dW (half the saved
// bytes), and the gradient dZ once for both dX and dW. The output is stored in the half type,
// as autocast's GEMM outputs are in PyTorch (with the bias rounded to it first, as there): the
// next layer's operand, or the attention's input, at half the bytes; with GELU the product is
// kept in the half type and the epilogue rounds the output once (where the backend's GEMM takes
// the bias and the GELU in its epilogue, as cuBLASLt does, the kept GELU input is the product
// plus the bias rounded to the half type, as PyTorch's addmm-then-GELU keeps it). x may arrive
// in the half type; its gradient then leaves in it too, as autocast's do in PyTorch (the GEMM
// writes half the bytes, and the norm, GELU or attention backward before it reads half).
Tensor linear_autocast(const Tensor& x, const Tensor& w, const Tensor& b, bool gelu_act,
                       DType hd) {
    const int64_t N = w.size(1), K = w.size(0), R = x.numel() / std::max<int64_t>(K, 1);
    FORGE_CHECK(x.dim() >= 1 && x.size(-1) == K, "[linear] input ", shape_str(x.shape()),
                " does not match weight ", shape_str(w.shape()));
    Shape out_shape = x.shape();
    out_shape.back() = N;
    Tensor xh, wh, z, out;
    bool z_has_bias = false; // z is the GELU's input itself (the fused epilogue's aux)
    {
        NoGradGuard no_grad;
        xh = x.detach().contiguous().to(hd).view({R, K}); // a no-op copy-free view if x is hd
        wh = w.detach().to(hd);
        const Tensor bc = b.detach().contiguous();
        Backend& be = detail::backend_of(x);
        if (gelu_act) { // z (in the half type, as PyTorch's) kept for the backward's slope
            out = detail::empty_on(x, out_shape, hd);
            z = detail::empty_on(x, out_shape, hd);
            z_has_bias = R > 0 && N > 0 &&
                         be.matmul_bias_gelu_aux(xh.unsqueeze(0), wh.unsqueeze(0), bc.to(hd),
                                                 out.view({1, R, N}), z.view({1, R, N}));
            if (!z_has_bias) {
                z = half_matmul(xh, wh, hd).view(out_shape);
                if (R > 0 && N > 0) be.bias_act(z.view({R, N}), bc, true, out.view({R, N}));
            }
        } else { // the bias (rounded, as cuBLASLt takes it in the output's type) in the GEMM
            out = z = detail::empty_on(x, out_shape, hd);
            if (R > 0 && N > 0)
                be.matmul_bias(xh.unsqueeze(0), wh.unsqueeze(0), bc.to(hd), z.view({1, R, N}));
        }
    }
    if (autograd::needs_grad({x, w, b})) {
        const bool need_x = x.requires_grad(), need_w = w.requires_grad(),
                   need_b = b.requires_grad();
        autograd::record(
            "linear", out, {x, w, b},
            [xh = need_w ? xh : Tensor(), wh = need_x ? wh : Tensor(),
             z_saved = gelu_act ? z : Tensor(), b_saved = b.detach().contiguous(), z_has_bias,
             need_x, need_w, need_b, gelu_act, R, N, K, hd, x_shape = x.shape(),
             gx_dtype = x.dtype() == hd ? hd : DType::f32](const Tensor& g_in)
                -> std::vector<Tensor> {
                // dZ (R, N) comes out of the epilogue's backward already rounded, once for both
                // products; the bias gradient sums the f32 values. A gradient that arrives in
                // the half type (from an op whose kernels write it, e.g. attention, or the next
                // linear) is read as it is: dZ itself when there is no activation.
                const bool half_in = g_in.dtype() == hd, as_is = half_in && !gelu_act;
                const Tensor g =
                    (half_in ? g_in : g_in.to(DType::f32)).contiguous().view({R, N});
                Tensor gzh = as_is ? g : detail::empty_on(g, g.shape(), hd);
                Tensor gb = detail::empty_on(g, {N}, DType::f32);
                if (R > 0 && N > 0)
                    detail::backend_of(g).bias_act_backward(
                        g, gelu_act ? z_saved.view({R, N}) : g, z_has_bias ? Tensor() : b_saved,
                        gelu_act, gzh, gb);
                else
                    gb.fill_(0.0);
                Tensor gx, gw;
                if (need_x) gx = half_matmul(gzh, wh.t(), gx_dtype).view(x_shape); // (R,N)(N,K)
                if (need_w) gw = half_matmul(xh.t(), gzh);                           // (K,R)(R,N)
                return {gx, gw, need_b ? gb : Tensor()};
            });
    }
    return out;
}

} // namespace

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b, bool gelu_act) {
    FORGE_CHECK(w.defined() && w.dim() == 2, "[linear] weight must be (K, N), got ",
                w.defined() ? shape_str(w.shape()) : "undefined");
    FORGE_CHECK(b.defined() && b.dim() == 1 && b.size(0) == w.size(1), "[linear] bias ",
                b.defined() ? shape_str(b.shape()) : "undefined", " does not match weight ",
                shape_str(w.shape()));
    detail::check_same_device("linear", {x, w, b});
    const DType dt = x.dtype();
    if (const DType hd = detail::cuda_autocast_half(x);
        is_half(hd) && w.dtype() == DType::f32 && b.dtype() == DType::f32)
        return linear_autocast(x, w, b, gelu_act, hd);
    if ((dt != DType::f32 && dt != DType::f64) || w.dtype() != dt || b.dtype() != dt) {
        const Tensor z = add(matmul(x, w), b); // half types and mixed dtypes: the plain ops
        return gelu_act ? gelu(z, GeluApprox::tanh) : z;
    }
    const int64_t N = w.size(1), K = w.size(0);
    Tensor z;
    {
        NoGradGuard no_grad;
        z = matmul(x, w); // (..., N), contiguous
    }
    const int64_t R = z.numel() / std::max<int64_t>(N, 1);
    Backend& be = detail::backend_of(z);
    // Without an activation the bias lands in the product itself; with one, the product is
    // kept for the backward (the slope is taken at z + b).
    Tensor out = gelu_act ? detail::empty_on(z, z.shape(), dt) : z;
    if (R > 0 && N > 0) be.bias_act(z.view({R, N}), b.contiguous(), gelu_act, out.view({R, N}));
    if (autograd::needs_grad({x, w, b})) {
        const bool need_x = x.requires_grad(), need_w = w.requires_grad(),
                   need_b = b.requires_grad();
        autograd::record(
            "linear", out, {x, w, b},
            [x_saved = need_w ? x.detach() : Tensor(), w_saved = need_x ? w.detach() : Tensor(),
             z_saved = gelu_act ? z : Tensor(), b_saved = b.detach().contiguous(), need_x, need_w,
             need_b, gelu_act, R, N, K](const Tensor& g_in) -> std::vector<Tensor> {
                const Tensor g = g_in.contiguous();
                Tensor gz = gelu_act ? detail::empty_on(g, g.shape(), g.dtype()) : g;
                Tensor gb = detail::empty_on(g, {N}, g.dtype());
                if (R > 0 && N > 0)
                    detail::backend_of(g).bias_act_backward(
                        g.view({R, N}), (gelu_act ? z_saved : g).view({R, N}), b_saved, gelu_act,
                        gz.view({R, N}), gb);
                else
                    gb.fill_(0.0);
                Tensor gx, gw;
                if (need_x) gx = matmul(gz, w_saved.t());
                if (need_w) gw = matmul(x_saved.reshape({R, K}).t(), gz.reshape({R, N}));
                return {gx, gw, need_b ? gb : Tensor()};
            });
    }
    return out;
}

} // namespace forge
