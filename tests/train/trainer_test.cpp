// The training loop: gradient accumulation equivalence, bit-identical resume, the NaN guard,
// determinism, and that a small model actually learns.
#include <cmath>
#include <limits>
#include <omp.h>

#include <gtest/gtest.h>

#include <forge/autograd/autograd.h>
#include <forge/core/ops.h>
#include <forge/models/transformer.h>
#include <forge/train/trainer.h>

#include "train_util.h"

using namespace forge;
namespace fs = std::filesystem;

namespace {

using test::Fixture;
using test::flat_weights;
using test::make_data;
using test::small_options;

} // namespace

// accum 2 x batch B takes the same rows as batch 2B and averages the two halves' mean losses,
// which is the mean over all rows: gradients, and so the weights, agree to rounding.
TEST(Trainer, GradAccumulationEqualsBiggerBatch) {
    auto fx = make_data("accum");
    const ModelConfig cfg = test::tiny_config(int64_t(fx.tok.tokenizer.vocab_size()));
    Transformer m1(cfg, 5), m2(cfg, 5);
    TrainOptions o1 = small_options(), o2 = small_options();
    o1.batch = 8;
    o1.grad_accum = 1;
    o2.batch = 4;
    o2.grad_accum = 2;
    o1.grad_clip = o2.grad_clip = 0; // clipping is per step anyway; keep the comparison direct
    Trainer t1(m1, o1), t2(m2, o2);
    t1.set_data(fx.tokens);
    t2.set_data(fx.tokens);
    // Compare one step: the gradients (taken before the update by comparing weights after it).
    auto s1 = t1.train_step();
    auto s2 = t2.train_step();
    EXPECT_NEAR(s1.loss, s2.loss, 1e-6);
    EXPECT_NEAR(s1.grad_norm, s2.grad_norm, 1e-6 * s1.grad_norm);
    auto w1 = flat_weights(m1), w2 = flat_weights(m2);
    ASSERT_EQ(w1.size(), w2.size());
    double max_diff = 0;
    for (size_t i = 0; i < w1.size(); ++i)
        max_diff = std::max(max_diff, double(std::fabs(w1[i] - w2[i])));
    // Adam's first update is lr * g / (|g| + eps): for entries with |g| near eps it magnifies
    // f32 summation-order noise (the matmuls are blocked differently for batch 8 and 4), so
    // weights agree to ~1e-6 of lr-sized steps, not bit for bit; the loss and the gradient
    // norm above (and GradAccumulationGradientsMatch) pin the accumulation itself.
    EXPECT_LE(max_diff, 1e-5);
}

TEST(Trainer, GradAccumulationGradientsMatch) {
    auto fx = make_data("accum_grad");
    const ModelConfig cfg = test::tiny_config(int64_t(fx.tok.tokenizer.vocab_size()));
    Transformer m1(cfg, 9), m2(cfg, 9);
    BatchSampler s1(fx.tokens, 0, 30000, 8, 16, BatchSampler::Mode::random, 3);
    BatchSampler s2(fx.tokens, 0, 30000, 4, 16, BatchSampler::Mode::random, 3);
    m1.requires_grad(true);
    m2.requires_grad(true);
    auto [x, y] = s1.next();
    m1.loss(x, y).backward();
    for (int k = 0; k < 2; ++k) {
        auto [xa, ya] = s2.next();
        mul_scalar(m2.loss(xa, ya), 0.5).backward();
    }
    auto p1 = m1.named_parameters(), p2 = m2.named_parameters();
    for (size_t i = 0; i < p1.size(); ++i) {
        auto g1 = p1[i].second.grad().to_vector<float>(),
             g2 = p2[i].second.grad().to_vector<float>();
        for (size_t k = 0; k < g1.size(); ++k)
            ASSERT_NEAR(g1[k], g2[k], 1e-6) << p1[i].first << "[" << k << "]";
    }
}

// N steps straight vs N/2, save, a fresh process-like restart (new model, trainer, data
// mapping), resume, N/2: every loss and every weight bit-identical.
// With dropout on, so the resumed run must also continue the dropout stream.
namespace {
void check_resume_is_bit_identical(const std::string& loss_scale) {
    auto fx = make_data("resume_" + loss_scale);
    ModelConfig cfg = test::tiny_config(int64_t(fx.tok.tokenizer.vocab_size()));
    cfg.dropout = 0.1f;
    TrainOptions o = small_options();
    o.steps = 10;
    o.eval_every = 5; // evals in between must not disturb the trajectory
    o.loss_scale = loss_scale;
    o.loss_scale_growth_interval = 3;
    std::vector<double> straight, resumed;

    Transformer a(cfg, 11);
    {
        Trainer t(a, o);
        t.set_data(fx.tokens);
        t.on_step = [&](const StepStats& s) { straight.push_back(s.loss); };
        t.fit();
    }

    const fs::path ckpt = fx.dir / "ckpt";
    {
        Transformer b(cfg, 11);
        TrainOptions half = o;
        Trainer t(b, half);
        t.set_data(fx.tokens);
        t.set_tokenizer(fx.tok, {{"a.txt"}, "char"});
        t.on_step = [&](const StepStats& s) { resumed.push_back(s.loss); };
        for (int i = 0; i < 5; ++i)
            t.train_step();
        t.evaluate();
        t.save(ckpt);
    }
    for (const char* f : {"model.safetensors", "config.json", "tokenizer.json",
                          "trainer_state.safetensors", "trainer_state.json"})
        EXPECT_TRUE(fs::exists(ckpt / f)) << f;

    CheckpointInfo info = read_checkpoint_info(ckpt);
    EXPECT_EQ(info.step, 5);
    EXPECT_EQ(info.config.n_layer, cfg.n_layer);
    Transformer c(info.config, 999); // different init: resume must overwrite everything
    Trainer t(c, info.options);
    t.set_data(TokenFile::open(fx.tokens.path()));
    t.resume(ckpt);
    EXPECT_EQ(t.step(), 5);
    t.on_step = [&](const StepStats& s) { resumed.push_back(s.loss); };
    t.fit();

    ASSERT_EQ(straight.size(), 10u);
    ASSERT_EQ(resumed.size(), 10u);
    for (size_t i = 0; i < 10; ++i)
        EXPECT_EQ(straight[i], resumed[i]) << "loss of step " << i + 1;
    EXPECT_EQ(flat_weights(a), flat_weights(c));
    EXPECT_EQ(t.loss_scale(), loss_scale == "none" ? 1.0 : 65536.0 * 8); // grew at 3, 6, 9
}
} // namespace

TEST(Trainer, ResumeIsBitIdentical) {
    // Also with dynamic loss scaling (growth every 3 steps, so the scale changes before the
    // save): its state is part of the checkpoint (more in loss_scale_test.cpp). One thread
    // runs the whole batch; three split it into slices (train/batch_split.h), whose dropout
    // streams the resumed run must continue too.
    const int threads = omp_get_max_threads();
    for (int n : {1, 3}) {
        omp_set_num_threads(n);
        for (const std::string loss_scale : {"none", "dynamic"}) {
            SCOPED_TRACE("loss_scale " + loss_scale + ", threads " + std::to_string(n));
            check_resume_is_bit_identical(loss_scale);
        }
    }
    omp_set_num_threads(threads);
}

TEST(Trainer, SameSeedSameLossesAndLearns) {
    auto fx = make_data("determinism");
    const ModelConfig cfg = test::tiny_config(int64_t(fx.tok.tokenizer.vocab_size()));
    TrainOptions o = small_options();
    o.steps = 40;
    std::vector<double> l1, l2;
    for (auto* out : {&l1, &l2}) {
        Transformer m(cfg, 3);
        Trainer t(m, o);
        t.set_data(fx.tokens);
        t.on_step = [&](const StepStats& s) { out->push_back(s.loss); };
        t.fit();
    }
    EXPECT_EQ(l1, l2);
    EXPECT_LT(l1.back(), l1.front() - 0.5) << "the loss did not go down";
}

TEST(Trainer, NanGuardNamesStepAndTensor) {
    auto fx = make_data("nan");
    const ModelConfig cfg = test::tiny_config(int64_t(fx.tok.tokenizer.vocab_size()));
    Transformer m(cfg, 1);
    Trainer t(m, small_options());
    t.set_data(fx.tokens);
    t.train_step();
    // Poison one weight: the loss itself becomes NaN.
    test::expect_nan_weight_stops_step_2(t, m);
}

TEST(Trainer, NanGuardNamesNonFiniteGradient) {
    auto fx = make_data("nan_grad");
    const ModelConfig cfg = test::tiny_config(int64_t(fx.tok.tokenizer.vocab_size()));
    Transformer m(cfg, 1);
    Trainer t(m, small_options());
    t.set_data(fx.tokens);
    t.train_step();
    // backward() accumulates into existing gradients: an inf planted in one parameter's
    // gradient leaves the loss finite and makes exactly that gradient non-finite.
    const auto& params = t.optimizer().params();
    const ParamRef& victim = params[3];
    victim.tensor.set_grad(
        Tensor::full(victim.tensor.shape(), std::numeric_limits<double>::infinity()));
    test::expect_step_fails_naming(t, {"step 2", "'" + victim.name + "'", "not finite"});
}

TEST(Trainer, RejectsDataTooSmallAndBadOptions) {
    auto fx = make_data("small", 30);
    const ModelConfig cfg = test::tiny_config(int64_t(fx.tok.tokenizer.vocab_size()));
    Transformer m(cfg, 1);
    Trainer t(m, small_options());
    EXPECT_THROW(t.set_data(fx.tokens), InvalidArgument);
    TrainOptions bad = small_options();
    bad.lr = -1;
    EXPECT_THROW(Trainer(m, bad), InvalidArgument);
}

TEST(Checkpoint, CorruptFilesGiveClearErrors) {
    auto dir = test::scratch("corrupt");
    EXPECT_THROW(read_checkpoint_info(dir / "missing"), NotFound);
    EXPECT_THROW(read_checkpoint_info(dir), NotFound); // no config.json
    test::write_file(dir / "config.json", "{not json");
    EXPECT_THROW(read_checkpoint_info(dir), InvalidArgument);
}
