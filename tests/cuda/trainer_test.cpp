// The training loop on a GPU: the same Trainer run on the CPU and with the model moved to CUDA
// (what `forge train --device cuda` does) gives the same losses, and a CUDA run saves a
// checkpoint that resumes on CUDA with the same trajectory.
#include "cuda/cuda_test_util.h"
#include <forge/train/data.h>
#include <forge/train/tokenizer_spec.h>

#include <fstream>
#include <forge/models/transformer.h>
#include <forge/train/trainer.h>

namespace forge::test {
namespace {

namespace fs = std::filesystem;

// A 2-layer GPT-2, 32 wide, 16 positions (tests/train's tiny config).
ModelConfig tiny_config(int64_t vocab) {
    ModelConfig c = ModelConfig::preset("tiny");
    c.vocab_size = vocab;
    c.n_layer = 2;
    c.n_head = 2;
    c.n_head_kv = 2;
    c.n_embd = 32;
    c.n_ff = 128;
    c.n_ctx = 16;
    c.head_dim = 0;
    c.validate();
    return c;
}

TrainOptions small_options() {
    TrainOptions o;
    o.steps = 6;
    o.batch = 4;
    o.seq_len = 16;
    o.lr = 3e-3;
    o.min_lr = 3e-4;
    o.warmup = 2;
    o.eval_every = 0;
    o.eval_iters = 2;
    o.progress = false;
    return o;
}

struct Data {
    fs::path dir;
    TrainingTokenizer tok;
    TokenFile tokens;
};
// Text made here (the GPU machine may have no source tree): words from a fixed generator.
Data make_data(const std::string& name) {
    const fs::path dir = fs::temp_directory_path() / "forge_cuda_trainer" / name;
    fs::remove_all(dir);
    fs::create_directories(dir);
    const char* words[] = {"the ", "king ", "of ", "forge ", "sings ", "and ", "a ", "river ",
                           "runs ", "to ", "sea. ", "thou ", "art ", "my ", "GPU.\n"};
    std::string text;
    uint64_t x = 12345;
    while (text.size() < 40000) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        text += words[(x >> 33) % 15];
    }
    std::ofstream(dir / "a.txt", std::ios::binary) << text;
    auto tok = make_training_tokenizer("char", {dir / "a.txt"}, dir / "cache");
    auto cache = tokenize_cached({dir / "a.txt"}, tok.tokenizer, tok.hash, dir / "cache");
    return {dir, tok, cache.tokens};
}

std::vector<double> run_losses(Transformer& m, const TrainOptions& o, const TokenFile& tokens,
                               double* val = nullptr) {
    Trainer t(m, o);
    t.set_data(tokens);
    std::vector<double> losses;
    t.on_step = [&](const StepStats& s) { losses.push_back(s.loss); };
    for (int64_t i = 0; i < o.steps; ++i)
        t.train_step();
    if (val) *val = t.evaluate().val_loss;
    return losses;
}

TEST(CudaTrainer, LossesMatchCpuRun) {
    auto d = make_data("cuda_trainer");
    const ModelConfig cfg = tiny_config(int64_t(d.tok.tokenizer.vocab_size()));
    const TrainOptions o = small_options();
    Transformer cpu_m(cfg, 21), gpu_m(cfg, 21);
    gpu_m.to(kCuda);
    double val_c = 0, val_g = 0;
    const auto lc = run_losses(cpu_m, o, d.tokens, &val_c);
    const auto lg = run_losses(gpu_m, o, d.tokens, &val_g);
    ASSERT_EQ(lc.size(), lg.size());
    for (size_t i = 0; i < lc.size(); ++i)
        EXPECT_NEAR(lg[i], lc[i], 1e-4) << "step " << i + 1;
    EXPECT_NEAR(val_g, val_c, 1e-4);
    EXPECT_EQ(gpu_m.device(), kCuda);
}

// bf16 autocast (--dtype bf16) follows the f32 run's loss curve; f32 weights and moments.
TEST(CudaTrainer, Bf16AutocastTracksF32Losses) {
    auto d = make_data("cuda_bf16");
    const ModelConfig cfg = tiny_config(int64_t(d.tok.tokenizer.vocab_size()));
    TrainOptions o = small_options();
    o.steps = 20;
    Transformer f32_m(cfg, 3), bf16_m(cfg, 3);
    f32_m.to(kCuda);
    bf16_m.to(kCuda);
    const auto lf = run_losses(f32_m, o, d.tokens);
    o.dtype = "bf16";
    const auto lb = run_losses(bf16_m, o, d.tokens);
    ASSERT_EQ(lf.size(), lb.size());
    double max_diff = 0;
    for (size_t i = 0; i < lf.size(); ++i) {
        EXPECT_NEAR(lb[i], lf[i], 2e-2 * lf[i]) << "step " << i + 1;
        max_diff = std::max(max_diff, std::abs(lb[i] - lf[i]));
    }
    EXPECT_GT(max_diff, 0.0); // bf16 really ran
    EXPECT_LT(lb.back(), lb.front()); // and it learns
    for (auto& [n, t] : bf16_m.named_parameters())
        EXPECT_EQ(dtype_name(t.dtype()), dtype_name(DType::f32)) << n;
    EXPECT_FALSE(cuda::autocast_bf16()); // the trainer's scope ended with the step
    // The CPU has no f16 autocast: a clear error, not silent f32. (Its bf16 autocast exists
    // where the CPU has AVX512_BF16 or AMX, as on the GPU machine's Xeon.)
    Transformer cpu_m(cfg, 3);
    o.dtype = "f16";
    EXPECT_THROW(Trainer(cpu_m, o), InvalidArgument);
}

// f16 autocast (--dtype f16) turns dynamic loss scaling on by default and follows the f32 run's
// loss curve; the scale stays finite and the weights f32.
TEST(CudaTrainer, F16AutocastWithLossScalingTracksF32Losses) {
    auto d = make_data("cuda_f16");
    const ModelConfig cfg = tiny_config(int64_t(d.tok.tokenizer.vocab_size()));
    TrainOptions o = small_options();
    o.steps = 20;
    Transformer f32_m(cfg, 3), f16_m(cfg, 3);
    f32_m.to(kCuda);
    f16_m.to(kCuda);
    const auto lf = run_losses(f32_m, o, d.tokens);
    o.dtype = "f16";
    Trainer t(f16_m, o);
    EXPECT_TRUE(t.loss_scaling()); // auto: dynamic under f16
    t.set_data(d.tokens);
    std::vector<double> lh;
    int64_t skipped = 0;
    for (int64_t i = 0; i < o.steps; ++i) {
        const StepStats s = t.train_step();
        lh.push_back(s.loss);
        skipped += s.skipped ? 1 : 0;
        EXPECT_TRUE(std::isfinite(s.loss_scale) && s.loss_scale >= 1) << s.loss_scale;
    }
    EXPECT_EQ(skipped, t.skipped_steps());
    EXPECT_LE(skipped, 2); // a tiny model's gradients fit f16 at 2^16 or one backoff below
    ASSERT_EQ(lf.size(), lh.size());
    double max_diff = 0;
    for (size_t i = 0; i < lf.size(); ++i) {
        if (skipped == 0) {
            EXPECT_NEAR(lh[i], lf[i], 1e-2 * lf[i]) << "step " << i + 1;
        }
        max_diff = std::max(max_diff, std::abs(lh[i] - lf[i]));
    }
    EXPECT_GT(max_diff, 0.0);         // f16 really ran
    EXPECT_LT(lh.back(), lh.front()); // and it learns
    EXPECT_NEAR(lh.back(), lf.back(), 3e-2 * lf.back());
    for (auto& [n, p] : f16_m.named_parameters())
        EXPECT_EQ(dtype_name(p.dtype()), dtype_name(DType::f32)) << n;
    EXPECT_FALSE(cuda::autocast_f16()); // the trainer's scope ended with the step
    // The CPU has no f16 compute: a clear error.
    Transformer cpu_m(cfg, 3);
    EXPECT_THROW(Trainer(cpu_m, o), InvalidArgument);
}

// 3 steps, save from the device, a fresh CUDA model resumes, 3 more: the losses of 6 straight.
TEST(CudaTrainer, SaveFromDeviceAndResumeOnDevice) {
    auto d = make_data("cuda_resume");
    const ModelConfig cfg = tiny_config(int64_t(d.tok.tokenizer.vocab_size()));
    TrainOptions o = small_options();
    Transformer straight_m(cfg, 8);
    straight_m.to(kCuda);
    const auto straight = run_losses(straight_m, o, d.tokens);

    const fs::path ckpt = d.dir / "ckpt";
    std::vector<double> resumed;
    {
        Transformer m(cfg, 8);
        m.to(kCuda);
        Trainer t(m, o);
        t.set_data(d.tokens);
        t.set_tokenizer(d.tok, {});
        t.on_step = [&](const StepStats& s) { resumed.push_back(s.loss); };
        for (int i = 0; i < 3; ++i)
            t.train_step();
        t.save(ckpt);
    }
    Transformer m(cfg, 999);
    m.to(kCuda);
    Trainer t(m, o);
    t.set_data(d.tokens);
    t.set_tokenizer(d.tok, {});
    t.on_step = [&](const StepStats& s) { resumed.push_back(s.loss); };
    t.resume(ckpt);
    EXPECT_EQ(m.device(), kCuda);
    for (int i = 0; i < 3; ++i)
        t.train_step();
    ASSERT_EQ(resumed.size(), straight.size());
    for (size_t i = 0; i < straight.size(); ++i)
        EXPECT_NEAR(resumed[i], straight[i], 1e-5) << "step " << i + 1;
}

} // namespace
} // namespace forge::test
