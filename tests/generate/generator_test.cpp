// Generation: greedy decoding with the KV cache equals the argmax of a full forward over the
// growing sequence (both families, prompts of 1 and 7 tokens, chunked prefill); stop strings
// across token boundaries; EOS; max_tokens; the n_ctx error; UTF-8-safe streaming; seeds.
#include <algorithm>
#include <cmath>

#include <gtest/gtest.h>

#include "generate/generate_test_util.h"
#include <forge/core/error.h>

namespace forge {
namespace {

using testing::byte_tokenizer;
using testing::ScriptedLM;
using testing::small_config;
using testing::valid_utf8;

// Logits of the last position of a full forward (no cache) over `seq`: (V) floats.
std::vector<float> full_forward_last(Transformer& m, const std::vector<TokenId>& seq) {
    NoGradGuard ng;
    std::vector<int64_t> v(seq.begin(), seq.end());
    Tensor logits = m.forward(Tensor::from_vector(v, {1, int64_t(v.size())}));
    Tensor row = logits.select(1, int64_t(v.size()) - 1).reshape({m.config().vocab_size});
    return row.contiguous().to_vector<float>();
}

size_t argmax(const std::vector<float>& x) {
    return size_t(std::max_element(x.begin(), x.end()) - x.begin());
}

struct OracleCase {
    ModelFamily family;
    size_t prompt_len;
    int64_t prefill_chunk;
};

class GreedyOracle : public ::testing::TestWithParam<OracleCase> {};

// The key oracle: at every step, the token the cached decode picks is the argmax of a full
// forward pass over prompt + tokens so far, and the cached logits equal the full ones.
TEST_P(GreedyOracle, CachedGreedyEqualsFullForwardArgmax) {
    const OracleCase pc = GetParam();
    ModelConfig cfg = small_config(pc.family);
    Transformer model(cfg, 7);
    testing::sharpen(model);
    auto lm = std::make_shared<TransformerLM>(model, pc.prefill_chunk);
    Generator gen(lm);
    std::vector<TokenId> prompt;
    for (size_t i = 0; i < pc.prompt_len; ++i)
        prompt.push_back(TokenId((i * 17 + 3) % size_t(cfg.vocab_size)));
    GenerateOptions opts;
    opts.max_tokens = 24;
    opts.sampling.temperature = 0;

    Session s = gen.session(prompt, opts);
    s.prefill();
    std::vector<TokenId> seq = prompt;
    while (!s.finished()) {
        TokenStep step = s.next();
        std::vector<float> full = full_forward_last(model, seq);
        std::span<const float> cached = s.logits(); // what step.token was sampled from
        ASSERT_EQ(cached.size(), full.size());
        float max_diff = 0, max_abs = 0;
        for (size_t i = 0; i < full.size(); ++i) {
            max_diff = std::max(max_diff, std::abs(cached[i] - full[i]));
            max_abs = std::max(max_abs, std::abs(full[i]));
        }
        EXPECT_LE(max_diff, 1e-4f * std::max(1.0f, max_abs)) << "step " << step.index;
        const size_t want = argmax(full);
        if (size_t(step.token) != want) {
            // Only a genuine near-tie may differ.
            EXPECT_NEAR(full[size_t(step.token)], full[want], 1e-4f)
                << "step " << step.index << ": cached greedy picked " << step.token
                << ", full forward argmax is " << want;
        }
        seq.push_back(step.token);
    }
    const GenerateResult& r = s.result();
    EXPECT_EQ(r.finish_reason, FinishReason::length);
    EXPECT_EQ(int64_t(r.tokens.size()), opts.max_tokens);
    EXPECT_EQ(r.n_prompt, int64_t(prompt.size()));
    EXPECT_EQ(r.n_decode, opts.max_tokens - 1); // the last token is never fed
    // The one-call API gives the same tokens.
    EXPECT_EQ(gen.generate(prompt, opts).tokens, r.tokens);
}

INSTANTIATE_TEST_SUITE_P(
    Families, GreedyOracle,
    ::testing::Values(OracleCase{ModelFamily::gpt2, 1, 512}, OracleCase{ModelFamily::gpt2, 7, 512},
                      OracleCase{ModelFamily::gpt2, 7, 3}, OracleCase{ModelFamily::llama, 1, 512},
                      OracleCase{ModelFamily::llama, 7, 512},
                      OracleCase{ModelFamily::llama, 7, 3}),
    [](const ::testing::TestParamInfo<OracleCase>& i) {
        return std::string(i.param.family == ModelFamily::gpt2 ? "gpt2" : "llama") + "_prompt" +
               std::to_string(i.param.prompt_len) + "_chunk" +
               std::to_string(i.param.prefill_chunk);
    });

TEST(Generate, SeededSamplingIsReproducible) {
    ModelConfig cfg = small_config(ModelFamily::llama);
    Transformer model(cfg, 3);
    testing::sharpen(model, 3.0);
    Generator gen(model);
    GenerateOptions o;
    o.max_tokens = 30;
    o.sampling.temperature = 1.0f;
    o.sampling.top_k = 20;
    o.sampling.top_p = 0.95f;
    o.sampling.seed = 99;
    std::vector<TokenId> prompt = {1, 2, 3};
    auto a = gen.generate(prompt, o), b = gen.generate(prompt, o);
    EXPECT_EQ(a.tokens, b.tokens);
    EXPECT_EQ(a.seed, 99u);
    o.sampling.seed = 100;
    EXPECT_NE(gen.generate(prompt, o).tokens, a.tokens);
}

TEST(Generate, ContextOverflowIsAnErrorWithTheNumbers) {
    ModelConfig cfg = small_config(ModelFamily::gpt2, 61, 32);
    Transformer model(cfg);
    Generator gen(model);
    GenerateOptions o;
    o.max_tokens = 13;
    std::vector<TokenId> prompt(20, 5);
    try {
        gen.generate(prompt, o);
        FAIL() << "expected InvalidArgument";
    } catch (const InvalidArgument& e) {
        std::string m = e.what();
        EXPECT_NE(m.find("20"), std::string::npos) << m;
        EXPECT_NE(m.find("13"), std::string::npos) << m;
        EXPECT_NE(m.find("33"), std::string::npos) << m;
        EXPECT_NE(m.find("32"), std::string::npos) << m;
        EXPECT_NE(e.hint().find("12"), std::string::npos) << e.hint();
    }
    o.max_tokens = 12; // exactly n_ctx: fine
    EXPECT_EQ(gen.generate(prompt, o).tokens.size(), 12u);
}

TEST(Generate, BadInputsAreClearErrors) {
    ModelConfig cfg = small_config(ModelFamily::gpt2);
    Transformer model(cfg);
    Generator gen(model);
    GenerateOptions o;
    EXPECT_THROW(gen.generate(std::vector<TokenId>{}, o), InvalidArgument);
    EXPECT_THROW(gen.generate(std::vector<TokenId>{1, 61}, o), InvalidArgument); // id == V
    o.stop = {"x"};
    EXPECT_THROW(gen.generate(std::vector<TokenId>{1}, o), InvalidArgument); // no tokenizer
    o.stop = {};
    o.max_tokens = 0;
    EXPECT_THROW(gen.generate(std::vector<TokenId>{1}, o), InvalidArgument);
    EXPECT_THROW(gen.generate(std::string_view("text"), GenerateOptions{}), InvalidArgument);
}

TEST(Generate, EosStopsAndIsNotReturned) {
    Tokenizer tok = byte_tokenizer();
    const TokenId eos = *tok.eos_id();
    ScriptedLM* raw;
    auto lm = std::make_shared<ScriptedLM>(257, 64,
                                           std::vector<TokenId>{'h', 'i', eos, 'x', 'y'});
    raw = lm.get();
    (void)raw;
    Generator gen(lm, tok);
    GenerateOptions o;
    o.sampling.temperature = 0;
    o.max_tokens = 10;
    std::vector<TokenStep> steps;
    auto r = gen.generate(std::vector<TokenId>{'a'}, o, [&](const TokenStep& s) {
        steps.push_back(s);
        return true;
    });
    EXPECT_EQ(r.finish_reason, FinishReason::eos);
    EXPECT_EQ(r.tokens, (std::vector<TokenId>{'h', 'i'}));
    EXPECT_EQ(r.text, "hi");
    ASSERT_EQ(steps.size(), 3u);
    EXPECT_TRUE(steps[2].eos);
    EXPECT_TRUE(steps[2].finished);
    EXPECT_EQ(steps[2].token, eos);
    // ignore_eos: EOS is an ordinary token (its text is the special token's).
    o.ignore_eos = true;
    o.max_tokens = 4;
    auto r2 = gen.generate(std::vector<TokenId>{'a'}, o);
    EXPECT_EQ(r2.finish_reason, FinishReason::length);
    EXPECT_EQ(r2.tokens, (std::vector<TokenId>{'h', 'i', eos, 'x'}));
    // A configured eos_id overrides the tokenizer's.
    o.ignore_eos = false;
    o.eos_id = 'i';
    auto r3 = gen.generate(std::vector<TokenId>{'a'}, o);
    EXPECT_EQ(r3.finish_reason, FinishReason::eos);
    EXPECT_EQ(r3.text, "h");
}

// Tokens for stop-string tests: each byte, then multi-byte pieces.
struct StopFixture {
    Tokenizer tok = byte_tokenizer({"Hel", "lo", " w", "orld", "!\n"});
    // ids of the pieces
    TokenId Hel = 256, lo = 257, w = 258, orld = 259, bang = 260;
    std::vector<TokenId> script() const { return {Hel, lo, w, orld, bang, 'A', 'B'}; }

    struct Out {
        GenerateResult r;
        std::string streamed;
        std::vector<std::string> pieces;
    };
    Out run(std::vector<std::string> stop, int64_t max_tokens = 7) {
        auto lm = std::make_shared<ScriptedLM>(int64_t(tok.vocab_size()), 64, script());
        Generator gen(lm, tok);
        GenerateOptions o;
        o.sampling.temperature = 0;
        o.max_tokens = max_tokens;
        o.stop = std::move(stop);
        Out out;
        out.r = gen.generate(std::vector<TokenId>{'>'}, o, [&](const TokenStep& s) {
            out.streamed += s.text;
            out.pieces.push_back(s.text);
            return true;
        });
        return out;
    }
};

TEST(Generate, StopStringAcrossTokenBoundaries) {
    StopFixture f; // full text: "Hello world!\nAB"
    auto a = f.run({"o wo"}); // spans "lo" | " w" | "orld"
    EXPECT_EQ(a.r.finish_reason, FinishReason::stop);
    EXPECT_EQ(a.r.stop, "o wo");
    EXPECT_EQ(a.r.text, "Hell");
    EXPECT_EQ(a.streamed, "Hell");
    EXPECT_EQ(a.r.tokens.size(), 4u); // every token sampled, the stop's included
    // Held back while it could be a stop: after "Hel" + "lo" only "Hell" may be out.
    ASSERT_GE(a.pieces.size(), 2u);
    EXPECT_EQ(a.pieces[0], "Hel");
    EXPECT_EQ(a.pieces[1], "l");

    auto b = f.run({"rl"}); // inside one token
    EXPECT_EQ(b.r.text, "Hello wo");
    EXPECT_EQ(b.streamed, "Hello wo");

    auto c = f.run({"d!\nA", "world"}); // the earliest match wins
    EXPECT_EQ(c.r.text, "Hello ");
    EXPECT_EQ(c.r.stop, "world");

    auto d = f.run({"o x", "!!"}); // prefixes held back, then released: no stop
    EXPECT_EQ(d.r.finish_reason, FinishReason::length);
    EXPECT_EQ(d.r.text, "Hello world!\nAB");
    EXPECT_EQ(d.streamed, d.r.text);

    auto e = f.run({"AB"}); // matched on the last token allowed
    EXPECT_EQ(e.r.finish_reason, FinishReason::stop);
    EXPECT_EQ(e.r.text, "Hello world!\n");
    EXPECT_EQ(e.streamed, e.r.text);

    auto g = f.run({"d!\nAB"}, 6); // max_tokens cuts first: held text is released at the end
    EXPECT_EQ(g.r.finish_reason, FinishReason::length);
    EXPECT_EQ(g.r.text, "Hello world!\nA");
    EXPECT_EQ(g.streamed, g.r.text);
}

TEST(Generate, StreamingNeverSplitsACharacter) {
    // One byte per token for multi-byte characters, plus tokens that straddle characters.
    const std::string want = "h\xC3\xA9llo w\xC3\xB6rld \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x8E\x89!";
    Tokenizer tok = byte_tokenizer({"\xA9ll", "\x97\xA5\xE6"});
    std::vector<TokenId> script;
    for (size_t i = 0; i < want.size(); ++i) {
        if (want.compare(i, 3, "\xA9ll") == 0) {
            script.push_back(256);
            i += 2;
        } else if (want.compare(i, 3, "\x97\xA5\xE6") == 0) {
            script.push_back(257);
            i += 2;
        } else {
            script.push_back(TokenId(static_cast<unsigned char>(want[i])));
        }
    }
    auto lm = std::make_shared<ScriptedLM>(int64_t(tok.vocab_size()), 128, script);
    Generator gen(lm, tok);
    GenerateOptions o;
    o.sampling.temperature = 0;
    o.max_tokens = int64_t(script.size());
    o.stop = {"\xF0\x9F\x8E\x89?"}; // a stop whose prefix shows up, never completed
    std::string streamed;
    int empty_steps = 0;
    auto r = gen.generate(std::vector<TokenId>{'>'}, o, [&](const TokenStep& s) {
        EXPECT_TRUE(valid_utf8(s.text)) << "step " << s.index;
        empty_steps += s.text.empty();
        streamed += s.text;
        return true;
    });
    EXPECT_EQ(r.text, want);
    EXPECT_EQ(streamed, want);
    EXPECT_GT(empty_steps, 0); // some steps had only part of a character
}

TEST(Generate, RandomBytesStreamAsValidUtf8) {
    // A random model over bytes emits arbitrary byte sequences; every streamed piece is still
    // valid UTF-8 (bytes that cannot form a character become U+FFFD).
    Tokenizer tok = byte_tokenizer();
    ModelConfig cfg = small_config(ModelFamily::llama, int64_t(tok.vocab_size()), 160);
    Transformer model(cfg, 11);
    Generator gen(model, tok);
    GenerateOptions o;
    o.max_tokens = 150;
    o.ignore_eos = true;
    o.sampling.seed = 5;
    o.sampling.logit_bias = {{0x80, 3}, {0xC3, 3}, {0xE6, 3}, {0xF0, 3}, {0xA9, 3}};
    std::string streamed;
    auto r = gen.generate(std::vector<TokenId>{'a', 'b'}, o, [&](const TokenStep& s) {
        EXPECT_TRUE(valid_utf8(s.text)) << "step " << s.index;
        streamed += s.text;
        return true;
    });
    EXPECT_EQ(streamed, r.text);
    EXPECT_TRUE(valid_utf8(r.text));
    EXPECT_EQ(r.tokens.size(), 150u);
}

TEST(Generate, CallbackCanCancel) {
    ModelConfig cfg = small_config(ModelFamily::gpt2);
    Transformer model(cfg);
    Generator gen(model);
    GenerateOptions o;
    o.max_tokens = 20;
    o.sampling.seed = 1;
    int calls = 0;
    auto r = gen.generate(std::vector<TokenId>{1, 2}, o, [&](const TokenStep&) {
        return ++calls < 3;
    });
    EXPECT_EQ(r.finish_reason, FinishReason::cancelled);
    EXPECT_EQ(r.tokens.size(), 3u);
    EXPECT_EQ(calls, 3);
}

TEST(Generate, SessionsKeepTheirOwnCaches) {
    // Two sessions interleaved step by step give what each gives alone.
    ModelConfig cfg = small_config(ModelFamily::llama);
    Transformer model(cfg, 5);
    testing::sharpen(model);
    Generator gen(model);
    GenerateOptions o;
    o.max_tokens = 12;
    o.sampling.temperature = 0;
    std::vector<TokenId> p1 = {1, 2, 3, 4}, p2 = {9, 8};
    auto alone1 = gen.generate(p1, o).tokens, alone2 = gen.generate(p2, o).tokens;
    Session s1 = gen.session(p1, o), s2 = gen.session(p2, o);
    while (!s1.finished() || !s2.finished()) {
        if (!s1.finished()) s1.next();
        if (!s2.finished()) s2.next();
    }
    EXPECT_EQ(s1.result().tokens, alone1);
    EXPECT_EQ(s2.result().tokens, alone2);
    EXPECT_THROW(s1.next(), InvalidArgument); // finished
}

TEST(Generate, TextPromptUsesTheTokenizer) {
    Tokenizer tok = byte_tokenizer();
    ModelConfig cfg = small_config(ModelFamily::gpt2, int64_t(tok.vocab_size()), 64);
    Transformer model(cfg, 2);
    Generator gen(model, tok);
    EXPECT_EQ(gen.encode_prompt("hi"), (std::vector<TokenId>{'h', 'i'}));
    GenerateOptions o;
    o.max_tokens = 5;
    o.sampling.temperature = 0;
    o.ignore_eos = true;
    auto a = gen.generate(std::string_view("hi"), o);
    auto b = gen.generate(std::vector<TokenId>{'h', 'i'}, o);
    EXPECT_EQ(a.tokens, b.tokens);
    EXPECT_EQ(a.text, tok.decode(a.tokens));
    EXPECT_GT(a.prefill_s, 0.0);
    EXPECT_GT(a.decode_s, 0.0);
    EXPECT_EQ(a.n_decode, 4);
}

} // namespace
} // namespace forge
