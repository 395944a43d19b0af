// The inference engine against forge::Transformer (the autograd model, an independent
// implementation): F32 weights give the same logits within 1e-4; quantized weights give the
// logits of the Transformer run on the same weights quantized and dequantized, within the error
// of quantizing the activations to int8. Prefill and step-by-step decode agree; threads agree.
#include <forge/infer/quant_lm.h>

#include <cmath>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include <forge/core/error.h>
#include <forge/core/tensor.h>
#include <forge/models/transformer.h>

using namespace forge;
using forge::quant::GgmlType;

namespace {

ModelConfig small(ModelFamily f) {
    ModelConfig c;
    c.family = f;
    c.vocab_size = 96;
    c.n_ctx = 64;
    c.n_layer = 2;
    c.n_embd = 64;
    c.n_head = 4;
    c.n_head_kv = f == ModelFamily::llama ? 2 : 4;
    c.n_ff = 128;
    c.tie_embeddings = f == ModelFamily::gpt2;
    return c;
}

// Norm weights and biases start at 1 and 0: move every parameter so each one matters.
void perturb(Transformer& m, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.f, 0.05f);
    for (auto& [name, t] : m.named_parameters()) {
        float* p = t.data<float>();
        for (int64_t i = 0; i < t.numel(); ++i) p[i] += d(rng);
    }
}

std::vector<float> transformer_logits(Transformer& m, const std::vector<int64_t>& ids) {
    Tensor x = Tensor::from_vector(ids, {1, int64_t(ids.size())});
    Tensor y = m.forward(x).contiguous();
    return std::vector<float>(y.data<float>(), y.data<float>() + y.numel());
}

double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        num += double(a[i] - b[i]) * (a[i] - b[i]);
        den += double(b[i]) * b[i];
    }
    return std::sqrt(num / den);
}

// Replaces each matrix of m with its quantize -> dequantize image in the layout the engine
// quantizes (rows of (out, in); Conv1D weights transposed first).
void round_trip_weights(Transformer& m, GgmlType type) {
    const bool gpt2 = m.config().family == ModelFamily::gpt2;
    for (auto& [name, t] : m.named_parameters()) {
        // GPT-2's position table stays F32 in a GGUF, as in llama.cpp (gguf_tensor_type).
        if (t.dim() != 2 || name == "transformer.wpe.weight") continue;
        const bool conv1d = gpt2 && name.find(".h.") != std::string::npos;
        const int64_t rows = conv1d ? t.size(1) : t.size(0), cols = conv1d ? t.size(0) : t.size(1);
        if (cols % quant::type_info(type).block_size) continue;
        float* p = t.data<float>();
        std::vector<float> w(static_cast<size_t>(rows * cols)), back(static_cast<size_t>(cols));
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t k = 0; k < cols; ++k)
                w[size_t(r * cols + k)] = conv1d ? p[k * rows + r] : p[r * cols + k];
        std::vector<uint8_t> buf(size_t(quant::row_bytes(type, cols)));
        for (int64_t r = 0; r < rows; ++r) {
            quant::quantize_row(type, &w[size_t(r * cols)], buf.data(), cols);
            quant::dequantize_row(type, buf.data(), back.data(), cols);
            for (int64_t k = 0; k < cols; ++k) (conv1d ? p[k * rows + r] : p[r * cols + k]) = back[size_t(k)];
        }
    }
}

const std::vector<int64_t> kIds = {3, 17, 95, 0, 42, 42, 7, 63, 11, 5, 88, 20};

} // namespace

class QuantLMFamilies : public ::testing::TestWithParam<ModelFamily> {};

TEST_P(QuantLMFamilies, F32MatchesTransformer) {
    Transformer m(small(GetParam()), 7);
    perturb(m, 1);
    const auto want = transformer_logits(m, kIds);
    for (int threads : {1, 2}) {
        auto lm = infer::QuantLM::from_transformer(m, GgmlType::f32, {.n_threads = threads});
        auto st = lm->new_state(32);
        std::vector<TokenId> ids(kIds.begin(), kIds.end());
        std::vector<float> got;
        lm->eval_all(*st, ids, got);
        ASSERT_EQ(got.size(), want.size());
        for (size_t i = 0; i < got.size(); ++i)
            ASSERT_NEAR(got[i], want[i], 1e-4 * (1 + std::fabs(want[i]))) << i;
        EXPECT_EQ(st->length(), int64_t(kIds.size()));
    }
}

TEST_P(QuantLMFamilies, DecodeStepsMatchPrefill) {
    Transformer m(small(GetParam()), 9);
    perturb(m, 2);
    const auto want = transformer_logits(m, kIds);
    const int64_t V = m.config().vocab_size, T = int64_t(kIds.size());
    auto lm = infer::QuantLM::from_transformer(m, GgmlType::f32, {.n_threads = 2, .prefill_chunk = 4});
    auto st = lm->new_state(T);
    std::vector<TokenId> ids(kIds.begin(), kIds.end());
    std::vector<float> got;
    lm->eval(*st, std::span(ids).first(7), got); // two prefill chunks (4 + 3)
    for (int64_t v = 0; v < V; ++v) ASSERT_NEAR(got[size_t(v)], want[size_t(6 * V + v)], 1e-4 * (1 + std::fabs(want[size_t(6 * V + v)])));
    for (int64_t t = 7; t < T; ++t) {
        lm->eval(*st, std::span(ids).subspan(size_t(t), 1), got);
        for (int64_t v = 0; v < V; ++v)
            ASSERT_NEAR(got[size_t(v)], want[size_t(t * V + v)], 1e-4 * (1 + std::fabs(want[size_t(t * V + v)])));
    }
    EXPECT_THROW(lm->eval(*st, std::span(ids).first(1), got), InvalidArgument); // state full
    auto st2 = lm->new_state(4);
    std::vector<TokenId> bad{int32_t(V)};
    EXPECT_THROW(lm->eval(*st2, bad, got), InvalidArgument);
}

TEST_P(QuantLMFamilies, QuantizedMatchesTransformerOnDequantizedWeights) {
    for (GgmlType type : {GgmlType::f16, GgmlType::q8_0, GgmlType::q4_0, GgmlType::q4_k, GgmlType::q4_1}) {
        ModelConfig c = small(GetParam());
        if (type == GgmlType::q4_k) c.n_embd = 256, c.n_ff = 256; // rows of whole super-blocks
        Transformer m(c, 11);
        perturb(m, 3);
        auto lm = infer::QuantLM::from_transformer(m, type, {.n_threads = 2});
        // Q4_1 has no kernel: the engine requantizes it to Q8_0, so compare against Q4_1 -> Q8_0.
        round_trip_weights(m, type);
        if (type == GgmlType::q4_1) round_trip_weights(m, GgmlType::q8_0);
        const auto want = transformer_logits(m, kIds);
        auto st = lm->new_state(32);
        std::vector<TokenId> ids(kIds.begin(), kIds.end());
        std::vector<float> got;
        lm->eval_all(*st, ids, got);
        // F16: activations stay f32, so only summation order differs. Int8 activations: each
        // value rounds to within half a step of its block's max/127, a relative error of about
        // 1/(127 sqrt(12)) = 0.2% per layer input, compounding over 2 layers of 4-5 products.
        const double tol = type == GgmlType::f16 ? 1e-5 : 0.03;
        EXPECT_LT(rel_l2(got, want), tol) << quant::type_info(type).name;
    }
}

INSTANTIATE_TEST_SUITE_P(Families, QuantLMFamilies,
                         ::testing::Values(ModelFamily::llama, ModelFamily::gpt2));
