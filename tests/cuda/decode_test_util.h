// Shared by the GPU decode tests (decode_test.cpp, quant_decode_test.cpp): the small model both
// families run at, the comparisons of logit vectors against the CPU's, and the teacher-forced
// script both run them through.
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <forge/generate/generator.h>
#include <forge/models/config.h>

namespace forge::test {

// tiny's shapes with head dim 64, 3 layers; Llama with grouped-query attention and an FFN width
// (688) whose rows are not whole quantization blocks.
inline ModelConfig small_decode_config(ModelFamily family) {
    ModelConfig c = ModelConfig::preset("tiny");
    c.vocab_size = 512;
    c.n_ctx = 160;
    c.n_embd = 256;
    c.n_head = 4; // head dim 64
    c.n_head_kv = 4;
    c.n_ff = 1024;
    c.n_layer = 3;
    if (family == ModelFamily::llama) {
        c.family = ModelFamily::llama;
        c.n_head_kv = 2; // grouped-query attention
        c.n_ff = 688;
        c.tie_embeddings = false;
        c.norm_eps = 1e-6f;
        c.rope_theta = 10000.f;
    }
    c.validate();
    return c;
}

inline int64_t argmax(const std::vector<float>& v) {
    return std::max_element(v.begin(), v.end()) - v.begin();
}
// Top-1 minus top-2 logit. Rounding moves each logit by at most max_abs_diff, so a margin over
// twice that cannot flip the argmax: those steps must agree.
inline float margin(std::vector<float> v) {
    std::partial_sort(v.begin(), v.begin() + 2, v.end(), std::greater<float>());
    return v[0] - v[1];
}
inline double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
    double d = 0, n = 0;
    for (size_t i = 0; i < a.size(); ++i)
        d += double(a[i] - b[i]) * (a[i] - b[i]), n += double(b[i]) * b[i];
    return std::sqrt(d / n);
}
inline float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
    float m = 0;
    for (size_t i = 0; i < a.size(); ++i)
        m = std::max(m, std::abs(a[i] - b[i]));
    return m;
}

struct LogitAgreement {
    double worst = 0; // largest rel_diff of one eval's logits
    int decided = 0;  // evals whose reference margin is clear of the logit error
    int agreed = 0;   // of those, the evals whose argmax agrees
};

// What the teacher-forced runs feed: a prompt, greedy steps, a second prompt chunk after decode
// (its first token is the last step's), more greedy steps.
struct TeacherScript {
    std::vector<TokenId> prompt;
    int first_steps;
    std::vector<TokenId> second_prompt_tail;
    int second_steps;
};
// 42 evals: an 8-token prompt, 24 steps, 5 more prompt tokens, 16 steps.
inline const TeacherScript kShortScript{{5, 77, 301, 2, 9, 460, 128, 33}, 24, {17, 250, 3, 99}, 16};
// 142 evals over 149 positions: 5 prompt tokens, 100 steps, 4 more, 40 steps.
inline const TeacherScript kLongScript{{3, 141, 59, 26, 5}, 100, {35, 89, 79}, 40};

// Teacher forcing: `lm` and `ref` get ref's greedy tokens along `script`. Every eval's logits
// must be within `tol` of ref's (rel_diff), and the argmax equal wherever ref's top-2 margin
// exceeds twice the largest logit difference.
inline LogitAgreement teacher_forced_logits(CausalLM& ref, CausalLM::State& rs, CausalLM& lm,
                                            CausalLM::State& gs, double tol,
                                            const TeacherScript& script = kShortScript) {
    LogitAgreement a;
    std::vector<float> lr, lg;
    auto step = [&](std::span<const TokenId> ids, const std::string& what) {
        ref.eval(rs, ids, lr);
        lm.eval(gs, ids, lg);
        a.worst = std::max(a.worst, rel_diff(lg, lr));
        EXPECT_LE(rel_diff(lg, lr), tol) << what;
        if (margin(lr) > 2 * max_abs_diff(lg, lr)) {
            ++a.decided;
            a.agreed += argmax(lg) == argmax(lr);
            EXPECT_EQ(argmax(lg), argmax(lr)) << what;
        }
        return TokenId(argmax(lr));
    };
    TokenId t = step(script.prompt, "prompt");
    int i = 0;
    for (; i < script.first_steps; ++i)
        t = step(std::span(&t, 1), "step " + std::to_string(i));
    std::vector<TokenId> more = {t};
    more.insert(more.end(), script.second_prompt_tail.begin(), script.second_prompt_tail.end());
    t = step(more, "second prompt");
    for (; i < script.first_steps + script.second_steps; ++i)
        t = step(std::span(&t, 1), "step " + std::to_string(i));
    EXPECT_EQ(gs.length(), rs.length());
    return a;
}

// greedy()'s tokens checked step by step: `first`, then toks[0], toks[1], ... are fed to `lm`
// (state ls) and `ref` (state rs), both already past the same prompt. Each toks[i] must be the
// argmax of lm's logits for that feed (the device argmax against eval's), and ref's wherever
// ref's top-2 margin exceeds twice the largest logit difference. Returns how many steps were
// decided so.
inline int check_greedy_tokens(CausalLM& lm, CausalLM::State& ls, CausalLM& ref,
                               CausalLM::State& rs, TokenId first,
                               const std::vector<TokenId>& toks) {
    std::vector<float> lg, lr;
    TokenId fed = first;
    int decided = 0;
    for (size_t i = 0; i < toks.size(); ++i) {
        lm.eval(ls, std::span(&fed, 1), lg);
        ref.eval(rs, std::span(&fed, 1), lr);
        EXPECT_EQ(toks[i], argmax(lg)) << "step " << i << ": device argmax vs eval's logits";
        if (margin(lr) > 2 * max_abs_diff(lg, lr)) {
            ++decided;
            EXPECT_EQ(toks[i], argmax(lr)) << "step " << i;
        }
        fed = toks[i];
    }
    return decided;
}

} // namespace forge::test
