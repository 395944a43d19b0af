// The slot engine (include/forge/serve/engine.h): a bounded queue, N slots and one scheduler
// thread. Slots are touched by the scheduler thread only; the queue and the stop flag are
// shared under mu_.
#include <forge/serve/engine.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include <forge/serve/http.h>
#include <forge/serve/middleware.h>

namespace forge::serve {

namespace {
using Clock = std::chrono::steady_clock;

// log-softmax of the raw logits: the sampled id first, then the k most likely of the first
// n_top ids.
std::vector<TokenLogprob> logprobs_of(std::span<const float> logits, size_t n_top, TokenId chosen,
                                      int k) {
    const float mx = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (float l : logits) sum += std::exp(double(l - mx));
    const float lse = mx + float(std::log(sum));
    std::vector<TokenLogprob> out{{chosen, logits[size_t(chosen)] - lse}};
    if (k <= 0) return out;
    std::vector<TokenId> ids(n_top);
    std::iota(ids.begin(), ids.end(), 0);
    const size_t n = std::min(size_t(k), ids.size());
    std::partial_sort(ids.begin(), ids.begin() + long(n), ids.end(), [&](TokenId a, TokenId b) {
        return logits[size_t(a)] > logits[size_t(b)] ||
               (logits[size_t(a)] == logits[size_t(b)] && a < b);
    });
    for (size_t i = 0; i < n; ++i) out.push_back({ids[i], logits[size_t(ids[i])] - lse});
    return out;
}
} // namespace

// ---------------------------------------------------------------- EngineStream

EngineStream::EngineStream(size_t n_jobs) : n_jobs_(n_jobs) {}

bool EngineStream::next(EngineEvent& out, std::chrono::milliseconds timeout) {
    std::unique_lock lk(mu_);
    cv_.wait_for(lk, timeout, [&] { return !events_.empty() || n_done_ == n_jobs_; });
    if (events_.empty()) return false;
    out = std::move(events_.front());
    events_.pop_front();
    return true;
}

bool EngineStream::finished() const {
    std::lock_guard lk(mu_);
    return events_.empty() && n_done_ == n_jobs_;
}

void EngineStream::push(EngineEvent ev) {
    {
        std::lock_guard lk(mu_);
        if (ev.done) ++n_done_;
        events_.push_back(std::move(ev));
    }
    cv_.notify_all();
}

// ---------------------------------------------------------------- Engine

struct Engine::Job {
    // Weak: a reader that goes away (drops the stream) cancels the job.
    std::weak_ptr<EngineStream> stream;
    size_t index = 0;
    Session session;
    int top_logprobs = -1;
    Clock::time_point submitted;
    bool first_token = true;

    std::shared_ptr<EngineStream> reader() const {
        auto s = stream.lock();
        return s && !s->cancelled() ? s : nullptr;
    }
};

Engine::Engine(std::shared_ptr<CausalLM> lm, std::optional<Tokenizer> tokenizer,
               EngineOptions opts)
    : lm_(std::move(lm)), tokenizer_(std::move(tokenizer)), opts_(std::move(opts)) {
    FORGE_CHECK(lm_ != nullptr, "[engine] no model");
    FORGE_CHECK(opts_.slots >= 1 && opts_.slots <= 4096, "[engine] slots must be in [1, 4096], got ",
                opts_.slots);
    FORGE_CHECK(opts_.max_queue >= 0, "[engine] max_queue must be >= 0, got ", opts_.max_queue);
    FORGE_CHECK(opts_.prefill_tokens_per_tick >= 1, "[engine] prefill_tokens_per_tick must be >= 1, got ",
                opts_.prefill_tokens_per_tick);
    if (auto& m = opts_.metrics) {
        m->gauge("forge_engine_slots", "Generation slots");
        m->gauge("forge_engine_slots_busy", "Slots running a generation now");
        m->gauge("forge_engine_queue_depth", "Generations waiting for a slot");
        m->counter("forge_tokens_generated_total", "Tokens sampled (EOS included)");
        m->counter("forge_tokens_prompt_total", "Prompt tokens prefilled");
        m->counter("forge_engine_generations_total", "Finished generations by finish reason");
        m->counter("forge_engine_rejected_total", "Generations refused because the queue was full");
        m->histogram("forge_time_to_first_token_seconds",
                     "From submit to the first sampled token (queueing and prefill included)",
                     {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30});
        m->set("forge_engine_slots", {}, opts_.slots);
        update_gauges(0);
    }
    thread_ = std::thread([this] { run(); });
}

Engine::~Engine() { stop(); }

int Engine::queued() const {
    std::lock_guard lk(mu_);
    return int(queue_.size());
}

std::shared_ptr<EngineStream> Engine::submit(std::vector<EngineJob> jobs) {
    FORGE_CHECK(!jobs.empty(), "[engine] submit of no jobs");
    auto stream = std::make_shared<EngineStream>(jobs.size());
    std::vector<std::unique_ptr<Job>> made;
    const auto now = Clock::now();
    for (size_t i = 0; i < jobs.size(); ++i) {
        // Session validates the job (context overflow, vocabulary, options) here, on the
        // caller's thread, so a bad request is a 400 before it queues.
        made.push_back(std::make_unique<Job>(Job{
            stream, i, Session(lm_, tokenizer_, std::move(jobs[i].prompt), std::move(jobs[i].opts)),
            jobs[i].top_logprobs, now}));
    }
    {
        std::lock_guard lk(mu_);
        if (stopping_) throw HttpError(503, "the server is shutting down", "", "", "shutting_down");
        // Free slots take jobs at the next tick, so they count as room too.
        const size_t room = size_t(opts_.max_queue) + size_t(opts_.slots - busy_);
        if (queue_.size() + made.size() > room) {
            if (opts_.metrics) opts_.metrics->inc("forge_engine_rejected_total");
            HttpError e(503,
                        detail::str_cat("the server is overloaded: ", queue_.size(),
                                        " generations are waiting for one of ", opts_.slots,
                                        " slots; retry later"),
                        "", "", "overloaded");
            e.headers["retry-after"] = "1";
            throw e;
        }
        for (auto& j : made) queue_.push_back(std::move(j));
        if (opts_.metrics) opts_.metrics->set("forge_engine_queue_depth", {}, double(queue_.size()));
    }
    cv_.notify_all();
    return stream;
}

void Engine::stop() {
    {
        std::lock_guard lk(mu_);
        stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
}

void Engine::update_gauges(size_t n_live) {
    busy_ = int(n_live);
    if (!opts_.metrics) return;
    opts_.metrics->set("forge_engine_slots_busy", {}, double(n_live));
    std::lock_guard lk(mu_);
    opts_.metrics->set("forge_engine_queue_depth", {}, double(queue_.size()));
}

void Engine::emit(Job& job, const TokenStep& step) {
    auto reader = job.stream.lock();
    if (opts_.metrics) {
        opts_.metrics->inc("forge_tokens_generated_total");
        if (job.first_token)
            opts_.metrics->observe("forge_time_to_first_token_seconds", {},
                                   std::chrono::duration<double>(Clock::now() - job.submitted).count());
    }
    job.first_token = false;
    if (!reader) return;
    EngineEvent ev;
    ev.index = job.index;
    ev.step = step;
    if (job.top_logprobs >= 0) {
        // Alternatives only among ids the tokenizer can spell (a model's vocabulary may be
        // padded past it); the distribution is still the model's whole row.
        std::span<const float> row = job.session.logits();
        const size_t n_spell = tokenizer_ ? std::min(row.size(), tokenizer_->vocab_size()) : row.size();
        ev.logprobs = logprobs_of(row, n_spell, step.token, job.top_logprobs);
    }
    if (step.finished) {
        ev.done = true;
        ev.result = job.session.result();
    }
    reader->push(std::move(ev));
}

void Engine::finish(Job& job, const std::string& error) {
    if (!job.session.finished()) job.session.cancel();
    const GenerateResult& r = job.session.result();
    if (opts_.metrics)
        opts_.metrics->inc("forge_engine_generations_total",
                           {{"finish_reason", error.empty() ? std::string(finish_reason_name(
                                                                  r.finish_reason))
                                                            : "error"}});
    auto reader = job.stream.lock();
    if (!reader) return;
    EngineEvent ev;
    ev.index = job.index;
    ev.step.token = -1;
    ev.done = true;
    ev.result = r;
    ev.error = error;
    reader->push(std::move(ev));
}

bool Engine::sample(Job& job) {
    try {
        TokenStep step = job.session.next();
        emit(job, step);
        if (!step.finished) return true;
        if (opts_.metrics)
            opts_.metrics->inc("forge_engine_generations_total",
                               {{"finish_reason",
                                 std::string(finish_reason_name(job.session.result().finish_reason))}});
        return false;
    } catch (const std::exception& e) {
        finish(job, e.what());
        return false;
    }
}

void Engine::admit(std::vector<std::unique_ptr<Job>>& live) {
    std::vector<std::unique_ptr<Job>> fresh;
    {
        std::lock_guard lk(mu_);
        int64_t budget = opts_.prefill_tokens_per_tick;
        while (live.size() + fresh.size() < size_t(opts_.slots) && !queue_.empty()) {
            const int64_t n = int64_t(queue_.front()->session.prompt().size());
            if (!fresh.empty() && n > budget) break;
            budget -= n;
            fresh.push_back(std::move(queue_.front()));
            queue_.pop_front();
        }
    }
    for (auto& job : fresh) {
        if (!job->reader()) { // gone while queued
            finish(*job);
            continue;
        }
        try {
            job->session.prefill();
            if (opts_.metrics)
                opts_.metrics->inc("forge_tokens_prompt_total", {},
                                   double(job->session.prompt().size()));
            // The first token goes out now, not after the other newcomers' prefills.
            if (sample(*job)) live.push_back(std::move(job));
        } catch (const std::exception& e) {
            finish(*job, e.what());
        }
    }
}

void Engine::run() {
    std::vector<std::unique_ptr<Job>> live;
    for (;;) {
        {
            std::unique_lock lk(mu_);
            cv_.wait(lk, [&] { return stopping_ || !queue_.empty() || !live.empty(); });
            if (stopping_) {
                for (auto& j : queue_) live.push_back(std::move(j));
                queue_.clear();
                lk.unlock();
                for (auto& j : live) finish(*j, "the server is shutting down");
                update_gauges(0);
                return;
            }
        }
        // 1. A reader that went away (or cancelled) frees its slot before this step's work.
        std::erase_if(live, [&](std::unique_ptr<Job>& j) {
            if (j->reader()) return false;
            finish(*j);
            return true;
        });
        // 2. Prefill newcomers into free slots and sample their first token.
        admit(live);
        update_gauges(live.size());
        if (live.empty()) continue;
        // 3. One decode step for every slot with a token to feed.
        std::vector<Session*> sessions;
        for (auto& j : live) sessions.push_back(&j->session);
        try {
            Session::feed_batch(sessions);
            ++steps_;
        } catch (const std::exception& e) {
            for (auto& j : live) finish(*j, e.what());
            live.clear();
            update_gauges(0);
            continue;
        }
        // 4. Sample per slot and stream the token out.
        std::erase_if(live, [&](std::unique_ptr<Job>& j) { return !sample(*j); });
        update_gauges(live.size());
    }
}

} // namespace forge::serve
