// `forge train`: builds a model from a preset (or a checkpoint), a tokenizer and a token cache
// from text, and runs forge::Trainer. Settings come from flags, then the project's forge.toml
// (or --config FILE), then defaults; a checkpoint's saved options when resuming.
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <thread>

#include <cstdlib>
#include <fstream>

#include <omp.h>
#include <unistd.h>

#include "command.h"
#include <forge/core/device.h>
#include <forge/models/config.h>
#include <forge/models/transformer.h>
#include <forge/train/config_file.h>
#include <forge/train/data.h>
#include <forge/train/tokenizer_spec.h>
#include <forge/train/trainer.h>

extern "C" char* openblas_get_corename(void); // the kernel set OpenBLAS runs

namespace {

using namespace forge;
namespace fs = std::filesystem;

enum class Kind { str, path, paths, integer, real, boolean };

struct FlagSpec {
    const char* name;
    Kind kind;
    const char* help;
};

// Every setting of `forge train`, by flag name (config keys are the same names).
const std::vector<FlagSpec> kFlags = {
    {"preset", Kind::str, "model preset: tiny, gpt2, gpt2-medium, llama-1b, ... (default tiny)"},
    {"data", Kind::paths, "text files or folders to train on"},
    {"tokenizer", Kind::str, "char | byte | bpe:N | FILE (default char)"},
    {"steps", Kind::integer, "optimizer steps (default 1000)"},
    {"batch", Kind::integer, "sequences per micro-batch (default 12)"},
    {"seq-len", Kind::integer, "tokens per sequence (default min(n_ctx, 256))"},
    {"grad-accum", Kind::integer, "micro-batches per step (default 1)"},
    {"optimizer", Kind::str, "adamw | sgd (default adamw)"},
    {"lr", Kind::real, "peak learning rate (default 1e-3)"},
    {"min-lr", Kind::real, "final learning rate of the decay (default lr/10)"},
    {"warmup", Kind::integer, "linear warmup steps (default 100)"},
    {"schedule", Kind::str, "cosine | linear | constant (default cosine)"},
    {"weight-decay", Kind::real, "AdamW decoupled weight decay (default 0.1)"},
    {"beta1", Kind::real, "AdamW beta1 (default 0.9)"},
    {"beta2", Kind::real, "AdamW beta2 (default 0.95)"},
    {"eps", Kind::real, "AdamW epsilon (default 1e-8)"},
    {"momentum", Kind::real, "SGD momentum (default 0.9)"},
    {"decay-embeddings", Kind::boolean, "also weight-decay embedding tables"},
    {"grad-clip", Kind::real, "max global gradient norm, 0 = off (default 1.0)"},
    {"n-layer", Kind::integer, "override the preset's layers"},
    {"n-head", Kind::integer, "override the preset's attention heads"},
    {"n-head-kv", Kind::integer, "override the preset's key/value heads"},
    {"n-embd", Kind::integer, "override the preset's width"},
    {"n-ff", Kind::integer, "override the preset's MLP width"},
    {"n-ctx", Kind::integer, "override the preset's context (positions)"},
    {"dropout", Kind::real, "dropout probability (default 0)"},
    {"eval-every", Kind::integer, "evaluate every N steps, 0 = only at the end (default 500)"},
    {"eval-iters", Kind::integer, "batches per split per evaluation (default 20)"},
    {"val-fraction", Kind::real, "held-out fraction at the end of the data (default 0.1)"},
    {"sampling", Kind::str, "random | sequential batches (default random)"},
    {"seed", Kind::integer, "random seed: init, batches (default 1337)"},
    {"threads", Kind::integer, "CPU threads (default: all cores)"},
    {"batch-split", Kind::str,
     "auto | off: on the CPU a small model trains one slice of each batch per thread; off "
     "splits every op over the threads instead (default auto)"},
    {"device", Kind::str, "where the model trains: cpu | cuda | cuda:N (default cpu)"},
    {"dtype", Kind::str,
     "compute precision: f32 | bf16 | tf32 (CUDA only) | f16 (CUDA only). bf16 and f16 are "
     "autocast: bf16/f16 matmuls (and bf16 attention on CUDA) with f32 sums, f32 master weights "
     "and optimizer state; default f32"},
    {"loss-scale", Kind::str,
     "auto | dynamic | none | N: multiply the loss by a scale before backward and skip steps "
     "whose gradients overflow; dynamic starts at 65536, halves on overflow, doubles after 2000 "
     "good steps (default auto: dynamic with --dtype f16, none otherwise)"},
    {"log-every", Kind::integer, "progress line every N steps when not a terminal (default 10)"},
    {"save-every", Kind::integer, "also save a checkpoint every N steps (default: at the end)"},
    {"out", Kind::path, "checkpoint folder (default out)"},
    {"cache-dir", Kind::path, "token cache folder (default OUT/cache)"},
    {"resume", Kind::path, "continue the run saved in DIR exactly"},
    {"init-from", Kind::path, "start from DIR's weights with new data and options (fine-tune)"},
    {"metrics-out", Kind::path, "write one JSON line per evaluation to FILE"},
};

struct Setting {
    std::vector<std::string> values;
    std::string origin; // "--steps" or "forge.toml:12"
};

class Settings {
  public:
    std::map<std::string, Setting> map;

    bool has(const std::string& k) const { return map.count(k) > 0; }
    const Setting* find(const std::string& k) const {
        auto it = map.find(k);
        return it == map.end() ? nullptr : &it->second;
    }
    std::string str(const std::string& k, const std::string& def) const {
        auto* s = find(k);
        return s ? s->values.at(0) : def;
    }
    std::vector<std::string> list(const std::string& k) const {
        auto* s = find(k);
        return s ? s->values : std::vector<std::string>{};
    }
    int64_t integer(const std::string& k, int64_t def) const {
        auto* s = find(k);
        if (!s)
            return def;
        const std::string& v = s->values.at(0);
        size_t used = 0;
        try {
            long long x = std::stoll(v, &used);
            if (used == v.size())
                return x;
            double d = std::stod(v, &used); // 2e3
            if (used == v.size() && d == std::floor(d) && std::fabs(d) < 9e18)
                return int64_t(d);
        } catch (const std::exception&) {
        }
        bad(k, *s, "an integer");
    }
    double real(const std::string& k, double def) const {
        auto* s = find(k);
        if (!s)
            return def;
        const std::string& v = s->values.at(0);
        size_t used = 0;
        try {
            double d = std::stod(v, &used);
            if (used == v.size() && std::isfinite(d))
                return d;
        } catch (const std::exception&) {
        }
        bad(k, *s, "a number");
    }
    bool boolean(const std::string& k, bool def) const {
        auto* s = find(k);
        if (!s)
            return def;
        const std::string& v = s->values.at(0);
        if (v == "true" || v == "1")
            return true;
        if (v == "false" || v == "0")
            return false;
        bad(k, *s, "true or false");
    }

  private:
    [[noreturn]] static void bad(const std::string& k, const Setting& s, const char* expected) {
        throw InvalidArgument("bad value '" + s.values.at(0) + "' for " + k + " (from " + s.origin +
                              "): expected " + expected);
    }
};

const FlagSpec* spec_of(const std::string& name) {
    for (auto& f : kFlags)
        if (name == f.name)
            return &f;
    return nullptr;
}

std::string known_keys() {
    std::string s;
    for (auto& f : kFlags)
        s += (s.empty() ? "" : ", ") + std::string(f.name);
    return s;
}

// Config entries fill the settings the command line left unset; path values are relative to
// the config file's folder.
void apply_config(Settings& st, const fs::path& file) {
    const fs::path base = file.parent_path();
    for (auto& e : parse_config_file(file)) {
        const std::string origin = file.string() + ":" + std::to_string(e.line);
        const FlagSpec* f = spec_of(e.key);
        if (!f || e.key == "resume" || e.key == "config")
            throw InvalidArgument(origin + ": unknown key '" + e.key + "'",
                                  "known keys: " + known_keys());
        if (e.is_array && f->kind != Kind::paths)
            throw InvalidArgument(origin + ": '" + e.key + "' takes one value, not an array");
        if (st.has(e.key))
            continue; // the flag wins
        Setting s{e.values, origin};
        const bool is_path = f->kind == Kind::path || f->kind == Kind::paths ||
                             (e.key == "tokenizer" && e.values[0] != "char" &&
                              e.values[0] != "byte" && e.values[0].rfind("bpe:", 0) != 0);
        if (is_path)
            for (auto& v : s.values)
                if (fs::path(v).is_relative())
                    v = (base / v).lexically_normal().string();
        st.map[e.key] = std::move(s);
    }
}

std::string human_count(double n) {
    char buf[32];
    if (n >= 1e9)
        std::snprintf(buf, sizeof(buf), "%.2fB", n / 1e9);
    else if (n >= 1e6)
        std::snprintf(buf, sizeof(buf), "%.2fM", n / 1e6);
    else if (n >= 1e3)
        std::snprintf(buf, sizeof(buf), "%.1fk", n / 1e3);
    else
        std::snprintf(buf, sizeof(buf), "%.0f", n);
    return buf;
}

TrainOptions options_from(const Settings& st, TrainOptions o, int64_t n_ctx) {
    o.steps = st.integer("steps", o.steps);
    o.batch = st.integer("batch", o.batch);
    o.seq_len = st.integer("seq-len", o.seq_len > 0 ? o.seq_len : std::min<int64_t>(n_ctx, 256));
    o.grad_accum = st.integer("grad-accum", o.grad_accum);
    o.optimizer = st.str("optimizer", o.optimizer);
    o.lr = st.real("lr", o.lr);
    o.min_lr = st.real("min-lr", st.has("lr") ? o.lr / 10 : o.min_lr);
    o.warmup = st.integer("warmup", o.warmup);
    o.schedule = st.str("schedule", o.schedule);
    o.weight_decay = st.real("weight-decay", o.weight_decay);
    o.beta1 = st.real("beta1", o.beta1);
    o.beta2 = st.real("beta2", o.beta2);
    o.eps = st.real("eps", o.eps);
    o.momentum = st.real("momentum", o.momentum);
    o.decay_embeddings = st.boolean("decay-embeddings", o.decay_embeddings);
    o.grad_clip = st.real("grad-clip", o.grad_clip);
    o.dtype = st.str("dtype", o.dtype);
    o.loss_scale = st.str("loss-scale", o.loss_scale);
    o.eval_every = st.integer("eval-every", o.eval_every);
    o.eval_iters = st.integer("eval-iters", o.eval_iters);
    o.val_fraction = st.real("val-fraction", o.val_fraction);
    o.sampling = st.str("sampling", o.sampling);
    o.batch_split = st.str("batch-split", o.batch_split);
    o.seed = uint64_t(st.integer("seed", int64_t(o.seed)));
    o.log_every = st.integer("log-every", o.log_every);
    o.save_every = st.integer("save-every", o.save_every);
    return o;
}

int run_train(Settings st) {
    const bool resuming = st.has("resume");
    // The project config: --config FILE, else ./forge.toml (not when resuming: the checkpoint
    // holds the run's options, and only flags change them).
    if (auto* c = st.find("config")) {
        apply_config(st, c->values[0]);
    } else if (!resuming && fs::exists("forge.toml")) {
        apply_config(st, "forge.toml");
    }
    FORGE_CHECK(!(resuming && st.has("init-from")),
                "--resume and --init-from exclude each other (resume continues a run; "
                "init-from starts a new one from its weights)");

    CheckpointInfo ckpt;
    fs::path ckpt_dir;
    if (resuming || st.has("init-from")) {
        ckpt_dir = st.str(resuming ? "resume" : "init-from", "");
        ckpt = read_checkpoint_info(ckpt_dir);
        if (resuming)
            FORGE_CHECK(ckpt.has_trainer_state, "[checkpoint] ", ckpt_dir.string(),
                        " has no trainer_state.json: it can seed a new run (--init-from) but "
                        "not be resumed");
    }

    // Threads first: tokenization and training both use them; a resumed run keeps its count.
    int threads = int(st.integer("threads", resuming ? ckpt.options.threads : 0));
    FORGE_CHECK(threads >= 0, "bad value for --threads: ", threads);
    set_num_threads(threads);
    threads = omp_get_max_threads();

    // The device first too: a missing GPU is reported before any tokenizing.
    const Device device = Device::parse(st.str("device", "cpu"));
    cuda::check_device(device);

    const fs::path out = st.str("out", resuming ? ckpt_dir.string() : "out");
    const fs::path cache_dir = st.str("cache-dir", (out / "cache").string());

    // Data.
    std::vector<std::string> inputs = st.list("data");
    if (inputs.empty() && resuming)
        inputs = ckpt.data.inputs;
    if (inputs.empty())
        throw InvalidArgument("no training data",
                              "pass --data FILE_OR_FOLDER, or set data = [\"data\"] in forge.toml");
    std::vector<fs::path> input_paths;
    for (auto& s : inputs)
        input_paths.push_back(fs::absolute(s).lexically_normal());
    const auto files = list_data_files(input_paths);

    // Tokenizer: a checkpoint's own file unless --tokenizer says otherwise.
    std::unique_ptr<TrainingTokenizer> tok;
    if (!ckpt_dir.empty() && !st.has("tokenizer"))
        tok = std::make_unique<TrainingTokenizer>(load_training_tokenizer(
            ckpt.tokenizer_file,
            ckpt.data.tokenizer.empty() ? ckpt.tokenizer_file.string() : ckpt.data.tokenizer));
    else
        tok = std::make_unique<TrainingTokenizer>(
            make_training_tokenizer(st.str("tokenizer", "char"), files, cache_dir, threads));
    const int64_t vocab = int64_t(tok->tokenizer.vocab_size());

    // Model config.
    ModelConfig cfg;
    std::string model_desc;
    const char* shape_keys[] = {"n-layer", "n-head", "n-head-kv", "n-embd", "n-ff", "n-ctx"};
    if (!ckpt_dir.empty()) {
        cfg = ckpt.config;
        // A project's forge.toml names a preset and shapes for new runs: a checkpoint's model
        // overrides those; only flags that try to change it are errors.
        for (const char* k :
             {"preset", "n-layer", "n-head", "n-head-kv", "n-embd", "n-ff", "n-ctx"})
            if (auto* s = st.find(k); s && s->origin.rfind("--", 0) != 0)
                st.map.erase(k);
        for (const char* k : shape_keys)
            FORGE_CHECK(!st.has(k), "--", k, " cannot change the shape of a checkpoint's model (",
                        ckpt_dir.string(), ")");
        FORGE_CHECK(!st.has("preset"), "--preset cannot be combined with --",
                    resuming ? "resume" : "init-from");
        FORGE_CHECK(cfg.vocab_size == vocab, "the tokenizer has ", vocab,
                    " tokens but the model in ", ckpt_dir.string(), " has a vocabulary of ",
                    cfg.vocab_size, "; keep the checkpoint's tokenizer (leave out --tokenizer)");
        model_desc = "from " + ckpt_dir.string();
    } else {
        const std::string preset = st.str("preset", "tiny");
        cfg = ModelConfig::preset(preset);
        cfg.n_layer = st.integer("n-layer", cfg.n_layer);
        const bool head_set = st.has("n-head");
        cfg.n_head = st.integer("n-head", cfg.n_head);
        // A changed head count keeps the preset's attention kind: MHA stays MHA.
        const ModelConfig base = ModelConfig::preset(preset);
        cfg.n_head_kv = st.integer(
            "n-head-kv", head_set && base.n_head_kv == base.n_head ? cfg.n_head : cfg.n_head_kv);
        const bool embd_set = st.has("n-embd");
        cfg.n_embd = st.integer("n-embd", cfg.n_embd);
        if (embd_set || head_set)
            cfg.head_dim = 0; // follow n_embd / n_head
        // The MLP keeps the preset's ratio to the width unless given.
        cfg.n_ff = st.integer("n-ff", embd_set ? base.n_ff * cfg.n_embd / base.n_embd : cfg.n_ff);
        cfg.vocab_size = vocab;
        // n_ctx: --n-ctx; else for learned positions (GPT-2) a --seq-len below the preset's
        // context becomes the context (positions past it would never be trained); RoPE models
        // keep theirs (it costs no parameters).
        if (st.has("n-ctx"))
            cfg.n_ctx = st.integer("n-ctx", cfg.n_ctx);
        else if (st.has("seq-len") && cfg.family == ModelFamily::gpt2)
            cfg.n_ctx = std::min(cfg.n_ctx, st.integer("seq-len", cfg.n_ctx));
        model_desc = "preset " + preset;
    }
    cfg.dropout = float(st.real("dropout", cfg.dropout));
    cfg.validate();

    TrainOptions opts = options_from(st, resuming ? ckpt.options : TrainOptions{}, cfg.n_ctx);
    if (!resuming)
        opts.threads = threads;
    FORGE_CHECK(opts.seq_len <= cfg.n_ctx, "--seq-len ", opts.seq_len,
                " exceeds the model's context of ", cfg.n_ctx, " positions");
    opts.out = out;
    if (st.has("metrics-out"))
        opts.metrics_out = st.str("metrics-out", "");
    opts.validate();
    if (resuming && opts.threads != threads)
        std::fprintf(stderr,
                     "warning: this run uses %d threads, the checkpoint %d: losses may "
                     "differ in the last bits from an uninterrupted run\n",
                     threads, opts.threads);

    TokenCache cache = tokenize_cached(files, tok->tokenizer, tok->hash, cache_dir, threads);

    Transformer model(cfg, opts.seed);
    if (st.has("init-from"))
        load_checkpoint_weights(model, ckpt_dir);
    model.to(device); // before the trainer: the optimizer's state is made beside the weights

    std::printf("model: %s, %s family, %lld layers, %lld heads, n_embd %lld, n_ctx %lld, "
                "%s parameters, vocab %lld (%s)\n",
                model_desc.c_str(), cfg.family == ModelFamily::gpt2 ? "gpt2" : "llama",
                static_cast<long long>(cfg.n_layer), static_cast<long long>(cfg.n_head),
                static_cast<long long>(cfg.n_embd), static_cast<long long>(cfg.n_ctx),
                human_count(double(model.num_parameters())).c_str(), static_cast<long long>(vocab),
                tok->spec.c_str());
    std::printf("data: %zu file%s, %s bytes -> %lld tokens (%s %s)\n", files.size(),
                files.size() == 1 ? "" : "s", human_count(double(cache.n_bytes)).c_str(),
                static_cast<long long>(cache.tokens.size()),
                cache.rebuilt ? "tokenized into" : "reused", cache.tokens.path().c_str());

    Trainer trainer(model, opts);
    trainer.set_data(cache.tokens);
    DataSpec spec;
    for (auto& p : input_paths)
        spec.inputs.push_back(p.string());
    spec.tokenizer = tok->spec;
    trainer.set_tokenizer(*tok, spec);
    if (resuming) {
        trainer.resume(ckpt_dir);
        std::printf("resumed %s at step %lld\n", ckpt_dir.c_str(),
                    static_cast<long long>(trainer.step()));
    }
    if (device.type == DeviceType::cuda) {
        const auto p = cuda::device_properties(device.index);
        std::printf("device: %s (%s, sm_%d%d, %.1f GiB), compute %s\n", device.str().c_str(),
                    p.name.c_str(), p.major, p.minor,
                    double(p.total_memory) / (1024.0 * 1024 * 1024), opts.dtype.c_str());
    } else {
        // What the CLI chose at start (cli/main.cpp): it sets the pace on a CPU.
        const char* wait = std::getenv("OMP_WAIT_POLICY");
        std::printf("device: cpu, OpenMP workers %s, OpenBLAS kernels %s, compute %s\n",
                    !wait                            ? "spin, then sleep"
                    : std::string(wait) == "passive" ? "sleep"
                                                     : "spin",
                    openblas_get_corename(), opts.dtype.c_str());
    }
    std::printf("train: %lld steps x %lld x %lld tokens%s, %s lr %.3g -> %.3g (%s, warmup %lld), "
                "%d thread%s, seed %llu\n",
                static_cast<long long>(opts.steps), static_cast<long long>(opts.batch),
                static_cast<long long>(opts.seq_len),
                opts.grad_accum > 1 ? (" x " + std::to_string(opts.grad_accum) + " accum").c_str()
                                    : "",
                opts.optimizer.c_str(), opts.lr, opts.min_lr, opts.schedule.c_str(),
                static_cast<long long>(opts.warmup), threads, threads == 1 ? "" : "s",
                static_cast<unsigned long long>(opts.seed));
    std::fflush(stdout);
    EvalStats last = trainer.fit();
    std::printf("done: step %lld, val loss %.4f\n", static_cast<long long>(last.step),
                last.val_loss);
    if (device.type == DeviceType::cuda)
        std::printf("cuda memory: peak %.2f GiB allocated, %.2f GiB reserved\n",
                    double(cuda::memory_stats(device.index).peak) / (1024.0 * 1024 * 1024),
                    double(cuda::memory_stats(device.index).reserved) / (1024.0 * 1024 * 1024));
    return 0;
}

void setup_train(CLI::App& root) {
    auto* cmd = root.add_subcommand("train", "Train (or fine-tune, or resume) a model on text");
    cmd->footer("Settings also come from ./forge.toml (see `forge new`) or --config FILE; flags "
                "win. See docs/training.md.");
    // Raw strings per flag; typed and validated once all sources are merged.
    auto raw = std::make_shared<std::map<std::string, std::vector<std::string>>>();
    auto bools = std::make_shared<std::map<std::string, bool>>();
    std::vector<std::pair<std::string, CLI::Option*>> opts;
    for (auto& f : kFlags) {
        const std::string flag = std::string("--") + f.name;
        CLI::Option* o;
        if (f.kind == Kind::boolean)
            o = cmd->add_flag(flag, (*bools)[f.name], f.help);
        else if (f.kind == Kind::paths)
            o = cmd->add_option(flag, (*raw)[f.name], f.help)->expected(1, -1);
        else
            o = cmd->add_option(flag, (*raw)[f.name], f.help)->expected(1);
        opts.emplace_back(f.name, o);
    }
    opts.emplace_back("config", cmd->add_option("--config", (*raw)["config"],
                                                "project config file (default ./forge.toml)")
                                    ->expected(1));
    cmd->callback([raw, bools, opts] {
        Settings st;
        for (auto& [name, o] : opts) {
            if (o->count() == 0)
                continue;
            const FlagSpec* f = spec_of(name);
            if (f && f->kind == Kind::boolean)
                st.map[name] = {{(*bools)[name] ? "true" : "false"}, "--" + name};
            else
                st.map[name] = {(*raw)[name], "--" + name};
        }
        run_train(std::move(st));
    });
}

// A named function: the setup lambda's commas would split the macro's argument.
FORGE_CLI_COMMAND(setup_train);

} // namespace
