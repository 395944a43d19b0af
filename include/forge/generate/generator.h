// Text generation: the prompt goes through the model once (prefill, filling a KV cache), then
// one token per step (decode) through the sampler chain, until max_tokens, EOS or a stop
// string; text streams out UTF-8-safe, with any possible start of a stop string held back.
// Batch 1 per Session; many Sessions may share one model, each with its own KV cache, and
// Session::feed_batch runs their decode steps together (the serving engine's continuous
// batching). Not yet: beam search, speculative decoding, constraints.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <forge/core/tensor.h>
#include <forge/generate/sampler.h>
#include <forge/tokenizers/tokenizer.h>

namespace forge {

class Transformer;

/// What generation needs from a model: a causal LM whose per-sequence state (its KV cache)
/// grows as tokens are fed. TransformerLM adapts forge::Transformer; tests and later backends
/// (a batching scheduler, speculative drafts) plug in here.
class CausalLM {
  public:
    /// One sequence's memory of the tokens fed so far.
    class State {
      public:
        virtual ~State() = default;
        /// Tokens fed so far (the next one sits at this position).
        virtual int64_t length() const = 0;
    };

    virtual ~CausalLM() = default;
    /// Logits per row.
    virtual int64_t n_vocab() const = 0;
    /// Max positions a sequence may have.
    virtual int64_t n_ctx() const = 0;
    /// A fresh state able to hold `capacity` positions (<= n_ctx()).
    virtual std::unique_ptr<State> new_state(int64_t capacity) = 0;
    /// Appends `ids` (non-empty) to the state's sequence and writes into `logits` (resized to
    /// n_vocab) the logits that predict the token after the last of them.
    virtual void eval(State& state, std::span<const TokenId> ids, std::vector<float>& logits) = 0;
    /// One token for each of S sequences: appends ids[s] to *states[s] and writes the logits
    /// that follow it into *logits[s]. A batching scheduler's decode step; the default loops
    /// over eval(), models override it to read their weights once for all S.
    virtual void eval_batch(std::span<State* const> states, std::span<const TokenId> ids,
                            std::span<std::vector<float>* const> logits);
};

/// forge::Transformer as a CausalLM, batch 1, f32 KV cache. Holds a reference: the model must
/// outlive this object and its states. Puts the model in eval mode (no dropout). Concurrent
/// eval() calls on different states are as safe as concurrent Transformer::forward calls.
class TransformerLM : public CausalLM {
  public:
    /// prefill_chunk: prompt tokens per forward call (bounds activation memory).
    explicit TransformerLM(Transformer& model, int64_t prefill_chunk = 512);
    int64_t n_vocab() const override;
    int64_t n_ctx() const override;
    std::unique_ptr<State> new_state(int64_t capacity) override;
    void eval(State& state, std::span<const TokenId> ids, std::vector<float>& logits) override;
    /// Transformer::decode_step for all S, then the head on the (S, C) hidden states.
    void eval_batch(std::span<State* const> states, std::span<const TokenId> ids,
                    std::span<std::vector<float>* const> logits) override;
    Transformer& model() { return model_; }

  private:
    // h: (1, T, C) hidden states -> logits (V) of the last position.
    void project_last(const Tensor& h, std::vector<float>& logits) const;
    Transformer& model_;
    int64_t prefill_chunk_;
    Tensor head_; // (V, C): the LM head's weight (the embedding when tied)
};

/// Why generation ended.
enum class FinishReason { none, length, eos, stop, cancelled };
/// "none", "length", "eos", "stop", "cancelled".
std::string_view finish_reason_name(FinishReason r);

struct GenerateOptions {
    /// Tokens to generate at most (EOS, when sampled, is not counted or returned).
    int64_t max_tokens = 256;
    SamplerOptions sampling;
    /// Generation stops when the decoded text contains one of these; the text returned and
    /// streamed ends just before it. Needs a tokenizer.
    std::vector<std::string> stop;
    /// The end-of-sequence token; none: the tokenizer's eos_id() (if it has one).
    std::optional<TokenId> eos_id;
    /// Keep going past EOS (it is then an ordinary token).
    bool ignore_eos = false;
    /// Decoding of the output text.
    DecodeOptions decode;

    /// Throws InvalidArgument naming the first bad field.
    void validate() const;
};

/// One decode step, as streamed.
struct TokenStep {
    /// The token sampled at this step (EOS included).
    TokenId token = -1;
    /// 0-based index of this step.
    int64_t index = 0;
    /// Text released by this step: complete UTF-8 characters, possibly empty (a character or a
    /// possible stop string still pending) or longer than this token's text (held text let go).
    std::string text;
    /// `token` is the end-of-sequence token (it is not part of GenerateResult::tokens).
    bool eos = false;
    /// Generation ended at this step.
    bool finished = false;
};

/// Return false to stop generating (finish reason `cancelled`).
using TokenCallback = std::function<bool(const TokenStep&)>;

struct GenerateResult {
    /// Generated ids, without EOS. With a stop string, every token sampled is here, including
    /// those that spelled the stop string.
    std::vector<TokenId> tokens;
    /// Decoded text of `tokens`, cut before the stop string (empty without a tokenizer).
    std::string text;
    FinishReason finish_reason = FinishReason::none;
    /// The stop string that ended generation (finish_reason == stop).
    std::string stop;
    uint64_t seed = 0;      ///< the sampler's seed (drawn at random if none was given)
    int64_t n_prompt = 0;   ///< prompt tokens
    int64_t n_decode = 0;   ///< tokens fed one at a time after the prompt
    double prefill_s = 0;   ///< wall time of the prompt's forward pass(es)
    double decode_s = 0;    ///< wall time of all steps: sampling, detokenizing, decode forwards

    /// Prompt tokens per second of prefill.
    double prefill_tok_s() const { return prefill_s > 0 ? double(n_prompt) / prefill_s : 0; }
    /// Decode forwards per second of step time (every step samples; all but the first feed
    /// the previous token through the model).
    double decode_tok_s() const { return decode_s > 0 ? double(n_decode) / decode_s : 0; }
};

/// One generation in progress, step by step (what a server drives). Owns its KV cache.
///   Session s(lm, tok, prompt_ids, opts);
///   s.prefill();                       // optional: next() prefills first
///   while (!s.finished()) stream(s.next().text);
class Session {
  public:
    /// tokenizer may be none: ids only (no text, no stop strings). Throws InvalidArgument for
    /// an empty prompt, ids outside the vocabulary, bad options, or prompt + max_tokens over
    /// the model's context (no silent truncation).
    Session(std::shared_ptr<CausalLM> lm, std::optional<Tokenizer> tokenizer,
            std::vector<TokenId> prompt, GenerateOptions opts);
    Session(Session&&) noexcept;
    Session& operator=(Session&&) noexcept;
    ~Session();

    /// Runs the prompt through the model. Idempotent.
    void prefill();
    /// Samples the next token (prefilling first if needed) and advances. Throws if finished().
    TokenStep next();
    bool finished() const;
    /// Ends generation now (finish reason `cancelled`); held-back text is dropped.
    void cancel();

    /// Counts, timings and (once finished) the final tokens and text.
    const GenerateResult& result() const;
    /// The logits (n_vocab, before any sampler stage) that the latest next() sampled from; after
    /// prefill() and before the first next(), the prompt's. Empty before prefill. (A sampled
    /// token is fed to the model at the start of the following next(), so its text streams
    /// out without waiting for a forward pass.)
    std::span<const float> logits() const;
    const SamplerChain& sampler() const;
    const std::vector<TokenId>& prompt() const;

    /// For a batching scheduler: feeds the token each session sampled last (the feed that
    /// next() would otherwise start with) in one CausalLM::eval_batch call, so the following
    /// next() only samples. Sessions with nothing to feed (not prefilled, finished, or already
    /// fed) are skipped. All sessions must share one CausalLM.
    static void feed_batch(std::span<Session* const> sessions);

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

/// A model and (optionally) its tokenizer, ready to generate.
///   Generator gen(model, tokenizer);
///   auto r = gen.generate("ROMEO:", {.max_tokens = 64}, [](const TokenStep& s) {
///       std::fputs(s.text.c_str(), stdout); return true; });
class Generator {
  public:
    /// `model` must outlive the generator and its sessions.
    explicit Generator(Transformer& model, std::optional<Tokenizer> tokenizer = {});
    explicit Generator(std::shared_ptr<CausalLM> lm, std::optional<Tokenizer> tokenizer = {});

    Session session(std::vector<TokenId> prompt, const GenerateOptions& opts) const;
    /// The prompt text encoded with the tokenizer's special tokens (e.g. Llama's BOS); an
    /// empty prompt becomes BOS alone. Throws InvalidArgument without a tokenizer.
    Session session(std::string_view prompt, const GenerateOptions& opts) const;

    /// Prefill + decode to the end; `on_token` sees each step.
    GenerateResult generate(std::span<const TokenId> prompt, const GenerateOptions& opts,
                            const TokenCallback& on_token = {}) const;
    GenerateResult generate(std::string_view prompt, const GenerateOptions& opts,
                            const TokenCallback& on_token = {}) const;

    /// The prompt ids generate(text) would use.
    std::vector<TokenId> encode_prompt(std::string_view prompt) const;

    const std::optional<Tokenizer>& tokenizer() const { return tokenizer_; }
    CausalLM& lm() const { return *lm_; }

  private:
    std::shared_ptr<CausalLM> lm_;
    std::optional<Tokenizer> tokenizer_;
};

/// Runs a session to the end, calling on_token per step; returns its result.
GenerateResult run_session(Session& session, const TokenCallback& on_token = {});

} // namespace forge
