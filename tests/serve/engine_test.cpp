// The slot engine: its outputs against Generator's (the oracle), queueing beyond the slots, the
// bounded queue's 503, cancellation and dropped readers freeing slots, and its metrics.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "serve/serve_test_util.h"
#include <forge/serve/middleware.h>

namespace forge::serve {
namespace {

using namespace std::chrono_literals;

std::vector<TokenId> prompt_of(size_t i) {
    std::vector<TokenId> p;
    for (size_t k = 0; k < 2 + i; ++k) p.push_back(TokenId(97 + (i * 5 + k * 3) % 26));
    return p;
}

// The engine tests run to max_tokens.
GenerateOptions greedy(int64_t n) { return testing::greedy(n, {}, true); }

// Reads every event of a stream: the final result per job.
std::vector<GenerateResult> drain(EngineStream& s, std::vector<std::string>* texts = nullptr) {
    std::vector<GenerateResult> out(s.size());
    if (texts) texts->assign(s.size(), "");
    EngineEvent ev;
    while (!s.finished())
        if (s.next(ev, 100ms)) {
            EXPECT_TRUE(ev.error.empty()) << ev.error;
            if (texts) (*texts)[ev.index] += ev.step.text;
            if (ev.done) out[ev.index] = ev.result;
        }
    return out;
}

// Waits (without a time limit that could fail a slow machine) until cond() holds.
template <class F> void eventually(F cond) {
    while (!cond()) std::this_thread::sleep_for(1ms);
}

// Seven jobs for three slots: some wait, and jobs join and leave the batch mid-way.
void check_queueing(int64_t prefill_budget) {
    auto model = testing::serve_model();
    Tokenizer tok = testing::byte_tokenizer();
    Generator gen(*model, tok);
    auto metrics = std::make_shared<Metrics>();
    Engine engine(std::make_shared<TransformerLM>(*model), tok,
                  {.slots = 3, .max_queue = 16, .prefill_tokens_per_tick = prefill_budget,
                   .metrics = metrics});
    std::vector<std::shared_ptr<EngineStream>> streams;
    for (size_t i = 0; i < 7; ++i)
        streams.push_back(engine.submit({{prompt_of(i), greedy(int64_t(4 + 3 * i))}}));
    for (size_t i = 0; i < 7; ++i) {
        std::vector<std::string> texts;
        auto r = drain(*streams[i], &texts);
        auto want = gen.generate(prompt_of(i), greedy(int64_t(4 + 3 * i)));
        EXPECT_EQ(r[0].tokens, want.tokens) << "job " << i;
        EXPECT_EQ(texts[0], want.text) << "job " << i;
        EXPECT_EQ(r[0].finish_reason, FinishReason::length);
    }
    eventually([&] { return engine.busy() == 0; });
    EXPECT_EQ(engine.queued(), 0);
    int64_t total = 0;
    for (size_t i = 0; i < 7; ++i) total += int64_t(4 + 3 * i);
    EXPECT_EQ(metrics->value("forge_tokens_generated_total"), double(total));
    EXPECT_EQ(metrics->value("forge_time_to_first_token_seconds"), 7.0); // one per job
    EXPECT_EQ(metrics->value("forge_engine_slots_busy"), 0.0);
    // Fewer steps than tokens: decode steps were shared.
    EXPECT_LT(engine.steps(), uint64_t(total));
}

TEST(Engine, GreedyOutputsEqualGeneratorWithQueueing) { check_queueing(1024); }
// A budget of one token admits one newcomer per tick.
TEST(Engine, GreedyOutputsEqualGeneratorOnePrefillPerTick) { check_queueing(1); }

TEST(Engine, SeveralJobsInOneSubmitAndSeededSampling) {
    auto model = testing::serve_model();
    Tokenizer tok = testing::byte_tokenizer();
    Generator gen(*model, tok);
    Engine engine(std::make_shared<TransformerLM>(*model), tok, {.slots = 2});
    GenerateOptions o = greedy(10);
    o.sampling.temperature = 0.9f;
    o.sampling.seed = 42;
    GenerateOptions o2 = o;
    o2.sampling.seed = 43;
    auto s = engine.submit({{prompt_of(1), o}, {prompt_of(1), o2}, {prompt_of(2), greedy(5)}});
    auto r = drain(*s);
    EXPECT_EQ(r[0].tokens, gen.generate(prompt_of(1), o).tokens);
    EXPECT_EQ(r[1].tokens, gen.generate(prompt_of(1), o2).tokens);
    EXPECT_EQ(r[2].tokens, gen.generate(prompt_of(2), greedy(5)).tokens);
}

TEST(Engine, FullQueueIs503AndBadJobsAreInvalid) {
    auto model = testing::serve_model();
    Tokenizer tok = testing::byte_tokenizer();
    Engine engine(std::make_shared<TransformerLM>(*model), tok, {.slots = 1, .max_queue = 1});
    try {
        engine.submit({{prompt_of(0), greedy(4)}, {prompt_of(1), greedy(4)},
                       {prompt_of(2), greedy(4)}});
        FAIL() << "expected 503";
    } catch (const HttpError& e) {
        EXPECT_EQ(e.status(), 503);
        EXPECT_EQ(e.code(), "overloaded");
        EXPECT_EQ(e.headers.at("retry-after"), "1");
    }
    EXPECT_THROW(engine.submit({{{}, greedy(4)}}), InvalidArgument);           // empty prompt
    EXPECT_THROW(engine.submit({{{5000}, greedy(4)}}), InvalidArgument);       // outside vocab
    EXPECT_THROW(engine.submit({{prompt_of(0), greedy(100)}}), InvalidArgument); // over ctx
    // Still serving after the refusals.
    EXPECT_EQ(drain(*engine.submit({{prompt_of(0), greedy(3)}}))[0].tokens.size(), 3u);
}

// Cancel (or drop the reader) while the engine is held before a decode step: the job ends
// within that one step and the slot is free again.
TEST(Engine, CancelAndDroppedReaderFreeTheSlot) {
    auto model = testing::serve_model(256);
    Tokenizer tok = testing::byte_tokenizer();
    for (bool drop : {false, true}) {
        auto gate = std::make_shared<testing::GatedLM>(std::make_shared<TransformerLM>(*model));
        Engine engine(gate, tok, {.slots = 2});
        auto a = engine.submit({{prompt_of(0), greedy(200)}});
        EngineEvent ev;
        while (!a->next(ev, 100ms)) {
        }
        EXPECT_EQ(ev.step.index, 0); // the first token, sampled after prefill
        gate->wait_blocked();          // the second step waits at the gate
        EXPECT_EQ(engine.busy(), 1);
        std::weak_ptr<EngineStream> weak = a;
        if (drop) a.reset();
        else a->cancel();
        gate->open();
        eventually([&] { return engine.busy() == 0; });
        if (!drop) {
            GenerateResult r;
            while (!a->finished())
                if (a->next(ev, 100ms) && ev.done) r = ev.result;
            EXPECT_EQ(r.finish_reason, FinishReason::cancelled);
            EXPECT_LE(r.tokens.size(), 2u); // at most the step that was under way
        }
        EXPECT_TRUE(drop ? weak.expired() : true);
        // Both slots are usable again.
        auto c = engine.submit({{prompt_of(2), greedy(3)}, {prompt_of(3), greedy(3)}});
        EXPECT_EQ(drain(*c)[1].tokens.size(), 3u);
    }
}

TEST(Engine, StopEndsRunningAndQueuedJobsWithAnError) {
    auto model = testing::serve_model(256);
    Tokenizer tok = testing::byte_tokenizer();
    auto gate = std::make_shared<testing::GatedLM>(std::make_shared<TransformerLM>(*model));
    Engine engine(gate, tok, {.slots = 1});
    auto s = engine.submit({{prompt_of(0), greedy(200)}, {prompt_of(1), greedy(200)}});
    gate->wait_blocked();
    std::thread stopper([&] { engine.stop(); });
    eventually([&] {
        try {
            engine.submit({{prompt_of(0), greedy(2)}});
            return false; // stop() has not begun yet: this job will end with an error too
        } catch (const HttpError& e) {
            EXPECT_EQ(e.status(), 503);
            return true;
        }
    });
    gate->open();
    stopper.join();
    EngineEvent ev;
    size_t errors = 0;
    while (!s->finished())
        if (s->next(ev, 100ms) && ev.done) errors += !ev.error.empty();
    EXPECT_EQ(errors, 2u);
}

} // namespace
} // namespace forge::serve
