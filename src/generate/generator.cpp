// Session (prefill, decode steps, stop strings, streaming), Generator and TransformerLM
// (include/forge/generate/generator.h).
#include <forge/generate/generator.h>

#include <algorithm>
#include <chrono>
#include <random>

#include <forge/autograd/autograd.h>
#include <forge/core/ops.h>
#include <forge/models/transformer.h>

namespace forge {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

// ids -> (1, T) i64
Tensor ids_tensor(std::span<const TokenId> ids) {
    std::vector<int64_t> v(ids.begin(), ids.end());
    return Tensor::from_vector(v, {1, int64_t(v.size())});
}

// eval_batch's three spans hold one entry per sequence.
void check_batch(size_t n_states, size_t n_ids, size_t n_logits) {
    FORGE_CHECK(n_states == n_ids && n_logits == n_ids, "[generate] eval_batch: ", n_states,
                " states, ", n_ids, " ids, ", n_logits, " logit rows");
}

struct TransformerState : CausalLM::State {
    KVCache cache;
    int64_t length() const override { return cache.length; }
};

} // namespace

// ---------------------------------------------------------------- CausalLM

void CausalLM::eval_batch(std::span<State* const> states, std::span<const TokenId> ids,
                          std::span<std::vector<float>* const> logits) {
    check_batch(states.size(), ids.size(), logits.size());
    for (size_t i = 0; i < ids.size(); ++i) eval(*states[i], ids.subspan(i, 1), *logits[i]);
}

// ---------------------------------------------------------------- TransformerLM

TransformerLM::TransformerLM(Transformer& model, int64_t prefill_chunk)
    : model_(model), prefill_chunk_(prefill_chunk) {
    FORGE_CHECK(prefill_chunk > 0, "[generate] prefill_chunk must be > 0, got ", prefill_chunk);
    model_.eval();
    // The LM head, to project only the prompt's last position (see eval()). The names are HF's
    // (transformer.h): an untied head is lm_head.weight, a tied one the token embedding.
    const auto sd = model_.state_dict();
    const bool gpt2 = model_.config().family == ModelFamily::gpt2;
    for (const char* name : {"lm_head.weight", gpt2 ? "transformer.wte.weight"
                                                    : "model.embed_tokens.weight"}) {
        if (auto it = sd.find(name); it != sd.end()) {
            head_ = it->second;
            break;
        }
    }
    FORGE_ASSERT(head_.defined() && head_.dim() == 2 &&
                 head_.size(0) == model_.config().vocab_size);
}

int64_t TransformerLM::n_vocab() const { return model_.config().vocab_size; }
int64_t TransformerLM::n_ctx() const { return model_.config().n_ctx; }

std::unique_ptr<CausalLM::State> TransformerLM::new_state(int64_t capacity) {
    FORGE_CHECK(capacity > 0 && capacity <= n_ctx(), "[generate] a sequence of ", capacity,
                " positions does not fit the model's context of ", n_ctx());
    auto st = std::make_unique<TransformerState>();
    st->cache = KVCache::create(model_.config(), 1, capacity, DType::f32, model_.device());
    return st;
}

void TransformerLM::eval(State& state, std::span<const TokenId> ids, std::vector<float>& logits) {
    auto* st = dynamic_cast<TransformerState*>(&state);
    FORGE_CHECK(st != nullptr, "[generate] this state was not made by this TransformerLM");
    FORGE_CHECK(!ids.empty(), "[generate] eval of no tokens");
    NoGradGuard no_grad;
    const int64_t n = int64_t(ids.size());
    // Hidden states (in chunks for a long prompt), then the head on the last position only:
    // earlier positions' logits are never used, and the head (C x V) is a third of GPT-2
    // 124M's FLOPs and weight bytes per token.
    Tensor h; // (1, T_chunk, C)
    for (int64_t i = 0; i < n; i += prefill_chunk_) {
        const int64_t len = std::min(prefill_chunk_, n - i);
        h = model_.hidden(ids_tensor(ids.subspan(size_t(i), size_t(len))), &st->cache);
    }
    project_last(h, logits);
}

void TransformerLM::eval_batch(std::span<State* const> states, std::span<const TokenId> ids,
                               std::span<std::vector<float>* const> logits) {
    check_batch(states.size(), ids.size(), logits.size());
    if (ids.empty()) return;
    std::vector<KVCache*> caches;
    for (State* state : states) {
        auto* st = dynamic_cast<TransformerState*>(state);
        FORGE_CHECK(st != nullptr, "[generate] this state was not made by this TransformerLM");
        caches.push_back(&st->cache);
    }
    NoGradGuard no_grad;
    const int64_t S = int64_t(ids.size()), V = head_.size(0);
    Tensor h = model_.decode_step(std::vector<int64_t>(ids.begin(), ids.end()), caches);
    // The head in groups of 16 rows, as in decode_step: the CPU matmul's few-row kernels sum each
    // row in the same order for 1..16 rows, so a sequence's logits do not depend on how many
    // others share the step.
    for (int64_t s0 = 0; s0 < S; s0 += 16) {
        const int64_t n = std::min<int64_t>(16, S - s0);
        Tensor out = matmul(h.narrow(0, s0, n), head_.t()) // (n, V), on the host
                         .to(DType::f32)
                         .to(Device::cpu())
                         .contiguous();
        const float* p = out.data<float>();
        for (int64_t s = 0; s < n; ++s)
            logits[size_t(s0 + s)]->assign(p + s * V, p + (s + 1) * V);
    }
}

void TransformerLM::project_last(const Tensor& h, std::vector<float>& logits) const {
    const int64_t V = head_.size(0), C = head_.size(1);
    // (1, C) x (C, V): the CPU matmul runs one-row products as a GEMV, so this reads the head
    // once at memory speed (docs/PERF.md, Generation).
    Tensor last = h.narrow(1, h.size(1) - 1, 1).reshape({1, C});
    Tensor row =
        matmul(last, head_.t()).reshape({V}).to(DType::f32).to(Device::cpu()).contiguous();
    const float* p = row.data<float>();
    logits.assign(p, p + V);
}

// ---------------------------------------------------------------- options

std::string_view finish_reason_name(FinishReason r) {
    switch (r) {
    case FinishReason::none: return "none";
    case FinishReason::length: return "length";
    case FinishReason::eos: return "eos";
    case FinishReason::stop: return "stop";
    case FinishReason::cancelled: return "cancelled";
    }
    return "?";
}

void GenerateOptions::validate() const {
    FORGE_CHECK(max_tokens >= 1, "[generate] max_tokens must be >= 1, got ", max_tokens);
    for (const std::string& s : stop)
        FORGE_CHECK(!s.empty(), "[generate] a stop string is empty");
    FORGE_CHECK(!eos_id || *eos_id >= 0, "[generate] eos_id must be >= 0, got ", *eos_id);
    sampling.validate();
}

// ---------------------------------------------------------------- Session

struct Session::Impl {
    std::shared_ptr<CausalLM> lm;
    std::optional<Tokenizer> tok;
    std::vector<TokenId> prompt;
    GenerateOptions opts;
    std::optional<TokenId> eos;
    int64_t n_sample = 0; // ids >= n_sample are never sampled (outside the tokenizer)
    SamplerChain chain;
    std::unique_ptr<CausalLM::State> state;
    std::optional<IncrementalDecoder> decoder;
    std::vector<float> logits; // (n_vocab): predicts the next token
    bool prefilled = false;
    std::optional<TokenId> pending; // sampled, in the output, not yet fed to the model
    int64_t n_steps = 0;
    // Streaming: `text` is everything decoded so far; [0, emitted) has been released.
    std::string text;
    size_t emitted = 0;
    bool finished = false;
    GenerateResult result;

    void finish(FinishReason r) {
        finished = true;
        result.finish_reason = r;
        if (r != FinishReason::stop) result.text = text;
        pending.reset();
    }

    // Earliest stop-string match in text, searching from `emitted`: whatever may start a match
    // is held back, so a match never begins in released text. Returns (pos, which) or npos.
    std::pair<size_t, size_t> find_stop() const {
        size_t best = std::string::npos, which = 0;
        for (size_t i = 0; i < opts.stop.size(); ++i) {
            size_t p = text.find(opts.stop[i], emitted);
            if (p < best) best = p, which = i;
        }
        return {best, which};
    }

    // Bytes at the end of text that could still grow into a stop string: the longest suffix of
    // the unreleased text that is a proper prefix of some stop string.
    size_t holdback() const {
        size_t h = 0;
        const size_t avail = text.size() - emitted;
        for (const std::string& s : opts.stop)
            for (size_t len = std::min(s.size() - 1, avail); len > h; --len)
                if (text.compare(text.size() - len, len, s, 0, len) == 0) {
                    h = len;
                    break;
                }
        return h;
    }

    std::string release(size_t upto) {
        std::string out = text.substr(emitted, upto - emitted);
        emitted = upto;
        return out;
    }

    // After new text: stop at a stop string, or release what cannot be part of one. With
    // `final`, the decoder is flushed first and nothing is held back.
    std::string advance_text(bool final) {
        if (!decoder) return {};
        if (final) text += decoder->flush();
        if (!opts.stop.empty()) {
            auto [pos, which] = find_stop();
            if (pos != std::string::npos) {
                std::string out = release(pos);
                result.stop = opts.stop[which];
                text.resize(pos);
                result.text = text;
                finish(FinishReason::stop);
                return out;
            }
        }
        return release(final ? text.size() : text.size() - holdback());
    }
};

Session::Session(std::shared_ptr<CausalLM> lm, std::optional<Tokenizer> tokenizer,
                 std::vector<TokenId> prompt, GenerateOptions opts)
    : impl_(std::make_unique<Impl>()) {
    Impl& s = *impl_;
    FORGE_CHECK(lm != nullptr, "[generate] no model");
    opts.validate();
    const int64_t V = lm->n_vocab(), n_ctx = lm->n_ctx();
    opts.sampling.validate(V);
    FORGE_CHECK(!prompt.empty(), "[generate] the prompt has no tokens");
    for (size_t i = 0; i < prompt.size(); ++i)
        FORGE_CHECK(prompt[i] >= 0 && prompt[i] < V, "[generate] prompt token ", i, " is id ",
                    prompt[i], ", outside the model's vocabulary [0, ", V, ")");
    const int64_t n_prompt = int64_t(prompt.size());
    if (n_prompt + opts.max_tokens > n_ctx)
        throw InvalidArgument(
            detail::str_cat("[generate] the prompt's ", n_prompt, " tokens + max_tokens ",
                            opts.max_tokens, " = ", n_prompt + opts.max_tokens,
                            " exceed the model's context of ", n_ctx, " tokens"),
            detail::str_cat("shorten the prompt or ask for at most ",
                            std::max<int64_t>(0, n_ctx - n_prompt), " tokens"));
    FORGE_CHECK(opts.stop.empty() || tokenizer, "[generate] stop strings need a tokenizer");

    s.lm = std::move(lm);
    s.tok = std::move(tokenizer);
    s.prompt = std::move(prompt);
    s.opts = std::move(opts);
    if (!s.opts.ignore_eos) s.eos = s.opts.eos_id ? s.opts.eos_id : s.tok ? s.tok->eos_id() : std::nullopt;
    s.n_sample = s.tok ? std::min<int64_t>(V, int64_t(s.tok->vocab_size())) : V;
    uint64_t seed;
    if (s.opts.sampling.seed) {
        seed = *s.opts.sampling.seed;
    } else {
        std::random_device rd;
        seed = (uint64_t(rd()) << 32) ^ uint64_t(rd());
    }
    s.result.seed = seed;
    s.result.n_prompt = n_prompt;
    s.chain = SamplerChain::from_options(s.opts.sampling, seed);
    for (TokenId id : s.prompt)
        s.chain.accept(id); // penalties count the prompt (llama.cpp's choice)
    if (s.tok) s.decoder.emplace(s.tok->incremental_decoder(s.opts.decode));
}

Session::Session(Session&&) noexcept = default;
Session& Session::operator=(Session&&) noexcept = default;
Session::~Session() = default;

void Session::prefill() {
    Impl& s = *impl_;
    if (s.prefilled) return;
    auto t0 = Clock::now();
    // The last sampled token is never fed, so prompt + max_tokens - 1 positions suffice.
    const int64_t capacity = int64_t(s.prompt.size()) + s.opts.max_tokens - 1;
    s.state = s.lm->new_state(capacity);
    s.lm->eval(*s.state, s.prompt, s.logits);
    FORGE_ASSERT(int64_t(s.logits.size()) == s.lm->n_vocab());
    s.prefilled = true;
    s.result.prefill_s = seconds_since(t0);
}

TokenStep Session::next() {
    Impl& s = *impl_;
    FORGE_CHECK(!s.finished, "[generate] next() on a finished session (finish reason ",
                finish_reason_name(s.result.finish_reason), ")");
    prefill();
    auto t0 = Clock::now();
    if (s.pending) {
        const TokenId id = *s.pending;
        s.lm->eval(*s.state, std::span<const TokenId>(&id, 1), s.logits);
        ++s.result.n_decode;
        s.pending.reset();
    }
    TokenStep step;
    step.index = s.n_steps++;
    step.token = s.chain.sample(std::span<const float>(s.logits.data(), size_t(s.n_sample)));
    if (s.eos && step.token == *s.eos) {
        step.eos = true;
        step.text = s.advance_text(true);
        if (!s.finished) s.finish(FinishReason::eos);
    } else {
        s.chain.accept(step.token);
        s.result.tokens.push_back(step.token);
        if (s.decoder) s.text += s.decoder->push(step.token);
        const bool last = int64_t(s.result.tokens.size()) >= s.opts.max_tokens;
        step.text = s.advance_text(last);
        if (!s.finished) {
            if (last) s.finish(FinishReason::length);
            else s.pending = step.token;
        }
    }
    step.finished = s.finished;
    s.result.decode_s += seconds_since(t0);
    return step;
}

bool Session::finished() const { return impl_->finished; }

void Session::cancel() {
    Impl& s = *impl_;
    if (s.finished) return;
    s.text.resize(s.emitted); // what the caller has seen
    s.finish(FinishReason::cancelled);
}

const GenerateResult& Session::result() const { return impl_->result; }
std::span<const float> Session::logits() const { return impl_->logits; }
const SamplerChain& Session::sampler() const { return impl_->chain; }
const std::vector<TokenId>& Session::prompt() const { return impl_->prompt; }

void Session::feed_batch(std::span<Session* const> sessions) {
    std::vector<CausalLM::State*> states;
    std::vector<TokenId> ids;
    std::vector<std::vector<float>*> logits;
    std::vector<Impl*> fed;
    CausalLM* lm = nullptr;
    for (Session* session : sessions) {
        Impl& s = *session->impl_;
        if (!s.prefilled || s.finished || !s.pending) continue;
        FORGE_CHECK(!lm || lm == s.lm.get(), "[generate] feed_batch: sessions of different models");
        lm = s.lm.get();
        states.push_back(s.state.get());
        ids.push_back(*s.pending);
        logits.push_back(&s.logits);
        fed.push_back(&s);
    }
    if (fed.empty()) return;
    auto t0 = Clock::now();
    lm->eval_batch(states, ids, logits);
    const double dt = seconds_since(t0);
    for (Impl* s : fed) {
        s->pending.reset();
        ++s->result.n_decode;
        s->result.decode_s += dt; // each sequence waited the whole step
    }
}

GenerateResult run_session(Session& session, const TokenCallback& on_token) {
    while (!session.finished()) {
        TokenStep step = session.next();
        if (on_token && !on_token(step) && !step.finished) session.cancel();
    }
    return session.result();
}

// ---------------------------------------------------------------- Generator

Generator::Generator(Transformer& model, std::optional<Tokenizer> tokenizer)
    : lm_(std::make_shared<TransformerLM>(model)), tokenizer_(std::move(tokenizer)) {}

Generator::Generator(std::shared_ptr<CausalLM> lm, std::optional<Tokenizer> tokenizer)
    : lm_(std::move(lm)), tokenizer_(std::move(tokenizer)) {
    FORGE_CHECK(lm_ != nullptr, "[generate] no model");
}

std::vector<TokenId> Generator::encode_prompt(std::string_view prompt) const {
    FORGE_CHECK(tokenizer_, "[generate] a text prompt needs a tokenizer");
    EncodeOptions eo;
    eo.add_special_tokens = true; // e.g. Llama's BOS, as HF's tokenizer(text) does
    std::vector<TokenId> ids = tokenizer_->encode(prompt, eo);
    if (ids.empty()) {
        if (auto bos = tokenizer_->bos_id(); bos && prompt.empty()) return {*bos};
        if (prompt.empty())
            throw InvalidArgument("[generate] the prompt is empty and the tokenizer has no BOS "
                                  "token to start from",
                                  "give a prompt");
        throw InvalidArgument(detail::str_cat("[generate] the prompt (", prompt.size(),
                                              " bytes) encodes to no tokens"),
                              "a character-level tokenizer drops characters it has not seen; "
                              "use characters from the training text");
    }
    return ids;
}

Session Generator::session(std::vector<TokenId> prompt, const GenerateOptions& opts) const {
    return Session(lm_, tokenizer_, std::move(prompt), opts);
}

Session Generator::session(std::string_view prompt, const GenerateOptions& opts) const {
    return session(encode_prompt(prompt), opts);
}

GenerateResult Generator::generate(std::span<const TokenId> prompt, const GenerateOptions& opts,
                                   const TokenCallback& on_token) const {
    Session s = session(std::vector<TokenId>(prompt.begin(), prompt.end()), opts);
    return run_session(s, on_token);
}

GenerateResult Generator::generate(std::string_view prompt, const GenerateOptions& opts,
                                   const TokenCallback& on_token) const {
    Session s = session(prompt, opts);
    return run_session(s, on_token);
}

} // namespace forge
