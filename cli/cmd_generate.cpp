// `forge generate`: loads a model folder (model.safetensors + config.json + tokenizer) and
// streams a continuation of --prompt to stdout, or with --ids prints the generated token ids as
// one JSON array. Counts and speeds go to stderr. Sampling defaults are llama.cpp's CLI ones.
#include <charconv>
#include <cmath>
#include <filesystem>
#include <cstdio>
#include <string>
#include <vector>

#include "command.h"
#include "infer_cli.h"
#include <forge/core/device.h>
#include <forge/core/error.h>
#include <forge/formats/gguf.h>
#include <forge/formats/gguf_model.h>
#include <forge/generate/cuda_lm.h>
#include <forge/generate/generator.h>
#include <forge/models/loader.h>
#include <forge/models/transformer.h>
#include <forge/train/trainer.h>

namespace forge::cli {

namespace {

struct GenerateCliOptions {
    std::string model, prompt;
    int64_t max_tokens = 128;
    float temperature = 0.8f;
    int64_t top_k = 40;
    float top_p = 0.95f;
    float min_p = 0.05f;
    float repeat_penalty = 1.0f;
    float frequency_penalty = 0.0f;
    float presence_penalty = 0.0f;
    int64_t repeat_last_n = 64;
    std::optional<uint64_t> seed;
    std::vector<std::string> stop;
    bool ids = false, echo = false, ignore_eos = false, quiet = false;
    int threads = 0;
    std::string device = "cpu";
    std::string dtype = "bf16";
};

// One message naming the flag, as the user typed it.
void check_flag(bool ok, const std::string& flag, const std::string& rule, double got) {
    if (ok) return;
    char num[64];
    auto r = std::to_chars(num, num + sizeof(num), got);
    throw InvalidArgument(flag + " must be " + rule + ", got " + std::string(num, r.ptr));
}

GenerateOptions to_options(const GenerateCliOptions& o) {
    check_flag(o.max_tokens >= 1, "--max-tokens", ">= 1", double(o.max_tokens));
    check_flag(std::isfinite(o.temperature) && o.temperature >= 0, "--temperature",
               ">= 0 (0 = greedy)", o.temperature);
    check_flag(o.top_k >= 0, "--top-k", ">= 0 (0 = off)", double(o.top_k));
    check_flag(o.top_p > 0 && o.top_p <= 1, "--top-p", "in (0, 1] (1 = off)", o.top_p);
    check_flag(o.min_p >= 0 && o.min_p <= 1, "--min-p", "in [0, 1] (0 = off)", o.min_p);
    check_flag(std::isfinite(o.repeat_penalty) && o.repeat_penalty > 0, "--repeat-penalty",
               "> 0 (1 = off)", o.repeat_penalty);
    check_flag(std::isfinite(o.frequency_penalty), "--frequency-penalty", "finite",
               o.frequency_penalty);
    check_flag(std::isfinite(o.presence_penalty), "--presence-penalty", "finite",
               o.presence_penalty);
    check_flag(o.repeat_last_n >= -1, "--repeat-last-n", ">= -1 (-1 = whole sequence)",
               double(o.repeat_last_n));
    check_flag(o.threads >= 0, "--threads", ">= 0 (0 = all cores)", o.threads);
    for (const std::string& s : o.stop)
        if (s.empty()) throw InvalidArgument("--stop must not be empty");

    GenerateOptions g;
    g.max_tokens = o.max_tokens;
    g.stop = o.stop;
    g.ignore_eos = o.ignore_eos;
    SamplerOptions& s = g.sampling;
    s.temperature = o.temperature;
    s.top_k = o.top_k;
    s.top_p = o.top_p;
    s.min_p = o.min_p;
    s.repeat_penalty = o.repeat_penalty;
    s.frequency_penalty = o.frequency_penalty;
    s.presence_penalty = o.presence_penalty;
    s.penalty_last_n = o.repeat_last_n;
    s.seed = o.seed;
    return g;
}

void write_out(const std::string& s) {
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fflush(stdout);
}

void run_generate(const GenerateCliOptions& o) {
    const GenerateOptions opts = to_options(o); // flags first: no model load for a typo
    if (o.threads > 0) set_num_threads(o.threads);
    const Device device = Device::parse(o.device);
    cuda::check_device(device); // before the load: a missing GPU fails fast
    cuda::PrecisionScope precision(o.dtype); // the prompt's matmuls and attention on CUDA
    // A .gguf file runs on the CPU quantized-weight engine (its weights used in place) or, with
    // --device cuda, on CudaLM with its Q8_0 / Q4_0 matrices kept as they are for decode (the
    // prompt runs through an f32 copy of the dequantized weights); a model folder on the
    // Transformer, on `device`.
    std::optional<Generator> gen_holder;
    std::shared_ptr<Transformer> keep;
    if (std::filesystem::path(o.model).extension() == ".gguf" && device.type == DeviceType::cuda) {
        FORGE_CHECK(device.index == 0, "--device ", o.device, ": GPU decoding runs on cuda:0");
        std::optional<Tokenizer> tok = formats::gguf_tokenizer(formats::GgufFile::open(o.model));
        if (!tok)
            throw NotFound(o.model + " has no tokenizer (no tokenizer.ggml.* metadata)");
        gen_holder.emplace(std::shared_ptr<CausalLM>(CudaLM::from_gguf(o.model)), std::move(*tok));
    } else if (std::filesystem::path(o.model).extension() == ".gguf") {
        FORGE_CHECK(device.type == DeviceType::cpu, "--device ", o.device,
                    ": .gguf files run on the CPU engine or on cuda:0");
        EngineAndTokenizer e = open_engine(o.model, quant::GgmlType::f32, {.n_threads = o.threads});
        gen_holder.emplace(std::shared_ptr<CausalLM>(std::move(e.lm)), std::move(e.tokenizer));
    } else {
        LoadedModel lm = load_model_dir(o.model);
        keep = lm.model;
        if (device.type == DeviceType::cuda) {
            // bf16 weights, static KV cache, the decode step in a CUDA graph; the prompt goes
            // through the model's ops under --dtype.
            FORGE_CHECK(device.index == 0, "--device ", o.device, ": GPU decoding runs on cuda:0");
            gen_holder.emplace(std::make_shared<CudaLM>(*keep), lm.tokenizer);
        } else {
            gen_holder.emplace(*keep, lm.tokenizer);
        }
    }
    Generator& gen = *gen_holder;
    std::vector<TokenId> prompt = gen.encode_prompt(o.prompt);

    GenerateResult r;
    if (o.ids) {
        r = gen.generate(prompt, opts);
        std::string out = "[";
        for (size_t i = 0; i < r.tokens.size(); ++i)
            out += (i ? "," : "") + std::to_string(r.tokens[i]);
        write_out(out + "]\n");
    } else {
        if (o.echo) write_out(o.prompt);
        r = gen.generate(prompt, opts, [](const TokenStep& step) {
            if (!step.text.empty()) write_out(step.text);
            return true;
        });
        if (r.text.empty() || r.text.back() != '\n') write_out("\n");
    }
    if (!o.quiet)
        std::fprintf(stderr,
                     "[generate] prompt %lld tokens in %.3f s (%.1f tok/s); generated %zu tokens, "
                     "decode %.1f tok/s; finish: %s; seed %llu\n",
                     (long long)r.n_prompt, r.prefill_s, r.prefill_tok_s(), r.tokens.size(),
                     r.decode_tok_s(), std::string(finish_reason_name(r.finish_reason)).c_str(),
                     (unsigned long long)r.seed);
}

} // namespace

FORGE_CLI_COMMAND([](CLI::App& root) {
    auto o = std::make_shared<GenerateCliOptions>();
    auto* cmd = root.add_subcommand("generate", "Generate text from a saved model folder");
    cmd->add_option("--model,-m", o->model,
                    "model folder (model.safetensors, config.json, tokenizer.json) or a .gguf "
                    "file (runs on the quantized-weight engine)")
        ->required();
    cmd->add_option("--prompt,-p", o->prompt, "text to continue (\"\" starts from BOS)")
        ->required();
    cmd->add_option("--max-tokens,-n", o->max_tokens, "tokens to generate at most")
        ->capture_default_str();
    cmd->add_option("--temperature", o->temperature, "0 = greedy")->capture_default_str();
    cmd->add_option("--top-k", o->top_k, "keep the K most likely tokens (0 = off)")
        ->capture_default_str();
    cmd->add_option("--top-p", o->top_p, "nucleus: smallest set with mass >= P (1 = off)")
        ->capture_default_str();
    cmd->add_option("--min-p", o->min_p, "drop tokens below P x the top probability (0 = off)")
        ->capture_default_str();
    cmd->add_option("--repeat-penalty", o->repeat_penalty,
                    "CTRL repetition penalty over the last --repeat-last-n tokens (1 = off)")
        ->capture_default_str();
    cmd->add_option("--frequency-penalty", o->frequency_penalty, "OpenAI frequency penalty")
        ->capture_default_str();
    cmd->add_option("--presence-penalty", o->presence_penalty, "OpenAI presence penalty")
        ->capture_default_str();
    cmd->add_option("--repeat-last-n", o->repeat_last_n,
                    "window of the penalties in tokens (-1 = whole sequence)")
        ->capture_default_str();
    cmd->add_option("--seed,-s", o->seed, "sampling seed (default: random, printed at the end)");
    cmd->add_option("--stop", o->stop,
                    "stop when the text contains STR (repeatable; STR is not printed)")
        ->allow_extra_args(false); // one value per --stop, so a prompt-like word is never taken
    cmd->add_flag("--ids", o->ids, "print the generated token ids as a JSON array instead");
    cmd->add_flag("--echo", o->echo, "print the prompt before the generated text");
    cmd->add_flag("--ignore-eos", o->ignore_eos, "keep generating past the end-of-text token");
    cmd->add_flag("--quiet,-q", o->quiet, "no statistics line on stderr");
    cmd->add_option("--threads,-t", o->threads, "CPU threads (0 = all cores)")
        ->capture_default_str();
    cmd->add_option("--device", o->device, "cpu | cuda | cuda:N")->capture_default_str();
    cmd->add_option("--dtype", o->dtype,
                    "CUDA prefill precision: f32 | tf32 | bf16 | f16 (decode: bf16 weights, or a GGUF's Q8_0 / Q4_0)")
        ->capture_default_str();
    cmd->callback([o] { run_generate(*o); });
});

} // namespace forge::cli
