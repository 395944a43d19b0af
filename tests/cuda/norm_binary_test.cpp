// LayerNorm's warp-per-row kernels (src/backends/cuda/norms.cu), with a residual gradient
// folded into dx, and binary ops on operands of mixed storage types (elementwise.cu), against
// the CPU reference kernels. LayerNorm: forward and every gradient within 1e-5 (f32) on shapes
// that take the warp kernels (C % 4 == 0, C <= 1024, tails of a lane's last float4 group, more
// rows than the backward's 264 x 8 warps) and shapes that do not; under autocast the output is
// the half type, the f32 result rounded. Binary ops: f32 / bf16 / f16 operands as stored, equal
// to the CPU on widened operands (the same f32 math, one rounding of the result), contiguous
// (4 at a time), odd sizes, strided and broadcast views.
#include <string>

#include "cuda/cuda_test_util.h"

namespace forge::test {
namespace {

struct NormCase {
    int64_t R, C;
};

TEST(CudaLayerNorm, WarpRowKernelsMatchCpu) {
    const NormCase cases[] = {{1, 768},  {37, 768}, {5000, 768}, {9, 1000},
                              {3, 100},  {5, 102},  {4, 2048},   {6, 4}};
    for (const NormCase& c : cases) {
        for (const bool with_bias : {true, false}) {
            const std::string what = "R " + std::to_string(c.R) + " C " + std::to_string(c.C) +
                                     (with_bias ? " bias" : "");
            expect_cuda_matches_cpu(
                what,
                [&](Device d) {
                    Tensor x = leaf_on({c.R, c.C}, 1, d, DType::f32, 2.0);
                    Tensor w = leaf_on({c.C}, 2, d);
                    Tensor b = with_bias ? leaf_on({c.C}, 3, d) : Tensor();
                    Tensor g = randn_on({c.R, c.C}, 4, d);
                    // A mean of 3 keeps the variance's two passes honest (no E[x^2] - E[x]^2).
                    Tensor xs = add_scalar(x, 3.0);
                    Tensor y = layer_norm(xs, w, b);
                    sum(mul(y, g)).backward();
                    return std::vector<Tensor>{y, x.grad(), w.grad(),
                                               with_bias ? b.grad() : Tensor()};
                },
                // The CPU oracle adds dw and db over the rows in order in f32: at 5000 rows
                // its own error passes 1e-5.
                c.R > 1000 ? 1e-4 : 1e-5);
        }
    }
}

// A pre-norm residual stream: the backward folds the stream's pending gradient into the norm's
// dx in the same kernel (layer_norm_backward_add).
TEST(CudaLayerNorm, ResidualGradientFoldedIntoDx) {
    expect_cuda_matches_cpu(
        "residual layer_norm",
        [](Device d) {
            Tensor x = leaf_on({300, 768}, 41, d), r = leaf_on({300, 768}, 42, d);
            Tensor w = leaf_on({768}, 43, d), b = leaf_on({768}, 44, d);
            Tensor g = randn_on({300, 768}, 45, d);
            Tensor s = add(x, r);
            Tensor out = add(s, mul(layer_norm(s, w, b), r));
            sum(mul(out, g)).backward();
            return std::vector<Tensor>{out, x.grad(), r.grad(), w.grad(), b.grad()};
        },
        1e-5);
}

TEST(CudaLayerNorm, AutocastWritesHalfOutput) {
    for (const char* precision : {"bf16", "f16"}) {
        const DType hd = std::string(precision) == "bf16" ? DType::bf16 : DType::f16;
        Tensor x = leaf_on({300, 768}, 5, kCuda), w = leaf_on({768}, 6, kCuda);
        Tensor b = leaf_on({768}, 7, kCuda), g = randn_on({300, 768}, 8, kCuda);
        Tensor y;
        {
            const cuda::PrecisionScope p(precision);
            y = layer_norm(x, w, b);
            sum(mul(y, g)).backward();
        }
        EXPECT_EQ(dtype_name(y.dtype()), dtype_name(hd)) << precision;
        cpu::ReferenceKernelsScope scope(true);
        auto cpu = [](const Tensor& t) { return t.detach().to(Device::cpu()); };
        Tensor xc = cpu(x), wc = cpu(w), bc = cpu(b);
        xc.set_requires_grad(true), wc.set_requires_grad(true), bc.set_requires_grad(true);
        Tensor ref = layer_norm(xc, wc, bc);
        sum(mul(ref, cpu(g))).backward();
        // One rounding of the f32 result: within half an ulp of the half type, plus f32 noise.
        EXPECT_LE(max_rel_diff(y, ref), hd == DType::bf16 ? 4e-3 : 5e-4) << precision;
        EXPECT_GT(max_rel_diff(y, ref), 0.0) << precision << ": the output was not rounded";
        // The backward reads x, not y: the gradients are f32's.
        EXPECT_LE(max_rel_diff(x.grad(), xc.grad()), 1e-5) << precision;
        EXPECT_LE(norm_rel_diff(w.grad(), wc.grad()), 1e-5) << precision;
        EXPECT_LE(norm_rel_diff(b.grad(), bc.grad()), 1e-5) << precision;
    }
}

// A pre-norm block under autocast: the linear after the norm returns the norm's gradient in the
// half type, which the folding backward (layer_norm_backward_add) reads as it is. Oracle: the
// CPU in f64 with that gradient rounded to the half type by hand.
TEST(CudaLayerNorm, HalfGradientFromAutocastLinear) {
    for (const char* precision : {"bf16", "f16"}) {
        const DType hd = std::string(precision) == "bf16" ? DType::bf16 : DType::f16;
        Tensor x = leaf_on({300, 768}, 51, kCuda), w = leaf_on({768}, 52, kCuda);
        Tensor b = leaf_on({768}, 53, kCuda), wl = leaf_on({768, 64}, 54, kCuda, DType::f32, 0.05);
        Tensor bl = leaf_on({64}, 55, kCuda);
        const Tensor g = randn_on({300, 64}, 56, Device::cpu()).to(hd);
        const Tensor gs = randn_on({300, 768}, 57, Device::cpu());
        {
            const cuda::PrecisionScope p(precision);
            Tensor y = linear(layer_norm(x, w, b), wl, bl);
            // x also reaches the loss directly (the residual stream): its gradient is pending
            // when the norm's backward runs, so the two are added in one kernel.
            Tensor loss = add(sum(mul(y, g.to(kCuda))), sum(mul(x, gs.to(kCuda))));
            loss.backward();
        }
        cpu::ReferenceKernelsScope scope(true);
        auto cpu64 = [](const Tensor& t) { return t.detach().to(Device::cpu()).to(DType::f64); };
        const Tensor wlr = cpu64(wl).to(hd).to(DType::f64);
        const Tensor dh = matmul(g.to(DType::f64), wlr.t()).to(DType::f32).to(hd);
        Tensor xc = cpu64(x), wc = cpu64(w), bc = cpu64(b);
        xc.set_requires_grad(true), wc.set_requires_grad(true), bc.set_requires_grad(true);
        layer_norm(xc, wc, bc).backward(dh.to(DType::f64));
        const Tensor want_dx = add(xc.grad(), gs.to(DType::f64));
        EXPECT_LE(norm_rel_diff(x.grad(), want_dx), 1e-5) << precision;
        // dw and db: f32 sums over 300 rows (1.03e-5 seen on an H200).
        EXPECT_LE(norm_rel_diff(w.grad(), wc.grad()), 3e-5) << precision;
        EXPECT_LE(norm_rel_diff(b.grad(), bc.grad()), 3e-5) << precision;
    }
}

TEST(CudaBinary, MixedStorageTypesMatchWidenedCpu) {
    const DType types[] = {DType::f32, DType::bf16, DType::f16};
    for (DType ta : types)
        for (DType tb : types)
            for (const int64_t n : {int64_t(4096), int64_t(1001)}) {
                const std::string what = std::string(dtype_name(ta)) + " op " +
                                         std::string(dtype_name(tb)) + " n " + std::to_string(n);
                expect_cuda_matches_cpu(
                    what,
                    [&](Device d) {
                        Tensor a = randn_on({n}, 11, d, ta, 3.0);
                        Tensor b = randn_on({n}, 12, d, tb, 2.0);
                        // Strided and broadcast: a (8, 8) transposed view, a row against rows.
                        Tensor m = randn_on({8, 8}, 13, d, ta).t();
                        Tensor r = randn_on({8}, 14, d, tb);
                        // A trailing block over leading dims (a position table per sequence):
                        // period 40 (four at a time) and 30 (not).
                        Tensor x = randn_on({3, 5, 8}, 15, d, ta), p = randn_on({5, 8}, 16, d, tb);
                        Tensor x6 = randn_on({3, 5, 6}, 17, d, ta);
                        Tensor p6 = randn_on({5, 6}, 18, d, tb);
                        // One value against all (a scalar tensor: four at a time where aligned).
                        Tensor one = randn_on({1}, 19, d, tb);
                        return std::vector<Tensor>{add(a, b),   sub(a, b),     mul(a, b),
                                                   div(a, b),   maximum(a, b), add(m, r),
                                                   mul(r, m),   add(x, p),     sub(x6, p6),
                                                   mul(a, one), div(x, one)};
                    },
                    0.0);
            }
}

// Contiguous casts among f32 / bf16 / f16 (four at a time when sizes and addresses allow).
TEST(CudaBinary, ContiguousCastsMatchCpu) {
    const DType types[] = {DType::f32, DType::bf16, DType::f16};
    for (DType from : types)
        for (DType to : types)
            for (const int64_t n : {int64_t(4096), int64_t(1001)})
                expect_cuda_matches_cpu(
                    std::string(dtype_name(from)) + " -> " + std::string(dtype_name(to)),
                    [&](Device d) {
                        Tensor a = randn_on({n}, 51, d, from, 100.0);
                        return std::vector<Tensor>{a.to(to), a.narrow(0, 1, n - 4).to(to)};
                    },
                    0.0);
}

TEST(CudaBinary, ResidualAddKeepsF32AndTakesBothGradients) {
    // The block's residual add under autocast: an f32 stream plus a bf16 layer output.
    Tensor x = leaf_on({64, 96}, 21, kCuda);
    Tensor h = leaf_on({64, 96}, 22, kCuda);
    Tensor hb = h.to(DType::bf16);
    Tensor s = add(x, hb);
    EXPECT_EQ(dtype_name(s.dtype()), "f32");
    Tensor g = randn_on({64, 96}, 23, kCuda);
    sum(mul(s, g)).backward();
    EXPECT_EQ(max_rel_diff(x.grad(), g), 0.0);
    EXPECT_EQ(max_rel_diff(h.grad(), g), 0.0);
    EXPECT_EQ(max_rel_diff(s, add(x.detach(), hb.detach().to(DType::f32))), 0.0);
}

} // namespace
} // namespace forge::test
