// Helpers shared by the generate tests: small random Transformers of both families, a
// byte-level tokenizer, a scripted CausalLM that emits a fixed token sequence, a UTF-8 checker.
#pragma once

#include <string>
#include <vector>

#include <forge/autograd/autograd.h>
#include <forge/core/ops.h>
#include <forge/generate/generator.h>
#include <forge/models/config.h>
#include <forge/models/transformer.h>
#include <forge/tokenizers/tokenizer.h>

namespace forge::testing {

/// A few-thousand-parameter model: 2 layers, 4 heads (Llama: 2 KV heads, untied head).
inline ModelConfig small_config(ModelFamily family, int64_t vocab = 61, int64_t n_ctx = 64) {
    ModelConfig c;
    c.family = family;
    c.vocab_size = vocab;
    c.n_ctx = n_ctx;
    c.n_layer = 2;
    c.n_head = 4;
    c.n_head_kv = family == ModelFamily::llama ? 2 : 4;
    c.n_embd = 32;
    c.n_ff = family == ModelFamily::llama ? 48 : 128;
    c.tie_embeddings = family == ModelFamily::gpt2;
    c.validate();
    return c;
}

/// GPT-2's init (std 0.02) gives nearly flat logits; matrices scaled up make the argmax
/// decisive, so the greedy oracle tests the cache and not rounding between near-ties.
inline void sharpen(Transformer& m, double scale = 8.0) {
    NoGradGuard ng;
    for (auto& [name, t] : m.named_parameters())
        if (t.dim() == 2) t.detach().copy_(mul_scalar(t.detach(), scale));
}

/// 256 single bytes (id = byte), then `extra` multi-byte tokens, then <|endoftext|> as EOS.
inline Tokenizer byte_tokenizer(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> tokens;
    for (int b = 0; b < 256; ++b)
        tokens.push_back(std::string(1, char(b)));
    for (const auto& e : extra)
        tokens.push_back(e);
    const TokenId eos = TokenId(tokens.size());
    return Tokenizer::from_ranks(tokens, Tokenizer::known_pattern("gpt2"),
                                 {{"<|endoftext|>", eos, true}}, "test-bytes");
}

/// A CausalLM that predicts script[k] after k generated tokens (logit 10, others 0) and
/// nothing in particular after the script ends.
class ScriptedLM : public CausalLM {
  public:
    ScriptedLM(int64_t vocab, int64_t n_ctx, std::vector<TokenId> script)
        : vocab_(vocab), n_ctx_(n_ctx), script_(std::move(script)) {}
    int64_t n_vocab() const override { return vocab_; }
    int64_t n_ctx() const override { return n_ctx_; }
    std::unique_ptr<State> new_state(int64_t capacity) override {
        auto s = std::make_unique<S>();
        s->capacity = capacity;
        return s;
    }
    void eval(State& state, std::span<const TokenId> ids, std::vector<float>& logits) override {
        auto& s = static_cast<S&>(state);
        if (s.prompt < 0) s.prompt = int64_t(ids.size());
        s.n += int64_t(ids.size());
        if (s.n > s.capacity) throw InvalidArgument("ScriptedLM: over capacity");
        logits.assign(size_t(vocab_), 0.0f);
        const int64_t k = s.n - s.prompt;
        if (k < int64_t(script_.size())) logits[size_t(script_[size_t(k)])] = 10.0f;
    }

  private:
    struct S : State {
        int64_t n = 0, prompt = -1, capacity = 0;
        int64_t length() const override { return n; }
    };
    int64_t vocab_, n_ctx_;
    std::vector<TokenId> script_;
};

/// True if s is well-formed UTF-8 (no overlongs, surrogates or code points past U+10FFFF).
inline bool valid_utf8(const std::string& s) {
    size_t i = 0;
    while (i < s.size()) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        size_t len;
        uint32_t cp;
        if (c < 0x80) { ++i; continue; }
        if ((c & 0xE0) == 0xC0) len = 2, cp = c & 0x1F;
        else if ((c & 0xF0) == 0xE0) len = 3, cp = c & 0x0F;
        else if ((c & 0xF8) == 0xF0) len = 4, cp = c & 0x07;
        else return false;
        if (i + len > s.size()) return false;
        for (size_t k = 1; k < len; ++k) {
            const unsigned char d = static_cast<unsigned char>(s[i + k]);
            if ((d & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (d & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += len;
    }
    return true;
}

} // namespace forge::testing
