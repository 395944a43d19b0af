// Vectorised f32 activations (exp, tanh, sigmoid, GELU-tanh, SiLU and their derivatives),
// written once against a SIMD struct (simd/vmath_*.h) plus a few extras (E: div, abs,
// copysign, select). Included only by activations_avx2.cpp / activations_avx512.cpp.
#pragma once

#include <cstdint>

#include "backends/backend.h"

namespace forge::cpu::act {

// tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|); below |x| < 1/16 the odd Taylor
// series to x^7 (error < 1e-12) avoids the cancellation in 1 - e.
template <typename E> typename E::V tanh_v(typename E::V x) {
    using V = typename E::V;
    V ax = E::abs(x);
    V e = E::exp(E::mul(ax, E::set1(-2.0f)));
    V big = E::div(E::sub(E::set1(1.0f), e), E::add(E::set1(1.0f), e));
    V x2 = E::mul(ax, ax);
    V p = E::fmadd(x2, E::set1(-17.0f / 315.0f), E::set1(2.0f / 15.0f));
    p = E::fmadd(x2, p, E::set1(-1.0f / 3.0f));
    V small = E::fmadd(E::mul(x2, ax), p, ax);
    return E::copysign(E::select_lt(ax, 0.0625f, small, big), x);
}

template <typename E> typename E::V sigmoid_v(typename E::V x) {
    return E::div(E::set1(1.0f), E::add(E::set1(1.0f), E::exp(E::sub(E::zero(), x))));
}

template <UnaryOp op, typename E> typename E::V apply(typename E::V x) {
    using V = typename E::V;
    const V k0 = E::set1(0.7978845608028654f), k1 = E::set1(0.044715f);
    const V one = E::set1(1.0f);
    if constexpr (op == UnaryOp::exp) return E::exp(x);
    else if constexpr (op == UnaryOp::tanh) return tanh_v<E>(x);
    else if constexpr (op == UnaryOp::sigmoid) return sigmoid_v<E>(x);
    else if constexpr (op == UnaryOp::silu) return E::mul(x, sigmoid_v<E>(x));
    else if constexpr (op == UnaryOp::silu_grad) { // s (1 + x (1 - s))
        V s = sigmoid_v<E>(x);
        return E::mul(s, E::fmadd(x, E::sub(one, s), one));
    } else if constexpr (op == UnaryOp::gelu_tanh) {
        // 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = k0 (x + k1 x^3): one exp and one divide,
        // and no cancellation near 0 (1 + tanh(u) never subtracts).
        V u2 = E::mul(E::set1(2.0f * 0.7978845608028654f), E::fmadd(E::mul(k1, E::mul(x, x)), x, x));
        return E::div(x, E::add(one, E::exp(E::sub(E::zero(), u2))));
    } else { // gelu_tanh_grad: 0.5 (1 + t) + 0.5 x (1 - t^2) u', with s = sigmoid(2u):
        // 0.5 (1 + t) = s and 1 - t^2 = 4 s (1 - s), so s + 2 x s (1 - s) u'.
        static_assert(op == UnaryOp::gelu_tanh_grad);
        V x2 = E::mul(x, x);
        V u2 = E::mul(E::set1(2.0f * 0.7978845608028654f), E::fmadd(E::mul(k1, x2), x, x));
        V s = E::div(one, E::add(one, E::exp(E::sub(E::zero(), u2))));
        V du = E::mul(k0, E::fmadd(E::set1(3.0f * 0.044715f), x2, one));
        V xs = E::mul(E::add(x, x), s); // 2 x s
        return E::fmadd(E::mul(xs, E::sub(one, s)), du, s);
    }
}

/// y[i] = op(x[i]) for i in [0, n). Returns false if op has no vector form here.
template <typename E> bool run(UnaryOp op, const float* x, float* y, int64_t n) {
    auto loop = [&]<UnaryOp O>() {
        int64_t i = 0;
        for (; i + E::W <= n; i += E::W)
            E::store(y + i, apply<O, E>(E::load(x + i)));
        if (i < n) {
            auto m = E::mask(n - i);
            E::store(y + i, apply<O, E>(E::load(x + i, m, E::zero())), m);
        }
    };
    switch (op) {
    case UnaryOp::exp: loop.template operator()<UnaryOp::exp>(); return true;
    case UnaryOp::tanh: loop.template operator()<UnaryOp::tanh>(); return true;
    case UnaryOp::sigmoid: loop.template operator()<UnaryOp::sigmoid>(); return true;
    case UnaryOp::silu: loop.template operator()<UnaryOp::silu>(); return true;
    case UnaryOp::silu_grad: loop.template operator()<UnaryOp::silu_grad>(); return true;
    case UnaryOp::gelu_tanh: loop.template operator()<UnaryOp::gelu_tanh>(); return true;
    case UnaryOp::gelu_tanh_grad: loop.template operator()<UnaryOp::gelu_tanh_grad>(); return true;
    default: return false;
    }
}

/// Rows of a linear layer's epilogue: y[r, :] = act(x[r, :] + b), act GELU-tanh or identity.
template <typename E>
void bias_act_rows(const float* x, const float* b, float* y, int64_t rows, int64_t cols,
                   bool gelu) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * cols;
        float* yr = y + r * cols;
        for (int64_t c = 0; c < cols; c += E::W) {
            const bool tail = c + E::W > cols;
            const auto m = E::mask(tail ? cols - c : E::W);
            auto z = tail ? E::add(E::load(xr + c, m, E::zero()), E::load(b + c, m, E::zero()))
                          : E::add(E::load(xr + c), E::load(b + c));
            if (gelu) z = apply<UnaryOp::gelu_tanh, E>(z);
            tail ? E::store(yr + c, z, m) : E::store(yr + c, z);
        }
    }
}

/// Its backward over rows: dx[r, :] = dy[r, :] * act'(x[r, :] + b) and db += the column sums
/// of dx (db holds `cols` partial sums, added to in row order).
template <typename E>
void bias_act_backward_rows(const float* dy, const float* x, const float* b, float* dx,
                            float* db, int64_t rows, int64_t cols, bool gelu) {
    for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < cols; c += E::W) {
            const bool tail = c + E::W > cols;
            const auto m = E::mask(tail ? cols - c : E::W);
            const int64_t o = r * cols + c;
            auto g = tail ? E::load(dy + o, m, E::zero()) : E::load(dy + o);
            if (gelu) {
                const auto z = tail ? E::add(E::load(x + o, m, E::zero()), E::load(b + c, m, E::zero()))
                                    : E::add(E::load(x + o), E::load(b + c));
                g = E::mul(g, apply<UnaryOp::gelu_tanh_grad, E>(z));
            }
            if (tail) {
                E::store(dx + o, g, m);
                E::store(db + c, E::add(E::load(db + c, m, E::zero()), g), m);
            } else {
                E::store(dx + o, g);
                E::store(db + c, E::add(E::load(db + c), g));
            }
        }
    }
}

} // namespace forge::cpu::act
