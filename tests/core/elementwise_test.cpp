// Element-wise ops, reductions, concat/split, where/masked_fill: fast kernels against the
// reference kernels, gradients against finite differences, and the error paths.
#include <cmath>

#include "backends/cpu/simd/nn_kernels.h"
#include "core/op_helpers.h"
#include "op_test_util.h"

namespace forge {
namespace {

using test::expect_error;
using test::expect_fast_matches_ref;
using test::expect_gradcheck;
using test::rand_leaf;

using UnaryFn = Tensor (*)(const Tensor&);

struct UnaryCase {
    const char* name;
    std::function<Tensor(const Tensor&)> f;
    bool positive; // domain needs x > 0
};

std::vector<UnaryCase> unary_cases() {
    return {
        {"neg", [](const Tensor& x) { return neg(x); }, false},
        {"exp", [](const Tensor& x) { return exp(x); }, false},
        {"log", [](const Tensor& x) { return log(x); }, true},
        {"sqrt", [](const Tensor& x) { return sqrt(x); }, true},
        {"rsqrt", [](const Tensor& x) { return rsqrt(x); }, true},
        {"tanh", [](const Tensor& x) { return tanh(x); }, false},
        {"sigmoid", [](const Tensor& x) { return sigmoid(x); }, false},
        {"relu", [](const Tensor& x) { return relu(x); }, false},
        {"abs", [](const Tensor& x) { return abs(x); }, false},
        {"gelu_tanh", [](const Tensor& x) { return gelu(x, GeluApprox::tanh); }, false},
        {"gelu_erf", [](const Tensor& x) { return gelu(x, GeluApprox::erf); }, false},
        {"silu", [](const Tensor& x) { return silu(x); }, false},
        {"add_scalar", [](const Tensor& x) { return add_scalar(x, 1.5); }, false},
        {"mul_scalar", [](const Tensor& x) { return mul_scalar(x, -2.5); }, false},
        {"pow_scalar", [](const Tensor& x) { return pow_scalar(x, 1.7); }, true},
        {"rsub_scalar", [](const Tensor& x) { return rsub_scalar(x, 3.0); }, false},
    };
}

Tensor domain(const Tensor& x, bool positive) {
    return positive ? add_scalar(abs(x), 0.5) : x;
}

TEST(Unary, FastMatchesReference) {
    // Every instruction-set path of the fast kernels (AVX-512, AVX2, generic loops).
    for (auto cap : {cpu::nn::Isa::avx512, cpu::nn::Isa::avx2, cpu::nn::Isa::generic}) {
        cpu::nn::IsaCapScope scope(cap);
        for (const auto& c : unary_cases()) {
            for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16}) {
                Tensor x = domain(Tensor::randn({3, 257}, 1, DType::f32, 0, 2), c.positive).to(dt);
                expect_fast_matches_ref(
                    std::string(c.name) + "/" + std::string(dtype_name(dt)), [&] { return c.f(x); },
                    test::dtype_tolerance(dt));
                EXPECT_EQ(c.f(x).dtype(), dt);
            }
            // non-contiguous input
            Tensor xt = domain(Tensor::randn({40, 33}, 2), c.positive).t();
            expect_fast_matches_ref(
                std::string(c.name) + "/transposed", [&] { return c.f(xt); }, 1e-5);
            // tails of every length below one vector, and tiny inputs (tanh's series branch)
            for (int64_t n : {1, 7, 15, 17}) {
                Tensor small = mul_scalar(domain(Tensor::randn({n}, 8), c.positive), 0.01);
                expect_fast_matches_ref(
                    std::string(c.name) + "/tail", [&] { return c.f(small); }, 1e-6);
            }
        }
    }
}

TEST(Unary, ValuesMatchClosedForms) {
    Tensor x = Tensor::from_vector(std::vector<double>{-3, -0.5, 0, 0.7, 2}, {5}, DType::f64);
    auto g = gelu(x, GeluApprox::erf).to_vector<double>();
    auto gt_ = gelu(x, GeluApprox::tanh).to_vector<double>();
    auto s = silu(x).to_vector<double>();
    for (int i = 0; i < 5; ++i) {
        double v = x.at({i});
        EXPECT_NEAR(g[i], 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))), 1e-15);
        EXPECT_NEAR(gt_[i],
                    0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v))),
                    1e-15);
        EXPECT_NEAR(s[i], v / (1 + std::exp(-v)), 1e-15);
    }
}

TEST(Unary, Gradcheck) {
    for (const auto& c : unary_cases()) {
        if (std::string(c.name) == "relu" || std::string(c.name) == "abs") {
            // kinks at 0: keep inputs away from it
            Tensor x = rand_leaf({4, 5}, 3);
            Tensor xs =
                add(x.detach(),
                    mul_scalar(gt(x.detach(), Tensor::scalar(0.0, DType::f64)).to(DType::f64), 0.2))
                    .detach();
            xs.set_requires_grad();
            expect_gradcheck(c.name, [&](const auto& in) { return c.f(in[0]); }, {xs});
            continue;
        }
        Tensor x = domain(Tensor::randn({4, 5}, 3, DType::f64), c.positive).detach();
        x.set_requires_grad();
        expect_gradcheck(c.name, [&](const auto& in) { return c.f(in[0]); }, {x});
    }
}

TEST(Binary, FastMatchesReferenceWithBroadcasting) {
    std::vector<std::pair<Shape, Shape>> shapes = {
        {{4, 5}, {4, 5}},    {{4, 5}, {5}}, {{4, 1}, {1, 5}},  {{2, 3, 4}, {}},
        {{3, 1, 4}, {2, 4}}, {{7}, {1}},    {{1024, 64}, {64}}};
    using BinFn = Tensor (*)(const Tensor&, const Tensor&);
    std::vector<std::pair<const char*, BinFn>> ops = {
        {"add", add}, {"sub", sub}, {"mul", mul}, {"div", div}, {"maximum", maximum}};
    for (auto [sa, sb] : shapes)
        for (auto [name, f] : ops)
            for (DType dt : {DType::f32, DType::f64, DType::bf16}) {
                Tensor a = Tensor::randn(sa, 5, dt);
                Tensor b = add_scalar(abs(Tensor::randn(sb, 6, dt)), 0.5);
                expect_fast_matches_ref(
                    std::string(name) + shape_str(sa) + shape_str(sb), [&] { return f(a, b); },
                    test::dtype_tolerance(dt));
                EXPECT_EQ(f(a, b).shape(), detail::broadcast_shapes("t", sa, sb));
            }
    // integer and comparison ops
    Tensor i = Tensor::arange(6).reshape({2, 3});
    EXPECT_EQ(add(i, i).to_vector<int64_t>(), (std::vector<int64_t>{0, 2, 4, 6, 8, 10}));
    EXPECT_EQ(gt(i, Tensor::scalar(2, DType::i64)).to_vector<int64_t>(),
              (std::vector<int64_t>{0, 0, 0, 1, 1, 1}));
    EXPECT_EQ(eq(i, i.t().contiguous().reshape({2, 3})).dtype(), DType::u8);
}

TEST(Binary, Gradcheck) {
    Tensor a = rand_leaf({3, 4}, 1), b = rand_leaf({4}, 2), c = rand_leaf({3, 1}, 3);
    Tensor pos = add_scalar(abs(Tensor::randn({3, 4}, 4, DType::f64)), 0.5).detach();
    pos.set_requires_grad();
    expect_gradcheck("add", [](const auto& in) { return add(in[0], in[1]); }, {a, b});
    expect_gradcheck("sub", [](const auto& in) { return sub(in[0], in[1]); }, {c, b});
    expect_gradcheck("mul", [](const auto& in) { return mul(in[0], in[1]); }, {a, c});
    expect_gradcheck("div", [](const auto& in) { return div(in[0], in[1]); }, {b, pos});
    expect_gradcheck("maximum", [](const auto& in) { return maximum(in[0], in[1]); }, {a, b});
    // non-contiguous inputs: a transposed view and a narrowed view
    Tensor at = Tensor::randn({4, 3}, 7, DType::f64).t();
    at.set_requires_grad();
    Tensor nb = Tensor::randn({3, 8}, 8, DType::f64).narrow(1, 2, 4);
    nb.set_requires_grad();
    expect_gradcheck("mul/non-contiguous", [](const auto& in) { return mul(in[0], in[1]); },
                     {at, nb});
}

TEST(Reduce, FastMatchesReference) {
    Tensor x = Tensor::randn({3, 5, 7, 2}, 9);
    std::vector<std::vector<int64_t>> dimsets = {{}, {0}, {1}, {3}, {-1}, {1, 2}, {0, 2}, {0, 3}};
    for (const auto& dims : dimsets)
        for (bool keep : {false, true}) {
            expect_fast_matches_ref(
                "sum", [&] { return sum(x, dims, keep); }, 1e-6);
            expect_fast_matches_ref(
                "max", [&] { return max(x, dims, keep); }, 0);
            expect_fast_matches_ref(
                "mean", [&] { return mean(x, dims, keep); }, 1e-6);
        }
    EXPECT_EQ(sum(x, {1, 2}).shape(), (Shape{3, 2}));
    EXPECT_EQ(sum(x, {1, 2}, true).shape(), (Shape{3, 1, 1, 2}));
    Tensor v = Tensor::from_vector(std::vector<float>{1, 5, 2, -7, 3, 4}, {2, 3});
    EXPECT_EQ(sum(v).item(), 8.0);
    EXPECT_EQ(max(v, {1}).to_vector<float>(), (std::vector<float>{5, 4}));
    EXPECT_EQ(mean(v, {0}).to_vector<float>(), (std::vector<float>{-3, 4, 3}));
    EXPECT_EQ(sum(Tensor::arange(5)).dtype(), DType::i64);
    EXPECT_EQ(sum(Tensor::arange(5)).item(), 10.0);
}

TEST(Reduce, Gradcheck) {
    Tensor x = rand_leaf({3, 4, 5}, 11);
    expect_gradcheck("sum", [](const auto& in) { return sum(in[0], {1}); }, {x});
    expect_gradcheck("sum/all", [](const auto& in) { return sum(in[0]); }, {x});
    expect_gradcheck("mean", [](const auto& in) { return mean(in[0], {0, 2}, true); }, {x});
    expect_gradcheck("max", [](const auto& in) { return max(in[0], {2}); }, {x});
    Tensor xt = Tensor::randn({5, 3}, 12, DType::f64).t();
    xt.set_requires_grad();
    expect_gradcheck("sum/non-contiguous", [](const auto& in) { return sum(in[0], {0}); }, {xt});
}

TEST(Reduce, MaxTiesSplitGradient) {
    Tensor x = Tensor::from_vector(std::vector<double>{2, 2, 1}, {3}, DType::f64);
    x.set_requires_grad();
    max(x).backward();
    EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{0.5, 0.5, 0}));
}

TEST(Shape, ConcatSplitWhereMaskedFill) {
    Tensor a = rand_leaf({2, 3}, 1), b = rand_leaf({2, 5}, 2), c = rand_leaf({2, 1}, 3);
    Tensor cat = concat({a, b, c}, 1);
    EXPECT_EQ(cat.shape(), (Shape{2, 9}));
    EXPECT_EQ(cat.at({1, 3}), b.at({1, 0}));
    auto parts = split(cat, {3, 5, 1}, -1);
    EXPECT_TRUE(parts[1].shares_storage(cat));
    EXPECT_EQ(max(abs(sub(parts[1], b))).item(), 0.0);
    expect_gradcheck("concat",
                     [](const auto& in) {
                         return concat({in[0], in[1], in[2]}, 1);
                     },
                     {a, b, c});
    expect_gradcheck("split",
                     [](const auto& in) {
                         return mul(split(in[0], {1, 4}, 1)[1], in[0].narrow(1, 0, 4));
                     },
                     {b});

    Tensor mask = gt(Tensor::randn({2, 3}, 4), Tensor::scalar(0.0));
    Tensor filled = masked_fill(a, mask, -1e9);
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 3; ++j)
            EXPECT_EQ(filled.at({i, j}), mask.at({i, j}) ? -1e9 : a.at({i, j}));
    expect_gradcheck("masked_fill", [&](const auto& in) { return masked_fill(in[0], mask, 0.0); },
                     {a});
    Tensor y = rand_leaf({3}, 5);
    expect_gradcheck("where", [&](const auto& in) { return where(mask, in[0], in[1]); }, {a, y});
    expect_fast_matches_ref(
        "where", [&] { return where(mask, a, y); }, 0);
}

TEST(Autograd, AccumulatesAndReleasesGraph) {
    Tensor x = Tensor::from_vector(std::vector<double>{1, 2, 3}, {3}, DType::f64);
    x.set_requires_grad();
    Tensor y = sum(mul(x, x));
    y.backward({}, /*retain_graph=*/true);
    EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{2, 4, 6}));
    y.backward(); // accumulates
    EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{4, 8, 12}));
    expect_error([&] { y.backward(); }, "already freed");
    x.zero_grad();
    EXPECT_FALSE(x.grad().defined());

    // A value used twice gets the sum of both paths; views backpropagate.
    Tensor z = sum(add(x.reshape({3, 1}).expand({3, 2}).t().narrow(0, 1, 1), exp(x)));
    z.backward();
    auto g = x.grad().to_vector<double>();
    for (int i = 0; i < 3; ++i)
        EXPECT_NEAR(g[i], 1 + std::exp(x.at({i})), 1e-12);
}

TEST(Autograd, NoGradAndErrors) {
    Tensor x = rand_leaf({3}, 1);
    {
        NoGradGuard ng;
        Tensor y = exp(x);
        EXPECT_FALSE(y.requires_grad());
        expect_error([&] { sum(y).backward(); }, "does not require grad");
    }
    Tensor y = exp(x);
    EXPECT_TRUE(y.requires_grad());
    EXPECT_FALSE(y.is_leaf());
    expect_error([&] { y.backward(); }, "implicit gradient needs a scalar");
    y.backward(Tensor::ones({3}, DType::f64));
    EXPECT_NEAR(x.grad().at({0}), std::exp(x.at({0})), 1e-12);
    EXPECT_FALSE(y.detach().requires_grad());
    // Half-precision leaves get half-precision gradients.
    Tensor h = Tensor::randn({4}, 2, DType::bf16);
    h.set_requires_grad();
    sum(mul_scalar(h, 3.0)).backward();
    EXPECT_EQ(h.grad().dtype(), DType::bf16);
    EXPECT_EQ(h.grad().at({2}), 3.0);
}

TEST(Errors, NameTheOpAndShapes) {
    Tensor a = Tensor::zeros({2, 3}), b = Tensor::zeros({4});
    expect_error([&] { add(a, b); }, "[add] shapes [2,3] and [4] do not broadcast");
    expect_error([&] { exp(Tensor::arange(3)); }, "[exp] expects a float tensor, got i64 [3]");
    expect_error([&] { sum(a, {2}); }, "[sum] dim 2 out of range");
    expect_error([&] { sum(a, {1, -1}); }, "[sum] repeated dim");
    expect_error([&] { concat({a, b}, 0); }, "[concat] tensor 1 has shape [4]");
    expect_error([&] { split(a, {1, 1}, 1); }, "[split] sizes sum to 2 but dim 1");
    expect_error([&] { where(a, a, a); }, "[where] cond must be u8");
    expect_error([&] { masked_fill(a, Tensor::zeros({3, 3}, DType::u8), 0); }, "[masked_fill]");
    expect_error([&] { add(Tensor::zeros({2}, DType::u8), Tensor::zeros({2}, DType::u8)); },
                 "[add] u8 tensors support comparisons only");
}

} // namespace
} // namespace forge

namespace forge {
namespace {
// gradcheck must catch a wrong gradient: an op whose recorded backward is off by a factor.
TEST(Gradcheck, DetectsAWrongGradient) {
    Tensor x = test::rand_leaf({3, 2}, 21);
    auto wrong = [](const std::vector<Tensor>& in) {
        Tensor out = exp(in[0].detach());
        autograd::record("wrong_exp", out, {in[0]}, [y = out.detach()](const Tensor& g) {
            return std::vector<Tensor>{mul_scalar(mul(g, y), 1.001)};
        });
        return out;
    };
    GradcheckResult r = gradcheck(wrong, {x});
    EXPECT_FALSE(r.ok);
    EXPECT_GT(r.max_rel_error, 5e-4);
}
} // namespace
} // namespace forge
