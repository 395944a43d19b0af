// Scalar definitions of the element-wise ops: the single source of their math, used by the
// reference kernels directly and by the fast kernels inside vectorisable loops.
#pragma once

#include <cmath>

#include "backends/backend.h"

namespace forge::cpu {

// GELU, tanh form (GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
// GELU, erf form: 0.5 x (1 + erf(x / sqrt(2)))   [Hendrycks & Gimpel 2016]
template <UnaryOp op, typename T> inline T unary_fn(T x, T alpha) {
    constexpr T k0 = T(0.7978845608028654); // sqrt(2/pi)
    constexpr T k1 = T(0.044715);
    constexpr T inv_sqrt2 = T(0.7071067811865476);
    constexpr T inv_sqrt2pi = T(0.3989422804014327);
    if constexpr (op == UnaryOp::neg) return -x;
    else if constexpr (op == UnaryOp::exp) return std::exp(x);
    else if constexpr (op == UnaryOp::log) return std::log(x);
    else if constexpr (op == UnaryOp::sqrt) return std::sqrt(x);
    else if constexpr (op == UnaryOp::rsqrt) return T(1) / std::sqrt(x);
    else if constexpr (op == UnaryOp::tanh) return std::tanh(x);
    else if constexpr (op == UnaryOp::sigmoid) return T(1) / (T(1) + std::exp(-x));
    else if constexpr (op == UnaryOp::relu) return x > T(0) ? x : T(0);
    else if constexpr (op == UnaryOp::abs) return std::abs(x);
    else if constexpr (op == UnaryOp::gelu_tanh)
        return T(0.5) * x * (T(1) + std::tanh(k0 * (x + k1 * x * x * x)));
    else if constexpr (op == UnaryOp::gelu_erf)
        return T(0.5) * x * (T(1) + std::erf(x * inv_sqrt2));
    else if constexpr (op == UnaryOp::silu) return x / (T(1) + std::exp(-x));
    else if constexpr (op == UnaryOp::gelu_tanh_grad) {
        T u = k0 * (x + k1 * x * x * x);
        T t = std::tanh(u);
        T du = k0 * (T(1) + T(3) * k1 * x * x);
        return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du;
    } else if constexpr (op == UnaryOp::gelu_erf_grad)
        return T(0.5) * (T(1) + std::erf(x * inv_sqrt2)) + x * inv_sqrt2pi * std::exp(-T(0.5) * x * x);
    else if constexpr (op == UnaryOp::silu_grad) {
        T s = T(1) / (T(1) + std::exp(-x));
        return s * (T(1) + x * (T(1) - s));
    } else if constexpr (op == UnaryOp::add_scalar) return x + alpha;
    else if constexpr (op == UnaryOp::mul_scalar) return x * alpha;
    else if constexpr (op == UnaryOp::pow_scalar) return std::pow(x, alpha);
    else if constexpr (op == UnaryOp::rsub_scalar) return alpha - x;
    else return x;
}

template <BinaryOp op, typename T> inline auto binary_fn(T a, T b) {
    if constexpr (op == BinaryOp::add) return T(a + b);
    else if constexpr (op == BinaryOp::sub) return T(a - b);
    else if constexpr (op == BinaryOp::mul) return T(a * b);
    else if constexpr (op == BinaryOp::div) return T(a / b);
    else if constexpr (op == BinaryOp::maximum) return a > b ? a : b;
    else if constexpr (op == BinaryOp::eq) return uint8_t(a == b);
    else if constexpr (op == BinaryOp::gt) return uint8_t(a > b);
    else return uint8_t(a < b);
}

/// Calls f.template operator()<op>() for the runtime op.
template <typename F> void visit_unary(UnaryOp op, F&& f) {
    switch (op) {
#define FORGE_CASE(name)                                                                           \
    case UnaryOp::name: f.template operator()<UnaryOp::name>(); break;
        FORGE_CASE(neg) FORGE_CASE(exp) FORGE_CASE(log) FORGE_CASE(sqrt) FORGE_CASE(rsqrt)
        FORGE_CASE(tanh) FORGE_CASE(sigmoid) FORGE_CASE(relu) FORGE_CASE(abs)
        FORGE_CASE(gelu_tanh) FORGE_CASE(gelu_erf) FORGE_CASE(silu) FORGE_CASE(gelu_tanh_grad)
        FORGE_CASE(gelu_erf_grad) FORGE_CASE(silu_grad) FORGE_CASE(add_scalar)
        FORGE_CASE(mul_scalar) FORGE_CASE(pow_scalar) FORGE_CASE(rsub_scalar)
#undef FORGE_CASE
    }
}

template <typename F> void visit_binary(BinaryOp op, F&& f) {
    switch (op) {
    case BinaryOp::add: f.template operator()<BinaryOp::add>(); break;
    case BinaryOp::sub: f.template operator()<BinaryOp::sub>(); break;
    case BinaryOp::mul: f.template operator()<BinaryOp::mul>(); break;
    case BinaryOp::div: f.template operator()<BinaryOp::div>(); break;
    case BinaryOp::maximum: f.template operator()<BinaryOp::maximum>(); break;
    case BinaryOp::eq: f.template operator()<BinaryOp::eq>(); break;
    case BinaryOp::gt: f.template operator()<BinaryOp::gt>(); break;
    case BinaryOp::lt: f.template operator()<BinaryOp::lt>(); break;
    }
}

/// Calls f.template operator()<T>() for the numeric compute types of binary ops.
template <typename F> void visit_numeric(DType t, F&& f) {
    switch (t) {
    case DType::f32: f.template operator()<float>(); break;
    case DType::f64: f.template operator()<double>(); break;
    case DType::i32: f.template operator()<int32_t>(); break;
    case DType::i64: f.template operator()<int64_t>(); break;
    default: FORGE_ASSERT(false);
    }
}

} // namespace forge::cpu
