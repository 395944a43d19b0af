// Batched prompt prefill of CudaLM over GGUF Q8_0 / Q4_0 tensors (an f32 Transformer of the
// dequantized weights, CudaLM::Options::gguf_batched_prefill): against the same weights
// prefilled one decode step per token, and against QuantLM on the CPU, for GPT-2 and Llama, in
// one prefill chunk and in several, with a second prompt after decode steps; the option off, and
// a prefill model of another shape refused.
#include "cuda/cuda_test_util.h"
#include "cuda/decode_test_util.h"

#include <cstdio>
#include <filesystem>
#include <memory>
#include <vector>

#include <forge/core/error.h>
#include <forge/formats/gguf.h>
#include <forge/formats/gguf_model.h>
#include <forge/generate/cuda_lm.h>
#include <forge/infer/quant_lm.h>
#include <forge/models/transformer.h>
#include <forge/quant/ggml_types.h>

namespace forge::test {
namespace {

using quant::GgmlType;

struct PrefillCase {
    ModelFamily family;
    GgmlType type;
    bool int8_dot;         // CudaLM::Options::int8_dot (both sides)
    int64_t prefill_chunk; // the batched side's; 16 splits the 40-token prompt in three
};

std::string case_name(const PrefillCase& c) {
    return std::string(c.family == ModelFamily::gpt2 ? "gpt2" : "llama") + "_" +
           (c.type == GgmlType::q8_0 ? "q8_0" : "q4_0") + (c.int8_dot ? "_dp4a" : "_f32dot") +
           "_chunk" + std::to_string(c.prefill_chunk);
}

// 34 evals over 96 positions: a 40-token prompt, 16 greedy steps, a 24-token prompt after them
// (the batched side brings its f32 cache level with the 16 positions the steps wrote), 16 steps.
std::vector<TokenId> prompt_ids(int64_t n, int64_t seed) {
    std::vector<TokenId> out;
    for (int64_t i = 0; i < n; ++i)
        out.push_back(TokenId((i * 131 + seed * 17 + 7) % 509));
    return out;
}
const TeacherScript kPrefillScript{prompt_ids(40, 1), 16, prompt_ids(23, 2), 16};

class CudaGgufPrefill : public ::testing::TestWithParam<PrefillCase> {};

// Teacher-forced on the step-by-step path's greedy tokens. The batched prefill multiplies the
// dequantized weights in f32 and attends over an f32 cache within a prompt; the steps read a
// bf16 cache, and with int8_dot round every GEMV input to int8 per 32 values. So with f32 dot
// products the two differ by bf16 K/V rounding and summation order (the bound of the bf16 CudaLM
// against the CPU in f32, 2e-2); with int8 ones also by the int8 error of the prompt positions'
// activations (the bound of the f32-dot path against QuantLM, 4e-2). The argmax must agree
// wherever the reference's top-2 margin exceeds twice the logit difference.
TEST_P(CudaGgufPrefill, MatchesStepByStepPrefill) {
    const PrefillCase c = GetParam();
    const ModelConfig cfg = small_decode_config(c.family);
    Transformer m(cfg, 41);
    auto batched = CudaLM::from_transformer(
        m, c.type, {.prefill_chunk = c.prefill_chunk, .int8_dot = c.int8_dot});
    auto steps = CudaLM::from_transformer(m, c.type,
                                          {.int8_dot = c.int8_dot, .gguf_batched_prefill = false});
    ASSERT_TRUE(batched->batched_prefill_active());
    ASSERT_FALSE(steps->batched_prefill_active());
    EXPECT_EQ(batched->weight_format(), steps->weight_format());
    auto bs = batched->new_state(cfg.n_ctx), ss = steps->new_state(cfg.n_ctx);
    const double tol = c.int8_dot ? 4e-2 : 2e-2;
    const LogitAgreement r = teacher_forced_logits(*steps, *ss, *batched, *bs, tol, kPrefillScript);
    std::printf("[%s] batched vs step-by-step: max rel logit diff %.3g, argmax decided on %d of 34 "
                "evals, %d agreed\n",
                case_name(c).c_str(), r.worst, r.decided, r.agreed);
    EXPECT_EQ(bs->length(), 96);
    EXPECT_GE(r.decided, 10) << "too few steps with a clear argmax to test anything";
    EXPECT_EQ(r.agreed, r.decided);
}

// The same script against QuantLM on the CPU over the same GGUF bytes (int8 activations
// everywhere): the batched side differs by the prompt positions' int8 error as above, and its
// steps by what the decode kernels differ by (quant_decode_test.cpp's 2e-2): within 4e-2.
TEST_P(CudaGgufPrefill, MatchesQuantLmOnCpu) {
    const PrefillCase c = GetParam();
    if (!c.int8_dot)
        GTEST_SKIP() << "QuantLM rounds activations to int8; the f32-dot cases compare above";
    const ModelConfig cfg = small_decode_config(c.family);
    Transformer m(cfg, 42);
    auto ref = infer::QuantLM::from_transformer(m, c.type, {.n_threads = 2});
    auto lm = CudaLM::from_transformer(m, c.type, {.prefill_chunk = c.prefill_chunk});
    ASSERT_TRUE(lm->batched_prefill_active());
    auto rs = ref->new_state(cfg.n_ctx), gs = lm->new_state(cfg.n_ctx);
    const LogitAgreement r = teacher_forced_logits(*ref, *rs, *lm, *gs, 4e-2, kPrefillScript);
    std::printf("[%s] batched vs QuantLM: max rel logit diff %.3g, argmax decided on %d of 34 "
                "evals, %d agreed\n",
                case_name(c).c_str(), r.worst, r.decided, r.agreed);
    EXPECT_GE(r.decided, 10);
    EXPECT_EQ(r.agreed, r.decided);
}

// greedy() on the device after a batched prompt: each token is the argmax of the logits eval
// gives for the same feed (same kernels), and that of the step-by-step path wherever its margin
// is clear of the two paths' logit difference.
TEST_P(CudaGgufPrefill, GreedyAfterBatchedPrompt) {
    const PrefillCase c = GetParam();
    const ModelConfig cfg = small_decode_config(c.family);
    Transformer m(cfg, 43);
    const CudaLM::Options on{.prefill_chunk = c.prefill_chunk, .int8_dot = c.int8_dot};
    auto batched = CudaLM::from_transformer(m, c.type, on);
    auto steps = CudaLM::from_transformer(m, c.type,
                                          {.int8_dot = c.int8_dot, .gguf_batched_prefill = false});
    const std::vector<TokenId> prompt = prompt_ids(40, 3);
    auto gs = batched->new_state(64);
    std::vector<float> lg, ls;
    batched->eval(*gs, prompt, lg);
    const TokenId first = TokenId(argmax(lg));
    const std::vector<TokenId> toks = batched->greedy(*gs, first, 16);
    ASSERT_EQ(toks.size(), 16u);
    EXPECT_EQ(gs->length(), 56);
    auto es = batched->new_state(64), ss = steps->new_state(64);
    batched->eval(*es, prompt, lg);
    steps->eval(*ss, prompt, ls);
    EXPECT_LE(rel_diff(lg, ls), c.int8_dot ? 4e-2 : 2e-2) << "prompt's last logits";
    EXPECT_GE(check_greedy_tokens(*batched, *es, *steps, *ss, first, toks), 4);
}

INSTANTIATE_TEST_SUITE_P(
    Models, CudaGgufPrefill,
    ::testing::Values(PrefillCase{ModelFamily::gpt2, GgmlType::q8_0, true, 1024},
                      PrefillCase{ModelFamily::gpt2, GgmlType::q4_0, true, 16},
                      PrefillCase{ModelFamily::llama, GgmlType::q8_0, true, 16},
                      PrefillCase{ModelFamily::llama, GgmlType::q4_0, true, 1024},
                      PrefillCase{ModelFamily::gpt2, GgmlType::q8_0, false, 16},
                      PrefillCase{ModelFamily::llama, GgmlType::q4_0, false, 1024}),
    [](const auto& info) { return case_name(info.param); });

// The prompt in one chunk and in chunks of 7 (the f32 cache carried between them): the same
// ops over the same weights, apart from the attention's blocking: logits within f32 rounding.
// The head's GEMV takes f32 products here: with int8 ones, a last-bit difference in its input
// may round one value to the neighbouring int8 step (~1e-3 of the logits).
TEST(CudaGgufPrefillChunks, ChunkSizeDoesNotChangeLogits) {
    const ModelConfig cfg = small_decode_config(ModelFamily::llama);
    Transformer m(cfg, 44);
    auto one = CudaLM::from_transformer(m, GgmlType::q4_0, {.int8_dot = false});
    auto sevens =
        CudaLM::from_transformer(m, GgmlType::q4_0, {.prefill_chunk = 7, .int8_dot = false});
    auto a = one->new_state(64), b = sevens->new_state(64);
    std::vector<float> la, lb;
    one->eval(*a, prompt_ids(40, 4), la);
    sevens->eval(*b, prompt_ids(40, 4), lb);
    EXPECT_LE(rel_diff(lb, la), 1e-4);
}

// Under bf16 autocast (`forge generate`'s default precision) the prefill model's projections
// return bf16 over an f32 cache; GPT-2's fused qkv and Llama's separate ones, against the
// step-by-step path, within the f32-dot bound above plus bf16 activation rounding (3e-2).
TEST(CudaGgufPrefillChunks, Bf16AutocastMatchesStepByStep) {
    for (ModelFamily family : {ModelFamily::gpt2, ModelFamily::llama}) {
        const ModelConfig cfg = small_decode_config(family);
        Transformer m(cfg, 46);
        auto batched = CudaLM::from_transformer(m, GgmlType::q8_0, {.int8_dot = false});
        auto steps = CudaLM::from_transformer(
            m, GgmlType::q8_0, {.int8_dot = false, .gguf_batched_prefill = false});
        const cuda::PrecisionScope bf16("bf16");
        auto bs = batched->new_state(cfg.n_ctx), ss = steps->new_state(cfg.n_ctx);
        const LogitAgreement r =
            teacher_forced_logits(*steps, *ss, *batched, *bs, 3e-2, kPrefillScript);
        EXPECT_GE(r.decided, 10) << (family == ModelFamily::gpt2 ? "gpt2" : "llama");
        EXPECT_EQ(r.agreed, r.decided) << (family == ModelFamily::gpt2 ? "gpt2" : "llama");
    }
}

// A file with a tensor the Transformer has no place for still loads and decodes: its prompts
// run as decode steps, with the same logits as the step-by-step path over the file without it.
TEST(CudaGgufPrefillChunks, UnplaceableTensorFallsBackToDecodeSteps) {
    const ModelConfig cfg = small_decode_config(ModelFamily::llama);
    Transformer m(cfg, 47);
    formats::GgufWriter w = formats::gguf_writer(m, nullptr, GgmlType::q8_0);
    const std::vector<float> extra(8, 1.f);
    w.add_tensor("blk.0.unknown.weight", {8}, GgmlType::f32,
                 {reinterpret_cast<const uint8_t*>(extra.data()), extra.size() * sizeof(float)});
    const auto path = std::filesystem::temp_directory_path() / "forge_gguf_prefill_extra.gguf";
    w.write(path);
    auto lm = CudaLM::from_gguf(path, {});
    std::filesystem::remove(path);
    EXPECT_FALSE(lm->batched_prefill_active());
    auto steps = CudaLM::from_transformer(m, GgmlType::q8_0, {.gguf_batched_prefill = false});
    auto a = lm->new_state(64), b = steps->new_state(64);
    std::vector<float> la, lb;
    lm->eval(*a, prompt_ids(20, 5), la);
    steps->eval(*b, prompt_ids(20, 5), lb);
    EXPECT_EQ(la, lb);
}

// Through the Lookup constructor: no prefill model means decode steps; one whose config is not
// the tensors' is refused with both shapes named.
TEST(CudaGgufPrefillChunks, LookupConstructorTakesOnlyAMatchingModel) {
    const ModelConfig cfg = small_decode_config(ModelFamily::gpt2);
    Transformer m(cfg, 45);
    const std::vector<uint8_t> bytes = formats::gguf_writer(m, nullptr, GgmlType::q8_0).bytes();
    const formats::GgufFile file = formats::GgufFile::parse(bytes, "<test>");
    const infer::QuantLM::Lookup lookup =
        [&file](const std::string& name) -> std::optional<infer::TensorRef> {
        const formats::GgufTensorInfo* t = file.find_tensor(name);
        if (!t)
            return std::nullopt;
        return infer::TensorRef{t->type, t->ne, t->data, false};
    };
    EXPECT_FALSE(CudaLM(cfg, lookup, CudaLM::Options{}).batched_prefill_active());
    EXPECT_TRUE(CudaLM(cfg, lookup, CudaLM::Options{}, formats::gguf_to_model(file).model)
                    .batched_prefill_active());
    ModelConfig other = cfg;
    other.n_layer = 2;
    try {
        CudaLM lm(cfg, lookup, CudaLM::Options{}, std::make_shared<Transformer>(other, 1));
        ADD_FAILURE() << "a prefill model of another shape was taken";
    } catch (const InvalidArgument& e) {
        EXPECT_NE(std::string(e.what()).find("2 layers"), std::string::npos) << e.what();
    }
}

} // namespace
} // namespace forge::test
