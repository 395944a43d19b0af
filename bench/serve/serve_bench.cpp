// Serving figures for docs/PERF.md (## Serving), one line each:
//  1. continuous batching: aggregate tokens/s of 16 concurrent streams vs one stream on the
//     `gpt2` preset (random weights) through the slot engine, next to Generator's batch-1
//     decode; time to first token p50/p99 of the 16 (queueing and prefill included);
//  2. server overhead of a one-token completion on `tiny`: HTTP over loopback, and
//     App::handle in-process, minus the same generation submitted to the engine directly.
// Runs alternate and repeat (--reps, default 3); medians are printed, since the dev box is a
// shared 2-core VM. Usage: serve_bench [--reps N] [--tokens N] [--requests N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>

#include <forge/generate/generator.h>
#include <forge/models/config.h>
#include <forge/models/transformer.h>
#include <forge/serve/engine.h>
#include <forge/serve/openai.h>

namespace {

using namespace forge;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double quantile(std::vector<double> v, double q) {
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, size_t(q * double(v.size() - 1) + 0.5))];
}
double median(const std::vector<double>& v) { return quantile(v, 0.5); }

// Deterministic prompt ids (the engine runs ids; no tokenizer needed).
std::vector<TokenId> prompt_ids(size_t i, size_t n, int64_t vocab) {
    std::vector<TokenId> p;
    for (size_t k = 0; k < n; ++k) p.push_back(TokenId((i * 7919 + k * 104729 + 13) % size_t(vocab)));
    return p;
}

// n tokens, greedy, never stopped early (random weights may pick EOS).
GenerateOptions greedy(int64_t n) {
    GenerateOptions o;
    o.sampling.temperature = 0;
    o.max_tokens = n;
    o.ignore_eos = true;
    return o;
}

struct BatchRun {
    double tok_s = 0;          // tokens generated / wall time (submit to last token)
    std::vector<double> ttft;  // per stream, seconds
};

// `n` concurrent streams of `tokens` tokens each on an engine with n slots.
BatchRun run_engine(serve::Engine& engine, size_t n, int64_t tokens, int64_t vocab) {
    std::vector<std::shared_ptr<serve::EngineStream>> streams;
    const auto t0 = Clock::now();
    for (size_t i = 0; i < n; ++i)
        streams.push_back(engine.submit({{prompt_ids(i, 8, vocab), greedy(tokens)}}));
    BatchRun r;
    r.ttft.assign(n, 0);
    std::vector<size_t> generated(n, 0);
    // One blocked reader per stream, so each first token is timed when it arrives.
    std::vector<std::thread> readers;
    for (size_t i = 0; i < n; ++i)
        readers.emplace_back([&, i] {
            serve::EngineEvent ev;
            bool first = true;
            while (!streams[i]->finished())
                if (streams[i]->next(ev, std::chrono::milliseconds(100))) {
                    if (first && ev.step.token >= 0) r.ttft[i] = since(t0), first = false;
                    if (ev.done) generated[i] = ev.result.tokens.size();
                }
        });
    for (auto& t : readers) t.join();
    size_t total = 0;
    for (size_t g : generated) total += g;
    r.tok_s = double(total) / since(t0);
    return r;
}
void bench_batching(int reps, int64_t tokens) {
    ModelConfig cfg = ModelConfig::preset("gpt2");
    Transformer model(cfg, 1);
    model.eval();
    auto lm = std::make_shared<TransformerLM>(model);
    Generator gen(lm);
    const size_t N = 16;
    serve::Engine engine(lm, std::nullopt, {.slots = int(N), .max_queue = 64});
    std::vector<double> gen1, eng1, eng16, ttft_all;
    run_engine(engine, 1, 4, cfg.vocab_size); // warm-up
    for (int rep = 0; rep < reps; ++rep) {
        auto t0 = Clock::now();
        auto g = gen.generate(prompt_ids(0, 8, cfg.vocab_size), greedy(tokens));
        gen1.push_back(double(g.tokens.size()) / since(t0));
        eng1.push_back(run_engine(engine, 1, tokens, cfg.vocab_size).tok_s);
        BatchRun b = run_engine(engine, N, tokens, cfg.vocab_size);
        eng16.push_back(b.tok_s);
        ttft_all.insert(ttft_all.end(), b.ttft.begin(), b.ttft.end());
        std::fprintf(stderr, "  rep %d: generator 1 %.1f, engine 1 %.1f, engine 16 %.1f tok/s\n",
                     rep, gen1.back(), eng1.back(), eng16.back());
    }
    std::printf("gpt2 prompt 8 -> %lld tokens, end-to-end tok/s (median of %d)\n",
                (long long)tokens, reps);
    std::printf("  generator, 1 stream (GEMV path):        %8.1f tok/s\n", median(gen1));
    std::printf("  engine, 1 stream:                       %8.1f tok/s\n", median(eng1));
    std::printf("  engine, %zu concurrent streams:          %8.1f tok/s aggregate = %.1fx engine 1, "
                "%.1fx generator 1\n",
                N, median(eng16), median(eng16) / median(eng1), median(eng16) / median(gen1));
    std::printf("  time to first token, %zu streams at once: p50 %.0f ms, p99 %.0f ms (%zu samples)\n",
                N, quantile(ttft_all, 0.5) * 1e3, quantile(ttft_all, 0.99) * 1e3, ttft_all.size());
}

void run_engine_once(serve::Engine& engine, const std::vector<TokenId>& ids) {
    auto s = engine.submit({{ids, greedy(1)}});
    serve::EngineEvent ev;
    while (!s->finished()) s->next(ev, std::chrono::milliseconds(100));
}

Tokenizer byte_tokenizer() {
    std::vector<std::string> tokens;
    for (int b = 0; b < 256; ++b) tokens.push_back(std::string(1, char(b)));
    return Tokenizer::from_ranks(tokens, Tokenizer::known_pattern("gpt2"),
                                 {{"<|endoftext|>", 256, true}}, "bench-bytes");
}

void bench_overhead(int reps, int requests) {
    ModelConfig cfg = ModelConfig::preset("tiny");
    cfg.vocab_size = 257; // the byte tokenizer
    auto model = std::make_shared<Transformer>(cfg, 1);
    model->eval();
    Tokenizer tok = byte_tokenizer();
    const std::vector<TokenId> ids = tok.encode("The quick brown fox");
    serve::App app;
    auto served = std::make_shared<serve::ServedModel>("tiny", model, tok, serve::ServeOptions{});
    app.model(served);
    const int port = app.start("127.0.0.1", 0);
    httplib::Client cli("127.0.0.1", port);
    cli.set_keep_alive(true);
    // Without it, Nagle on the client's two writes (headers, body) meets the server's delayed
    // ACK: +40 ms a request. Node's fetch and most clients set it too.
    cli.set_tcp_nodelay(true);
    const std::string body =
        R"({"model":"tiny","prompt":"The quick brown fox","max_tokens":1,"temperature":0})";
    std::vector<double> http_p50, handle_p50, model_p50;
    for (int rep = 0; rep < reps; ++rep) {
        std::vector<double> http, handle, direct;
        for (int i = 0; i < requests; ++i) {
            auto t0 = Clock::now();
            auto res = cli.Post("/v1/completions", body, "application/json");
            http.push_back(since(t0));
            if (!res || res->status != 200) {
                std::fprintf(stderr, "request failed\n");
                std::exit(1);
            }
            t0 = Clock::now();
            auto r = app.handle(serve::Request::make("POST", "/v1/completions", body));
            handle.push_back(since(t0));
            t0 = Clock::now();
            // The same generation straight through the model's engine (no HTTP, JSON, routing).
            run_engine_once(served->engine(), ids);
            direct.push_back(since(t0));
        }
        http_p50.push_back(median(http));
        handle_p50.push_back(median(handle));
        model_p50.push_back(median(direct));
    }
    app.stop(1);
    const double h = median(http_p50), a = median(handle_p50), m = median(model_p50);
    std::printf("tiny one-token completion, p50 over %d requests (median of %d reps)\n", requests,
                reps);
    std::printf("  HTTP loopback %.3f ms, App::handle %.3f ms, engine alone %.3f ms\n",
                h * 1e3, a * 1e3, m * 1e3);
    std::printf("  server overhead p50: %.3f ms over HTTP, %.3f ms in-process\n", (h - m) * 1e3,
                (a - m) * 1e3);
}

} // namespace

int main(int argc, char** argv) {
    int reps = 3, requests = 200;
    int64_t tokens = 32;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--tokens")) tokens = std::atoll(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--requests")) requests = std::atoi(argv[i + 1]);
    }
    if (reps < 1 || tokens < 2 || requests < 1) {
        std::fprintf(stderr, "usage: serve_bench [--reps N>=1] [--tokens N>=2] [--requests N>=1]\n");
        return 2;
    }
    bench_overhead(reps, requests);
    bench_batching(reps, tokens);
    return 0;
}
