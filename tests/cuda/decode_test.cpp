// The batch-1 GPU decode path (CudaLM, src/backends/cuda/decode_*): split-K attention over a
// bf16 KV cache against the CPU's plain softmax(q k^T) v; whole-model logits and greedy tokens
// of random GPT-2 and Llama (GQA) models against TransformerLM on the CPU in f32, with the step
// as one persistent kernel and as kernels per op; and the two step paths against each other
// over several attention chunks.
#include "cuda/cuda_test_util.h"
#include "cuda/decode_test_util.h"

#include <algorithm>
#include <optional>
#include <string>

#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/decode_kernels.h"
#include <forge/generate/cuda_lm.h>
#include <forge/models/transformer.h>

namespace forge::test {
namespace {

namespace dk = cuda::decode;

// StepArgs on the device with pos = len - 1 (the kernels read the length from there).
Tensor step_args(int64_t len) {
    dk::StepArgs a{.token = 0, .pos = int32_t(len - 1), .argmax = 0};
    return Tensor::from_blob(&a, {int64_t(sizeof a)}, DType::u8, nullptr).to(kCuda);
}

struct AttnCase {
    int64_t len, head_dim, n_head, n_kv;
};

class CudaDecodeAttention : public ::testing::TestWithParam<AttnCase> {};

TEST_P(CudaDecodeAttention, MatchesCpuSoftmaxAttention) {
    const auto [len, D, H, Hkv] = GetParam();
    const int64_t cap = len + 5, chunk = 64;
    const uint64_t seed = uint64_t(len * 131 + D);
    Tensor q = Tensor::randn({H, D}, seed, DType::f32);
    // bf16 caches; positions past len hold huge values that must never be read.
    Tensor k = Tensor::randn({1, Hkv, cap, D}, seed + 1, DType::f32);
    Tensor v = Tensor::randn({1, Hkv, cap, D}, seed + 2, DType::f32);
    k.narrow(2, len, cap - len).copy_(Tensor::full({1, Hkv, cap - len, D}, 1e4));
    v.narrow(2, len, cap - len).copy_(Tensor::full({1, Hkv, cap - len, D}, 1e4));
    k = k.to(DType::bf16), v = v.to(DType::bf16);

    // Oracle: the CPU's decomposition over the bf16 values widened to f32, each query head
    // against its kv head (h / (H / Hkv)).
    std::vector<Tensor> ks, vs;
    for (int64_t h = 0; h < H; ++h) {
        ks.push_back(k.to(DType::f32).narrow(1, h / (H / Hkv), 1).narrow(2, 0, len));
        vs.push_back(v.to(DType::f32).narrow(1, h / (H / Hkv), 1).narrow(2, 0, len));
    }
    Tensor ref = attention_reference(q.reshape({1, H, 1, D}), concat(ks, 1), concat(vs, 1),
                                     {.causal = false})
                     .reshape({H, D});

    Tensor qd = q.to(kCuda), kd = k.to(kCuda), vd = v.to(kCuda), args = step_args(len);
    Tensor out = Tensor::full({H, D}, NAN, DType::f32, kCuda); // poisoned: every value written
    Tensor part = Tensor::zeros({dk::attn_partial_floats(int(H), int(D), int(cap), int(chunk))},
                                DType::f32, kCuda);
    Tensor counters = Tensor::zeros({Hkv}, DType::i32, kCuda);
    dk::AttnArgs a{.q = qd.data<float>(),
                   .k_cache = kd.data_ptr(),
                   .v_cache = vd.data_ptr(),
                   .n_head = int(H),
                   .n_kv = int(Hkv),
                   .head_dim = int(D),
                   .cap = int(cap),
                   .chunk = int(chunk),
                   .scale = float(1.0 / std::sqrt(double(D))),
                   .args = static_cast<const dk::StepArgs*>(args.data_ptr()),
                   .out = out.data<float>(),
                   .partial = part.data<float>(),
                   .counters = counters.data<unsigned>()};
    for (int rep = 0; rep < 2; ++rep) { // the second launch needs the counters reset
        dk::attention(a, cuda::context(0).stream);
        cuda::synchronize(0);
        EXPECT_LE(max_rel_diff(out, ref), 1e-5) << "launch " << rep;
        out.fill_(NAN);
    }
    EXPECT_EQ(Tensor::zeros({Hkv}, DType::i32).to_vector<int32_t>(),
              counters.to(Device::cpu()).to_vector<int32_t>());
}

INSTANTIATE_TEST_SUITE_P(Lengths, CudaDecodeAttention,
                         ::testing::Values(AttnCase{1, 64, 12, 12}, AttnCase{7, 64, 12, 12},
                                           AttnCase{1024, 64, 12, 12}, AttnCase{4097, 64, 12, 12},
                                           AttnCase{1, 128, 8, 2}, AttnCase{7, 128, 8, 2},
                                           AttnCase{1024, 128, 8, 2}, AttnCase{4097, 128, 8, 2},
                                           AttnCase{4097, 64, 32, 8}, AttnCase{300, 32, 4, 4}),
                         [](const auto& info) {
                             const AttnCase& c = info.param;
                             return "T" + std::to_string(c.len) + "_D" +
                                    std::to_string(c.head_dim) + "_H" + std::to_string(c.n_head) +
                                    "_KV" + std::to_string(c.n_kv);
                         });

// ---------------------------------------------------------------- whole models


struct ModelCase {
    ModelFamily family;
    bool persistent; // CudaLM::Options::persistent
};

class CudaDecodeModel : public ::testing::TestWithParam<ModelCase> {};

// CudaLM on a model of seed `seed` against the same model on the CPU in f32, teacher-forced
// (kShortScript): logits within `tol` everywhere, the argmax equal wherever the CPU's margin is
// clear of the difference, and enough such steps to test anything. `precision` (empty: none)
// is the CUDA precision the prompts are prefilled under.
void expect_matches_cpu(const ModelCase& c, uint64_t seed, double tol,
                        const std::string& precision = "") {
    const ModelConfig cfg = small_decode_config(c.family);
    Transformer cpu_m(cfg, seed), gpu_m(cfg, seed);
    TransformerLM ref(cpu_m);
    CudaLM lm(gpu_m, {.persistent = c.persistent});
    EXPECT_TRUE(lm.graph_active());
    EXPECT_EQ(lm.persistent_active(), c.persistent);
    std::optional<cuda::PrecisionScope> scope;
    if (!precision.empty()) scope.emplace(precision);
    auto rs = ref.new_state(150), gs = lm.new_state(150);
    const LogitAgreement r = teacher_forced_logits(ref, *rs, lm, *gs, tol);
    EXPECT_GE(r.decided, 32) << "too few steps with a clear argmax to test anything";
    EXPECT_EQ(r.agreed, r.decided);
}

// Teacher forcing: both paths get the CPU's greedy tokens; a prompt, 24 decode steps, a second
// prompt chunk (prefill after decode), 16 more steps. Logits within bf16 error everywhere, the
// argmax equal wherever the CPU's margin is clear of that error.
TEST_P(CudaDecodeModel, LogitsAndArgmaxMatchCpuF32) {
    expect_matches_cpu(GetParam(), 21, 2e-2);
}

// The same script with prompts prefilled under bf16 autocast (`forge generate --dtype bf16`, the
// CLI's default): the projections return bf16 while the prefill's cache is f32, so attention
// reads the cache in bf16. Prompt positions add bf16 activation rounding to the decode steps'
// bf16 weights: logits within 3e-2 of the CPU's f32.
TEST_P(CudaDecodeModel, PrefillUnderBf16AutocastMatchesCpuF32) {
    expect_matches_cpu(GetParam(), 23, 3e-2, "bf16");
}

// greedy() (argmax and feedback on the device, 48 steps) against the CPU fed the same tokens:
// each token is the CPU's argmax wherever its margin is clear; and eager launches give the
// graph's logits bit for bit.
TEST_P(CudaDecodeModel, GreedyOnDeviceMatchesCpuAndEager) {
    const auto [family, persistent] = GetParam();
    const ModelConfig cfg = small_decode_config(family);
    Transformer cpu_m(cfg, 22), gpu_m(cfg, 22);
    TransformerLM ref(cpu_m);
    CudaLM lm(gpu_m, {.persistent = persistent}),
        eager(gpu_m, {.graph = false, .persistent = persistent});
    EXPECT_EQ(eager.persistent_active(), persistent);
    const std::vector<TokenId> prompt = {1, 2, 3, 4, 5, 6};
    auto gs = lm.new_state(64);
    std::vector<float> lg;
    lm.eval(*gs, prompt, lg);
    const TokenId first = TokenId(argmax(lg));
    const std::vector<TokenId> toks = lm.greedy(*gs, first, 48);
    ASSERT_EQ(toks.size(), 48u);
    EXPECT_EQ(gs->length(), int64_t(prompt.size()) + 48);

    auto rs = ref.new_state(64), es = eager.new_state(64);
    std::vector<float> lr, le;
    ref.eval(*rs, prompt, lr);
    eager.eval(*es, prompt, le);
    // The graph's device argmax against the eager launches' logits.
    EXPECT_GE(check_greedy_tokens(eager, *es, ref, *rs, first, toks), 32);

    // Graph and eager launches run the same kernels: identical logits.
    auto g2 = lm.new_state(16), e2 = eager.new_state(16);
    std::vector<float> a, b;
    for (TokenId id : {7, 8, 9}) {
        lm.eval(*g2, std::span(&id, 1), a);
        eager.eval(*e2, std::span(&id, 1), b);
        EXPECT_EQ(a, b);
    }
}

std::string family_name(ModelFamily f) {
    return f == ModelFamily::gpt2 ? "gpt2" : "llama";
}

INSTANTIATE_TEST_SUITE_P(
    Paths, CudaDecodeModel,
    ::testing::Values(ModelCase{ModelFamily::gpt2, true}, ModelCase{ModelFamily::gpt2, false},
                      ModelCase{ModelFamily::llama, true}, ModelCase{ModelFamily::llama, false}),
    [](const auto& info) {
        return family_name(info.param.family) + (info.param.persistent ? "_persistent" : "_per_op");
    });

class CudaDecodeSteps : public ::testing::TestWithParam<ModelFamily> {};

// The persistent step against the kernels per op, teacher-forced over 150 positions: attention
// over up to three 64-position chunks (the split-K partials merged in the proj phase), a prompt
// between decode steps. The two sum in different orders and may round a K/V value to bf16 the
// other way, so logits agree within that, and the argmax wherever its margin is clear of it.
TEST_P(CudaDecodeSteps, PersistentMatchesPerOpKernels) {
    const ModelConfig cfg = small_decode_config(GetParam());
    Transformer m(cfg, 23);
    CudaLM fused(m), per_op(m, {.persistent = false});
    ASSERT_TRUE(fused.persistent_active());
    auto fs = fused.new_state(cfg.n_ctx), ps = per_op.new_state(cfg.n_ctx);
    const LogitAgreement r = teacher_forced_logits(per_op, *ps, fused, *fs, 2e-3, kLongScript);
    EXPECT_EQ(fs->length(), 149);
    EXPECT_GE(r.decided, 100);
}

INSTANTIATE_TEST_SUITE_P(Families, CudaDecodeSteps,
                         ::testing::Values(ModelFamily::gpt2, ModelFamily::llama),
                         [](const auto& info) { return family_name(info.param); });

} // namespace
} // namespace forge::test
