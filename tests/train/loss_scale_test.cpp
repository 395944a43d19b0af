// Loss scaling in the Trainer (torch.amp.GradScaler semantics), checked on the CPU in f32: a
// power-of-two scale changes nothing without overflow, an overflow skips exactly its step and
// backs the scale off, the scale grows after good steps, and resume carries the scaler state.
// The f16 compute it exists for is CUDA-only (tests/cuda/trainer_test.cpp).
#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include <forge/autograd/autograd.h>
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

// backward() accumulates into existing gradients: an inf planted in one gradient before a step
// makes that step's gradients overflow while its loss stays finite.
void plant_inf_gradient(Trainer& t) {
    const ParamRef& victim = t.optimizer().params()[3];
    victim.tensor.set_grad(
        Tensor::full(victim.tensor.shape(), std::numeric_limits<double>::infinity()));
}

} // namespace

TEST(LossScale, ResolvesAutoAgainstDtype) {
    auto fx = make_data("ls_auto", 4000);
    const ModelConfig cfg = test::tiny_config(int64_t(fx.tok.tokenizer.vocab_size()));
    Transformer m(cfg, 1);
    TrainOptions o = small_options();
    EXPECT_FALSE(Trainer(m, o).loss_scaling()); // auto, f32: off
    o.loss_scale = "dynamic";
    Trainer d(m, o);
    EXPECT_TRUE(d.loss_scaling());
    EXPECT_EQ(d.loss_scale(), 65536.0);
    o.loss_scale = "1024";
    EXPECT_EQ(Trainer(m, o).loss_scale(), 1024.0);
    for (const char* bad : {"abc", "0", "-4", "inf", "12x"}) {
        o.loss_scale = bad;
        EXPECT_THROW(Trainer(m, o), InvalidArgument) << bad;
    }
    o.loss_scale = "dynamic";
    o.loss_scale_backoff = 1;
    EXPECT_THROW(Trainer(m, o), InvalidArgument);
    // No f16 compute on the CPU: a clear error, as for tf32.
    o = small_options();
    o.dtype = "f16";
    try {
        Trainer t(m, o);
        FAIL() << "no error";
    } catch (const InvalidArgument& e) {
        EXPECT_NE(std::string(e.what()).find("CUDA only"), std::string::npos) << e.what();
    }
}

// Multiplying the loss by 2^k and the gradients by 2^-k only moves exponents: without overflow
// (or underflow into denormals) every loss, gradient norm and weight is bit-identical to the
// unscaled run, through grad accumulation and across scale growth.
TEST(LossScale, PowerOfTwoScaleIsBitIdenticalAndGrows) {
    auto fx = make_data("ls_exact");
    const ModelConfig cfg = test::tiny_config(int64_t(fx.tok.tokenizer.vocab_size()));
    TrainOptions off = small_options();
    off.grad_accum = 3; // 1/3 is not a power of two: the scale must multiply separately
    TrainOptions on = off;
    on.loss_scale = "dynamic";
    on.loss_scale_growth_interval = 3;
    std::vector<StepStats> s_off, s_on;
    Transformer a(cfg, 7), b(cfg, 7);
    Trainer ta(a, off), tb(b, on);
    ta.set_data(fx.tokens);
    tb.set_data(fx.tokens);
    for (int i = 0; i < 8; ++i) {
        s_off.push_back(ta.train_step());
        s_on.push_back(tb.train_step());
    }
    for (size_t i = 0; i < s_off.size(); ++i) {
        EXPECT_EQ(s_off[i].loss, s_on[i].loss) << "step " << i + 1;
        EXPECT_EQ(s_off[i].grad_norm, s_on[i].grad_norm) << "step " << i + 1;
        EXPECT_FALSE(s_on[i].skipped);
        EXPECT_EQ(s_off[i].loss_scale, 1.0);
    }
    EXPECT_EQ(flat_weights(a), flat_weights(b));
    // Growth every 3 good steps: 2^16 for steps 1-3, 2^17 for 4-6, 2^18 for 7-8.
    EXPECT_EQ(s_on[0].loss_scale, 65536.0);
    EXPECT_EQ(s_on[2].loss_scale, 65536.0);
    EXPECT_EQ(s_on[3].loss_scale, 131072.0);
    EXPECT_EQ(s_on[6].loss_scale, 262144.0);
    EXPECT_EQ(tb.loss_scale(), 262144.0);
    EXPECT_EQ(tb.skipped_steps(), 0);
}

// An overflow at step 3 skips exactly that update (weights and optimizer state untouched, the
// step and the LR schedule still advance), halves the scale, restarts the growth count, and
// training goes on.
TEST(LossScale, OverflowSkipsExactlyThatStep) {
    auto fx = make_data("ls_overflow");
    const ModelConfig cfg = test::tiny_config(int64_t(fx.tok.tokenizer.vocab_size()));
    TrainOptions o = small_options();
    o.loss_scale = "dynamic";
    o.loss_scale_growth_interval = 3;
    Transformer m(cfg, 2);
    Trainer t(m, o);
    t.set_data(fx.tokens);
    t.train_step();
    t.train_step();
    const auto before = flat_weights(m);
    const auto adam_t = t.optimizer().steps_taken();
    plant_inf_gradient(t); // the guard would throw here without loss scaling
    const StepStats s3 = t.train_step();
    EXPECT_TRUE(s3.skipped);
    EXPECT_EQ(s3.step, 3);
    EXPECT_EQ(s3.loss_scale, 65536.0);
    EXPECT_TRUE(std::isfinite(s3.loss));
    EXPECT_EQ(s3.lr, t.schedule().at(2)); // the schedule's step 3 is used up
    EXPECT_EQ(flat_weights(m), before);
    EXPECT_EQ(t.optimizer().steps_taken(), adam_t);
    EXPECT_EQ(t.loss_scale(), 32768.0);
    EXPECT_EQ(t.skipped_steps(), 1);
    EXPECT_EQ(t.step(), 3);
    for (auto& p : t.optimizer().params()) // the overflowed gradients are gone
        EXPECT_FALSE(p.tensor.grad().defined() &&
                     !std::isfinite(p.tensor.grad().to_vector<float>()[0]))
            << p.name;
    // Steps 4-6 are good: the third of them grows the scale back.
    for (int i = 0; i < 3; ++i) {
        const StepStats s = t.train_step();
        EXPECT_FALSE(s.skipped);
        EXPECT_EQ(s.loss_scale, 32768.0);
    }
    EXPECT_EQ(t.loss_scale(), 65536.0);
    EXPECT_NE(flat_weights(m), before);
    EXPECT_EQ(t.optimizer().steps_taken(), adam_t + 3);
}

// A scale too big for f32 (2^140 is inf as a float) overflows every gradient; dynamic scaling
// halves its way down to a scale that fits and training proceeds.
TEST(LossScale, BacksOffFromAHugeScale) {
    auto fx = make_data("ls_huge");
    const ModelConfig cfg = test::tiny_config(int64_t(fx.tok.tokenizer.vocab_size()));
    TrainOptions o = small_options();
    o.steps = 200;
    o.loss_scale = "dynamic";
    o.loss_scale_init = std::ldexp(1.0, 140);
    Transformer m(cfg, 4);
    Trainer t(m, o);
    t.set_data(fx.tokens);
    const auto init = flat_weights(m);
    int64_t skipped = 0;
    StepStats s;
    while ((s = t.train_step()).skipped) {
        ++skipped;
        EXPECT_EQ(t.loss_scale(), std::ldexp(1.0, 140 - int(skipped)));
        EXPECT_EQ(flat_weights(m), init);
        ASSERT_LT(skipped, 100);
    }
    EXPECT_GE(skipped, 13); // at least down to 2^127
    EXPECT_EQ(t.skipped_steps(), skipped);
    EXPECT_EQ(t.optimizer().steps_taken(), 1);
    EXPECT_TRUE(std::isfinite(s.grad_norm));
    EXPECT_NE(flat_weights(m), init);
}

// The guard still stops a run whose loss itself is non-finite: that is divergence, not an
// overflow of the scaled backward.
TEST(LossScale, NonFiniteLossStillStopsTheRun) {
    auto fx = make_data("ls_nan");
    const ModelConfig cfg = test::tiny_config(int64_t(fx.tok.tokenizer.vocab_size()));
    Transformer m(cfg, 1);
    TrainOptions o = small_options();
    o.loss_scale = "dynamic";
    Trainer t(m, o);
    t.set_data(fx.tokens);
    t.train_step();
    test::expect_nan_weight_stops_step_2(t, m);
}

// Straight 10 steps vs 5, save, resume into a fresh model, 5 more, with the scaler on, an
// overflow at step 2 and growth every 2 steps: the scale, the good-step count and the skipped
// count are part of the state, so losses, scales and weights are bit-identical.
TEST(LossScale, ResumeWithScalerIsBitIdentical) {
    auto fx = make_data("ls_resume");
    ModelConfig cfg = test::tiny_config(int64_t(fx.tok.tokenizer.vocab_size()));
    cfg.dropout = 0.1f;
    TrainOptions o = small_options();
    o.steps = 10;
    o.loss_scale = "dynamic";
    o.loss_scale_growth_interval = 2; // steps 3-4 grow; step 5 leaves one good step pending
    std::vector<StepStats> straight, resumed;
    auto run_steps = [&](Trainer& t, int n, std::vector<StepStats>& out) {
        for (int i = 0; i < n; ++i) {
            if (t.step() == 1)
                plant_inf_gradient(t);
            out.push_back(t.train_step());
        }
    };

    Transformer a(cfg, 11);
    Trainer ta(a, o);
    ta.set_data(fx.tokens);
    run_steps(ta, 10, straight);

    const fs::path ckpt = fx.dir / "ckpt";
    {
        Transformer b(cfg, 11);
        Trainer t(b, o);
        t.set_data(fx.tokens);
        t.set_tokenizer(fx.tok, {{"a.txt"}, "char"});
        run_steps(t, 5, resumed);
        t.save(ckpt);
    }
    CheckpointInfo info = read_checkpoint_info(ckpt);
    EXPECT_EQ(info.options.loss_scale, "dynamic");
    EXPECT_EQ(info.options.loss_scale_growth_interval, 2);
    Transformer c(info.config, 999);
    Trainer t(c, info.options);
    t.set_data(TokenFile::open(fx.tokens.path()));
    t.resume(ckpt);
    EXPECT_EQ(t.step(), 5);
    EXPECT_EQ(t.skipped_steps(), 1);
    EXPECT_EQ(t.loss_scale(), 65536.0); // 2^15 after the overflow, doubled after steps 3-4
    t.on_step = [&](const StepStats& s) { resumed.push_back(s); };
    t.fit();

    ASSERT_EQ(straight.size(), 10u);
    ASSERT_EQ(resumed.size(), 10u);
    EXPECT_TRUE(straight[1].skipped);
    for (size_t i = 0; i < 10; ++i) {
        EXPECT_EQ(straight[i].loss, resumed[i].loss) << "loss of step " << i + 1;
        EXPECT_EQ(straight[i].loss_scale, resumed[i].loss_scale) << "scale of step " << i + 1;
        EXPECT_EQ(straight[i].skipped, resumed[i].skipped) << "step " << i + 1;
    }
    EXPECT_EQ(ta.loss_scale(), t.loss_scale());
    EXPECT_EQ(flat_weights(a), flat_weights(c));
}
