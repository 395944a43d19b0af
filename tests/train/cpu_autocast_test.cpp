// CPU bf16 autocast (--dtype bf16 on the CPU): matmuls under the scope equal a double-precision
// product of the bf16-rounded operands, few-row products and everything outside the scope stay
// exact f32, and a training run under bf16 tracks the f32 run's losses.
#include <cmath>

#include <gtest/gtest.h>

#include <forge/core/device.h>
#include <forge/core/dtype.h>
#include <forge/core/ops.h>
#include <forge/models/transformer.h>
#include <forge/train/trainer.h>

#include "train_util.h"

using namespace forge;

namespace {

#define SKIP_WITHOUT_BF16()                                                                        \
    if (cpu_bf16_matmul_path().empty())                                                            \
    GTEST_SKIP() << "this CPU has neither AVX512_BF16 nor AMX-BF16"

float round_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }

// (M x K) @ (K x N) in double over the given element transform.
std::vector<double> reference(const std::vector<float>& a, const std::vector<float>& b, int64_t M,
                              int64_t K, int64_t N, float (*f)(float)) {
    std::vector<double> c(size_t(M * N), 0.0);
    for (int64_t m = 0; m < M; ++m)
        for (int64_t k = 0; k < K; ++k)
            for (int64_t n = 0; n < N; ++n)
                c[size_t(m * N + n)] += double(f(a[size_t(m * K + k)])) * f(b[size_t(k * N + n)]);
    return c;
}

float identity(float x) { return x; }

} // namespace

TEST(CpuAutocast, MatmulRoundsOperandsToBf16AndSumsInF32) {
    SKIP_WITHOUT_BF16();
    const int64_t M = 77, K = 45, N = 130; // tails in every dim, odd K
    Tensor a = Tensor::randn({M, K}, 1), b = Tensor::randn({K, N}, 2);
    const auto av = a.to_vector<float>(), bv = b.to_vector<float>();
    const auto want = reference(av, bv, M, K, N, round_bf16);
    const auto exact = reference(av, bv, M, K, N, identity);
    std::vector<float> got;
    {
        const DevicePrecisionScope bf16("bf16", Device::cpu());
        EXPECT_TRUE(cpu_autocast_bf16());
        got = matmul(a, b).to_vector<float>();
        // A transposed weight view (x @ W^T, the Llama layout) takes the same path.
        const auto got_t = matmul(a, b.t().contiguous().t()).to_vector<float>();
        EXPECT_EQ(got, got_t);
    }
    EXPECT_FALSE(cpu_autocast_bf16()) << "the scope restores f32";
    double worst_bf16 = 0, worst_exact = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        worst_bf16 = std::max(worst_bf16, std::abs(got[i] - want[i]));
        worst_exact = std::max(worst_exact, std::abs(got[i] - exact[i]));
    }
    EXPECT_LT(worst_bf16, 1e-4) << "f32 sums of the bf16-rounded products";
    EXPECT_GT(worst_exact, 1e-3) << "the operands were not rounded to bf16";
    EXPECT_LT(worst_exact, 0.2);
}

TEST(CpuAutocast, FewRowProductsAndOtherScopesStayF32) {
    SKIP_WITHOUT_BF16();
    Tensor a = Tensor::randn({16, 64}, 3), b = Tensor::randn({64, 40}, 4);
    const auto f32 = matmul(a, b).to_vector<float>();
    const DevicePrecisionScope bf16("bf16", Device::cpu());
    EXPECT_EQ(matmul(a, b).to_vector<float>(), f32) << "decode-sized products stay f32";
    {
        const DevicePrecisionScope inner("f32", Device::cpu());
        Tensor big = Tensor::randn({64, 64}, 5);
        const auto want = reference(big.to_vector<float>(), b.to_vector<float>(), 64, 64, 40,
                                    identity);
        const auto got = matmul(big, b).to_vector<float>();
        for (size_t i = 0; i < got.size(); ++i)
            ASSERT_NEAR(got[i], want[i], 1e-4) << "an f32 scope inside a bf16 one is exact";
    }
    EXPECT_TRUE(cpu_autocast_bf16());
}

TEST(CpuAutocast, Bf16TrainingTracksF32) {
    SKIP_WITHOUT_BF16();
    auto dir = test::scratch("cpu_autocast");
    test::write_file(dir / "a.txt", test::shakespeare(40000));
    auto tok = make_training_tokenizer("char", {dir / "a.txt"}, dir / "cache");
    auto cache = tokenize_cached({dir / "a.txt"}, tok.tokenizer, tok.hash, dir / "cache");
    const ModelConfig cfg = test::tiny_config(int64_t(tok.tokenizer.vocab_size()));
    std::vector<double> losses[2];
    for (int i = 0; i < 2; ++i) {
        TrainOptions o;
        o.steps = 30;
        o.batch = 8;
        o.seq_len = 16;
        o.lr = 3e-3;
        o.warmup = 2;
        o.eval_every = 0;
        o.eval_iters = 2;
        o.progress = false;
        o.dtype = i == 0 ? "f32" : "bf16";
        Transformer m(cfg, 7);
        Trainer t(m, o);
        t.set_data(cache.tokens);
        t.on_step = [&](const StepStats& s) { losses[i].push_back(s.loss); };
        t.fit();
        EXPECT_FALSE(cpu_autocast_bf16()) << "the trainer's scope ends with each step";
    }
    ASSERT_EQ(losses[0].size(), losses[1].size());
    bool differs = false;
    for (size_t s = 0; s < losses[0].size(); ++s) {
        EXPECT_NEAR(losses[1][s], losses[0][s], 0.05) << "step " << s + 1;
        differs = differs || losses[1][s] != losses[0][s];
    }
    EXPECT_TRUE(differs) << "bf16 autocast changed nothing: was it applied?";
    EXPECT_LT(losses[1].back(), losses[1].front() - 0.5) << "bf16 training did not learn";
}

TEST(CpuAutocast, Tf32IsRefusedOnTheCpu) {
    const ModelConfig cfg = test::tiny_config(32);
    Transformer m(cfg, 1);
    TrainOptions o;
    o.dtype = "tf32";
    try {
        Trainer t(m, o);
        FAIL() << "tf32 on the CPU was accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("tf32 runs on CUDA only"), std::string::npos)
            << e.what();
    }
}
