// Shared pieces of the training tests: a scratch folder, a small text corpus, a tiny model.
#pragma once

#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <forge/autograd/autograd.h>
#include <forge/core/error.h>
#include <forge/models/config.h>
#include <forge/models/transformer.h>
#include <forge/train/data.h>
#include <forge/train/trainer.h>

namespace forge::test {

/// A fresh folder under the build tree, removed first if it exists.
inline std::filesystem::path scratch(const std::string& name) {
    auto p = std::filesystem::path(FORGE_BINARY_DIR) / "train_test_tmp" / name;
    std::filesystem::remove_all(p);
    std::filesystem::create_directories(p);
    return p;
}

/// The first `bytes` of the repository's tinyshakespeare.txt.
inline std::string shakespeare(size_t bytes) {
    return read_file_bytes(FORGE_SOURCE_DIR "/data/tinyshakespeare.txt").substr(0, bytes);
}

inline void write_file(const std::filesystem::path& p, const std::string& text) {
    std::ofstream o(p, std::ios::binary | std::ios::trunc);
    o << text;
}

/// A 2-layer GPT-2 with 32-wide embeddings and 16 positions.
inline ModelConfig tiny_config(int64_t vocab) {
    ModelConfig c = ModelConfig::preset("tiny");
    c.vocab_size = vocab;
    c.n_layer = 2;
    c.n_head = 2;
    c.n_head_kv = 2;
    c.n_embd = 32;
    c.n_ff = 128;
    c.n_ctx = 16;
    c.head_dim = 0;
    c.dropout = 0;
    return c;
}

/// Tokenized char-level text of `bytes` bytes in a scratch folder (trainer tests).
struct Fixture {
    std::filesystem::path dir;
    TrainingTokenizer tok;
    TokenFile tokens;
};

inline Fixture make_data(const std::string& name, size_t bytes = 40000) {
    auto dir = scratch(name);
    write_file(dir / "a.txt", shakespeare(bytes));
    auto tok = make_training_tokenizer("char", {dir / "a.txt"}, dir / "cache");
    auto cache = tokenize_cached({dir / "a.txt"}, tok.tokenizer, tok.hash, dir / "cache");
    return {dir, tok, cache.tokens};
}

/// A few quick steps of a tiny run, no progress output.
inline TrainOptions small_options() {
    TrainOptions o;
    o.steps = 8;
    o.batch = 4;
    o.seq_len = 16;
    o.lr = 3e-3;
    o.min_lr = 3e-4;
    o.warmup = 2;
    o.beta2 = 0.99;
    o.eval_every = 0;
    o.eval_iters = 2;
    o.progress = false;
    return o;
}

/// Every parameter's values, in named_parameters() order.
inline std::vector<float> flat_weights(const Transformer& m) {
    std::vector<float> out;
    for (auto& [name, t] : m.named_parameters()) {
        auto v = t.to_vector<float>();
        out.insert(out.end(), v.begin(), v.end());
    }
    return out;
}

/// The next training step must stop with an Error whose message contains every one of `parts`.
inline void expect_step_fails_naming(Trainer& t, const std::vector<std::string>& parts) {
    try {
        t.train_step();
        FAIL() << "no error";
    } catch (const Error& e) {
        const std::string msg = e.what();
        for (const std::string& part : parts)
            EXPECT_NE(msg.find(part), std::string::npos) << msg;
    }
}

/// After the run's first step, one weight set to NaN: the next step must stop with an error
/// that names step 2 and the NaN loss (the trainer's guard, with or without loss scaling).
inline void expect_nan_weight_stops_step_2(Trainer& t, Transformer& m) {
    {
        NoGradGuard ng;
        m.named_parameters()[2].second.data<float>()[0] = std::numeric_limits<float>::quiet_NaN();
    }
    expect_step_fails_naming(t, {"step 2", "loss is nan"});
}

} // namespace forge::test
