// Tensors: construction, views sharing storage, copies, dtype conversion, element access, errors.
#include <cmath>

#include "op_test_util.h"

namespace forge {
namespace {

using test::expect_error;

TEST(Tensor, ConstructionAndAccess) {
    Tensor t = Tensor::from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3});
    EXPECT_EQ(t.dim(), 2);
    EXPECT_EQ(t.numel(), 6);
    EXPECT_EQ(t.size(-1), 3);
    EXPECT_TRUE(t.is_contiguous());
    EXPECT_EQ(t.at({1, 2}), 6.0);
    EXPECT_EQ(t.at({-1, 0}), 4.0);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data_ptr()) % 64, 0u);
    EXPECT_EQ(Tensor::zeros({3}).at({1}), 0.0);
    EXPECT_EQ(Tensor::full({2, 2}, 7.5, DType::f64).at({1, 1}), 7.5);
    EXPECT_EQ(Tensor::arange(5).at({4}), 4.0);
    EXPECT_EQ(Tensor::scalar(3.0).item(), 3.0);
}

TEST(Tensor, ViewsShareStorage) {
    Tensor t = Tensor::arange(24, DType::f32).reshape({2, 3, 4});
    Tensor tr = t.transpose(0, 2); // (4, 3, 2)
    EXPECT_TRUE(tr.shares_storage(t));
    EXPECT_FALSE(tr.is_contiguous());
    EXPECT_EQ(tr.at({3, 1, 1}), t.at({1, 1, 3}));
    Tensor p = t.permute({1, 2, 0});
    EXPECT_EQ(p.at({2, 3, 1}), t.at({1, 2, 3}));
    Tensor n = t.narrow(2, 1, 2);
    EXPECT_TRUE(n.shares_storage(t));
    EXPECT_EQ(n.at({1, 2, 1}), t.at({1, 2, 2}));
    Tensor s = t.select(1, 2);
    EXPECT_EQ(s.shape(), (Shape{2, 4}));
    EXPECT_EQ(s.at({1, 3}), t.at({1, 2, 3}));
    Tensor u = t.unsqueeze(0).unsqueeze(-1);
    EXPECT_EQ(u.shape(), (Shape{1, 2, 3, 4, 1}));
    EXPECT_EQ(u.squeeze(0).squeeze(-1).shape(), t.shape());
    Tensor e = Tensor::arange(3, DType::f32).reshape({3, 1}).expand({3, 4});
    EXPECT_EQ(e.strides()[1], 0);
    EXPECT_EQ(e.at({2, 3}), 2.0);
    // A write through a view is visible in the base.
    n.fill_(-1);
    EXPECT_EQ(t.at({0, 0, 1}), -1.0);
    EXPECT_EQ(t.at({0, 0, 0}), 0.0);
    // reshape of a contiguous tensor is a view; of a transposed one, a copy.
    EXPECT_TRUE(t.reshape({6, 4}).shares_storage(t));
    Tensor c = tr.reshape({24});
    EXPECT_FALSE(c.shares_storage(t));
    EXPECT_EQ(c.at({1}), t.at({1, 0, 0}));
    EXPECT_EQ(t.view({-1, 4}).shape(), (Shape{6, 4}));
}

TEST(Tensor, ContiguousCopiesOnlyWhenNeeded) {
    Tensor t = Tensor::randn({4, 5}, 1);
    EXPECT_TRUE(t.contiguous().shares_storage(t));
    Tensor c = t.t().contiguous();
    EXPECT_FALSE(c.shares_storage(t));
    EXPECT_TRUE(c.is_contiguous());
    for (int i = 0; i < 5; ++i)
        for (int j = 0; j < 4; ++j)
            EXPECT_EQ(c.at({i, j}), t.at({j, i}));
}

TEST(Tensor, DtypeConversion) {
    Tensor t = Tensor::from_vector(std::vector<double>{1.5, -2.25, 65504.0, 1e-8, 3.0e38},
                                   {5}, DType::f64);
    Tensor h = t.to(DType::f16), b = t.to(DType::bf16), i = t.to(DType::i32);
    EXPECT_EQ(h.at({0}), 1.5);
    EXPECT_EQ(h.at({1}), -2.25);
    EXPECT_EQ(h.at({2}), 65504.0);
    EXPECT_NEAR(h.at({3}), 1e-8, 6e-8); // subnormal in f16
    EXPECT_TRUE(std::isinf(h.at({4})));
    EXPECT_EQ(b.at({0}), 1.5);
    EXPECT_NEAR(b.at({4}), 3.0e38, 3.0e38 * 4e-3);
    EXPECT_EQ(i.at({1}), -2.0);
    // Round to nearest even: 1 + 2^-11 is halfway between two f16 values, rounds down to 1.
    EXPECT_EQ(Tensor::scalar(1.0 + std::ldexp(1.0, -11), DType::f64).to(DType::f16).item(), 1.0);
    EXPECT_EQ(Tensor::scalar(1.0 + 3 * std::ldexp(1.0, -11), DType::f64).to(DType::f16).item(),
              1.0 + std::ldexp(1.0, -9));
    // Every f16 bit pattern survives f16 -> f32 -> f16.
    for (uint32_t bits = 0; bits < 65536; ++bits) {
        if ((bits & 0x7c00) == 0x7c00 && (bits & 0x3ff)) continue; // NaN payloads
        ASSERT_EQ(f32_to_f16(f16_to_f32(uint16_t(bits))), bits) << bits;
    }
}

TEST(Tensor, RandomIsSeededAndDistributed) {
    Tensor a = Tensor::randn({10000}, 42), b = Tensor::randn({10000}, 42);
    Tensor c = Tensor::randn({10000}, 43);
    EXPECT_EQ(a.to_vector<float>(), b.to_vector<float>());
    EXPECT_NE(a.to_vector<float>(), c.to_vector<float>());
    EXPECT_NEAR(mean(a).item(), 0.0, 0.05);
    EXPECT_NEAR(mean(mul(a, a)).item(), 1.0, 0.05);
    Tensor u = Tensor::rand({10000}, 7, DType::f64, 2.0, 4.0);
    EXPECT_NEAR(mean(u).item(), 3.0, 0.03);
    EXPECT_GE(max(neg(u)).item(), -4.0);
}

TEST(Tensor, PrintingNamesShapeAndValues) {
    Tensor t = Tensor::from_vector(std::vector<float>{1, 2, 3, 4}, {2, 2});
    std::string s = t.to_string();
    EXPECT_NE(s.find("shape=[2,2]"), std::string::npos);
    EXPECT_NE(s.find("3, 4"), std::string::npos);
}

TEST(Tensor, BadInputThrowsNamedErrors) {
    Tensor t = Tensor::zeros({2, 3});
    expect_error([&] { t.view({4, 2}); }, "[view] cannot view [2,3]");
    expect_error([&] { t.t().view({6}); }, "use reshape()");
    expect_error([&] { t.narrow(1, 2, 2); }, "[narrow] range [2, 4) out of bounds");
    expect_error([&] { t.permute({0, 0}); }, "[permute] dim 0 repeated");
    expect_error([&] { t.expand({3, 3}); }, "[expand] cannot expand [2,3] to [3,3]");
    expect_error([&] { t.at({2, 0}); }, "[at] index 2 out of range");
    expect_error([&] { t.transpose(0, 5); }, "[transpose] dim 5 out of range");
    expect_error([&] { Tensor::from_vector(std::vector<float>{1, 2}, {3}); }, "do not fill");
    expect_error([&] { Tensor().shape(); }, "undefined");
    expect_error([&] { t.item(); }, "has 6 elements, not 1");
    expect_error([&] { t.to(Device::cuda()); }, "no backend for cuda:0");
    expect_error([&] { Tensor::zeros({2}, DType::i64).set_requires_grad(); }, "only float");
}

// `--device cuda` on a machine that cannot run it: the error says why (no CUDA build, or no GPU).
TEST(Device, CheckDeviceSaysWhyCudaIsUnusable) {
    cuda::check_device(Device::cpu()); // always fine
    if (cuda::is_available()) GTEST_SKIP() << "a GPU is visible";
    expect_error([] { cuda::check_device(Device::cuda()); },
                 cuda::is_built() ? "no CUDA GPU is visible" : "has no CUDA support");
    expect_error([] { cuda::PrecisionScope p("fp8"); }, "unknown precision 'fp8'");
}

} // namespace
} // namespace forge
