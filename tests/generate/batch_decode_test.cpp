// Batched decode (Transformer::decode_step through TransformerLM::eval_batch and
// Session::feed_batch) against the one-sequence path: same logits within 1e-5 and the same
// greedy tokens as Generator, whatever else shares the step.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "generate/generate_test_util.h"

namespace forge {
namespace {

using testing::small_config;

// Prompts of different lengths, so every sequence sits at its own position.
std::vector<std::vector<TokenId>> prompts(int64_t vocab, size_t n) {
    std::vector<std::vector<TokenId>> out;
    for (size_t s = 0; s < n; ++s) {
        std::vector<TokenId> p;
        for (size_t i = 0; i < 2 + 3 * s; ++i)
            p.push_back(TokenId((i * 13 + s * 7 + 1) % size_t(vocab)));
        out.push_back(p);
    }
    return out;
}

float max_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
    float d = 0, m = 1;
    for (size_t i = 0; i < a.size(); ++i) {
        d = std::max(d, std::abs(a[i] - b[i]));
        m = std::max(m, std::abs(b[i]));
    }
    return d / m;
}

class BatchDecode : public ::testing::TestWithParam<ModelFamily> {};

TEST_P(BatchDecode, LogitsEqualPerSequenceDecode) {
    ModelConfig cfg = small_config(GetParam());
    Transformer model(cfg, 11);
    testing::sharpen(model);
    auto lm = std::make_shared<TransformerLM>(model);
    const auto ps = prompts(cfg.vocab_size, 5);
    std::vector<std::unique_ptr<CausalLM::State>> batched, single;
    std::vector<std::vector<float>> lb(ps.size()), ls(ps.size());
    for (size_t s = 0; s < ps.size(); ++s) {
        batched.push_back(lm->new_state(40));
        single.push_back(lm->new_state(40));
        lm->eval(*batched[s], ps[s], lb[s]);
        lm->eval(*single[s], ps[s], ls[s]);
    }
    for (int step = 0; step < 6; ++step) {
        std::vector<CausalLM::State*> states;
        std::vector<TokenId> ids;
        std::vector<std::vector<float>*> rows;
        for (size_t s = 0; s < ps.size(); ++s) {
            const TokenId id = TokenId((step * 5 + int(s) * 3) % int(cfg.vocab_size));
            states.push_back(batched[s].get());
            ids.push_back(id);
            rows.push_back(&lb[s]);
            lm->eval(*single[s], std::span<const TokenId>(&id, 1), ls[s]);
        }
        lm->eval_batch(states, ids, rows);
        for (size_t s = 0; s < ps.size(); ++s) {
            EXPECT_EQ(batched[s]->length(), single[s]->length());
            EXPECT_LE(max_rel_diff(lb[s], ls[s]), 1e-5f) << "step " << step << " seq " << s;
        }
    }
}

// Drives sessions the way the serving engine does: feed_batch for all, then next() each.
std::vector<std::vector<TokenId>> batched_greedy(const Generator& gen,
                                                 const std::vector<std::vector<TokenId>>& ps,
                                                 const GenerateOptions& opts) {
    std::vector<Session> sessions;
    for (const auto& p : ps) sessions.push_back(gen.session(p, opts));
    for (auto& s : sessions) s.next(); // prefill + first token
    for (;;) {
        std::vector<Session*> live;
        for (auto& s : sessions)
            if (!s.finished()) live.push_back(&s);
        if (live.empty()) break;
        Session::feed_batch(live);
        for (Session* s : live) s->next();
    }
    std::vector<std::vector<TokenId>> out;
    for (auto& s : sessions) {
        EXPECT_EQ(s.result().n_decode, int64_t(s.result().tokens.size()) - 1);
        out.push_back(s.result().tokens);
    }
    return out;
}

TEST_P(BatchDecode, GreedyTokensEqualGenerator) {
    ModelConfig cfg = small_config(GetParam());
    Transformer model(cfg, 5);
    testing::sharpen(model);
    Generator gen(model);
    GenerateOptions opts;
    opts.max_tokens = 12;
    opts.sampling.temperature = 0;
    const auto ps = prompts(cfg.vocab_size, 6);
    const auto got = batched_greedy(gen, ps, opts);
    for (size_t s = 0; s < ps.size(); ++s)
        EXPECT_EQ(got[s], gen.generate(ps[s], opts).tokens) << "sequence " << s;
}

// A sequence's greedy tokens are bit-for-bit the same alone (one row, padded) and beside 1..5
// others: row results must not depend on the batch size.
TEST_P(BatchDecode, GreedyOutputIndependentOfNeighbours) {
    ModelConfig cfg = small_config(GetParam());
    Transformer model(cfg, 9); // not sharpened: near-ties make any rounding drift visible
    Generator gen(model);
    GenerateOptions opts;
    opts.max_tokens = 16;
    opts.sampling.temperature = 0;
    const auto ps = prompts(cfg.vocab_size, 6);
    const auto alone = batched_greedy(gen, {ps[0]}, opts);
    for (size_t n = 2; n <= ps.size(); ++n) {
        const auto with = batched_greedy(gen, {ps.begin(), ps.begin() + long(n)}, opts);
        EXPECT_EQ(with[0], alone[0]) << "beside " << n - 1 << " others";
    }
}

// What the guarantee above rests on: a row of the batched product is bit-identical whatever the
// number of rows (2 to 16; one row is padded to two), at GPT-2's decode shapes, both weight
// layouts (x W and x W^T).
TEST(BatchDecodeMatmul, RowsDoNotDependOnTheBatchSize) {
    NoGradGuard ng;
    struct Shape3 { int64_t K, N; bool transposed; };
    for (const Shape3 sh : {Shape3{768, 2304, false}, Shape3{3072, 768, false},
                            Shape3{768, 5000, true}}) {
        Tensor w = sh.transposed ? Tensor::randn({sh.N, sh.K}, 1) : Tensor::randn({sh.K, sh.N}, 1);
        Tensor wt = sh.transposed ? w.t() : w;
        Tensor x = Tensor::randn({16, sh.K}, 2);
        Tensor ref = matmul(x.narrow(0, 0, 1), wt).contiguous();
        for (int64_t S = 2; S <= 16; ++S) {
            Tensor y = matmul(x.narrow(0, 0, S), wt).contiguous();
            const float* a = ref.data<float>();
            const float* b = y.data<float>();
            EXPECT_EQ(std::memcmp(a, b, size_t(sh.N) * sizeof(float)), 0)
                << "K " << sh.K << " N " << sh.N << " rows " << S;
        }
    }
}

TEST(BatchDecodeErrors, BadInputsAreClearErrors) {
    ModelConfig cfg = small_config(ModelFamily::gpt2, 61, 8);
    Transformer model(cfg, 1);
    KVCache full = KVCache::create(cfg, 1, 2);
    full.length = 2;
    KVCache* caches[] = {&full};
    const int64_t id = 3;
    EXPECT_THROW(model.decode_step(std::span<const int64_t>(&id, 1), caches), InvalidArgument);
    KVCache ok = KVCache::create(cfg, 1, 4);
    KVCache* ok_caches[] = {&ok};
    const int64_t bad = 61;
    EXPECT_THROW(model.decode_step(std::span<const int64_t>(&bad, 1), ok_caches), Error);
    EXPECT_THROW(model.decode_step({}, {}), InvalidArgument);
    KVCache two = KVCache::create(cfg, 2, 4);
    KVCache* two_caches[] = {&two};
    EXPECT_THROW(model.decode_step(std::span<const int64_t>(&id, 1), two_caches), InvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Families, BatchDecode,
                         ::testing::Values(ModelFamily::gpt2, ModelFamily::llama),
                         [](const ::testing::TestParamInfo<ModelFamily>& i) {
                             return std::string(i.param == ModelFamily::gpt2 ? "gpt2" : "llama");
                         });

} // namespace
} // namespace forge
