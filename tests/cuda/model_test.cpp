// Whole models on CUDA against the same models on the CPU: tiny-shaped GPT-2 and Llama (GQA)
// logits, loss and every parameter gradient, and a few AdamW training steps (the fused CUDA
// optimizer against the CPU one).
#include "cuda/cuda_test_util.h"
#include <forge/models/transformer.h>
#include <forge/train/optimizer.h>

#include <map>

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

TEST_P(CudaModel, ModuleToKeepsHandlesTiesAndValues) {
    const ModelConfig cfg = tiny(GetParam());
    Transformer m(cfg, 5), ref(cfg, 5);
    const auto before = m.named_parameters();
    std::map<std::string, TensorImpl*> impls;
    for (auto& [n, t] : before)
        impls[n] = t.impl().get();
    m.to(kCuda);
    EXPECT_EQ(m.device(), kCuda);
    const auto after = m.named_parameters();
    ASSERT_EQ(after.size(), before.size());
    for (size_t i = 0; i < after.size(); ++i) {
        const auto& [n, t] = after[i];
        EXPECT_EQ(t.impl().get(), impls[n]) << n; // same handle
        EXPECT_EQ(before[i].second.device(), kCuda) << n; // old handles see the move
        EXPECT_TRUE(t.requires_grad()) << n;
    }
    for (auto& [n, t] : m.named_buffers())
        EXPECT_EQ(t.device(), kCuda) << n;
    // Tied weights (GPT-2's wte / lm_head) still share one storage.
    std::map<TensorImpl*, const Storage*> storage_of;
    for (auto& [n, t] : after) {
        auto [it, fresh] = storage_of.emplace(t.impl().get(), t.storage().get());
        if (!fresh) {
            EXPECT_EQ(it->second, t.storage().get()) << n;
        }
    }
    m.to(Device::cpu());
    EXPECT_EQ(m.device(), Device::cpu());
    const auto back = m.state_dict(), orig = ref.state_dict();
    for (auto& [n, t] : orig)
        EXPECT_EQ(max_rel_diff(back.at(n), t), 0.0) << n; // bit-exact round trip
    // load_state_dict copies a CPU state dict into a CUDA model.
    Transformer g(cfg, 99);
    g.to(kCuda);
    g.load_state_dict(orig);
    for (auto& [n, t] : g.state_dict()) {
        EXPECT_EQ(t.device(), kCuda) << n;
        EXPECT_EQ(max_rel_diff(t, orig.at(n)), 0.0) << n;
    }
}

TEST_P(CudaModel, LogitsLossGradientsMatchCpu) {
    const ModelConfig cfg = tiny(GetParam());
    Transformer cpu_m(cfg, 7), gpu_m(cfg, 7); // same seed, same weights
    gpu_m.to(kCuda);
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
    gpu_m.to(kCuda);
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
