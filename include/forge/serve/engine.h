// The serving engine: N slots and one scheduler thread doing continuous batching. Each tick it
// drops cancelled requests, admits queued ones into free slots (prefill, then their first
// token), runs ONE batched decode step for every live slot (CausalLM::eval_batch) and samples
// per slot, pushing each token to its request's EngineStream. Not HTTP: the OpenAI routes (openai.h) sit on top.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <forge/generate/generator.h>

namespace forge::serve {

class Metrics;

struct EngineOptions {
    /// Sequences decoded together (each holds a KV cache while it runs).
    int slots = 4;
    /// Jobs waiting for a slot at most; a submit() beyond it gets HttpError 503.
    int max_queue = 64;
    /// Prompt tokens prefilled per tick at most (at least one prompt is admitted whenever a
    /// slot is free): long prompts arriving together are spread over ticks, so running streams
    /// keep getting decode steps between them.
    int64_t prefill_tokens_per_tick = 1024;
    /// Optional: engine gauges, token counters and the time-to-first-token histogram.
    std::shared_ptr<Metrics> metrics{};
};

/// One generation to run.
struct EngineJob {
    std::vector<TokenId> prompt;
    GenerateOptions opts;
    /// -1: no logprobs. 0..20: the sampled token's log-probability plus this many of the most
    /// likely alternatives, from the model's distribution (the raw logits' log-softmax, before
    /// penalties, bias or temperature).
    int top_logprobs = -1;
};

struct TokenLogprob {
    TokenId id = 0;
    float logprob = 0;
};

/// What a stream's reader receives: one per sampled token, and a final one per job.
struct EngineEvent {
    /// Which job of the submit() (0 .. n-1).
    size_t index = 0;
    /// The step (when !done, or done with a last token: step.token >= 0).
    TokenStep step;
    /// [sampled, then top alternatives] when the job asked for logprobs.
    std::vector<TokenLogprob> logprobs;
    /// The job has ended: `result` holds its tokens, text and finish reason.
    bool done = false;
    GenerateResult result;
    /// Non-empty: the job failed (done is set).
    std::string error;
};

/// The reader's side of one submit(): its jobs' events, in order per job. Dropping the last
/// reference (or cancel()) frees the jobs' slots within one decode step.
class EngineStream {
  public:
    explicit EngineStream(size_t n_jobs);
    /// The next event, waiting up to `timeout`; false on timeout or when every job has ended
    /// and all events were read (then finished() is true).
    bool next(EngineEvent& out, std::chrono::milliseconds timeout);
    /// Ends all its jobs (finish reason `cancelled`).
    void cancel() { cancelled_ = true; }
    bool cancelled() const { return cancelled_; }
    /// Every job has ended and every event was read.
    bool finished() const;
    size_t size() const { return n_jobs_; }

    /// Engine side.
    void push(EngineEvent ev);

  private:
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::deque<EngineEvent> events_;
    size_t n_jobs_, n_done_ = 0;
    std::atomic<bool> cancelled_{false};
};

/// Usage:
///   Engine engine(lm, tokenizer, {.slots = 8});
///   auto stream = engine.submit({{.prompt = ids, .opts = opts}});   // 503 when full
///   EngineEvent ev;
///   while (!stream->finished()) if (stream->next(ev, 50ms)) use(ev);
class Engine {
  public:
    /// Starts the scheduler thread. `lm` is shared with the caller (e.g. for embeddings).
    Engine(std::shared_ptr<CausalLM> lm, std::optional<Tokenizer> tokenizer,
           EngineOptions opts = {});
    ~Engine();
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    /// Queues the jobs (all or none). Throws InvalidArgument naming the problem for a bad job
    /// (empty prompt, ids outside the vocabulary, prompt + max_tokens over the context, bad
    /// sampling options), HttpError 503 when the queue is full or the engine is stopping.
    std::shared_ptr<EngineStream> submit(std::vector<EngineJob> jobs);

    int slots() const { return opts_.slots; }
    /// Slots running a job now.
    int busy() const { return busy_; }
    /// Jobs waiting for a slot.
    int queued() const;
    /// Decode steps run so far (batched steps count once).
    uint64_t steps() const { return steps_; }
    CausalLM& lm() const { return *lm_; }
    const std::optional<Tokenizer>& tokenizer() const { return tokenizer_; }

    /// Refuses new jobs, ends queued and running ones (as cancelled) and joins the thread.
    /// Called by the destructor; safe to call twice.
    void stop();

  private:
    struct Job;
    void run();
    void admit(std::vector<std::unique_ptr<Job>>& live);
    /// Samples the job's next token and streams it; false once the job has ended.
    bool sample(Job& job);
    void emit(Job& job, const TokenStep& step);
    void finish(Job& job, const std::string& error = {});
    void update_gauges(size_t n_live);

    std::shared_ptr<CausalLM> lm_;
    std::optional<Tokenizer> tokenizer_;
    EngineOptions opts_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::unique_ptr<Job>> queue_;
    bool stopping_ = false;
    std::atomic<int> busy_{0};
    std::atomic<uint64_t> steps_{0};
    std::thread thread_;
};

} // namespace forge::serve
