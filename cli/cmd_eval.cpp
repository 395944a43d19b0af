// `forge eval`: perplexity of a model on a text file, computed as llama.cpp's llama-perplexity
// does so the figures compare: the tokens are cut into chunks of --ctx, each chunk is evaluated
// from an empty cache, and only the second half of each chunk is scored (every scored token has
// at least ctx/2 tokens of context). The model is a GGUF file or a Forge model folder; a folder
// runs on the inference engine with its weights converted to --type (default f32).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "command.h"
#include <forge/core/error.h>
#include <forge/infer/quant_lm.h>
#include <forge/models/loader.h>
#include <forge/models/transformer.h>

#include "infer_cli.h"

namespace forge::cli {

namespace {

struct EvalOptions {
    std::string model, data, type = "f32";
    int64_t ctx = 512, chunks = 0;
    int threads = 0;
    bool json = false;
};

void run_eval(const EvalOptions& o) {
    FORGE_CHECK(o.ctx >= 2, "--ctx must be >= 2, got ", o.ctx);
    FORGE_CHECK(o.chunks >= 0, "--chunks must be >= 0 (0 = all), got ", o.chunks);
    std::ifstream in(o.data, std::ios::binary);
    if (!in) throw NotFound("cannot open --data file " + o.data);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();

    infer::EngineOptions eo{.n_threads = o.threads, .prefill_chunk = o.ctx};
    EngineAndTokenizer m = open_engine(o.model, quant::parse_type(o.type), eo);
    const std::vector<TokenId> toks = m.tokenizer.encode(text);
    FORGE_CHECK(o.ctx <= m.lm->n_ctx(), "--ctx ", o.ctx, " exceeds the model's context of ", m.lm->n_ctx());
    int64_t n_chunks = int64_t(toks.size()) / o.ctx;
    FORGE_CHECK(n_chunks >= 1, "--data has ", toks.size(), " tokens: fewer than one chunk of --ctx ", o.ctx);
    if (o.chunks > 0) n_chunks = std::min(n_chunks, o.chunks);
    const int64_t V = m.lm->n_vocab(), first = o.ctx / 2;
    double nll = 0;
    int64_t count = 0;
    std::vector<float> logits;
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t c = 0; c < n_chunks; ++c) {
        auto st = m.lm->new_state(o.ctx);
        const std::span<const TokenId> chunk(toks.data() + c * o.ctx, size_t(o.ctx));
        m.lm->eval_all(*st, chunk, logits);
        for (int64_t t = first; t + 1 < o.ctx; ++t) {
            const float* lr = logits.data() + t * V;
            const float mx = *std::max_element(lr, lr + V);
            double se = 0;
            for (int64_t v = 0; v < V; ++v) se += std::exp(double(lr[v] - mx));
            nll += std::log(se) + mx - lr[chunk[size_t(t + 1)]];
            ++count;
        }
        if (!o.json)
            std::fprintf(stderr, "[eval] chunk %lld/%lld: ppl %.4f\n", (long long)(c + 1),
                         (long long)n_chunks, std::exp(nll / double(count)));
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double ppl = std::exp(nll / double(count));
    if (o.json)
        std::printf("{\"perplexity\":%.6f,\"tokens_scored\":%lld,\"chunks\":%lld,\"ctx\":%lld}\n", ppl,
                    (long long)count, (long long)n_chunks, (long long)o.ctx);
    else
        std::printf("perplexity %.4f over %lld tokens (%lld chunks of %lld, second halves scored; %.1f s)\n",
                    ppl, (long long)count, (long long)n_chunks, (long long)o.ctx, secs);
}

} // namespace

FORGE_CLI_COMMAND([](CLI::App& root) {
    auto o = std::make_shared<EvalOptions>();
    auto* cmd = root.add_subcommand("eval", "Perplexity of a model on a text file (llama-perplexity's method)");
    cmd->add_option("--model,-m", o->model, "GGUF file or Forge model folder")->required();
    cmd->add_option("--data,-f", o->data, "text file")->required();
    cmd->add_option("--ctx,-c", o->ctx, "tokens per chunk")->capture_default_str();
    cmd->add_option("--chunks", o->chunks, "evaluate at most N chunks (0 = all)")->capture_default_str();
    cmd->add_option("--type", o->type,
                    "for a model folder: weight type on the engine (f32, f16, q8_0, q4_0, q4_k, ...)")
        ->capture_default_str();
    cmd->add_option("--threads,-t", o->threads, "threads (0 = all cores)")->capture_default_str();
    cmd->add_flag("--json", o->json, "print one JSON object");
    cmd->callback([o] { run_eval(*o); });
});

} // namespace forge::cli
