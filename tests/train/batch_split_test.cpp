// The batch split (src/train/batch_split.h): slices of a batch on weight-sharing model copies,
// one per thread, against the same batch through the model itself. The oracle for the sums is
// the unsplit step, which the model tests check against PyTorch.
#include <cmath>
#include <string>
#include <omp.h>

#include <gtest/gtest.h>

#include <forge/core/ops.h>
#include <forge/train/optimizer.h>

#include "train/batch_split.h"
#include "train_util.h"

using namespace forge;

namespace {

// Runs f with `n` OpenMP threads, then restores the count.
template <typename F> void with_threads(int n, F f) {
    const int prev = omp_get_max_threads();
    omp_set_num_threads(n);
    f();
    omp_set_num_threads(prev);
}

void expect_grads_near(const Transformer& a, const Transformer& b, double tol) {
    auto pa = a.named_parameters(), pb = b.named_parameters();
    ASSERT_EQ(pa.size(), pb.size());
    for (size_t i = 0; i < pa.size(); ++i) {
        ASSERT_TRUE(pa[i].second.grad().defined()) << pa[i].first;
        ASSERT_TRUE(pb[i].second.grad().defined()) << pb[i].first;
        auto ga = pa[i].second.grad().to_vector<float>();
        auto gb = pb[i].second.grad().to_vector<float>();
        for (size_t k = 0; k < ga.size(); ++k)
            ASSERT_NEAR(ga[k], gb[k], tol) << pa[i].first << "[" << k << "]";
    }
}

// Two copies of one tiny model (the same seed), one to split and one to run whole, and a
// sampler of `rows`-row batches over a small corpus.
struct TwinModels {
    test::Fixture fx;
    ModelConfig cfg;
    Transformer split_model, whole;
    BatchSampler sampler;
    TwinModels(const std::string& name, uint64_t seed, int64_t rows, uint64_t sampler_seed)
        : fx(test::make_data(name)),
          cfg(test::tiny_config(int64_t(fx.tok.tokenizer.vocab_size()))),
          split_model(cfg, seed), whole(cfg, seed),
          sampler(fx.tokens, 0, 30000, rows, 16, BatchSampler::Mode::random, sampler_seed) {}
};

} // namespace

TEST(BatchSplit, SharedWeightsAreOneStorageWithTheirOwnGradients) {
    const ModelConfig cfg = test::tiny_config(40);
    Transformer m(cfg, 4);
    auto copy = m.share_weights();
    auto pm = m.named_parameters(), pc = copy->named_parameters();
    ASSERT_EQ(pm.size(), pc.size());
    for (size_t i = 0; i < pm.size(); ++i) {
        EXPECT_EQ(pm[i].first, pc[i].first);
        EXPECT_TRUE(pm[i].second.shares_storage(pc[i].second)) << pm[i].first;
        EXPECT_NE(pm[i].second.impl(), pc[i].second.impl()) << pm[i].first;
    }
    // An in-place update of the model shows in the copy's forward.
    Tensor ids = Tensor::from_vector(std::vector<int64_t>{1, 2, 3, 4}, {1, 4});
    {
        NoGradGuard ng;
        pm[0].second.data<float>()[2 * cfg.n_embd] += 1.0f; // wte row of token 2
    }
    auto a = m.forward(ids).to_vector<float>(), b = copy->forward(ids).to_vector<float>();
    EXPECT_EQ(a, b);
    // Backward through the copy leaves the model's gradients alone.
    Tensor y = Tensor::from_vector(std::vector<int64_t>{2, 3, 4, 5}, {1, 4});
    copy->loss(ids, y).backward();
    EXPECT_TRUE(pc[0].second.grad().defined());
    EXPECT_FALSE(pm[0].second.grad().defined());
}

// Uneven slices (8 rows into 3: 2, 3, 3) weighted by their rows give the batch's mean loss and
// its gradients.
TEST(BatchSplit, LossAndGradientsEqualTheUnsplitBatch) {
    TwinModels t("split_grads", 9, 8, 3);
    Transformer &split_model = t.split_model, &whole = t.whole;
    auto [x, y] = t.sampler.next();
    const double expected = whole.loss(x, y).item();
    auto params = collect_parameters(split_model);
    BatchSplit split(split_model, params, 3);
    ASSERT_EQ(split.slices(), 3);
    const double got = split.loss_backward(x, y, 1.0, 1.0);
    EXPECT_NEAR(got, expected, 1e-6);
    whole.loss(x, y).backward();
    split.reduce_grads();
    expect_grads_near(split_model, whole, 1e-6);

    // Two micro-batches of half weight under a loss scale, summed before one reduction, as
    // the trainer's --grad-accum 2 does; the scale (a power of two) comes off exactly.
    split_model.zero_grad();
    whole.zero_grad();
    auto [x2, y2] = t.sampler.next();
    auto [x3, y3] = t.sampler.next();
    split.loss_backward(x2, y2, 0.5, 1024.0);
    split.loss_backward(x3, y3, 0.5, 1024.0);
    split.reduce_grads();
    scale_grads(params, 1.0 / 1024.0);
    add(mul_scalar(whole.loss(x2, y2), 0.5), mul_scalar(whole.loss(x3, y3), 0.5)).backward();
    expect_grads_near(split_model, whole, 1e-6);

    // Without gradients (eval), in eval mode.
    NoGradGuard ng;
    split_model.eval();
    whole.eval();
    EXPECT_NEAR(split.loss(x2, y2), whole.loss(x2, y2).item(), 1e-6);
}

// Called where OpenMP gives the split fewer threads than slices (inside another parallel
// region), every slice still runs.
TEST(BatchSplit, NestedCallRunsEverySlice) {
    TwinModels t("split_nested", 2, 6, 5);
    Transformer &split_model = t.split_model, &whole = t.whole;
    auto [x, y] = t.sampler.next();
    BatchSplit split(split_model, collect_parameters(split_model), 3);
    double got = 0;
#pragma omp parallel num_threads(2)
    {
#pragma omp single
        got = split.loss_backward(x, y, 1.0, 1.0);
    }
    split.reduce_grads();
    EXPECT_NEAR(got, whole.loss(x, y).item(), 1e-6);
    whole.loss(x, y).backward();
    expect_grads_near(split_model, whole, 1e-6);
}

TEST(BatchSplit, SlicesOnlySmallCpuModelsWithRowsToSpare) {
    const ModelConfig cfg = test::tiny_config(40);
    Transformer m(cfg, 1);
    EXPECT_EQ(BatchSplit::slices_for(m, 12, 2), 2);
    EXPECT_EQ(BatchSplit::slices_for(m, 12, 16), 12); // a slice is at least one row
    EXPECT_EQ(BatchSplit::slices_for(m, 1, 8), 1);
    EXPECT_EQ(BatchSplit::slices_for(m, 12, 1), 1);
    ModelConfig wide = cfg;
    wide.n_embd = 256;
    wide.n_ff = 1024;
    wide.n_layer = 4;
    Transformer big(wide, 1); // ~3.2M parameters, 12.6 MB of f32 gradients per slice
    EXPECT_EQ(BatchSplit::slices_for(big, 64, 16), 16);
    EXPECT_EQ(BatchSplit::slices_for(big, 64, 32), 1); // 32 copies exceed kMaxGradBytes
}

// Through the trainer: the split step tracks the unsplit one (the sums differ only in order),
// and two split runs are bit-identical.
TEST(BatchSplit, TrainerStepsTrackTheUnsplitRun) {
    auto fx = test::make_data("split_trainer");
    const ModelConfig cfg = test::tiny_config(int64_t(fx.tok.tokenizer.vocab_size()));
    auto run = [&](int threads, const std::string& mode) {
        std::vector<double> losses;
        with_threads(threads, [&] {
            Transformer m(cfg, 21);
            TrainOptions o = test::small_options();
            o.steps = 6;
            o.batch_split = mode;
            Trainer t(m, o);
            t.set_data(fx.tokens);
            t.on_step = [&](const StepStats& s) {
                losses.push_back(s.loss);
                losses.push_back(s.grad_norm);
            };
            t.fit();
            losses.push_back(t.evaluate().val_loss);
        });
        return losses;
    };
    const auto unsplit = run(3, "off"), split = run(3, "auto"), again = run(3, "auto");
    EXPECT_EQ(split, again);
    ASSERT_EQ(split.size(), unsplit.size());
    for (size_t i = 0; i < split.size(); ++i)
        EXPECT_NEAR(split[i], unsplit[i], 1e-4 * std::fabs(unsplit[i])) << i;
    EXPECT_NE(split, unsplit) << "the split path did not run (3 threads, batch 4)";
}

TEST(BatchSplit, BadModeIsRejected) {
    TrainOptions o = test::small_options();
    o.batch_split = "on";
    EXPECT_THROW(o.validate(), InvalidArgument);
}
