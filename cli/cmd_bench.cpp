// `forge bench`: prompt-processing and generation speed of the inference engine, measured as
// llama-bench does: pp<N> evaluates an N-token prompt from an empty cache in one call, tg<N>
// generates N tokens one at a time from an empty cache; each is the median over --reps runs
// after one warm-up. The model is a GGUF file, or a named shape with random weights of --type.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "command.h"
#include <forge/core/error.h>
#include <forge/infer/quant_lm.h>
#include <forge/models/config.h>

#include "infer_cli.h"

namespace forge::cli {

namespace {

struct BenchOptions {
    std::string model, shape, type = "q8_0";
    int threads = 0, reps = 5;
    int64_t pp = 512, tg = 128;
    bool json = false;
};

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void run_bench(const BenchOptions& o) {
    FORGE_CHECK(o.reps >= 1, "--reps must be >= 1, got ", o.reps);
    FORGE_CHECK(o.pp >= 0 && o.tg >= 0 && o.pp + o.tg > 0, "--pp and --tg must be >= 0, not both 0");
    FORGE_CHECK(o.model.empty() != o.shape.empty(), "give one of --model FILE.gguf or --shape NAME");
    infer::EngineOptions eo{.n_threads = o.threads, .prefill_chunk = std::max<int64_t>(o.pp, 1)};
    std::unique_ptr<infer::QuantLM> lm;
    std::string what;
    if (!o.model.empty()) {
        lm = load_engine(o.model, eo);
        what = o.model;
    } else {
        lm = infer::QuantLM::random(bench_shape(o.shape), quant::parse_type(o.type), 1, eo);
        what = o.shape + " " + o.type + " (random weights)";
    }
    const int64_t V = lm->n_vocab();
    FORGE_CHECK(std::max(o.pp, o.tg) <= lm->n_ctx(), "pp/tg exceed the model's context of ", lm->n_ctx());
    std::vector<TokenId> ids(size_t(std::max<int64_t>(o.pp, 16)));
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = TokenId((i * 7919 + 13) % size_t(V));
    std::vector<float> logits;
    using clock = std::chrono::steady_clock;
    auto secs = [](clock::time_point a) { return std::chrono::duration<double>(clock::now() - a).count(); };
    { // warm-up: touches every weight and starts the workers
        auto st = lm->new_state(16);
        lm->eval(*st, std::span(ids).first(16), logits);
    }
    std::vector<double> pp_s, tg_s;
    for (int r = 0; r < o.reps; ++r) {
        if (o.pp > 0) {
            auto st = lm->new_state(o.pp);
            const auto t0 = clock::now();
            lm->eval(*st, std::span(ids).first(size_t(o.pp)), logits);
            pp_s.push_back(double(o.pp) / secs(t0));
        }
        if (o.tg > 0) {
            auto st = lm->new_state(o.tg);
            const auto t0 = clock::now();
            for (int64_t t = 0; t < o.tg; ++t)
                lm->eval(*st, std::span(ids).subspan(size_t(t % 16), 1), logits);
            tg_s.push_back(double(o.tg) / secs(t0));
        }
    }
    const std::string pp_key = "pp" + std::to_string(o.pp), tg_key = "tg" + std::to_string(o.tg);
    if (o.json) {
        std::string out = "{";
        if (o.pp > 0) out += "\"" + pp_key + "\":" + std::to_string(median(pp_s));
        if (o.tg > 0) out += std::string(o.pp > 0 ? "," : "") + "\"" + tg_key + "\":" + std::to_string(median(tg_s));
        std::printf("%s}\n", out.c_str());
        return;
    }
    std::printf("model: %s, %.1f MiB of weights, %d threads, median of %d\n", what.c_str(),
                double(lm->weight_bytes()) / (1 << 20), lm->n_threads(), o.reps);
    if (o.pp > 0) std::printf("%-6s %10.2f tokens/s\n", pp_key.c_str(), median(pp_s));
    if (o.tg > 0) std::printf("%-6s %10.2f tokens/s\n", tg_key.c_str(), median(tg_s));
}

} // namespace

FORGE_CLI_COMMAND([](CLI::App& root) {
    auto o = std::make_shared<BenchOptions>();
    auto* cmd = root.add_subcommand("bench", "Inference speed: prompt processing and generation (llama-bench's pp/tg)");
    cmd->add_option("--model,-m", o->model, "GGUF file");
    cmd->add_option("--shape", o->shape,
                    "instead of --model: random weights of a shape (llama-120m, llama-320m, or a preset)");
    cmd->add_option("--type", o->type, "with --shape: f32, f16, q8_0, q4_0, q4_k, ...")->capture_default_str();
    cmd->add_option("--threads,-t", o->threads, "threads (0 = all cores)")->capture_default_str();
    cmd->add_option("--reps,-r", o->reps, "runs per figure (the median is printed)")->capture_default_str();
    cmd->add_option("--pp", o->pp, "prompt tokens (0 = skip)")->capture_default_str();
    cmd->add_option("--tg", o->tg, "generated tokens (0 = skip)")->capture_default_str();
    cmd->add_flag("--json", o->json, "print one JSON object {\"pp512\": tok/s, \"tg128\": tok/s}");
    cmd->callback([o] { run_bench(*o); });
});

} // namespace forge::cli
