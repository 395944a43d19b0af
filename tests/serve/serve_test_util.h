// Helpers shared by the serve tests: a small random model with a byte-level tokenizer behind
// the OpenAI routes, and JSON/SSE readers for responses.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "generate/generate_test_util.h"
#include <forge/serve/openai.h>

namespace forge::testing {

/// A sharpened 2-layer GPT-2-family model over byte_tokenizer() (EOS 256), context n_ctx.
inline std::shared_ptr<Transformer> serve_model(int64_t n_ctx = 64, uint64_t seed = 3) {
    ModelConfig cfg = small_config(ModelFamily::gpt2, int64_t(byte_tokenizer().vocab_size()), n_ctx);
    auto m = std::make_shared<Transformer>(cfg, seed);
    sharpen(*m);
    m->eval();
    return m;
}

/// Greedy decoding of n tokens; EOS ends it unless ignore_eos.
inline GenerateOptions greedy(int64_t n, std::vector<std::string> stop = {}, bool ignore_eos = false) {
    GenerateOptions o;
    o.max_tokens = n;
    o.sampling.temperature = 0;
    o.stop = std::move(stop);
    o.ignore_eos = ignore_eos;
    return o;
}

/// A CausalLM whose batched decode steps wait for permits, so tests can hold the engine at a
/// step boundary (e.g. cancel between two steps) without timing. Prefill is not gated.
class GatedLM : public CausalLM {
  public:
    explicit GatedLM(std::shared_ptr<CausalLM> inner) : inner_(std::move(inner)) {}
    int64_t n_vocab() const override { return inner_->n_vocab(); }
    int64_t n_ctx() const override { return inner_->n_ctx(); }
    std::unique_ptr<State> new_state(int64_t capacity) override {
        return inner_->new_state(capacity);
    }
    void eval(State& s, std::span<const TokenId> ids, std::vector<float>& logits) override {
        inner_->eval(s, ids, logits);
    }
    void eval_batch(std::span<State* const> states, std::span<const TokenId> ids,
                    std::span<std::vector<float>* const> logits) override {
        {
            std::unique_lock lk(mu_);
            ++waiting_;
            cv_.notify_all();
            cv_.wait(lk, [&] { return open_ || permits_ > 0; });
            --waiting_;
            if (!open_) --permits_;
        }
        inner_->eval_batch(states, ids, logits);
    }
    /// Lets every step through from now on.
    void open() {
        std::lock_guard lk(mu_);
        open_ = true;
        cv_.notify_all();
    }
    /// Lets `n` more steps through.
    void allow(int64_t n) {
        std::lock_guard lk(mu_);
        permits_ += n;
        cv_.notify_all();
    }
    /// A step is waiting at the gate now.
    bool blocked() {
        std::lock_guard lk(mu_);
        return waiting_ > 0;
    }
    /// Waits until a step is blocked at the gate.
    void wait_blocked() {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return waiting_ > 0; });
    }

  private:
    std::shared_ptr<CausalLM> inner_;
    std::mutex mu_;
    std::condition_variable cv_;
    int64_t permits_ = 0, waiting_ = 0;
    bool open_ = false;
};

/// The `data:` payloads of an SSE body, in order (event lines kept as "event:<name>").
inline std::vector<std::string> sse_data(const std::string& body) {
    std::vector<std::string> out;
    size_t i = 0;
    while (i < body.size()) {
        size_t j = body.find('\n', i);
        if (j == std::string::npos) j = body.size();
        const std::string line = body.substr(i, j - i);
        if (line.rfind("data: ", 0) == 0) out.push_back(line.substr(6));
        else if (line.rfind("event: ", 0) == 0) out.push_back("event:" + line.substr(7));
        i = j + 1;
    }
    return out;
}

} // namespace forge::testing
