// The Transformer against an independent PyTorch implementation (tools/golden/transformer.py):
// logits, loss and every parameter gradient on identical weights, for GPT-2, Llama (GQA) and
// Llama 3 scaled RoPE. Plus KV-cache decoding, activation checkpointing, presets and configs.
#include <cmath>

#include <gtest/gtest.h>

#include <forge/autograd/autograd.h>
#include <forge/core/ops.h>
#include <forge/formats/safetensors.h>
#include <forge/models/transformer.h>
#include <forge/train/optimizer.h>

namespace forge {
namespace {

// ||a - b|| / ||b||
double rel_err(const Tensor& a, const Tensor& b) {
    auto va = a.to_vector<double>(), vb = b.to_vector<double>();
    EXPECT_EQ(va.size(), vb.size());
    double d = 0, n = 0;
    for (size_t i = 0; i < va.size() && i < vb.size(); ++i) {
        d += (va[i] - vb[i]) * (va[i] - vb[i]);
        n += vb[i] * vb[i];
    }
    return std::sqrt(d) / std::max(std::sqrt(n), 1e-30);
}

struct Golden {
    ModelConfig cfg;
    std::map<std::string, Tensor> all, weights;
};

Golden load_golden(const std::string& name) {
    std::string path = std::string(FORGE_SOURCE_DIR) + "/tests/models/fixtures/" + name + ".safetensors";
    Golden g;
    g.all = formats::load_safetensors(path);
    g.cfg = ModelConfig::from_hf_json(formats::safetensors_metadata(path).at("config"));
    for (auto& [k, v] : g.all)
        if (k.rfind("weight.", 0) == 0) g.weights[k.substr(7)] = v;
    return g;
}

class GoldenTest : public ::testing::TestWithParam<const char*> {};

TEST_P(GoldenTest, LogitsLossAndGradientsMatchPyTorch) {
    Golden g = load_golden(GetParam());
    Transformer model(g.cfg, 7);
    model.load_state_dict(g.weights);
    Tensor ids = g.all.at("input.ids"), targets = g.all.at("input.targets");
    Tensor logits = model.forward(ids);
    EXPECT_LE(rel_err(logits, g.all.at("output.logits")), 1e-5);
    model.zero_grad();
    Tensor loss = model.loss(ids, targets);
    EXPECT_NEAR(loss.item(), g.all.at("output.loss").item(), 1e-5);
    loss.backward();
    for (auto& [name, p] : model.named_parameters()) {
        ASSERT_TRUE(p.grad().defined()) << name;
        EXPECT_LE(rel_err(p.grad(), g.all.at("grad." + name)), 1e-4) << name;
    }
}

// Ten torch.optim.AdamW steps (lr 1e-2, betas (0.9, 0.99), weight decay 0.1 on matrices but not
// on norms, biases or embeddings: Forge's default rule), a fresh batch per step.
TEST_P(GoldenTest, TenAdamWStepsMatchPyTorch) {
    Golden g = load_golden(GetParam());
    Transformer model(g.cfg, 7);
    model.load_state_dict(g.weights);
    AdamW opt(collect_parameters(model), {.beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.1});
    const auto losses = g.all.at("train.losses").to_vector<double>();
    ASSERT_EQ(losses.size(), 10u);
    for (size_t k = 0; k < losses.size(); ++k) {
        const std::string i = std::to_string(k);
        model.zero_grad();
        Tensor loss = model.loss(g.all.at("train.ids." + i), g.all.at("train.targets." + i));
        EXPECT_NEAR(loss.item(), losses[k], 1e-4 * std::fabs(losses[k])) << "step " << k;
        loss.backward();
        opt.step(1e-2);
    }
    for (auto& [name, p] : model.named_parameters()) {
        Tensor want = g.all.at("train.final." + name), got = p;
        if (name.ends_with("attn.c_attn.bias")) {
            // The key bias's true gradient is 0 (q.b_k shifts a query's scores equally and
            // softmax ignores that), so both sides step on rounding noise, which Adam scales
            // up to lr: compare the query and value thirds only.
            const int64_t C = g.cfg.n_embd;
            EXPECT_LE(rel_err(got.narrow(0, 0, C), want.narrow(0, 0, C)), 1e-4) << name;
            got = got.narrow(0, 2 * C, C), want = want.narrow(0, 2 * C, C);
        }
        EXPECT_LE(rel_err(got, want), 1e-4) << name;
    }
}

INSTANTIATE_TEST_SUITE_P(Families, GoldenTest,
                         ::testing::Values("gpt2_small", "llama_small", "llama3_scaled_small"));

ModelConfig small(ModelFamily f) {
    ModelConfig c = ModelConfig::preset(f == ModelFamily::gpt2 ? "tiny" : "llama-7b");
    c.vocab_size = 50;
    c.n_layer = 2;
    c.n_embd = 32;
    c.n_head = 4;
    c.n_head_kv = f == ModelFamily::gpt2 ? 4 : 2;
    c.n_ff = 64;
    c.n_ctx = 24;
    return c;
}

TEST(Transformer, KVCacheDecodingEqualsFullForward) {
    for (ModelFamily f : {ModelFamily::gpt2, ModelFamily::llama}) {
        Transformer model(small(f), 3);
        NoGradGuard ng;
        std::vector<int64_t> seq = {3, 14, 15, 9, 26, 5, 35, 8, 9, 7};
        Tensor ids = Tensor::from_vector(seq, {1, int64_t(seq.size())});
        Tensor full = model.forward(ids); // (1, 10, V)
        KVCache cache = KVCache::create(model.config(), 1, 16);
        Tensor pre = model.forward(ids.narrow(1, 0, 4), &cache);
        EXPECT_LE(rel_err(pre, full.narrow(1, 0, 4)), 1e-5);
        for (int64_t t = 4; t < 10; ++t) {
            Tensor step = model.forward(ids.narrow(1, t, 1), &cache);
            EXPECT_LE(rel_err(step, full.narrow(1, t, 1)), 1e-5) << "position " << t;
        }
        EXPECT_EQ(cache.length, 10);
    }
}

TEST(Transformer, CheckpointingGivesTheSameGradients) {
    for (ModelFamily f : {ModelFamily::gpt2, ModelFamily::llama}) {
        ModelConfig c = small(f);
        Tensor ids = Tensor::from_vector(std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8}, {2, 4});
        Tensor tg = Tensor::from_vector(std::vector<int64_t>{2, 3, 4, 5, 6, 7, 8, 9}, {2, 4});
        Transformer plain(c, 5);
        plain.loss(ids, tg).backward();
        c.checkpoint_activations = true;
        Transformer ckpt(c, 5);
        ckpt.loss(ids, tg).backward();
        auto a = plain.named_parameters(), b = ckpt.named_parameters();
        for (size_t i = 0; i < a.size(); ++i)
            EXPECT_LE(rel_err(b[i].second.grad(), a[i].second.grad()), 1e-6) << a[i].first;
    }
}

TEST(Transformer, DropoutOnlyInTraining) {
    ModelConfig c = small(ModelFamily::gpt2);
    c.dropout = 0.2f;
    Transformer m(c, 1);
    Tensor ids = Tensor::from_vector(std::vector<int64_t>{1, 2, 3}, {1, 3});
    NoGradGuard ng;
    Tensor a = m.forward(ids), b = m.forward(ids);
    EXPECT_GT(rel_err(a, b), 1e-3); // fresh masks each call
    m.eval();
    EXPECT_EQ(rel_err(m.forward(ids), m.forward(ids)), 0.0);
}

TEST(Presets, ParameterCountsEqualPublishedOnes) {
    // Totals of the HF checkpoints (tied heads counted once).
    EXPECT_EQ(ModelConfig::preset("gpt2").num_parameters(), 124439808);
    EXPECT_EQ(ModelConfig::preset("gpt2-medium").num_parameters(), 354823168);
    EXPECT_EQ(ModelConfig::preset("llama-1b").num_parameters(), 1235814400);
    EXPECT_EQ(ModelConfig::preset("llama-3b").num_parameters(), 3212749824);
    EXPECT_EQ(ModelConfig::preset("llama-7b").num_parameters(), 6738415616);
    EXPECT_EQ(ModelConfig::preset("llama-8b").num_parameters(), 8030261248);
    EXPECT_EQ(ModelConfig::preset("llama-13b").num_parameters(), 13015864320);
    EXPECT_EQ(ModelConfig::preset("llama-70b").num_parameters(), 70553706496);
    // The estimate equals what a built model holds.
    for (ModelFamily f : {ModelFamily::gpt2, ModelFamily::llama}) {
        ModelConfig c = small(f);
        EXPECT_EQ(Transformer(c).num_parameters(), c.num_parameters());
        c.tie_embeddings = !c.tie_embeddings;
        EXPECT_EQ(Transformer(c).num_parameters(), c.num_parameters());
    }
    EXPECT_EQ(ModelConfig::preset("llama-8b").kv_cache_bytes_per_token(DType::f16),
              2 * 32 * 8 * 128 * 2);
}

TEST(Config, HfJsonRoundTripAndErrors) {
    for (const auto& name : ModelConfig::preset_names()) {
        ModelConfig c = ModelConfig::preset(name);
        ModelConfig r = ModelConfig::from_hf_json(c.to_hf_json());
        EXPECT_EQ(r.num_parameters(), c.num_parameters()) << name;
        EXPECT_EQ(r.n_head_kv, c.n_head_kv) << name;
        EXPECT_EQ(r.rope_scaling_factor, c.rope_scaling_factor) << name;
    }
    auto expect_msg = [](auto f, const std::string& needle) {
        try {
            f();
            ADD_FAILURE() << "no error";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        }
    };
    expect_msg([] { ModelConfig::preset("gpt5"); }, "unknown preset 'gpt5'");
    expect_msg([] { ModelConfig::from_hf_json("{"); }, "not valid JSON");
    expect_msg([] { ModelConfig::from_hf_json(R"({"model_type":"bert"})"); }, "model_type 'bert'");
    expect_msg([] { ModelConfig::from_hf_json(R"({"model_type":"gpt2","n_head":5})"); },
               "divisible by n_head");
    expect_msg([] { ModelConfig::from_hf_json(R"({"model_type":"llama","vocab_size":"x"})"); },
               "'vocab_size' has the wrong type");
    Transformer m(small(ModelFamily::llama));
    expect_msg([&] { m.forward(Tensor::zeros({1, 30}, DType::i64)); }, "exceed the model's context");
    expect_msg([&] { m.forward(Tensor::full({1, 2}, 50, DType::i64)); }, "[embedding]");
    expect_msg([&] { m.forward(Tensor::zeros({2}, DType::i64)); }, "ids must be (B, T)");
}

} // namespace
} // namespace forge
