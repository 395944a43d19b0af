// Element-wise ops: binary with broadcasting, scalar, unary, comparisons, where/masked_fill.
#include "core/op_helpers.h"

#include <cmath>

namespace forge {

using detail::backend_of;

namespace {

const char* binary_name(BinaryOp op) {
    switch (op) {
    case BinaryOp::add: return "add";
    case BinaryOp::sub: return "sub";
    case BinaryOp::mul: return "mul";
    case BinaryOp::div: return "div";
    case BinaryOp::maximum: return "maximum";
    case BinaryOp::eq: return "eq";
    case BinaryOp::gt: return "gt";
    case BinaryOp::lt: return "lt";
    }
    return "?";
}

// Broadcasts a and b, promotes dtypes (half -> f32 compute), runs the kernel.
// Returns the output in the promoted dtype (u8 for comparisons).
Tensor run_binary(BinaryOp op, const Tensor& a_in, const Tensor& b_in) {
    const char* name = binary_name(op);
    detail::check_defined(name, a_in, "a");
    detail::check_defined(name, b_in, "b");
    detail::check_same_device(name, {a_in, b_in});
    const bool compare = op == BinaryOp::eq || op == BinaryOp::gt || op == BinaryOp::lt;
    DType dt = promote_types(a_in.dtype(), b_in.dtype());
    FORGE_CHECK(dt != DType::u8 || compare, "[", name, "] u8 tensors support comparisons only");
    DType cdt = dt == DType::u8 ? DType::i32 : compute_dtype(dt);
    Shape shape = detail::broadcast_shapes(name, a_in.shape(), b_in.shape());
    Backend& be = detail::backend_of(a_in);
    // A backend that reads half operands as they are gets them unwidened, out in dt.
    const auto f32_or_half = [](DType t) { return t == DType::f32 || is_half(t); };
    const bool as_stored = !compare && f32_or_half(a_in.dtype()) && f32_or_half(b_in.dtype()) &&
                           be.binary_mixed_float();
    if (as_stored) cdt = dt;
    Tensor a = a_in.detach().to(as_stored ? a_in.dtype() : cdt).expand(shape);
    Tensor b = b_in.detach().to(as_stored ? b_in.dtype() : cdt).expand(shape);
    Tensor out = detail::empty_on(a, shape, compare ? DType::u8 : cdt);
    be.binary(op, a, b, out);
    return compare || cdt == dt ? out : out.to(dt);
}

Tensor run_unary(UnaryOp op, const char* name, const Tensor& x, double alpha = 0.0) {
    detail::check_float(name, x);
    Tensor xc = x.detach().to(compute_dtype(x.dtype()));
    Tensor out = detail::empty_on(xc, xc.shape(), xc.dtype());
    backend_of(out).unary(op, xc, out, alpha);
    return out.to(x.dtype());
}

} // namespace

// ------------------------------------------------------------------ binary

Tensor add(const Tensor& a, const Tensor& b) {
    Tensor out = run_binary(BinaryOp::add, a, b);
    autograd::record("add", out, {a, b}, [sa = a.shape(), sb = b.shape()](const Tensor& g) {
        return std::vector<Tensor>{sum_to(g, sa), sum_to(g, sb)};
    });
    return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
    Tensor out = run_binary(BinaryOp::sub, a, b);
    autograd::record("sub", out, {a, b}, [sa = a.shape(), sb = b.shape()](const Tensor& g) {
        return std::vector<Tensor>{sum_to(g, sa), sum_to(neg(g), sb)};
    });
    return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
    Tensor out = run_binary(BinaryOp::mul, a, b);
    bool ga = a.requires_grad(), gb = b.requires_grad();
    autograd::record("mul", out, {a, b},
                     [ad = a.detach(), bd = b.detach(), ga, gb](const Tensor& g) {
                         return std::vector<Tensor>{
                             ga ? sum_to(mul(g, bd), ad.shape()) : Tensor(),
                             gb ? sum_to(mul(g, ad), bd.shape()) : Tensor()};
                     });
    return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
    Tensor out = run_binary(BinaryOp::div, a, b);
    bool ga = a.requires_grad(), gb = b.requires_grad();
    autograd::record("div", out, {a, b},
                     [ad = a.detach(), bd = b.detach(), ga, gb](const Tensor& g) {
                         // d(a/b)/db = -a / b^2
                         return std::vector<Tensor>{
                             ga ? sum_to(div(g, bd), ad.shape()) : Tensor(),
                             gb ? sum_to(neg(div(mul(g, ad), mul(bd, bd))), bd.shape())
                                : Tensor()};
                     });
    return out;
}

Tensor maximum(const Tensor& a, const Tensor& b) {
    Tensor out = run_binary(BinaryOp::maximum, a, b);
    autograd::record("maximum", out, {a, b}, [ad = a.detach(), bd = b.detach()](const Tensor& g) {
        // Ties send half the gradient each way (PyTorch's rule for maximum).
        Tensor a_wins = gt(ad, bd).to(g.dtype());
        Tensor tie = eq(ad, bd).to(g.dtype());
        Tensor wa = add(a_wins, mul_scalar(tie, 0.5));
        Tensor wb = rsub_scalar(wa, 1.0);
        return std::vector<Tensor>{sum_to(mul(g, wa), ad.shape()),
                                   sum_to(mul(g, wb), bd.shape())};
    });
    return out;
}

Tensor eq(const Tensor& a, const Tensor& b) { return run_binary(BinaryOp::eq, a, b); }
Tensor gt(const Tensor& a, const Tensor& b) { return run_binary(BinaryOp::gt, a, b); }
Tensor lt(const Tensor& a, const Tensor& b) { return run_binary(BinaryOp::lt, a, b); }

// ------------------------------------------------------------------ scalar

Tensor add_scalar(const Tensor& x, double s) {
    Tensor out = run_unary(UnaryOp::add_scalar, "add_scalar", x, s);
    autograd::record("add_scalar", out, {x},
                     [](const Tensor& g) { return std::vector<Tensor>{g}; });
    return out;
}

Tensor mul_scalar(const Tensor& x, double s) {
    Tensor out = run_unary(UnaryOp::mul_scalar, "mul_scalar", x, s);
    autograd::record("mul_scalar", out, {x},
                     [s](const Tensor& g) { return std::vector<Tensor>{mul_scalar(g, s)}; });
    return out;
}

Tensor rsub_scalar(const Tensor& x, double s) {
    Tensor out = run_unary(UnaryOp::rsub_scalar, "rsub_scalar", x, s);
    autograd::record("rsub_scalar", out, {x},
                     [](const Tensor& g) { return std::vector<Tensor>{neg(g)}; });
    return out;
}

Tensor pow_scalar(const Tensor& x, double p) {
    Tensor out = run_unary(UnaryOp::pow_scalar, "pow_scalar", x, p);
    autograd::record("pow_scalar", out, {x}, [xd = x.detach(), p](const Tensor& g) {
        return std::vector<Tensor>{mul(g, mul_scalar(pow_scalar(xd, p - 1), p))};
    });
    return out;
}

// ------------------------------------------------------------------ unary

Tensor neg(const Tensor& x) {
    Tensor out = run_unary(UnaryOp::neg, "neg", x);
    autograd::record("neg", out, {x}, [](const Tensor& g) { return std::vector<Tensor>{neg(g)}; });
    return out;
}

Tensor exp(const Tensor& x) {
    Tensor out = run_unary(UnaryOp::exp, "exp", x);
    autograd::record("exp", out, {x}, [y = out.detach()](const Tensor& g) {
        return std::vector<Tensor>{mul(g, y)};
    });
    return out;
}

Tensor log(const Tensor& x) {
    Tensor out = run_unary(UnaryOp::log, "log", x);
    autograd::record("log", out, {x}, [xd = x.detach()](const Tensor& g) {
        return std::vector<Tensor>{div(g, xd)};
    });
    return out;
}

Tensor sqrt(const Tensor& x) {
    Tensor out = run_unary(UnaryOp::sqrt, "sqrt", x);
    autograd::record("sqrt", out, {x}, [y = out.detach()](const Tensor& g) {
        return std::vector<Tensor>{div(mul_scalar(g, 0.5), y)};
    });
    return out;
}

Tensor rsqrt(const Tensor& x) {
    Tensor out = run_unary(UnaryOp::rsqrt, "rsqrt", x);
    autograd::record("rsqrt", out, {x}, [y = out.detach()](const Tensor& g) {
        // d x^-1/2 = -1/2 x^-3/2 = -1/2 y^3
        return std::vector<Tensor>{mul(g, mul_scalar(mul(mul(y, y), y), -0.5))};
    });
    return out;
}

Tensor tanh(const Tensor& x) {
    Tensor out = run_unary(UnaryOp::tanh, "tanh", x);
    autograd::record("tanh", out, {x}, [y = out.detach()](const Tensor& g) {
        return std::vector<Tensor>{mul(g, rsub_scalar(mul(y, y), 1.0))};
    });
    return out;
}

Tensor sigmoid(const Tensor& x) {
    Tensor out = run_unary(UnaryOp::sigmoid, "sigmoid", x);
    autograd::record("sigmoid", out, {x}, [y = out.detach()](const Tensor& g) {
        return std::vector<Tensor>{mul(g, mul(y, rsub_scalar(y, 1.0)))};
    });
    return out;
}

Tensor relu(const Tensor& x) {
    Tensor out = run_unary(UnaryOp::relu, "relu", x);
    autograd::record("relu", out, {x}, [xd = x.detach()](const Tensor& g) {
        Tensor zero = Tensor::scalar(0.0, g.dtype(), g.device());
        return std::vector<Tensor>{mul(g, gt(xd, zero).to(g.dtype()))};
    });
    return out;
}

Tensor abs(const Tensor& x) {
    Tensor out = run_unary(UnaryOp::abs, "abs", x);
    autograd::record("abs", out, {x}, [xd = x.detach()](const Tensor& g) {
        Tensor zero = Tensor::scalar(0.0, g.dtype(), g.device());
        Tensor sign = sub(gt(xd, zero).to(g.dtype()), lt(xd, zero).to(g.dtype()));
        return std::vector<Tensor>{mul(g, sign)};
    });
    return out;
}

Tensor gelu(const Tensor& x, GeluApprox approx) {
    Tensor out = run_unary(approx == GeluApprox::tanh ? UnaryOp::gelu_tanh : UnaryOp::gelu_erf,
                           "gelu", x);
    autograd::record("gelu", out, {x}, [xd = x.detach(), approx](const Tensor& g) {
        return std::vector<Tensor>{mul(g, gelu_grad(xd, approx))};
    });
    return out;
}

Tensor silu(const Tensor& x) {
    Tensor out = run_unary(UnaryOp::silu, "silu", x);
    autograd::record("silu", out, {x}, [xd = x.detach()](const Tensor& g) {
        return std::vector<Tensor>{mul(g, silu_grad(xd))};
    });
    return out;
}

Tensor gelu_grad(const Tensor& x, GeluApprox approx) {
    return run_unary(approx == GeluApprox::tanh ? UnaryOp::gelu_tanh_grad : UnaryOp::gelu_erf_grad,
                     "gelu_grad", x);
}
Tensor silu_grad(const Tensor& x) { return run_unary(UnaryOp::silu_grad, "silu_grad", x); }

// ------------------------------------------------------------------ where / masked_fill

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
    detail::check_defined("where", cond, "cond");
    detail::check_defined("where", a, "a");
    detail::check_defined("where", b, "b");
    detail::check_same_device("where", {cond, a, b});
    FORGE_CHECK(cond.dtype() == DType::u8, "[where] cond must be u8 (0/1), got ",
                dtype_name(cond.dtype()), " ", shape_str(cond.shape()));
    DType dt = promote_types(a.dtype(), b.dtype());
    DType cdt = compute_dtype(dt);
    FORGE_CHECK(cdt != DType::u8, "[where] a and b must not be u8");
    Shape shape = detail::broadcast_shapes(
        "where", detail::broadcast_shapes("where", cond.shape(), a.shape()), b.shape());
    Tensor out = detail::empty_on(a, shape, cdt);
    backend_of(out).where(cond.expand(shape), a.detach().to(cdt).expand(shape),
                          b.detach().to(cdt).expand(shape), out);
    Tensor result = out.to(dt);
    autograd::record("where", result, {cond, a, b},
                     [c = cond.detach(), sa = a.shape(), sb = b.shape()](const Tensor& g) {
                         Tensor zero = Tensor::scalar(0.0, g.dtype(), g.device());
                         return std::vector<Tensor>{Tensor(), sum_to(where(c, g, zero), sa),
                                                    sum_to(where(c, zero, g), sb)};
                     });
    return result;
}

Tensor masked_fill(const Tensor& x, const Tensor& mask, double value) {
    detail::check_float("masked_fill", x);
    detail::check_defined("masked_fill", mask, "mask");
    FORGE_CHECK(mask.dtype() == DType::u8, "[masked_fill] mask must be u8, got ",
                dtype_name(mask.dtype()), " ", shape_str(mask.shape()));
    Shape s = detail::broadcast_shapes("masked_fill", x.shape(), mask.shape());
    FORGE_CHECK(s == x.shape(), "[masked_fill] mask ", shape_str(mask.shape()),
                " does not broadcast to x ", shape_str(x.shape()));
    return where(mask, Tensor::scalar(value, x.dtype(), x.device()), x);
}

} // namespace forge
