// `forge serve`: an OpenAI-compatible HTTP server for one model folder. It listens first (so
// /health can say 503 while the weights load), prints the URL, then serves until SIGTERM or
// SIGINT, which stop accepting, let in-flight requests finish (up to --drain seconds) and exit 0.
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <pthread.h>
#include <string>
#include <vector>

#include "command.h"
#include <forge/core/device.h>
#include <forge/core/error.h>
#include <forge/generate/cuda_lm.h>
#include <forge/models/loader.h>
#include <forge/serve/middleware.h>
#include <forge/serve/openai.h>
#include <forge/train/trainer.h>

namespace forge::cli {

namespace {

struct ServeCliOptions {
    std::string model, name, host = "127.0.0.1", api_key, api_keys_file, rate_limit;
    int port = 8080, slots = 4, queue = 64, threads = 0;
    uint64_t max_body = 4ull << 20;
    int64_t ctx = 0;
    double drain_s = 30;
    bool quiet = false;
    std::string device = "cpu", dtype = "bf16";
};

// "N/min", "N/s" or "N" (per minute) -> requests per minute.
double parse_rate(const std::string& s) {
    if (s.empty()) return 0;
    const size_t slash = s.find('/');
    const std::string num = s.substr(0, slash), unit = slash == std::string::npos ? "min" : s.substr(slash + 1);
    double n = -1;
    try {
        size_t used = 0;
        n = std::stod(num, &used);
        if (used != num.size()) n = -1;
    } catch (const std::exception&) {
    }
    double per_min = unit == "min" || unit == "m" ? n : unit == "s" || unit == "sec" ? n * 60 : -1;
    if (!(n > 0) || !(per_min > 0))
        throw InvalidArgument("--rate-limit must look like 60/min or 2/s (a positive count), got '" +
                                  s + "'");
    return per_min;
}

void run_serve(const ServeCliOptions& o) {
    // Flags first: no socket or model load for a typo.
    if (o.port < 0 || o.port > 65535)
        throw InvalidArgument("--port must be in [0, 65535] (0 = any free port), got " +
                              std::to_string(o.port));
    if (o.slots < 1 || o.slots > 1024)
        throw InvalidArgument("--slots must be in [1, 1024], got " + std::to_string(o.slots));
    if (o.queue < 0) throw InvalidArgument("--queue must be >= 0, got " + std::to_string(o.queue));
    if (o.max_body < 1) throw InvalidArgument("--max-body must be >= 1 byte");
    if (o.ctx < 0) throw InvalidArgument("--ctx must be >= 0 (0 = the model's), got " + std::to_string(o.ctx));
    if (!(o.drain_s >= 0)) throw InvalidArgument("--drain must be >= 0 seconds");
    const double rate = parse_rate(o.rate_limit);
    const Device device = Device::parse(o.device);
    cuda::check_device(device);
    cuda::PrecisionScope precision(o.dtype); // process-wide switches, for the engine's thread
    if (!std::filesystem::is_directory(o.model))
        throw NotFound("--model " + o.model + ": no such folder",
                       "point it at a folder with config.json, model.safetensors, tokenizer.json");
    const std::vector<std::string> keys = serve::mw::load_api_keys(
        o.api_key.empty() ? std::vector<std::string>{} : std::vector<std::string>{o.api_key},
        "FORGE_API_KEYS", o.api_keys_file);
    if (o.threads > 0) set_num_threads(o.threads);

    // Signals are taken by sigwait() below: block them before any thread starts.
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

    auto metrics = std::make_shared<serve::Metrics>();
    serve::App app;
    serve::use_server_middleware(app, {.api_keys = keys,
                                       .rate_limit_per_min = rate,
                                       .max_body = o.max_body,
                                       .access_log = !o.quiet,
                                       .metrics = metrics});
    auto registry = app.models();
    registry->set_loading(true);
    const int port = app.start(o.host, o.port);
    const bool v6 = o.host.find(':') != std::string::npos;
    std::printf("forge serve: listening on http://%s%s%s:%d\n", v6 ? "[" : "", o.host.c_str(),
                v6 ? "]" : "", port);
    std::fflush(stdout);

    LoadedModel loaded = load_model_dir(o.model);
    // --device cuda: CudaLM (bf16 weights, CUDA-graph decode); the engine feeds its slots one
    // sequence at a time (CausalLM::eval_batch's default), prompts under --dtype.
    std::shared_ptr<CausalLM> lm;
    if (device.type == DeviceType::cuda) {
        FORGE_CHECK(device.index == 0, "--device ", o.device, ": GPU decoding runs on cuda:0");
        lm = std::make_shared<CudaLM>(*loaded.model);
        serve::add_gpu_memory_metrics(*metrics, device.index);
    }
    if (o.ctx > loaded.config.n_ctx)
        throw InvalidArgument("--ctx " + std::to_string(o.ctx) + " is over the model's context of " +
                              std::to_string(loaded.config.n_ctx) + " positions");
    const std::string id = o.name.empty() ? std::filesystem::path(o.model).lexically_normal()
                                                .filename().string()
                                          : o.name;
    registry->add(serve::ServedModel::from_loaded(
        id.empty() ? "model" : id, loaded,
        {.engine = {.slots = o.slots, .max_queue = o.queue, .metrics = metrics}, .ctx = o.ctx,
         .lm = lm}));
    std::printf("forge serve: model '%s' ready (%d slots, %s API key%s)\n",
                registry->list()[0]->id().c_str(), o.slots,
                keys.empty() ? "no" : std::to_string(keys.size()).c_str(),
                keys.size() == 1 ? "" : "s");
    std::fflush(stdout);

    int sig = 0;
    sigwait(&sigs, &sig);
    std::fprintf(stderr, "forge serve: %s, draining %lld in-flight request(s)\n",
                 sig == SIGTERM ? "SIGTERM" : "SIGINT", (long long)app.in_flight());
    app.stop(o.drain_s);
    std::fprintf(stderr, "forge serve: stopped\n");
}

} // namespace

FORGE_CLI_COMMAND([](CLI::App& root) {
    auto o = std::make_shared<ServeCliOptions>();
    auto* cmd = root.add_subcommand("serve", "Serve a model folder over an OpenAI-compatible API");
    cmd->add_option("--model,-m", o->model, "model folder: config.json, model.safetensors, tokenizer")
        ->required();
    cmd->add_option("--name", o->name, "model id in the API (default: the folder's name)");
    cmd->add_option("--host", o->host, "address to bind")->capture_default_str();
    cmd->add_option("--port,-p", o->port, "port (0 = any free one)")->capture_default_str();
    auto* key = cmd->add_option("--api-key", o->api_key,
                                "required Bearer key (also FORGE_API_KEYS, comma-separated)");
    auto* file = cmd->add_option("--api-keys-file", o->api_keys_file,
                                 "file of keys, one per line ('#' comments)");
    key->excludes(file);
    cmd->add_option("--rate-limit", o->rate_limit, "per key (or address): N/min or N/s");
    cmd->add_option("--slots", o->slots, "generations decoded together")->capture_default_str();
    cmd->add_option("--queue", o->queue, "generations waiting for a slot before 503")
        ->capture_default_str();
    cmd->add_option("--max-body", o->max_body, "largest request body in bytes (413 beyond)")
        ->capture_default_str();
    cmd->add_option("--ctx", o->ctx, "context per request (0 = the model's)")->capture_default_str();
    cmd->add_option("--drain", o->drain_s, "seconds in-flight requests get on SIGTERM")
        ->capture_default_str();
    cmd->add_option("--threads,-t", o->threads, "CPU threads (0 = all cores)")
        ->capture_default_str();
    cmd->add_flag("--quiet,-q", o->quiet, "no access log on stderr");
    cmd->add_option("--device", o->device, "cpu | cuda")->capture_default_str();
    cmd->add_option("--dtype", o->dtype, "with --device cuda: prompt precision f32 | tf32 | bf16 | f16")
        ->capture_default_str();
    cmd->callback([o] { run_serve(*o); });
});

} // namespace forge::cli
