// Generation speed: prefill and decode tokens/s of the `tiny` and `gpt2` (124M) presets with
// random weights, through the same Session the CLI uses, next to the decode ceiling
// (memory bandwidth / bytes of weights read per decoded token, bandwidth measured here). A
// second group times each op of one GPT-2 decode step on its own, to show where a step goes.
// Figures go to docs/PERF.md (## Generation).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>
#include <cblas.h>
#include <omp.h>

#include <forge/autograd/autograd.h>
#include <forge/core/ops.h>
#include <forge/generate/generator.h>
#include <forge/models/transformer.h>

namespace {

using namespace forge;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------- memory bandwidth
// Read bandwidth of all OpenMP threads summing a buffer far larger than the caches (512 MiB;
// L3 is 32 MiB here): the rate at which decode can stream weights. 64 independent partial sums
// per thread keep the adds off the critical path, so the loop is bound by memory, not by the
// latency of one accumulator chain.
double measure_read_gbs() {
    static const double gbs = [] {
        const size_t n = size_t(512) << 20 >> 2; // floats, a multiple of 64
        std::vector<float> buf(n, 1.0f);
        double best = 0;
        float sink = 0;
        for (int rep = 0; rep < 5; ++rep) {
            auto t0 = Clock::now();
            float total = 0;
#pragma omp parallel reduction(+ : total)
            {
                float acc[64] = {};
#pragma omp for schedule(static)
                for (size_t i = 0; i < n; i += 64)
                    for (size_t j = 0; j < 64; ++j)
                        acc[j] += buf[i + j];
                for (float a : acc)
                    total += a;
            }
            double dt = std::chrono::duration<double>(Clock::now() - t0).count();
            sink += total;
            best = std::max(best, double(n) * 4 / dt / 1e9);
        }
        benchmark::DoNotOptimize(sink);
        return best;
    }();
    return gbs;
}

void BM_ReadBandwidth(benchmark::State& state) {
    double g = 0;
    for (auto _ : state)
        g = measure_read_gbs();
    state.counters["GB/s"] = g;
    state.counters["threads"] = omp_get_max_threads();
}

// ---------------------------------------------------------------- models

// One random model per preset, built once (gpt2's 124M random weights take seconds).
Transformer& model_for(const std::string& preset) {
    static std::map<std::string, std::unique_ptr<Transformer>> models;
    auto& m = models[preset];
    if (!m) m = std::make_unique<Transformer>(ModelConfig::preset(preset), 1);
    return *m;
}

// f32 bytes one decode step must read: every weight matrix once (the tied embedding as the LM
// head; one row of it and of wpe for the input is negligible), plus the KV cache up to `pos`.
double decode_bytes(const ModelConfig& c, int64_t pos) {
    double params = double(c.num_parameters());
    if (c.family == ModelFamily::gpt2) params -= double(c.n_ctx * c.n_embd); // wpe: one row
    return params * 4 + double(c.kv_cache_bytes_per_token(DType::f32)) * double(pos);
}

// Args: prompt tokens, generated tokens. Each iteration is one whole generation (greedy, EOS
// ignored so every run has the same length).
void BM_Generate(benchmark::State& state, const std::string& preset) {
    const int64_t n_prompt = state.range(0), n_gen = state.range(1);
    Transformer& model = model_for(preset);
    const ModelConfig& cfg = model.config();
    Generator gen(model);
    GenerateOptions o;
    o.max_tokens = n_gen;
    o.sampling.temperature = 0;
    std::vector<TokenId> prompt;
    for (int64_t i = 0; i < n_prompt; ++i)
        prompt.push_back(TokenId((i * 7919 + 13) % cfg.vocab_size));
    double prefill_s = 0, decode_s = 0;
    int64_t prefill_tok = 0, decode_tok = 0;
    for (auto _ : state) {
        GenerateResult r = gen.generate(prompt, o);
        prefill_s += r.prefill_s;
        decode_s += r.decode_s;
        prefill_tok += r.n_prompt;
        decode_tok += r.n_decode;
    }
    const double bw = measure_read_gbs() * 1e9;
    const double bytes = decode_bytes(cfg, n_prompt + n_gen / 2); // mid-generation position
    const double dec = double(decode_tok) / decode_s, ceiling = bw / bytes;
    state.counters["prefill_tok/s"] = double(prefill_tok) / prefill_s;
    state.counters["decode_tok/s"] = dec;
    state.counters["ceiling_tok/s"] = ceiling;
    state.counters["ceiling%"] = dec / ceiling * 100;
    state.counters["MB/token"] = bytes / 1e6;
    state.counters["decode_GB/s"] = dec * bytes / 1e9;
    // Prefill FLOPs: 2 per layer weight per token; the embedding is a lookup, wpe a row, and
    // the head runs for the last position only (attention's T^2 term is left out).
    double layer_params = double(cfg.num_parameters()) -
                          double(cfg.vocab_size * cfg.n_embd) * (cfg.tie_embeddings ? 1 : 2);
    if (cfg.family == ModelFamily::gpt2) layer_params -= double(cfg.n_ctx * cfg.n_embd);
    const double flop_tok = 2.0 * layer_params;
    state.counters["prefill_GFLOP/s"] = double(prefill_tok) / prefill_s * flop_tok / 1e9;
}

// One decode step at position ~`pos` of gpt2, two ways: arg 0 = Transformer::forward with a
// KVCache, arg 1 = TransformerLM::eval (what Session runs: hidden() + the head on the last
// position). They should match; a gap means the generate path adds overhead.
void BM_Gpt2DecodeStep(benchmark::State& state) {
    NoGradGuard ng;
    Transformer& model = model_for("gpt2");
    const bool lm_path = state.range(0) == 1;
    const int64_t pos = 128;
    TransformerLM lm(model);
    std::vector<TokenId> prompt(size_t(pos), 50);
    auto st = lm.new_state(pos + 64);
    std::vector<float> logits;
    lm.eval(*st, prompt, logits);
    KVCache cache = KVCache::create(model.config(), 1, pos + 64);
    model.hidden(Tensor::from_vector(std::vector<int64_t>(size_t(pos), 50), {1, pos}), &cache);
    int64_t n = 0;
    for (auto _ : state) {
        if (n == 48) { // stay near `pos`: rewind the caches
            state.PauseTiming();
            cache.length = pos;
            st = lm.new_state(pos + 64);
            lm.eval(*st, prompt, logits);
            n = 0;
            state.ResumeTiming();
        }
        const TokenId id = TokenId(100 + n);
        if (lm_path) {
            lm.eval(*st, std::span<const TokenId>(&id, 1), logits);
        } else {
            Tensor out = model.forward(
                Tensor::from_vector(std::vector<int64_t>{id}, {1, 1}), &cache);
            const float* p = out.contiguous().data<float>();
            logits.assign(p, p + model.config().vocab_size);
        }
        ++n;
    }
    state.counters["tok/s"] = benchmark::Counter(double(state.iterations()),
                                                 benchmark::Counter::kIsRate);
    state.counters["ceiling_tok/s"] =
        measure_read_gbs() * 1e9 / decode_bytes(model.config(), pos + 24);
}

// ---------------------------------------------------------------- where a GPT-2 step goes
// Each op of one decode step at the shapes GPT-2 124M uses (batch 1, one token, `pos` cached
// positions), timed alone; "x12" ops are per layer. Compare the sum with BM_Generate's step.
struct StepOp {
    std::string name;
    int count;
    std::function<Tensor()> run;
};

void BM_Gpt2DecodeOps(benchmark::State& state) {
    NoGradGuard ng;
    const int64_t C = 768, V = 50257, H = 12, D = 64, F = 3072, L = 12, pos = state.range(0);
    Tensor x = Tensor::randn({1, 1, C}, 1), wqkv = Tensor::randn({C, 3 * C}, 2, DType::f32, 0, .02);
    Tensor wproj = Tensor::randn({C, C}, 3, DType::f32, 0, .02);
    Tensor wfc = Tensor::randn({C, F}, 4, DType::f32, 0, .02);
    Tensor wfc2 = Tensor::randn({F, C}, 5, DType::f32, 0, .02);
    Tensor wte = Tensor::randn({V, C}, 6, DType::f32, 0, .02);
    Tensor ln_w = Tensor::ones({C}), ln_b = Tensor::zeros({C}), b3 = Tensor::zeros({3 * C});
    Tensor hF = Tensor::randn({1, 1, F}, 7);
    Tensor q = Tensor::randn({1, H, 1, D}, 8);
    Tensor kc = Tensor::randn({1, H, 1024, D}, 9), vc = Tensor::randn({1, H, 1024, D}, 10);
    Tensor ids = Tensor::from_vector(std::vector<int64_t>{42}, {1, 1});
    Tensor logits = Tensor::empty({V});
    std::vector<StepOp> ops = {
        {"embedding", 1, [&] { return embedding(wte, ids); }},
        {"layer_norm", 2 * int(L) + 1, [&] { return layer_norm(x, ln_w, ln_b); }},
        {"matmul_qkv 768x2304", int(L), [&] { return matmul(x, wqkv); }},
        {"bias_add", 4 * int(L), [&] { return add(Tensor::zeros({1, 1, 3 * C}), b3); }},
        {"attention", int(L),
         [&] { return attention(q, kc.narrow(2, 0, pos), vc.narrow(2, 0, pos)); }},
        {"kv_copy", 2 * int(L), [&] {
             kc.narrow(2, pos, 1).copy_(q);
             return kc;
         }},
        {"matmul_proj 768x768", int(L), [&] { return matmul(x, wproj); }},
        {"matmul_fc 768x3072", int(L), [&] { return matmul(x, wfc); }},
        {"gelu", int(L), [&] { return gelu(hF); }},
        {"matmul_fc2 3072x768", int(L), [&] { return matmul(hF, wfc2); }},
        {"residual_add", 2 * int(L), [&] { return add(x, x); }},
        {"lm_head 768x50257 (W^T)", 1, [&] { return matmul(x, wte.t()); }},
        // What TransformerLM does for the head, and what sgemv would do for the layers'
        // matmuls (not part of the step sum: comparisons for the matmul kernel's M = 1 case).
        {"cmp: lm_head sgemv", 1, [&] {
             cblas_sgemv(CblasRowMajor, CblasNoTrans, int(V), int(C), 1.0f, wte.data<float>(),
                         int(C), x.data<float>(), 1, 0.0f, logits.data<float>(), 1);
             return logits;
         }},
        {"cmp: fc sgemv 768x3072", int(L), [&] {
             cblas_sgemv(CblasRowMajor, CblasTrans, int(C), int(F), 1.0f, wfc.data<float>(),
                         int(F), x.data<float>(), 1, 0.0f, hF.data<float>(), 1);
             return hF;
         }},
    };
    std::vector<double> per(ops.size(), 0);
    int64_t iters = 0;
    for (auto _ : state) {
        for (size_t i = 0; i < ops.size(); ++i) {
            auto t0 = Clock::now();
            for (int r = 0; r < ops[i].count; ++r)
                benchmark::DoNotOptimize(ops[i].run());
            per[i] += std::chrono::duration<double>(Clock::now() - t0).count();
        }
        ++iters;
    }
    double total = 0;
    for (size_t i = 0; i < ops.size(); ++i)
        if (ops[i].name.rfind("cmp:", 0) != 0) total += per[i];
    for (size_t i = 0; i < ops.size(); ++i) {
        std::string key = ops[i].name + " x" + std::to_string(ops[i].count) + " ms";
        state.counters[key] = per[i] / double(iters) * 1e3;
    }
    state.counters["sum ms"] = total / double(iters) * 1e3;
}

BENCHMARK(BM_ReadBandwidth)->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Generate, tiny, std::string("tiny"))
    ->Args({64, 128})
    ->Args({8, 128})
    ->Iterations(5)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Generate, gpt2, std::string("gpt2"))
    ->Args({128, 32})
    ->Args({8, 32})
    ->Iterations(2)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Gpt2DecodeStep)->Arg(0)->Arg(1)->Iterations(40)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Gpt2DecodeOps)->Arg(150)->Iterations(10)->UseRealTime()->Unit(benchmark::kMillisecond);

} // namespace

BENCHMARK_MAIN();
