// `forge bench`: prompt-processing and generation speed of the inference engine, measured as
// llama-bench does: pp<N> evaluates an N-token prompt from an empty cache in one call, tg<N>
// generates N tokens one at a time from an empty cache; each is the median over --reps runs
// after one warm-up. The model is a GGUF file, or a named shape with random weights of --type.
// With --device cuda: a Forge model folder or a named shape (random weights) on CudaLM (bf16
// weights, the decode step as one persistent kernel in a CUDA graph), prefill under --dtype; or
// a GGUF file, or a shape with --type q8_0 / q4_0 (random weights converted as `forge convert`
// would), with those matrices on the GPU (kernels per op in a CUDA graph; the prompt through an
// f32 copy of the dequantized weights under --dtype, or with --step-prefill as decode steps).
// tg is reported with the logits copied to the host each step (what `forge generate` does) and
// with greedy argmax on the device.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "command.h"
#include <forge/core/device.h>
#include <forge/core/error.h>
#include <forge/generate/cuda_lm.h>
#include <forge/infer/quant_lm.h>
#include <forge/models/config.h>
#include <forge/models/loader.h>
#include <forge/models/transformer.h>

#include "infer_cli.h"

namespace forge::cli {

namespace {

struct BenchOptions {
    std::string model, shape, type; // type: q8_0 on the CPU, bf16 on the GPU if not given
    int threads = 0, reps = 5;
    std::vector<int64_t> pp = {512};
    int64_t tg = 128;
    bool json = false, eager = false, per_op = false, f32_dot = false, step_prefill = false;
    std::string device = "cpu", dtype = "bf16";
};

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

using clock = std::chrono::steady_clock;
double secs(clock::time_point a) { return std::chrono::duration<double>(clock::now() - a).count(); }

std::vector<TokenId> bench_ids(int64_t n, int64_t vocab) {
    std::vector<TokenId> ids(size_t(std::max<int64_t>(n, 16)));
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = TokenId((i * 7919 + 13) % size_t(vocab));
    return ids;
}

void run_bench_cuda(const BenchOptions& o) {
    const bool gguf = !o.model.empty() && !std::filesystem::is_directory(o.model);
    FORGE_CHECK(!gguf || std::filesystem::path(o.model).extension() == ".gguf",
                "--device cuda takes a Forge model folder, a .gguf file or --shape; got ", o.model);
    const std::string type = o.type.empty() ? "bf16" : o.type;
    const Device dev = Device::parse(o.device);
    FORGE_CHECK(dev.type == DeviceType::cuda && dev.index == 0, "--device must be cpu or cuda");
    cuda::check_device(dev);
    cuda::PrecisionScope precision(o.dtype);
    const CudaLM::Options opts{.graph = !o.eager,
                               .persistent = !o.per_op,
                               .int8_dot = !o.f32_dot,
                               .gguf_batched_prefill = !o.step_prefill};
    std::shared_ptr<Transformer> model;
    std::unique_ptr<CudaLM> owned;
    std::string what;
    if (gguf) {
        owned = CudaLM::from_gguf(o.model, opts);
        what = o.model;
    } else {
        if (!o.model.empty()) {
            model = load_model_dir(o.model).model;
            what = o.model;
        } else {
            model = std::make_shared<Transformer>(bench_shape(o.shape));
            what = o.shape + " (random weights)";
        }
        if (type == "bf16") {
            owned = std::make_unique<CudaLM>(*model, opts);
        } else { // the GGUF tensors `forge convert --type` would write
            owned = CudaLM::from_transformer(*model, quant::parse_type(type), opts);
            what += ", " + type;
        }
    }
    CudaLM& lm = *owned;
    const int64_t V = lm.n_vocab(), pp_max = *std::max_element(o.pp.begin(), o.pp.end());
    FORGE_CHECK(std::max(pp_max, o.tg + 1) <= lm.n_ctx(), "pp/tg exceed the model's context of ",
                lm.n_ctx());
    const std::vector<TokenId> ids = bench_ids(pp_max, V);
    std::vector<float> logits;
    { // warm-up: cuBLAS handles, the graph capture path, the allocator's blocks
        const int64_t warm = std::min<int64_t>(std::max<int64_t>(pp_max, 16), lm.n_ctx() - 8);
        auto st = lm.new_state(warm + 8);
        lm.eval(*st, std::span(ids).first(size_t(warm)), logits);
        lm.eval(*st, std::span(ids).first(1), logits);
        auto sg = lm.new_state(std::min<int64_t>(64, lm.n_ctx()));
        lm.greedy(*sg, ids[1], 8);
    }
    std::vector<std::vector<double>> pp_s(o.pp.size());
    std::vector<double> tg_s, tg_dev_s;
    for (int r = 0; r < o.reps; ++r) {
        for (size_t i = 0; i < o.pp.size(); ++i) {
            if (o.pp[i] <= 0) continue;
            auto st = lm.new_state(o.pp[i]);
            const auto t0 = clock::now();
            lm.eval(*st, std::span(ids).first(size_t(o.pp[i])), logits);
            pp_s[i].push_back(double(o.pp[i]) / secs(t0));
        }
        if (o.tg > 0) { // llama-bench's tg: from an empty cache, one token at a time
            auto st = lm.new_state(o.tg);
            auto t0 = clock::now();
            for (int64_t t = 0; t < o.tg; ++t)
                lm.eval(*st, std::span(ids).subspan(size_t(t % 16), 1), logits);
            tg_s.push_back(double(o.tg) / secs(t0));
            auto sd = lm.new_state(o.tg);
            t0 = clock::now();
            lm.greedy(*sd, ids[0], o.tg);
            tg_dev_s.push_back(double(o.tg) / secs(t0));
        }
    }
    const double gb = double(lm.weight_bytes_per_token()) / 1e9;
    if (o.json) {
        std::string out = "{";
        for (size_t i = 0; i < o.pp.size(); ++i)
            if (o.pp[i] > 0)
                out += "\"pp" + std::to_string(o.pp[i]) + "\":" + std::to_string(median(pp_s[i])) + ",";
        if (o.tg > 0) {
            const std::string k = "tg" + std::to_string(o.tg);
            out += "\"" + k + "\":" + std::to_string(median(tg_s)) + ",\"" + k +
                   "_device_argmax\":" + std::to_string(median(tg_dev_s)) + ",";
        }
        out += "\"weight_gb_per_token\":" + std::to_string(gb) + ",\"weights\":\"" +
               lm.weight_format() + "\"}";
        std::printf("%s\n", out.c_str());
        return;
    }
    const cuda::DeviceProperties p = cuda::device_properties(0);
    const std::string fmt = lm.weight_format();
    const bool blocks = fmt != "bf16";
    std::printf("model: %s on %s, %.1f MiB of %s weights read per token, decode %s %s%s, "
                "prefill %s, median of %d\n",
                what.c_str(), p.name.c_str(), gb * 1e9 / (1 << 20), fmt.c_str(),
                lm.persistent_active() ? "as one persistent kernel" : "as kernels per op",
                lm.graph_active() ? "in a CUDA graph" : "launched eagerly",
                !blocks ? "" : o.f32_dot ? " (f32 dot products)" : " (int8 dot products)",
                lm.batched_prefill_active() ? o.dtype.c_str() : "as decode steps", o.reps);
    for (size_t i = 0; i < o.pp.size(); ++i)
        if (o.pp[i] > 0)
            std::printf("pp%-5lld %10.2f tokens/s\n", (long long)o.pp[i], median(pp_s[i]));
    if (o.tg > 0) {
        const double a = median(tg_s), b = median(tg_dev_s);
        std::printf("tg%-5lld %10.2f tokens/s (logits to the host each step), %.0f GB/s of weights\n",
                    (long long)o.tg, a, a * gb);
        std::printf("tg%-5lld %10.2f tokens/s (greedy argmax on the device), %.0f GB/s of weights\n",
                    (long long)o.tg, b, b * gb);
    }
}

void run_bench(const BenchOptions& o) {
    FORGE_CHECK(o.reps >= 1, "--reps must be >= 1, got ", o.reps);
    FORGE_CHECK(!o.pp.empty() && o.tg >= 0, "--pp and --tg must be >= 0");
    for (int64_t pp : o.pp) FORGE_CHECK(pp >= 0, "--pp must be >= 0, got ", pp);
    if (o.device != "cpu") return run_bench_cuda(o);
    FORGE_CHECK(o.pp.size() == 1, "one --pp value on the CPU");
    const int64_t pp = o.pp[0];
    FORGE_CHECK(pp + o.tg > 0, "--pp and --tg must not both be 0");
    FORGE_CHECK(o.model.empty() != o.shape.empty(), "give one of --model FILE.gguf or --shape NAME");
    const std::string type = o.type.empty() ? "q8_0" : o.type;
    infer::EngineOptions eo{.n_threads = o.threads, .prefill_chunk = std::max<int64_t>(pp, 1)};
    std::unique_ptr<infer::QuantLM> lm;
    std::string what;
    if (!o.model.empty()) {
        lm = load_engine(o.model, eo);
        what = o.model;
    } else {
        lm = infer::QuantLM::random(bench_shape(o.shape), quant::parse_type(type), 1, eo);
        what = o.shape + " " + type + " (random weights)";
    }
    const int64_t V = lm->n_vocab();
    FORGE_CHECK(std::max(pp, o.tg) <= lm->n_ctx(), "pp/tg exceed the model's context of ", lm->n_ctx());
    const std::vector<TokenId> ids = bench_ids(pp, V);
    std::vector<float> logits;
    { // warm-up: touches every weight and starts the workers
        auto st = lm->new_state(16);
        lm->eval(*st, std::span(ids).first(16), logits);
    }
    std::vector<double> pp_s, tg_s;
    for (int r = 0; r < o.reps; ++r) {
        if (pp > 0) {
            auto st = lm->new_state(pp);
            const auto t0 = clock::now();
            lm->eval(*st, std::span(ids).first(size_t(pp)), logits);
            pp_s.push_back(double(pp) / secs(t0));
        }
        if (o.tg > 0) {
            auto st = lm->new_state(o.tg);
            const auto t0 = clock::now();
            for (int64_t t = 0; t < o.tg; ++t)
                lm->eval(*st, std::span(ids).subspan(size_t(t % 16), 1), logits);
            tg_s.push_back(double(o.tg) / secs(t0));
        }
    }
    const std::string pp_key = "pp" + std::to_string(pp), tg_key = "tg" + std::to_string(o.tg);
    if (o.json) {
        std::string out = "{";
        if (pp > 0) out += "\"" + pp_key + "\":" + std::to_string(median(pp_s));
        if (o.tg > 0) out += std::string(pp > 0 ? "," : "") + "\"" + tg_key + "\":" + std::to_string(median(tg_s));
        std::printf("%s}\n", out.c_str());
        return;
    }
    std::printf("model: %s, %.1f MiB of weights, %d threads, median of %d\n", what.c_str(),
                double(lm->weight_bytes()) / (1 << 20), lm->n_threads(), o.reps);
    if (pp > 0) std::printf("%-6s %10.2f tokens/s\n", pp_key.c_str(), median(pp_s));
    if (o.tg > 0) std::printf("%-6s %10.2f tokens/s\n", tg_key.c_str(), median(tg_s));
}

} // namespace

FORGE_CLI_COMMAND([](CLI::App& root) {
    auto o = std::make_shared<BenchOptions>();
    auto* cmd = root.add_subcommand("bench", "Inference speed: prompt processing and generation (llama-bench's pp/tg)");
    cmd->add_option("--model,-m", o->model, "GGUF file (--device cuda: or a Forge model folder)");
    cmd->add_option("--shape", o->shape,
                    "instead of --model: random weights of a shape (llama-120m, llama-320m, or a preset)");
    cmd->add_option("--type", o->type,
                    "with --shape: f32, f16, q8_0, q4_0, q4_k, ... (default q8_0; with --device "
                    "cuda bf16, or a GGUF type for the weights as `forge convert` writes them)");
    cmd->add_option("--threads,-t", o->threads, "threads (0 = all cores)")->capture_default_str();
    cmd->add_option("--reps,-r", o->reps, "runs per figure (the median is printed)")->capture_default_str();
    cmd->add_option("--pp", o->pp, "prompt tokens (0 = skip; several with --device cuda)")
        ->capture_default_str();
    cmd->add_option("--tg", o->tg, "generated tokens (0 = skip)")->capture_default_str();
    cmd->add_flag("--json", o->json, "print one JSON object {\"pp512\": tok/s, \"tg128\": tok/s}");
    cmd->add_option("--device", o->device, "cpu | cuda")->capture_default_str();
    cmd->add_option("--dtype", o->dtype, "with --device cuda: prefill precision f32 | tf32 | bf16 | f16")
        ->capture_default_str();
    cmd->add_flag("--eager", o->eager, "with --device cuda: no CUDA graph for the decode step");
    cmd->add_flag("--f32-dot", o->f32_dot,
                  "with --device cuda and Q8_0 / Q4_0 weights: f32 products of the dequantized "
                  "weights instead of int8 (dp4a) ones");
    cmd->add_flag("--step-prefill", o->step_prefill,
                  "with --device cuda and GGUF weights: prefill the prompt as one decode step per "
                  "token (no f32 copy of the weights)");
    cmd->add_flag("--per-op", o->per_op,
                  "with --device cuda: the decode step as kernels per op, not one kernel");
    cmd->callback([o] { run_bench(*o); });
});

} // namespace forge::cli
