// The sampler stages and chain (include/forge/generate/sampler.h). Probabilities are computed
// in double from max-subtracted logits, so a stage's decisions do not depend on float rounding
// of a softmax over 50k+ entries.
#include <forge/generate/sampler.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include <forge/core/error.h>

namespace forge {

// ---------------------------------------------------------------- CandidateList

void CandidateList::assign(std::span<const float> logits) {
    FORGE_CHECK(!logits.empty(), "[sampler] empty logits row");
    data.resize(logits.size());
    bool nan = false;
    for (size_t i = 0; i < logits.size(); ++i) {
        data[i] = {TokenId(i), logits[i]};
        nan |= std::isnan(logits[i]);
    }
    FORGE_CHECK(!nan, "[sampler] the model's logits contain NaN");
    sorted = false;
    dense = true;
    selected = -1;
}

void CandidateList::sort_prefix(size_t k) {
    if (sorted) return;
    k = std::min(k, data.size());
    if (k >= data.size()) {
        std::sort(data.begin(), data.end(), candidate_before);
        sorted = true;
    } else {
        std::partial_sort(data.begin(), data.begin() + long(k), data.end(), candidate_before);
    }
    dense = false;
}

void CandidateList::truncate(size_t n) {
    if (n >= data.size()) return;
    data.resize(n);
    dense = false;
}

namespace {

// max logit of the list; throws when every candidate is banned (-inf).
float max_logit(const CandidateList& c) {
    float m = -std::numeric_limits<float>::infinity();
    for (const Candidate& x : c.data)
        m = std::max(m, x.logit);
    FORGE_CHECK(m > -std::numeric_limits<float>::infinity(),
                "[sampler] every candidate has probability 0 (all logits are -inf; check "
                "logit_bias)");
    return m;
}

} // namespace

std::vector<double> CandidateList::probs() const {
    const double m = max_logit(*this);
    std::vector<double> p(data.size());
    double total = 0;
    for (size_t i = 0; i < data.size(); ++i)
        total += p[i] = std::exp(double(data[i].logit) - m);
    for (double& x : p)
        x /= total;
    return p;
}

// ---------------------------------------------------------------- stages

std::string LogitBias::describe() const {
    return "logit_bias(" + std::to_string(bias_.size()) + " tokens)";
}

void LogitBias::apply(CandidateList& c) {
    if (bias_.empty()) return;
    if (c.dense) {
        for (const auto& [id, b] : bias_)
            if (size_t(id) < c.data.size()) c.data[size_t(id)].logit += b;
    } else {
        for (Candidate& x : c.data)
            if (auto it = bias_.find(x.id); it != bias_.end()) x.logit += it->second;
    }
    c.sorted = false;
}

std::string Penalties::describe() const {
    std::ostringstream os;
    os << "penalties(last_n=" << last_n_ << ", repeat=" << repeat_ << ", frequency=" << frequency_
       << ", presence=" << presence_ << ")";
    return os.str();
}

void Penalties::accept(TokenId id) {
    if (last_n_ == 0) return;
    window_.push_back(id);
    ++counts_[id];
    if (last_n_ > 0 && int64_t(window_.size()) > last_n_) {
        TokenId old = window_.front();
        window_.pop_front();
        if (--counts_[old] == 0) counts_.erase(old);
    }
}

void Penalties::apply(CandidateList& c) {
    if (counts_.empty()) return;
    auto penalise = [&](Candidate& x, int64_t count) {
        float& l = x.logit;
        if (repeat_ != 1.0f) l = l > 0 ? l / repeat_ : l * repeat_;
        l -= float(count) * frequency_ + presence_;
    };
    if (c.dense) {
        for (const auto& [id, count] : counts_)
            if (size_t(id) < c.data.size()) penalise(c.data[size_t(id)], count);
    } else {
        for (Candidate& x : c.data)
            if (auto it = counts_.find(x.id); it != counts_.end()) penalise(x, it->second);
    }
    c.sorted = false;
}

std::string Temperature::describe() const {
    std::ostringstream os;
    os << "temperature(" << t_ << ")";
    return os.str();
}

void Temperature::apply(CandidateList& c) {
    if (t_ > 0) {
        if (t_ == 1.0f) return;
        const float inv = 1.0f / t_; // monotone: keeps `sorted`
        for (Candidate& x : c.data)
            x.logit *= inv;
        return;
    }
    auto best = std::min_element(c.data.begin(), c.data.end(), candidate_before);
    Candidate keep = *best;
    c.data.assign(1, keep);
    c.sorted = true;
    c.dense = false;
}

std::string TopK::describe() const { return "top_k(" + std::to_string(k_) + ")"; }

void TopK::apply(CandidateList& c) {
    if (k_ <= 0 || size_t(k_) >= c.size()) return;
    c.sort_prefix(size_t(k_));
    c.truncate(size_t(k_));
    c.sorted = true;
}

std::string TopP::describe() const {
    std::ostringstream os;
    os << "top_p(" << p_ << ")";
    return os.str();
}

void TopP::apply(CandidateList& c) {
    if (p_ >= 1.0f || c.size() <= 1) return;
    const double m = max_logit(c);
    double total = 0;
    for (const Candidate& x : c.data)
        total += std::exp(double(x.logit) - m);
    // Slack absorbs float rounding when a prefix's mass is p exactly (e.g. 0.5 + 0.25 = 0.75).
    const double target = (double(p_) - 1e-6) * total;
    // Sort only as far as needed: the top k in candidate_before order is unique, so a larger
    // sort_prefix keeps the first k in place and the running sum carries on. Peaked
    // distributions stop after one small partial sort instead of sorting the vocabulary.
    double cum = 0;
    size_t i = 0, k = std::min<size_t>(c.size(), 64);
    for (;;) {
        c.sort_prefix(k);
        for (; i < k; ++i) {
            cum += std::exp(double(c.data[i].logit) - m);
            if (cum >= target) {
                c.truncate(i + 1);
                c.sorted = true;
                return;
            }
        }
        if (k == c.size()) break;
        k = std::min(c.size(), k * 8);
    }
    c.sorted = true; // rounding kept everything; the list is fully sorted by now
}

std::string MinP::describe() const {
    std::ostringstream os;
    os << "min_p(" << p_ << ")";
    return os.str();
}

void MinP::apply(CandidateList& c) {
    if (p_ <= 0.0f || c.size() <= 1) return;
    // p_i >= p * p_max  <=>  logit_i >= max_logit + log(p)
    const double thr = double(max_logit(c)) + std::log(double(p_));
    auto end = std::stable_partition(c.data.begin(), c.data.end(),
                                     [&](const Candidate& x) { return double(x.logit) >= thr; });
    c.truncate(size_t(end - c.data.begin()));
}

void Greedy::apply(CandidateList& c) {
    auto best = std::min_element(c.data.begin(), c.data.end(), candidate_before);
    c.selected = best - c.data.begin();
}

std::string Dist::describe() const { return "dist(seed=" + std::to_string(seed_) + ")"; }

void Dist::apply(CandidateList& c) {
    // One draw per step whatever the candidate count, so step k's variate depends on the seed
    // and k only.
    const double u = double(rng_() >> 11) * 0x1.0p-53; // uniform in [0, 1), 53 bits
    const double m = max_logit(c);
    std::vector<double> w(c.size());
    double total = 0;
    for (size_t i = 0; i < c.size(); ++i)
        total += w[i] = std::exp(double(c.data[i].logit) - m);
    const double target = u * total;
    double cum = 0;
    int64_t pick = -1;
    for (size_t i = 0; i < w.size(); ++i) {
        if (w[i] <= 0) continue;
        pick = int64_t(i); // the last one with mass, if rounding leaves cum <= target
        cum += w[i];
        if (cum > target) break;
    }
    FORGE_ASSERT(pick >= 0);
    c.selected = pick;
}

// ---------------------------------------------------------------- options

void SamplerOptions::validate(int64_t n_vocab) const {
    auto bad = [](const std::string& msg, const std::string& hint = {}) {
        throw InvalidArgument("[sampler] " + msg, hint);
    };
    if (!(temperature >= 0.0f) || !std::isfinite(temperature))
        bad("temperature must be >= 0 (0 = greedy), got " + std::to_string(temperature));
    if (top_k < 0) bad("top_k must be >= 0 (0 = off), got " + std::to_string(top_k));
    if (!(top_p > 0.0f && top_p <= 1.0f))
        bad("top_p must be in (0, 1] (1 = off), got " + std::to_string(top_p));
    if (!(min_p >= 0.0f && min_p <= 1.0f))
        bad("min_p must be in [0, 1] (0 = off), got " + std::to_string(min_p));
    if (!(repeat_penalty > 0.0f) || !std::isfinite(repeat_penalty))
        bad("repeat_penalty must be > 0 (1 = off), got " + std::to_string(repeat_penalty));
    if (!std::isfinite(frequency_penalty))
        bad("frequency_penalty must be finite, got " + std::to_string(frequency_penalty));
    if (!std::isfinite(presence_penalty))
        bad("presence_penalty must be finite, got " + std::to_string(presence_penalty));
    if (penalty_last_n < -1)
        bad("penalty_last_n must be >= -1 (-1 = whole sequence), got " +
            std::to_string(penalty_last_n));
    for (const auto& [id, b] : logit_bias) {
        if (id < 0 || (n_vocab > 0 && id >= n_vocab))
            bad("logit_bias names token " + std::to_string(id) + ", outside the vocabulary [0, " +
                std::to_string(n_vocab) + ")");
        if (std::isnan(b) || b == std::numeric_limits<float>::infinity())
            bad("logit_bias of token " + std::to_string(id) + " is " + std::to_string(b),
                "use -inf to ban a token, or a large finite value to force it");
    }
}

// ---------------------------------------------------------------- chain

SamplerChain::SamplerChain(const SamplerChain& other) : cands_(other.cands_) {
    for (const auto& s : other.stages_)
        stages_.push_back(s->clone());
}

SamplerChain& SamplerChain::operator=(const SamplerChain& other) {
    if (this != &other) {
        SamplerChain copy(other);
        *this = std::move(copy);
    }
    return *this;
}

SamplerChain SamplerChain::from_options(const SamplerOptions& o, uint64_t seed) {
    o.validate();
    SamplerChain chain;
    if (!o.logit_bias.empty()) chain.add(std::make_unique<LogitBias>(o.logit_bias));
    if (o.penalty_last_n != 0 &&
        (o.repeat_penalty != 1.0f || o.frequency_penalty != 0.0f || o.presence_penalty != 0.0f))
        chain.add(std::make_unique<Penalties>(o.penalty_last_n, o.repeat_penalty,
                                              o.frequency_penalty, o.presence_penalty));
    if (o.temperature == 0.0f) { // greedy: the filters cannot change the argmax
        chain.add(std::make_unique<Greedy>());
        return chain;
    }
    if (o.temperature != 1.0f) chain.add(std::make_unique<Temperature>(o.temperature));
    if (o.top_k > 0) chain.add(std::make_unique<TopK>(o.top_k));
    if (o.top_p < 1.0f) chain.add(std::make_unique<TopP>(o.top_p));
    if (o.min_p > 0.0f) chain.add(std::make_unique<MinP>(o.min_p));
    chain.add(std::make_unique<Dist>(seed));
    return chain;
}

SamplerChain& SamplerChain::add(std::unique_ptr<SamplerStage> stage) {
    FORGE_CHECK(stage != nullptr, "[sampler] null stage");
    stages_.push_back(std::move(stage));
    return *this;
}

TokenId SamplerChain::sample(std::span<const float> logits) {
    FORGE_CHECK(!stages_.empty(), "[sampler] the chain has no stages");
    cands_.assign(logits);
    for (auto& s : stages_) {
        s->apply(cands_);
        FORGE_ASSERT(!cands_.data.empty());
    }
    FORGE_CHECK(cands_.selected >= 0 && size_t(cands_.selected) < cands_.size(),
                "[sampler] the chain's last stage must pick a token (end it with Dist or Greedy): ",
                describe());
    return cands_.data[size_t(cands_.selected)].id;
}

void SamplerChain::accept(TokenId id) {
    for (auto& s : stages_)
        s->accept(id);
}

void SamplerChain::reset() {
    for (auto& s : stages_)
        s->reset();
}

std::string SamplerChain::describe() const {
    std::string out;
    for (const auto& s : stages_) {
        if (!out.empty()) out += " -> ";
        out += s->describe();
    }
    return out;
}

} // namespace forge
