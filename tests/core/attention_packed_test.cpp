// attention_packed (self-attention over a fused (B, T, 3C) projection) against its definition:
// split into q, k, v, heads out, attention_reference, heads merged; values and the gradient of
// qkv, causal and not, in f32 and f64, and its error message.
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/op_test_util.h"

namespace forge::test {
namespace {

Tensor packed_by_definition(const Tensor& qkv, int64_t H, bool causal) {
    const int64_t B = qkv.size(0), T = qkv.size(1), C = qkv.size(2) / 3, D = C / H;
    auto p = split(qkv, {C, C, C}, 2);
    auto heads = [&](const Tensor& t) { return t.reshape({B, T, H, D}).permute({0, 2, 1, 3}); };
    return attention_reference(heads(p[0]), heads(p[1]), heads(p[2]), {.causal = causal})
        .permute({0, 2, 1, 3})
        .reshape({B, T, C});
}

// Output and d(qkv) for a fixed random upstream gradient.
std::pair<Tensor, Tensor> run(const Tensor& qkv_in, const std::function<Tensor(const Tensor&)>& f) {
    Tensor qkv = qkv_in.detach().clone();
    qkv.set_requires_grad(true);
    Tensor y = f(qkv);
    y.backward(Tensor::randn(y.shape(), 77, y.dtype()));
    return {y.detach(), qkv.grad()};
}

TEST(AttentionPacked, MatchesSplitHeadsAttention) {
    for (DType dt : {DType::f32, DType::f64})
        for (bool causal : {true, false})
            // T = 300 takes the flash kernels, which see the packed heads through copies;
            // the others the short kernels, which read and write them in place.
            for (auto [B, T, H, D] : {std::array<int64_t, 4>{2, 9, 3, 16}, {3, 64, 4, 32},
                                      {1, 70, 2, 8}, {1, 300, 2, 16}}) {
                SCOPED_TRACE(std::string(dtype_name(dt)) + " causal " + std::to_string(causal) +
                             " B " + std::to_string(B) + " T " + std::to_string(T) + " H " +
                             std::to_string(H) + " D " + std::to_string(D));
                const Tensor qkv = Tensor::randn({B, T, 3 * H * D}, 5, dt);
                auto [y, g] = run(qkv, [&](const Tensor& x) {
                    return attention_packed(x, H, {.causal = causal});
                });
                auto [y_ref, g_ref] =
                    run(qkv, [&](const Tensor& x) { return packed_by_definition(x, H, causal); });
                const double tol = dt == DType::f32 ? 1e-4 : 1e-10;
                EXPECT_LE(max_rel_diff(y, y_ref), tol) << "output";
                EXPECT_LE(max_rel_diff(g, g_ref), tol) << "gradient of qkv";
            }
}

TEST(AttentionPacked, RejectsWidthNotThreeHeads) {
    try {
        attention_packed(Tensor::randn({1, 4, 20}, 1), 3);
        FAIL() << "accepted a width that is not 3 * n_head * D";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("attention_packed"), std::string::npos) << e.what();
    }
}

} // namespace
} // namespace forge::test
