// AdamW and SGD against a hand-computed f64 reference and against torch.optim (fixture from
// tools/golden/adamw_torch.py), the LR schedule, clipping and the weight-decay rule.
#include <cmath>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <forge/train/optimizer.h>
#include <forge/train/schedule.h>

using namespace forge;

namespace {

Tensor param(const std::vector<float>& v, const Shape& s) {
    Tensor t = Tensor::from_vector(v, s);
    t.set_requires_grad(true);
    return t;
}

nlohmann::json fixture() {
    std::ifstream in(FORGE_SOURCE_DIR "/tests/train/adamw_torch_fixture.json");
    EXPECT_TRUE(in) << "missing fixture: run /usr/bin/python3 tools/golden/adamw_torch.py";
    return nlohmann::json::parse(in);
}

} // namespace

// The AdamW formula written out in f64, independently of the fused f32 loop.
TEST(AdamW, MatchesHandComputedReference) {
    const double lr = 1e-2, b1 = 0.9, b2 = 0.99, eps = 1e-8, wd = 0.1;
    std::vector<float> w0 = {0.5f, -1.0f, 2.0f, 0.0f};
    Tensor w = param(w0, {2, 2});
    AdamW opt({{"w", w, true}}, {b1, b2, eps, wd});
    std::vector<double> ref(w0.begin(), w0.end()), m(4, 0), v(4, 0);
    for (int t = 1; t <= 5; ++t) {
        std::vector<float> g = {0.1f * t, -0.2f, 0.3f / t, 1e-6f};
        w.set_grad(Tensor::from_vector(g, {2, 2}));
        opt.step(lr);
        for (int i = 0; i < 4; ++i) {
            ref[i] *= 1 - lr * wd;
            m[i] = b1 * m[i] + (1 - b1) * g[i];
            v[i] = b2 * v[i] + (1 - b2) * double(g[i]) * g[i];
            const double mh = m[i] / (1 - std::pow(b1, t)), vh = v[i] / (1 - std::pow(b2, t));
            ref[i] -= lr * mh / (std::sqrt(vh) + eps);
        }
        auto got = w.to_vector<float>();
        for (int i = 0; i < 4; ++i)
            EXPECT_NEAR(got[i], ref[i], 1e-6 * std::max(1.0, std::fabs(ref[i])))
                << "step " << t << " element " << i;
    }
    EXPECT_EQ(opt.steps_taken(), 5);
}

TEST(AdamW, NoDecayWhereExcluded) {
    Tensor b = param({1.0f, 2.0f}, {2});
    AdamW opt({{"b", b, false}}, {0.9, 0.999, 1e-8, 0.5});
    b.set_grad(Tensor::zeros({2}));
    opt.step(0.1); // zero gradient, no decay: unchanged
    EXPECT_EQ(b.to_vector<float>(), (std::vector<float>{1.0f, 2.0f}));
}

TEST(AdamW, SkipsParametersWithoutGradient) {
    Tensor a = param({1.0f}, {1});
    AdamW opt({{"a", a, true}}, {0.9, 0.999, 1e-8, 0.1});
    opt.step(0.1);
    EXPECT_EQ(a.to_vector<float>()[0], 1.0f);
}

TEST(AdamW, MatchesTorch) {
    auto fx = fixture();
    const auto& a = fx["adamw"];
    auto shape = [&](const char* k) { return fx["shapes"][k].get<Shape>(); };
    Tensor w = param(fx["init"]["w"].get<std::vector<float>>(), shape("w"));
    Tensor b = param(fx["init"]["b"].get<std::vector<float>>(), shape("b"));
    AdamW opt({{"w", w, true}, {"b", b, false}},
              {a["beta1"].get<double>(), a["beta2"].get<double>(), a["eps"].get<double>(),
               a["weight_decay"].get<double>()});
    const auto lrs = fx["lrs"].get<std::vector<double>>();
    for (size_t s = 0; s < lrs.size(); ++s) {
        w.set_grad(Tensor::from_vector(fx["grads"][s]["w"].get<std::vector<float>>(), shape("w")));
        b.set_grad(Tensor::from_vector(fx["grads"][s]["b"].get<std::vector<float>>(), shape("b")));
        opt.step(lrs[s]);
        for (auto [name, t] : {std::pair{"w", w}, std::pair{"b", b}}) {
            auto want = a["params"][s][name].get<std::vector<float>>();
            auto got = t.to_vector<float>();
            ASSERT_EQ(got.size(), want.size());
            for (size_t i = 0; i < got.size(); ++i)
                EXPECT_NEAR(got[i], want[i], 1e-6 * std::max(1.0f, std::fabs(want[i])))
                    << name << "[" << i << "] after step " << s + 1;
        }
    }
}

TEST(SGD, MatchesTorch) {
    auto fx = fixture();
    const auto& c = fx["sgd"];
    auto shape = [&](const char* k) { return fx["shapes"][k].get<Shape>(); };
    Tensor w = param(fx["init"]["w"].get<std::vector<float>>(), shape("w"));
    Tensor b = param(fx["init"]["b"].get<std::vector<float>>(), shape("b"));
    SGD opt({{"w", w, true}, {"b", b, false}},
            {c["momentum"].get<double>(), 0.0, false, c["weight_decay"].get<double>()});
    const auto lrs = fx["lrs"].get<std::vector<double>>();
    for (size_t s = 0; s < lrs.size(); ++s) {
        w.set_grad(Tensor::from_vector(fx["grads"][s]["w"].get<std::vector<float>>(), shape("w")));
        b.set_grad(Tensor::from_vector(fx["grads"][s]["b"].get<std::vector<float>>(), shape("b")));
        opt.step(lrs[s]);
        for (auto [name, t] : {std::pair{"w", w}, std::pair{"b", b}}) {
            auto want = c["params"][s][name].get<std::vector<float>>();
            auto got = t.to_vector<float>();
            for (size_t i = 0; i < got.size(); ++i)
                EXPECT_NEAR(got[i], want[i], 1e-6 * std::max(1.0f, std::fabs(want[i])))
                    << name << "[" << i << "] after step " << s + 1;
        }
    }
}

TEST(AdamW, StateRoundTripsExactly) {
    Tensor w1 = param({0.1f, 0.2f, 0.3f}, {3}), w2 = param({0.1f, 0.2f, 0.3f}, {3});
    AdamW a({{"w", w1, true}}, {0.9, 0.95, 1e-8, 0.1}),
        b({{"w", w2, true}}, {0.9, 0.95, 1e-8, 0.1});
    for (int i = 0; i < 3; ++i) {
        w1.set_grad(Tensor::from_vector(std::vector<float>{0.5f, -0.1f, float(i)}, {3}));
        a.step(1e-2);
    }
    w2.copy_(w1.detach());
    b.load_state_tensors(a.state_tensors());
    EXPECT_EQ(b.steps_taken(), 3);
    for (auto* w : {&w1, &w2})
        w->set_grad(Tensor::from_vector(std::vector<float>{0.3f, 0.3f, -2.0f}, {3}));
    a.step(1e-2);
    b.step(1e-2);
    EXPECT_EQ(w1.to_vector<float>(), w2.to_vector<float>());
}

TEST(AdamW, LoadRejectsMissingState) {
    Tensor w = param({1.0f}, {1});
    AdamW opt({{"w", w, true}});
    try {
        opt.load_state_tensors({{"step", Tensor::from_vector(std::vector<int64_t>{1}, {1})}});
        FAIL() << "no throw";
    } catch (const InvalidArgument& e) {
        EXPECT_NE(std::string(e.what()).find("exp_avg.w"), std::string::npos) << e.what();
    }
}

TEST(Schedule, WarmupCosineValues) {
    LrSchedule s{LrSchedule::Kind::cosine, 1e-3, 1e-4, 100, 2000};
    EXPECT_DOUBLE_EQ(s.at(0), 1e-3 * 1 / 100);
    EXPECT_DOUBLE_EQ(s.at(49), 1e-3 * 50 / 100);
    EXPECT_DOUBLE_EQ(s.at(99), 1e-3);
    EXPECT_DOUBLE_EQ(s.at(100), 1e-3);                          // cos(0) = 1: the peak
    EXPECT_NEAR(s.at(1050), 1e-4 + 0.5 * (1e-3 - 1e-4), 1e-15); // halfway: mean of the ends
    EXPECT_NEAR(s.at(1999), 1e-4 + 0.5 * (1 + std::cos(M_PI * 1899.0 / 1900)) * 9e-4, 1e-15);
    EXPECT_DOUBLE_EQ(s.at(2000), 1e-4);
    EXPECT_DOUBLE_EQ(s.at(5000), 1e-4);
    for (int64_t i = 101; i < 2000; ++i)
        ASSERT_LE(s.at(i), s.at(i - 1)) << "not decreasing at " << i;
}

TEST(Schedule, LinearAndConstant) {
    LrSchedule lin{LrSchedule::Kind::linear, 1.0, 0.0, 0, 10};
    EXPECT_DOUBLE_EQ(lin.at(0), 1.0);
    EXPECT_DOUBLE_EQ(lin.at(5), 0.5);
    EXPECT_DOUBLE_EQ(lin.at(10), 0.0);
    LrSchedule c{LrSchedule::Kind::constant, 0.3, 0.0, 2, 10};
    EXPECT_DOUBLE_EQ(c.at(0), 0.15);
    EXPECT_DOUBLE_EQ(c.at(9), 0.3);
    EXPECT_THROW(LrSchedule::parse_kind("cosine2"), InvalidArgument);
}

TEST(Clip, ScalesToMaxNorm) {
    Tensor a = param({3.0f, 0.0f}, {2}), b = param({0.0f}, {1});
    a.set_grad(Tensor::from_vector(std::vector<float>{3.0f, 0.0f}, {2}));
    b.set_grad(Tensor::from_vector(std::vector<float>{4.0f}, {1}));
    std::vector<ParamRef> ps{{"a", a, true}, {"b", b, true}};
    EXPECT_DOUBLE_EQ(clip_grad_norm(ps, 1.0), 5.0);
    const double coef = 1.0 / (5.0 + 1e-6);
    EXPECT_FLOAT_EQ(a.grad().to_vector<float>()[0], float(3.0 * coef));
    EXPECT_FLOAT_EQ(b.grad().to_vector<float>()[0], float(4.0 * coef));
    EXPECT_NEAR(grad_norm(ps).norm, 1.0, 1e-6);
    // Below the limit nothing changes.
    EXPECT_NEAR(clip_grad_norm(ps, 10.0), 1.0, 1e-6);
    EXPECT_FLOAT_EQ(b.grad().to_vector<float>()[0], float(4.0 * coef));
}

TEST(Clip, NormIsDeterministicAndFindsNonFinite) {
    std::vector<float> big(100000);
    for (size_t i = 0; i < big.size(); ++i)
        big[i] = float(std::sin(double(i)));
    Tensor a = param(big, {int64_t(big.size())});
    a.set_grad(Tensor::from_vector(big, {int64_t(big.size())}));
    double ref = 0;
    for (float x : big)
        ref += double(x) * x;
    std::vector<ParamRef> ps{{"a", a, true}};
    EXPECT_NEAR(grad_norm(ps).norm, std::sqrt(ref), 1e-9 * std::sqrt(ref));
    Tensor b = param({1.0f, 2.0f}, {2});
    b.set_grad(Tensor::from_vector(std::vector<float>{1.0f, NAN}, {2}));
    ps.push_back({"layer.b", b, true});
    EXPECT_EQ(grad_norm(ps).nonfinite_index, 1);
}

TEST(WeightDecayRule, NormsBiasesEmbeddingsExcluded) {
    Tensor m = Tensor::zeros({4, 4}), v = Tensor::zeros({4});
    EXPECT_TRUE(default_weight_decay("transformer.h.0.attn.c_attn.weight", m));
    EXPECT_FALSE(default_weight_decay("transformer.h.0.attn.c_attn.bias", v));
    EXPECT_FALSE(default_weight_decay("transformer.h.0.ln_1.weight", v));
    EXPECT_FALSE(default_weight_decay("transformer.wte.weight", m));
    EXPECT_FALSE(default_weight_decay("transformer.wpe.weight", m));
    EXPECT_FALSE(default_weight_decay("model.embed_tokens.weight", m));
    EXPECT_TRUE(default_weight_decay("lm_head.weight", m));
    EXPECT_TRUE(default_weight_decay("transformer.wte.weight", m, /*decay_embeddings=*/true));
}
