// Whole models on CUDA against the same models on the CPU: tiny-shaped GPT-2 and Llama (GQA)
// logits, loss and every parameter gradient, and a few AdamW training steps (the fused CUDA
// optimizer against the CPU one).
#include "cuda/cuda_test_util.h"
#include <forge/models/transformer.h>
#include <forge/train/optimizer.h>

namespace forge::test {
namespace {

ModelConfig tiny(ModelFamily family) {
    ModelConfig c = ModelConfig::preset("tiny");
    c.vocab_size = 512;
    c.n_ctx = 64;
    if (family == ModelFamily::llama) {
        c.family = ModelFamily::llama;
        c.n_head = 4;
        c.n_head_kv = 2; // grouped-query attention
        c.n_ff = 344;
        c.tie_embeddings = false;
        c.norm_eps = 1e-6f;
    }
    c.validate();
    return c;
}

struct Batch {
    Tensor ids, targets;
};
Batch batch(int64_t B, int64_t T, int64_t vocab, uint64_t seed) {
    Tensor r = Tensor::rand({B, T + 1}, seed, DType::f64, 0.0, double(vocab));
    Tensor ids = r.to(DType::i64);
    return {ids.narrow(1, 0, T).contiguous(), ids.narrow(1, 1, T).contiguous()};
}

class CudaModel : public ::testing::TestWithParam<ModelFamily> {};

TEST_P(CudaModel, LogitsLossGradientsMatchCpu) {
    const ModelConfig cfg = tiny(GetParam());
    Transformer cpu_m(cfg, 7), gpu_m(cfg, 7); // same seed, same weights
    move_module(gpu_m, kCuda);
    const Batch bt = batch(2, 48, cfg.vocab_size, 3);

    Tensor lc = cpu_m.forward(bt.ids), lg = gpu_m.forward(bt.ids.to(kCuda));
    EXPECT_EQ(lg.device(), kCuda);
    EXPECT_LE(norm_rel_diff(lg, lc), 1e-4);
    EXPECT_LE(max_rel_diff(lg, lc), 1e-4);

    Tensor loss_c = cpu_m.loss(bt.ids, bt.targets);
    Tensor loss_g = gpu_m.loss(bt.ids.to(kCuda), bt.targets.to(kCuda));
    EXPECT_NEAR(loss_g.item(), loss_c.item(), 1e-4 * std::abs(loss_c.item()));
    loss_c.backward();
    loss_g.backward();
    auto pc = cpu_m.named_parameters(), pg = gpu_m.named_parameters();
    ASSERT_EQ(pc.size(), pg.size());
    for (size_t i = 0; i < pc.size(); ++i) {
        ASSERT_TRUE(pg[i].second.grad().defined()) << pg[i].first;
        EXPECT_EQ(pg[i].second.grad().device(), kCuda) << pg[i].first;
        EXPECT_LE(norm_rel_diff(pg[i].second.grad(), pc[i].second.grad()), 1e-4) << pc[i].first;
    }
}

TEST_P(CudaModel, TrainingStepsMatchCpu) {
    const ModelConfig cfg = tiny(GetParam());
    Transformer cpu_m(cfg, 11), gpu_m(cfg, 11);
    move_module(gpu_m, kCuda);
    AdamW opt_c(collect_parameters(cpu_m), {.weight_decay = 0.1});
    AdamW opt_g(collect_parameters(gpu_m), {.weight_decay = 0.1});
    for (int step = 0; step < 4; ++step) {
        const Batch bt = batch(2, 32, cfg.vocab_size, uint64_t(100 + step));
        opt_c.zero_grad();
        opt_g.zero_grad();
        Tensor lc = cpu_m.loss(bt.ids, bt.targets);
        Tensor lg = gpu_m.loss(bt.ids.to(kCuda), bt.targets.to(kCuda));
        EXPECT_NEAR(lg.item(), lc.item(), 1e-4 * std::abs(lc.item())) << "step " << step;
        lc.backward();
        lg.backward();
        opt_c.step(3e-3);
        opt_g.step(3e-3);
    }
    auto pc = cpu_m.named_parameters(), pg = gpu_m.named_parameters();
    const int64_t C = cfg.n_embd;
    for (size_t i = 0; i < pc.size(); ++i) {
        Tensor a = pg[i].second, b = pc[i].second;
        if (pc[i].first.find("c_attn.bias") != std::string::npos) {
            // The key bias adds q.b_k to every score of a query row, which softmax ignores: its
            // gradient is rounding noise on either device, and AdamW scales noise up to full
            // lr-sized steps of random sign. Compare the query and value biases only.
            EXPECT_LE(norm_rel_diff(a.narrow(0, 0, C), b.narrow(0, 0, C)), 1e-4) << pc[i].first;
            EXPECT_LE(norm_rel_diff(a.narrow(0, 2 * C, C), b.narrow(0, 2 * C, C)), 1e-4)
                << pc[i].first;
            continue;
        }
        EXPECT_LE(norm_rel_diff(a, b), 1e-4) << pc[i].first;
    }
}

INSTANTIATE_TEST_SUITE_P(Families, CudaModel,
                         ::testing::Values(ModelFamily::gpt2, ModelFamily::llama),
                         [](const auto& info) {
                             return std::string(info.param == ModelFamily::gpt2 ? "gpt2"
                                                                                : "llama");
                         });

} // namespace
} // namespace forge::test
