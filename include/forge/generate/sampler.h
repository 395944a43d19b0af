// The sampler chain: turns one row of logits into the next token, in llama.cpp's spirit. Each
// stage is a small object that edits a candidate list (logit bias, penalties, temperature,
// top-k, top-p, min-p) and the last stage picks a token (a seeded draw, or argmax). Not beam
// search, grammars or other constraints (later parts of the generate layer).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include <forge/tokenizers/tokenizer.h>

namespace forge {

/// One possible next token and its (edited) logit.
struct Candidate {
    TokenId id = 0;
    float logit = 0.0f;
};

/// The tokens still in the running for the next step. Stages edit `data` in place.
struct CandidateList {
    std::vector<Candidate> data;
    /// data is in descending logit order (ties: lower id first).
    bool sorted = false;
    /// data[i].id == i for every i: the untouched vocabulary in id order (stages may change
    /// logits and keep this; dropping or reordering clears it).
    bool dense = false;
    /// Index into data of the chosen token, set by the last stage (-1: none yet).
    int64_t selected = -1;

    /// Resets to every id of `logits` (n_vocab) with its logit: dense, unsorted.
    void assign(std::span<const float> logits);
    /// Makes data[0, k) the k largest in descending order (the rest in any order). k is
    /// clamped to size(); sort_prefix(size()) sorts everything and sets `sorted`.
    void sort_prefix(size_t k);
    void sort() { sort_prefix(data.size()); }
    /// Keeps data[0, n).
    void truncate(size_t n);
    /// softmax of the logits, in data order, in double (the stages' probabilities).
    std::vector<double> probs() const;
    size_t size() const { return data.size(); }
};

/// The descending order the stages use: higher logit first, then lower id (deterministic).
inline bool candidate_before(const Candidate& a, const Candidate& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

/// A stage of the chain (llama.cpp's llama_sampler_i): apply() edits the candidates; accept()
/// sees every token that joins the sequence (prompt and generated), for stages with memory.
class SamplerStage {
  public:
    virtual ~SamplerStage() = default;
    /// E.g. "top_k(40)".
    virtual std::string describe() const = 0;
    /// Edits `c`; must leave at least one candidate. A picking stage sets c.selected.
    virtual void apply(CandidateList& c) = 0;
    virtual void accept(TokenId /*id*/) {}
    /// Forgets what accept() saw (and reseeds a draw).
    virtual void reset() {}
    virtual std::unique_ptr<SamplerStage> clone() const = 0;
};

/// logit[id] += bias[id]. A bias of -infinity bans the token.
class LogitBias : public SamplerStage {
  public:
    explicit LogitBias(std::map<TokenId, float> bias) : bias_(std::move(bias)) {}
    std::string describe() const override;
    void apply(CandidateList& c) override;
    std::unique_ptr<SamplerStage> clone() const override {
        return std::make_unique<LogitBias>(*this);
    }

  private:
    std::map<TokenId, float> bias_;
};

/// Penalties over the last `last_n` tokens of the sequence (prompt included, as llama.cpp;
/// last_n < 0: the whole sequence). For a token seen c > 0 times there:
///  - repetition (CTRL, Keskar et al. 2019, arXiv:1909.05858 eq. 3): logit > 0 ? logit / r
///    : logit * r, once however many times it was seen;
///  - frequency and presence (OpenAI's definition, platform.openai.com/docs/advanced-usage):
///    logit -= c * frequency + presence.
class Penalties : public SamplerStage {
  public:
    Penalties(int64_t last_n, float repeat, float frequency, float presence)
        : last_n_(last_n), repeat_(repeat), frequency_(frequency), presence_(presence) {}
    std::string describe() const override;
    void apply(CandidateList& c) override;
    void accept(TokenId id) override;
    void reset() override {
        window_.clear();
        counts_.clear();
    }
    std::unique_ptr<SamplerStage> clone() const override {
        return std::make_unique<Penalties>(*this);
    }

  private:
    int64_t last_n_;
    float repeat_, frequency_, presence_;
    std::deque<TokenId> window_;
    std::unordered_map<TokenId, int64_t> counts_; // occurrences within window_
};

/// logit /= t. t == 0 keeps only the argmax (greedy; ties go to the lower id).
class Temperature : public SamplerStage {
  public:
    explicit Temperature(float t) : t_(t) {}
    std::string describe() const override;
    void apply(CandidateList& c) override;
    std::unique_ptr<SamplerStage> clone() const override {
        return std::make_unique<Temperature>(*this);
    }

  private:
    float t_;
};

/// Keeps the k most likely (exactly k; ties broken by lower id). k <= 0: off.
class TopK : public SamplerStage {
  public:
    explicit TopK(int64_t k) : k_(k) {}
    std::string describe() const override;
    void apply(CandidateList& c) override;
    std::unique_ptr<SamplerStage> clone() const override { return std::make_unique<TopK>(*this); }

  private:
    int64_t k_;
};

/// Nucleus sampling (Holtzman et al. 2019, arXiv:1904.09751): keeps the smallest set of most
/// likely tokens whose probabilities sum to >= p (at least one). p >= 1: off.
class TopP : public SamplerStage {
  public:
    explicit TopP(float p) : p_(p) {}
    std::string describe() const override;
    void apply(CandidateList& c) override;
    std::unique_ptr<SamplerStage> clone() const override { return std::make_unique<TopP>(*this); }

  private:
    float p_;
};

/// Min-p (Nguyen et al. 2024, arXiv:2407.01082): keeps tokens whose probability is at least
/// p times the largest one's. p <= 0: off.
class MinP : public SamplerStage {
  public:
    explicit MinP(float p) : p_(p) {}
    std::string describe() const override;
    void apply(CandidateList& c) override;
    std::unique_ptr<SamplerStage> clone() const override { return std::make_unique<MinP>(*this); }

  private:
    float p_;
};

/// Picks the most likely candidate (ties: lower id).
class Greedy : public SamplerStage {
  public:
    std::string describe() const override { return "greedy"; }
    void apply(CandidateList& c) override;
    std::unique_ptr<SamplerStage> clone() const override {
        return std::make_unique<Greedy>(*this);
    }
};

/// Draws from softmax(logits) with std::mt19937_64: the engine's output sequence is fixed by
/// the C++ standard and the uniform variate is made from its bits here (not by
/// std::uniform_real_distribution, whose algorithm varies by library), so the same seed gives
/// the same tokens on every platform.
class Dist : public SamplerStage {
  public:
    explicit Dist(uint64_t seed) : seed_(seed), rng_(seed) {}
    std::string describe() const override;
    void apply(CandidateList& c) override;
    void reset() override { rng_.seed(seed_); }
    std::unique_ptr<SamplerStage> clone() const override { return std::make_unique<Dist>(*this); }

  private:
    uint64_t seed_;
    std::mt19937_64 rng_;
};

/// The knobs of the default chain, OpenAI-style names and defaults (everything off except
/// temperature 1: plain sampling from the model's distribution).
struct SamplerOptions {
    float temperature = 1.0f;       ///< 0 = greedy
    int64_t top_k = 0;              ///< 0 = off
    float top_p = 1.0f;             ///< 1 = off
    float min_p = 0.0f;             ///< 0 = off
    float repeat_penalty = 1.0f;    ///< CTRL-style; 1 = off
    float frequency_penalty = 0.0f; ///< OpenAI; 0 = off
    float presence_penalty = 0.0f;  ///< OpenAI; 0 = off
    int64_t penalty_last_n = 64;    ///< window of the penalties; -1 = whole sequence
    std::map<TokenId, float> logit_bias;
    std::optional<uint64_t> seed;   ///< none: a random seed (see GenerateResult::seed)

    /// Throws InvalidArgument naming the first bad field. n_vocab > 0 also checks the ids of
    /// logit_bias.
    void validate(int64_t n_vocab = 0) const;
};

/// Stages run in order on each row of logits; the last must pick a token.
class SamplerChain {
  public:
    SamplerChain() = default;
    SamplerChain(const SamplerChain& other);
    SamplerChain& operator=(const SamplerChain& other);
    SamplerChain(SamplerChain&&) noexcept = default;
    SamplerChain& operator=(SamplerChain&&) noexcept = default;

    /// The default chain: logit bias, penalties, temperature, top-k, top-p, min-p, draw
    /// (stages that are off are left out). Temperature 0 gives bias, penalties, greedy.
    static SamplerChain from_options(const SamplerOptions& opts, uint64_t seed);

    SamplerChain& add(std::unique_ptr<SamplerStage> stage);
    /// logits: (n_vocab) -> the chosen id. Does not accept() it: the caller does, once the
    /// token is part of the sequence.
    TokenId sample(std::span<const float> logits);
    void accept(TokenId id);
    void reset();
    /// "penalties(...) -> temperature(0.8) -> ... -> dist(seed=1)".
    std::string describe() const;
    /// The candidates as the last sample() left them (after every stage).
    const CandidateList& candidates() const { return cands_; }
    size_t n_stages() const { return stages_.size(); }

  private:
    std::vector<std::unique_ptr<SamplerStage>> stages_;
    CandidateList cands_;
};

} // namespace forge
