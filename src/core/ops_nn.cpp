// The NN ops: softmax/log_softmax, layer_norm, rms_norm, cross_entropy, embedding, rope,
// dropout, and the public backward ops of include/forge/core/ops_backward.h. Each op validates
// its inputs, widens half types to f32, runs the backend kernel on contiguous rows, rounds the
// result back to the input's dtype and records an autograd node. No math lives here: kernels
// are in src/backends/cpu/{ref,kernels}/.
#include "core/op_helpers.h"

#include <cmath>

#include <forge/core/ops_backward.h>

namespace forge {

using detail::backend_of;

namespace {

// A detached, contiguous copy of x in dtype `dt` (x itself when it already is one).
Tensor widen(const Tensor& x, DType dt) {
    return x.detach().to(dt).contiguous();
}

// Rows of the last dim: x (..., C) is R rows of C. R = 0 when C = 0.
int64_t n_rows(const Tensor& x) {
    const int64_t c = x.dim() == 0 ? 1 : x.size(-1);
    return c == 0 ? 0 : x.numel() / c;
}

// Integer ids on the host for a tensor on a device: validated there (no wait for the device),
// then copied (a few KB per batch). Ids already on the device are copied back to validate.
bool host_ids_for(const Tensor& ids, const Tensor& on_device) {
    return ids.device().type == DeviceType::cpu && on_device.device().type != DeviceType::cpu;
}

// Integer ids/targets as a contiguous i64 tensor on the host, for validation.
Tensor ids_to_host_i64(const Tensor& ids) {
    Tensor t = ids.detach().to(DType::i64).contiguous();
    return t.device().type == DeviceType::cpu ? t : t.to(Device::cpu());
}

void check_int_ids(const char* op, const Tensor& ids, const char* what) {
    detail::check_defined(op, ids, what);
    FORGE_CHECK(ids.dtype() == DType::i32 || ids.dtype() == DType::i64, "[", op, "] ", what,
                " must be i32 or i64, got ", dtype_name(ids.dtype()), " ", shape_str(ids.shape()));
}

// Every id in [0, vocab): "[embedding] id 70 (position 3 of ids [2,4]) out of range for
// vocab size 50".
void check_ids_in_range(const char* op, const Tensor& ids, int64_t vocab) {
    Tensor h = ids_to_host_i64(ids);
    const int64_t* p = h.data<int64_t>();
    for (int64_t i = 0; i < h.numel(); ++i)
        FORGE_CHECK(p[i] >= 0 && p[i] < vocab, "[", op, "] id ", p[i], " (position ", i, " of ids ",
                    shape_str(ids.shape()), ") out of range for vocab size ", vocab);
}

// Targets in [0, V) or ignore_index; returns the number of rows not ignored.
int64_t check_targets(const char* op, const Tensor& targets, int64_t n_classes,
                      int64_t ignore_index, const Shape& logits_shape) {
    Tensor h = ids_to_host_i64(targets);
    const int64_t* p = h.data<int64_t>();
    int64_t count = 0;
    for (int64_t n = 0; n < h.numel(); ++n) {
        if (p[n] == ignore_index)
            continue;
        FORGE_CHECK(p[n] >= 0 && p[n] < n_classes, "[", op, "] target ", p[n], " at row ", n,
                    " is out of range for ", n_classes, " classes (logits ",
                    shape_str(logits_shape), ", ignore_index ", ignore_index, ")");
        ++count;
    }
    return count;
}

// "[rms_norm] weight has 5 elements, x's last dim is 4 (x [2,4])"
void check_param(const char* op, const Tensor& p, const char* what, const Tensor& x) {
    detail::check_float(op, p);
    const int64_t c = x.size(-1);
    FORGE_CHECK(p.dim() == 1 && p.size(0) == c, "[", op, "] ", what, " has ",
                p.dim() == 1 ? std::to_string(p.size(0)) + " elements"
                             : "shape " + shape_str(p.shape()),
                ", x's last dim is ", c, " (x ", shape_str(x.shape()), ")");
}

void check_eps(const char* op, float eps) {
    FORGE_CHECK(std::isfinite(eps) && eps >= 0, "[", op, "] eps must be finite and >= 0, got ",
                eps);
}

Tensor softmax_impl(const char* op, const Tensor& x, int64_t dim, bool log) {
    detail::check_float(op, x);
    if (x.dim() == 0) { // a scalar is a row of one
        detail::wrap_dim(op, dim, 0);
        return softmax_impl(op, x.reshape({1}), 0, log).reshape({});
    }
    const int64_t d = detail::wrap_dim(op, dim, x.dim());
    const int64_t last = x.dim() - 1;
    const DType cdt = compute_dtype(x.dtype());
    Tensor y;
    {
        NoGradGuard no_grad;
        // Kernels reduce over the last dim of contiguous rows: move `dim` there first.
        Tensor xc = x.detach();
        if (d != last)
            xc = xc.transpose(d, last);
        xc = xc.to(cdt).contiguous();
        Tensor out = detail::empty_on(xc, xc.shape(), cdt);
        const int64_t c = xc.size(-1), r = n_rows(xc);
        if (xc.numel() > 0)
            backend_of(xc).softmax(xc.view({r, c}), out.view({r, c}), log);
        if (d != last)
            out = out.transpose(d, last).contiguous();
        y = out.to(x.dtype());
    }
    autograd::record(op, y, {x}, [yd = y.detach(), d, log, dt = x.dtype()](const Tensor& g) {
        const DType cd = compute_dtype(dt);
        Tensor gf = g.to(cd), yf = yd.to(cd);
        Tensor gx = log
                        // y = x - lse: dx = g - softmax * sum(g)
                        ? sub(gf, mul(exp(yf), sum(gf, {d}, true)))
                        // dx = y * (g - sum(g * y))
                        : mul(yf, sub(gf, sum(mul(gf, yf), {d}, true)));
        return std::vector<Tensor>{gx.to(dt)};
    });
    return y;
}

} // namespace

// ------------------------------------------------------------------ softmax

Tensor softmax(const Tensor& x, int64_t dim) {
    return softmax_impl("softmax", x, dim, false);
}
Tensor log_softmax(const Tensor& x, int64_t dim) {
    return softmax_impl("log_softmax", x, dim, true);
}

// ------------------------------------------------------------------ norms

// The output has x's dtype; the math runs in the compute dtype of x, weight and bias together
// (f64 weights on f32 x compute in f64; bf16 x with f32 weights computes in f32).
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps) {
    const char* op = "layer_norm";
    detail::check_float(op, x);
    FORGE_CHECK(x.dim() >= 1, "[layer_norm] x must have at least one dim, got a scalar");
    detail::check_defined(op, weight, "weight");
    check_param(op, weight, "weight", x);
    if (bias.defined())
        check_param(op, bias, "bias", x);
    detail::check_same_device(op, {x, weight, bias});
    check_eps(op, eps);
    DType cdt = promote_types(x.dtype(), weight.dtype());
    if (bias.defined())
        cdt = promote_types(cdt, bias.dtype());
    cdt = compute_dtype(cdt);

    const int64_t c = x.size(-1), r = n_rows(x);
    // Under CUDA's autocast f32 rows come out in the half type: the output feeds a GEMM, which
    // would round it anyway (PyTorch keeps the norm in f32 and rounds in the next matmul).
    const DType hd = detail::cuda_autocast_half(x);
    const DType out_dt = is_half(hd) && cdt == DType::f32 ? hd : cdt;
    Tensor xc, wc, mean, rstd, y;
    {
        NoGradGuard no_grad;
        xc = widen(x, cdt);
        wc = widen(weight, cdt);
        Tensor bc = bias.defined() ? widen(bias, cdt) : Tensor();
        Tensor out = detail::empty_on(xc, x.shape(), out_dt);
        mean = detail::empty_on(xc, {r}, cdt);
        rstd = detail::empty_on(xc, {r}, cdt);
        if (x.numel() > 0)
            backend_of(xc).layer_norm(xc.view({r, c}), wc, bc, eps, out.view({r, c}), mean, rstd);
        y = out_dt == cdt ? out.to(x.dtype()) : out;
    }
    const bool with_bias = bias.defined();
    // The gradient pending for x (a residual stream's, in a pre-norm block) is folded into dx:
    // in the backend's kernel where it has one, else added here as autograd would.
    autograd::record_folding(
        op, y, {x, weight, bias},
        [xc, wc, mean, rstd, with_bias, dx_t = x.dtype(), dw_t = weight.dtype(),
         db_t = with_bias ? bias.dtype() : DType::f32](const Tensor& g,
                                                       const std::vector<Tensor>& pending) {
            const Tensor& acc = pending[0];
            if (acc.defined() && acc.dtype() == dx_t && dx_t == xc.dtype() &&
                acc.shape() == xc.shape() && g.shape() == xc.shape()) {
                NoGradGuard no_grad;
                const int64_t c = xc.size(-1), r = n_rows(xc);
                // A half g (autocast's GEMM gradient) goes as it is: the backend widens it.
                const Tensor gc = is_half(g.dtype()) ? g.contiguous() : widen(g, xc.dtype());
                const Tensor accc = acc.contiguous();
                LayerNormGrads gr;
                gr.dx = detail::empty_on(xc, xc.shape(), xc.dtype());
                gr.dweight = detail::empty_on(xc, {c}, xc.dtype());
                if (with_bias) gr.dbias = detail::empty_on(xc, {c}, xc.dtype());
                if (r > 0 && backend_of(xc).layer_norm_backward_add(
                                 gc.view({r, c}), xc.view({r, c}), wc, mean, rstd,
                                 accc.view({r, c}), gr.dx.view({r, c}), gr.dweight, gr.dbias))
                    return std::vector<Tensor>{gr.dx, gr.dweight.to(dw_t),
                                               with_bias ? gr.dbias.to(db_t) : Tensor()};
            }
            LayerNormGrads gr = layer_norm_backward(g, xc, wc, mean, rstd, with_bias);
            Tensor dx = gr.dx.to(dx_t);
            if (acc.defined()) dx = add(acc, dx);
            return std::vector<Tensor>{dx, gr.dweight.to(dw_t),
                                       with_bias ? gr.dbias.to(db_t) : Tensor()};
        });
    return y;
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, float eps) {
    const char* op = "rms_norm";
    detail::check_float(op, x);
    FORGE_CHECK(x.dim() >= 1, "[rms_norm] x must have at least one dim, got a scalar");
    detail::check_defined(op, weight, "weight");
    check_param(op, weight, "weight", x);
    detail::check_same_device(op, {x, weight});
    check_eps(op, eps);
    const DType cdt = compute_dtype(promote_types(x.dtype(), weight.dtype()));

    const int64_t c = x.size(-1), r = n_rows(x);
    Tensor xc, wc, rstd, y;
    {
        NoGradGuard no_grad;
        xc = widen(x, cdt);
        wc = widen(weight, cdt);
        Tensor out = detail::empty_on(xc, x.shape(), cdt);
        rstd = detail::empty_on(xc, {r}, cdt);
        if (x.numel() > 0)
            backend_of(xc).rms_norm(xc.view({r, c}), wc, eps, out.view({r, c}), rstd);
        y = out.to(x.dtype());
    }
    autograd::record(op, y, {x, weight},
                     [xc, wc, rstd, dx_t = x.dtype(), dw_t = weight.dtype()](const Tensor& g) {
                         RmsNormGrads gr = rms_norm_backward(g, xc, wc, rstd);
                         return std::vector<Tensor>{gr.dx.to(dx_t), gr.dweight.to(dw_t)};
                     });
    return y;
}

LayerNormGrads layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                                   const Tensor& mean, const Tensor& rstd, bool with_bias) {
    const char* op = "layer_norm_backward";
    detail::check_float(op, dy);
    detail::check_float(op, x);
    detail::check_defined(op, weight, "weight");
    detail::check_float(op, mean);
    detail::check_float(op, rstd);
    FORGE_CHECK(x.dim() >= 1, "[layer_norm_backward] x must have at least one dim");
    check_param(op, weight, "weight", x);
    detail::check_same_device(op, {dy, x, weight, mean, rstd});
    FORGE_CHECK(dy.shape() == x.shape(), "[layer_norm_backward] dy ", shape_str(dy.shape()),
                " and x ", shape_str(x.shape()), " differ");
    const int64_t c = x.size(-1), r = n_rows(x);
    FORGE_CHECK(mean.numel() == r && rstd.numel() == r, "[layer_norm_backward] x ",
                shape_str(x.shape()), " has ", r, " rows but mean ", shape_str(mean.shape()),
                " and rstd ", shape_str(rstd.shape()));
    const DType cdt = compute_dtype(promote_types(x.dtype(), weight.dtype()));
    NoGradGuard no_grad;
    Tensor xc = widen(x, cdt), dyc = widen(dy, cdt), wc = widen(weight, cdt);
    LayerNormGrads gr;
    gr.dx = detail::empty_on(xc, x.shape(), cdt);
    gr.dweight = detail::empty_on(xc, {c}, cdt);
    if (with_bias)
        gr.dbias = detail::empty_on(xc, {c}, cdt);
    if (x.numel() == 0) { // no rows: the parameter gradients are sums of nothing
        gr.dweight.zero_();
        if (with_bias)
            gr.dbias.zero_();
        return gr;
    }
    backend_of(xc).layer_norm_backward(dyc.view({r, c}), xc.view({r, c}), wc,
                                       widen(mean, cdt).view({r}), widen(rstd, cdt).view({r}),
                                       gr.dx.view({r, c}), gr.dweight, gr.dbias);
    return gr;
}

RmsNormGrads rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                               const Tensor& rstd) {
    const char* op = "rms_norm_backward";
    detail::check_float(op, dy);
    detail::check_float(op, x);
    detail::check_defined(op, weight, "weight");
    detail::check_float(op, rstd);
    FORGE_CHECK(x.dim() >= 1, "[rms_norm_backward] x must have at least one dim");
    check_param(op, weight, "weight", x);
    detail::check_same_device(op, {dy, x, weight, rstd});
    FORGE_CHECK(dy.shape() == x.shape(), "[rms_norm_backward] dy ", shape_str(dy.shape()),
                " and x ", shape_str(x.shape()), " differ");
    const int64_t c = x.size(-1), r = n_rows(x);
    FORGE_CHECK(rstd.numel() == r, "[rms_norm_backward] x ", shape_str(x.shape()), " has ", r,
                " rows but rstd ", shape_str(rstd.shape()));
    const DType cdt = compute_dtype(promote_types(x.dtype(), weight.dtype()));
    NoGradGuard no_grad;
    Tensor xc = widen(x, cdt), dyc = widen(dy, cdt), wc = widen(weight, cdt);
    RmsNormGrads gr;
    gr.dx = detail::empty_on(xc, x.shape(), cdt);
    gr.dweight = detail::empty_on(xc, {c}, cdt);
    if (x.numel() == 0) {
        gr.dweight.zero_();
        return gr;
    }
    backend_of(xc).rms_norm_backward(dyc.view({r, c}), xc.view({r, c}), wc,
                                     widen(rstd, cdt).view({r}), gr.dx.view({r, c}), gr.dweight);
    return gr;
}

// ------------------------------------------------------------------ cross-entropy

namespace {

// logits (..., V) and targets (...): returns V after checking shapes and dtypes.
int64_t check_ce_shapes(const char* op, const Tensor& logits, const Tensor& targets) {
    detail::check_float(op, logits);
    check_int_ids(op, targets, "targets");
    detail::check_same_device(op, {logits, targets});
    FORGE_CHECK(logits.dim() >= 1, "[", op, "] logits must be (N, V), got a scalar");
    Shape lead(logits.shape().begin(), logits.shape().end() - 1);
    FORGE_CHECK(targets.shape() == lead, "[", op, "] logits ", shape_str(logits.shape()),
                " need targets of shape ", shape_str(lead), ", got ", shape_str(targets.shape()));
    return logits.size(-1);
}

} // namespace

// Mean over the rows whose target is not ignore_index. When every row is ignored the loss is
// 0 (not PyTorch's NaN) with a zero gradient, so a batch that is all padding cannot poison a
// training run. logits may also be (B, T, V) with targets (B, T).
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
    const char* op = "cross_entropy";
    const int64_t v = check_ce_shapes(op, logits, targets);
    const int64_t count = check_targets(op, targets, v, ignore_index, logits.shape());
    const int64_t n = targets.numel();
    const DType cdt = compute_dtype(logits.dtype());
    const double inv_count = count > 0 ? 1.0 / double(count) : 0.0;

    Tensor lc, t64, lse, y;
    {
        NoGradGuard no_grad;
        lc = widen(logits, cdt).view({n, v});
        t64 = targets.to(DType::i64).contiguous().view({n});
        Tensor losses = detail::empty_on(lc, {n}, cdt);
        lse = detail::empty_on(lc, {n}, cdt);
        Tensor loss;
        if (n > 0) {
            backend_of(lc).cross_entropy(lc, t64, ignore_index, losses, lse);
            // Ignored rows hold 0, so the sum over all rows is the sum over counted ones.
            loss = mul_scalar(sum(losses), inv_count);
        } else {
            loss = Tensor::zeros({}, cdt, logits.device());
        }
        y = loss.to(logits.dtype());
    }
    autograd::record(op, y, {logits, targets},
                     [lc, t64, lse, ignore_index, inv_count, shape = logits.shape(),
                      dt = logits.dtype()](const Tensor& g) {
                         Tensor d =
                             cross_entropy_backward(lc, t64, lse, g, ignore_index, inv_count);
                         return std::vector<Tensor>{d.view(shape).to(dt), Tensor()};
                     });
    return y;
}

Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                              const Tensor& dloss, int64_t ignore_index, double inv_count) {
    const char* op = "cross_entropy_backward";
    const int64_t v = check_ce_shapes(op, logits, targets);
    detail::check_float(op, lse);
    detail::check_float(op, dloss);
    detail::check_same_device(op, {logits, lse, dloss});
    const int64_t n = targets.numel();
    FORGE_CHECK(lse.numel() == n, "[cross_entropy_backward] lse has ", lse.numel(),
                " elements for ", n, " rows (logits ", shape_str(logits.shape()), ")");
    FORGE_CHECK(dloss.numel() == 1, "[cross_entropy_backward] dloss must have one element, got ",
                shape_str(dloss.shape()));
    FORGE_CHECK(std::isfinite(inv_count) && inv_count >= 0,
                "[cross_entropy_backward] inv_count must be finite and >= 0, got ", inv_count);
    check_targets(op, targets, v, ignore_index, logits.shape());
    const DType cdt = compute_dtype(logits.dtype());
    NoGradGuard no_grad;
    Tensor lc = widen(logits, cdt).view({n, v});
    Tensor out = detail::empty_on(lc, logits.shape(), cdt);
    if (out.numel() > 0)
        backend_of(lc).cross_entropy_backward(
            lc, targets.to(DType::i64).contiguous().view({n}), widen(lse, cdt).view({n}),
            ignore_index, widen(dloss, cdt).view({1}), inv_count, out.view({n, v}));
    return out;
}

Tensor linear_cross_entropy(const Tensor& x, const Tensor& w, const Tensor& targets,
                            int64_t ignore_index) {
    const char* op = "linear_cross_entropy";
    detail::check_float(op, x);
    detail::check_float(op, w);
    check_int_ids(op, targets, "targets");
    // Targets may stay on the host for device x / w (validated there, then copied).
    if (host_ids_for(targets, x)) detail::check_same_device(op, {x, w});
    else detail::check_same_device(op, {x, w, targets});
    FORGE_CHECK(w.dim() == 2, "[", op, "] w must be (V, C), got ", shape_str(w.shape()));
    FORGE_CHECK(x.dim() >= 1 && x.size(-1) == w.size(1), "[", op, "] x ", shape_str(x.shape()),
                " does not match w ", shape_str(w.shape()), " (x's last dim must be C)");
    Shape lead(x.shape().begin(), x.shape().end() - 1);
    FORGE_CHECK(targets.shape() == lead, "[", op, "] x ", shape_str(x.shape()),
                " needs targets of shape ", shape_str(lead), ", got ",
                shape_str(targets.shape()));
    const int64_t V = w.size(0), C = w.size(1), n = targets.numel();
    Shape logits_shape = lead;
    logits_shape.push_back(V);
    const int64_t count = check_targets(op, targets, V, ignore_index, logits_shape);
    const double inv_count = count > 0 ? 1.0 / double(count) : 0.0;
    // The gradients are taken at scale 2^10 and scaled down in the backward (exactly, a power of
    // two): (softmax - onehot) / count would fall below f16's range where the products round
    // their operands to f16, before a loss scale could lift them.
    constexpr double kGradScale = 1024.0;
    // x and w may differ (a half x from a norm under CUDA's autocast, f32 w): both are widened
    // to the compute dtype, and x's gradient stays in it.
    const DType dt = promote_types(x.dtype(), w.dtype()), cdt = compute_dtype(dt);
    const DType dx_t = x.dtype() == w.dtype() ? dt : cdt;
    const bool grads = autograd::needs_grad({x, w});

    Tensor y, dx, dw;
    {
        NoGradGuard no_grad;
        const Tensor xc = widen(x, cdt).contiguous().view({n, C}), wc = widen(w, cdt).contiguous();
        const Tensor t64 = targets.to(DType::i64).contiguous().view({n}).to(x.device());
        Tensor losses = detail::empty_on(xc, {n}, cdt);
        if (grads) {
            dx = detail::empty_on(xc, {n, C}, cdt);
            dw = detail::empty_on(xc, {V, C}, cdt);
        }
        Tensor loss;
        if (n > 0) {
            backend_of(xc).linear_cross_entropy(xc, wc, t64, ignore_index, kGradScale, losses,
                                                dx, dw);
            loss = mul_scalar(sum(losses), inv_count);
        } else {
            loss = Tensor::zeros({}, cdt, x.device());
            if (grads) dw.zero_();
        }
        y = loss.to(dt);
    }
    if (grads)
        autograd::record(op, y, {x, w, targets},
                         [dx, dw, x_shape = x.shape(), dx_t, dw_t = w.dtype(),
                          factor = inv_count / kGradScale](const Tensor& g) {
                             const Tensor gs = mul_scalar(g.to(dx.dtype()), factor);
                             return std::vector<Tensor>{mul(dx, gs).view(x_shape).to(dx_t),
                                                        mul(dw, gs).to(dw_t), Tensor()};
                         });
    return y;
}

// ------------------------------------------------------------------ embedding

namespace {
// dweight (V, C) from dout (n, C) and validated i64 ids (n) on dout's device.
Tensor embedding_grad(const Tensor& dout, const Tensor& ids64, int64_t num_embeddings) {
    const int64_t c = dout.size(-1), n = ids64.numel();
    const DType cdt = compute_dtype(dout.dtype());
    NoGradGuard no_grad;
    Tensor dw = Tensor::zeros({num_embeddings, c}, cdt, dout.device());
    if (n > 0 && c > 0)
        backend_of(dw).embedding_backward(widen(dout, cdt).view({n, c}), ids64.view({n}), dw);
    return dw;
}
} // namespace

// The gather copies rows as bytes, so half weights are looked up without widening the whole
// table (the CPU kernels take any dtype; the backward accumulates in f32). Host ids for a device
// weight are validated on the host and copied.
Tensor embedding(const Tensor& weight, const Tensor& ids) {
    const char* op = "embedding";
    detail::check_float(op, weight);
    check_int_ids(op, ids, "ids");
    const bool host_ids = host_ids_for(ids, weight);
    if (!host_ids) detail::check_same_device(op, {weight, ids});
    FORGE_CHECK(weight.dim() == 2, "[embedding] weight must be (V, C), got ",
                shape_str(weight.shape()));
    const int64_t vocab = weight.size(0), c = weight.size(1);
    check_ids_in_range(op, ids, vocab);
    Shape out_shape = ids.shape();
    out_shape.push_back(c);
    const int64_t n = ids.numel();

    Tensor ids64, y;
    {
        NoGradGuard no_grad;
        ids64 = ids.to(DType::i64).contiguous().view({n}).to(weight.device());
        Tensor wc = weight.detach().contiguous();
        y = detail::empty_on(wc, out_shape, weight.dtype());
        if (y.numel() > 0)
            backend_of(wc).embedding(wc, ids64, y.view({n, c}));
    }
    autograd::record(op, y, {weight, ids},
                     [ids64, vocab, n, c, dt = weight.dtype()](const Tensor& g) {
                         // ids64 was validated above: no second check (a device -> host wait).
                         Tensor dw = embedding_grad(g.reshape({n, c}), ids64, vocab);
                         return std::vector<Tensor>{dw.to(dt), Tensor()};
                     });
    return y;
}

Tensor embedding_backward(const Tensor& dout, const Tensor& ids, int64_t num_embeddings) {
    const char* op = "embedding_backward";
    detail::check_float(op, dout);
    check_int_ids(op, ids, "ids");
    detail::check_same_device(op, {dout, ids});
    FORGE_CHECK(num_embeddings >= 0, "[embedding_backward] num_embeddings must be >= 0, got ",
                num_embeddings);
    FORGE_CHECK(dout.dim() == ids.dim() + 1 &&
                    Shape(dout.shape().begin(), dout.shape().end() - 1) == ids.shape(),
                "[embedding_backward] dout ", shape_str(dout.shape()),
                " must be ids' shape plus one dim; ids ", shape_str(ids.shape()));
    check_ids_in_range(op, ids, num_embeddings);
    return embedding_grad(dout, ids.to(DType::i64).contiguous().view({ids.numel()}),
                          num_embeddings);
}

// ------------------------------------------------------------------ rope

Tensor rope(const Tensor& x, const RopeOptions& opts) {
    const char* op = "rope";
    detail::check_float(op, x);
    FORGE_CHECK(x.dim() == 4, "[rope] x must be (B, H, T, D), got ", shape_str(x.shape()));
    const int64_t d = x.size(3);
    FORGE_CHECK(opts.rotary_dim >= 0 && opts.rotary_dim <= d, "[rope] rotary_dim ", opts.rotary_dim,
                " must be in [0, D] (0 = all); x ", shape_str(x.shape()));
    const int64_t rd = opts.rotary_dim == 0 ? d : opts.rotary_dim;
    FORGE_CHECK(rd % 2 == 0, "[rope] the rotated width ", rd,
                " must be even (pairs of features); x ", shape_str(x.shape()));
    FORGE_CHECK(opts.pos_offset >= 0, "[rope] pos_offset must be >= 0, got ", opts.pos_offset);
    FORGE_CHECK(std::isfinite(opts.theta) && opts.theta > 0, "[rope] theta must be > 0, got ",
                opts.theta);
    const DType cdt = compute_dtype(x.dtype());
    Tensor y;
    {
        NoGradGuard no_grad;
        Tensor xc = widen(x, cdt);
        Tensor out = detail::empty_on(xc, x.shape(), cdt);
        if (x.numel() > 0)
            backend_of(xc).rope(xc, opts, out);
        y = out.to(x.dtype());
    }
    // A rotation's transpose is the rotation by -angle.
    autograd::record(op, y, {x}, [opts, dt = x.dtype()](const Tensor& g) {
        RopeOptions inv = opts;
        inv.inverse = !opts.inverse;
        return std::vector<Tensor>{rope(g, inv).to(dt)};
    });
    return y;
}

// ------------------------------------------------------------------ dropout

// p == 0 returns x itself. Dropout does not look at grad mode: evaluation without dropout is
// the caller's choice (nn::Dropout in eval mode), not a side effect of NoGradGuard.
Tensor dropout(const Tensor& x, double p, uint64_t seed) {
    const char* op = "dropout";
    detail::check_float(op, x);
    FORGE_CHECK(p >= 0.0 && p < 1.0, "[dropout] p must be in [0, 1), got ", p);
    if (p == 0.0)
        return x;
    const DType cdt = compute_dtype(x.dtype());
    Tensor mask, y;
    {
        NoGradGuard no_grad;
        // mask[i] = 0 with probability p else 1/(1-p), a function of (seed, i) only.
        mask = detail::empty_on(x, x.shape(), cdt);
        if (mask.numel() > 0)
            backend_of(mask).random(mask, RandomKind::dropout_mask, seed, p, 0.0);
        y = mul(x.detach().to(cdt), mask).to(x.dtype());
    }
    autograd::record(op, y, {x}, [mask, dt = x.dtype()](const Tensor& g) {
        return std::vector<Tensor>{mul(g.to(mask.dtype()), mask).to(dt)};
    });
    return y;
}

} // namespace forge
