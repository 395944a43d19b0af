// The training loop, evaluation, progress/metrics output and checkpoints (see trainer.h).
#include <forge/train/trainer.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>

#include <omp.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <forge/autograd/autograd.h>
#include <forge/core/ops.h>
#include <forge/formats/safetensors.h>
#include <forge/models/transformer.h>

#include "train/batch_split.h"


namespace fs = std::filesystem;
using json = nlohmann::json;

namespace forge {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
}

uint64_t mix(uint64_t a, uint64_t b) {
    Rng r{a ^ (b * 0x9e3779b97f4a7c15ULL)};
    return r.next();
}

void write_text_atomic(const fs::path& path, const std::string& text) {
    const fs::path tmp = path.string() + ".tmp";
    {
        std::ofstream o(tmp, std::ios::binary | std::ios::trunc);
        FORGE_CHECK(o, "[checkpoint] cannot write ", tmp.string());
        o.write(text.data(), std::streamsize(text.size()));
        o.close();
        FORGE_CHECK(o, "[checkpoint] failed writing ", tmp.string());
    }
    std::error_code ec;
    fs::rename(tmp, path, ec);
    FORGE_CHECK(!ec, "[checkpoint] cannot write ", path.string(), ": ", ec.message());
}

json parse_json_file(const fs::path& path, const std::string& what) {
    std::error_code ec;
    if (!fs::exists(path, ec))
        throw NotFound("[checkpoint] " + path.parent_path().string() + " has no " +
                           path.filename().string() + " (" + what + ")",
                       "pass a folder written by `forge train --out DIR`");
    std::string text = read_file_bytes(path);
    json j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object())
        throw InvalidArgument("[checkpoint] " + path.string() + " is corrupt: not a JSON object");
    return j;
}

std::string fmt_duration(double s) {
    if (!std::isfinite(s) || s < 0)
        return "?";
    const long t = long(s + 0.5);
    char buf[32];
    if (t >= 3600)
        std::snprintf(buf, sizeof(buf), "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
    else
        std::snprintf(buf, sizeof(buf), "%ld:%02ld", t / 60, t % 60);
    return buf;
}

std::string fmt_rate(double r) {
    char buf[32];
    if (r >= 1e6)
        std::snprintf(buf, sizeof(buf), "%.2fM", r / 1e6);
    else if (r >= 1e3)
        std::snprintf(buf, sizeof(buf), "%.1fk", r / 1e3);
    else
        std::snprintf(buf, sizeof(buf), "%.0f", r);
    return buf;
}

// One live line on a terminal (\r, throttled), plain lines every log_every steps otherwise.
class Progress {
  public:
    Progress(const TrainOptions& o, int64_t tokens_per_step)
        : opts_(o), tokens_per_step_(tokens_per_step), tty_(::isatty(::fileno(stdout)) != 0) {}

    void step(const StepStats& s, double step_seconds) {
        window_s_ += step_seconds;
        ++window_steps_;
        total_train_s_ += step_seconds;
        ++session_steps_;
        if (!opts_.progress)
            return;
        const bool plain_due = (opts_.log_every > 0 && s.step % opts_.log_every == 0) || s.skipped;
        if (tty_) {
            if (seconds_since(last_print_) < 0.1 && s.step != opts_.steps)
                return;
        } else if (!plain_due) {
            return;
        }
        const double per_step = window_steps_ ? window_s_ / double(window_steps_) : 0;
        const double eta = total_train_s_ / double(session_steps_) * double(opts_.steps - s.step);
        char line[256];
        std::snprintf(line, sizeof(line),
                      "step %6lld/%lld | loss %.4f | lr %.3e | %s tok/s | %.1f ms/step | ETA %s",
                      static_cast<long long>(s.step), static_cast<long long>(opts_.steps), s.loss,
                      s.lr,
                      fmt_rate(per_step > 0 ? double(tokens_per_step_) / per_step : 0).c_str(),
                      per_step * 1e3, fmt_duration(eta).c_str());
        std::string text = line;
        if (s.skipped)
            text +=
                " | overflow at loss scale " + detail::str_cat(s.loss_scale) + ": update skipped";
        if (tty_) {
            std::printf("\r%s\x1b[K", text.c_str());
            live_ = true;
        } else {
            std::printf("%s\n", text.c_str());
        }
        std::fflush(stdout);
        last_print_ = Clock::now();
        window_s_ = 0;
        window_steps_ = 0;
    }

    void line(const std::string& text) {
        if (!opts_.progress)
            return;
        if (live_) {
            std::printf("\r\x1b[K");
            live_ = false;
        }
        std::printf("%s\n", text.c_str());
        std::fflush(stdout);
    }

    void finish() {
        if (live_ && opts_.progress) {
            std::printf("\n");
            std::fflush(stdout);
            live_ = false;
        }
    }

  private:
    const TrainOptions& opts_;
    int64_t tokens_per_step_;
    bool tty_;
    bool live_ = false;
    Clock::time_point last_print_{};
    double window_s_ = 0, total_train_s_ = 0;
    int64_t window_steps_ = 0, session_steps_ = 0;
};

// A --loss-scale number ("1024", "65536.0"); NaN if the text is not one number.
double parse_fixed_loss_scale(const std::string& text) {
    try {
        size_t used = 0;
        const double v = std::stod(text, &used);
        return used == text.size() ? v : std::nan("");
    } catch (const std::exception&) {
        return std::nan("");
    }
}

} // namespace

void set_num_threads(int n) {
    if (n <= 0)
        return;
    omp_set_num_threads(n); // OpenBLAS stays single-threaded: matmul splits work over OpenMP
}

// ------------------------------------------------------------------------------ options

void TrainOptions::validate() const {
    FORGE_CHECK(steps > 0, "[train] --steps must be > 0, got ", steps);
    FORGE_CHECK(batch > 0, "[train] --batch must be > 0, got ", batch);
    FORGE_CHECK(seq_len > 0, "[train] --seq-len must be > 0, got ", seq_len);
    FORGE_CHECK(grad_accum > 0, "[train] --grad-accum must be > 0, got ", grad_accum);
    FORGE_CHECK(optimizer == "adamw" || optimizer == "sgd",
                "[train] --optimizer must be adamw or sgd, got '", optimizer, "'");
    FORGE_CHECK(std::isfinite(lr) && lr > 0, "[train] --lr must be > 0, got ", lr);
    FORGE_CHECK(std::isfinite(min_lr) && min_lr >= 0 && min_lr <= lr,
                "[train] --min-lr must be in [0, lr], got ", min_lr);
    FORGE_CHECK(warmup >= 0, "[train] --warmup must be >= 0, got ", warmup);
    LrSchedule::parse_kind(schedule);
    FORGE_CHECK(weight_decay >= 0, "[train] --weight-decay must be >= 0, got ", weight_decay);
    FORGE_CHECK(beta1 >= 0 && beta1 < 1, "[train] --beta1 must be in [0, 1), got ", beta1);
    FORGE_CHECK(beta2 >= 0 && beta2 < 1, "[train] --beta2 must be in [0, 1), got ", beta2);
    FORGE_CHECK(eps > 0, "[train] --eps must be > 0, got ", eps);
    FORGE_CHECK(momentum >= 0, "[train] --momentum must be >= 0, got ", momentum);
    FORGE_CHECK(grad_clip >= 0, "[train] --grad-clip must be >= 0 (0 = off), got ", grad_clip);
    FORGE_CHECK(dtype == "f32" || dtype == "tf32" || dtype == "bf16" || dtype == "f16",
                "[train] --dtype must be f32, tf32, bf16 or f16, got '", dtype, "'");
    if (loss_scale != "auto" && loss_scale != "dynamic" && loss_scale != "none") {
        const double v = parse_fixed_loss_scale(loss_scale);
        FORGE_CHECK(std::isfinite(v) && v > 0,
                    "[train] --loss-scale must be auto, dynamic, none "
                    "or a positive number, got '",
                    loss_scale, "'");
    }
    FORGE_CHECK(std::isfinite(loss_scale_init) && loss_scale_init > 0,
                "[train] loss_scale_init must be > 0, got ", loss_scale_init);
    FORGE_CHECK(std::isfinite(loss_scale_growth) && loss_scale_growth >= 1,
                "[train] loss_scale_growth must be >= 1, got ", loss_scale_growth);
    FORGE_CHECK(loss_scale_backoff > 0 && loss_scale_backoff < 1,
                "[train] loss_scale_backoff must be in (0, 1), got ", loss_scale_backoff);
    FORGE_CHECK(loss_scale_growth_interval > 0,
                "[train] loss_scale_growth_interval must be > 0, got ", loss_scale_growth_interval);
    FORGE_CHECK(eval_every >= 0, "[train] --eval-every must be >= 0, got ", eval_every);
    FORGE_CHECK(eval_iters > 0, "[train] --eval-iters must be > 0, got ", eval_iters);
    FORGE_CHECK(val_fraction > 0 && val_fraction < 1,
                "[train] --val-fraction must be in (0, 1), got ", val_fraction);
    FORGE_CHECK(sampling == "random" || sampling == "sequential",
                "[train] --sampling must be random or sequential, got '", sampling, "'");
    FORGE_CHECK(batch_split == "auto" || batch_split == "off",
                "[train] --batch-split must be auto or off, got '", batch_split, "'");
    FORGE_CHECK(log_every >= 0, "[train] --log-every must be >= 0, got ", log_every);
    FORGE_CHECK(save_every >= 0, "[train] --save-every must be >= 0, got ", save_every);
}

std::string TrainOptions::to_json() const {
    json j = {{"steps", steps},
              {"batch", batch},
              {"seq_len", seq_len},
              {"grad_accum", grad_accum},
              {"optimizer", optimizer},
              {"lr", lr},
              {"min_lr", min_lr},
              {"warmup", warmup},
              {"schedule", schedule},
              {"weight_decay", weight_decay},
              {"beta1", beta1},
              {"beta2", beta2},
              {"eps", eps},
              {"momentum", momentum},
              {"decay_embeddings", decay_embeddings},
              {"grad_clip", grad_clip},
              {"dtype", dtype},
              {"loss_scale", loss_scale},
              {"loss_scale_init", loss_scale_init},
              {"loss_scale_growth", loss_scale_growth},
              {"loss_scale_backoff", loss_scale_backoff},
              {"loss_scale_growth_interval", loss_scale_growth_interval},
              {"eval_every", eval_every},
              {"eval_iters", eval_iters},
              {"val_fraction", val_fraction},
              {"sampling", sampling},
              {"seed", std::to_string(seed)},
              {"threads", threads},
              {"batch_split", batch_split},
              {"log_every", log_every},
              {"save_every", save_every}};
    return j.dump(2);
}

TrainOptions TrainOptions::from_json(const std::string& text) {
    json j = json::parse(text, nullptr, false);
    FORGE_CHECK(!j.is_discarded() && j.is_object(), "[train] options are not a JSON object");
    TrainOptions o;
    auto get = [&](const char* key, auto& field) {
        auto it = j.find(key);
        if (it == j.end())
            return;
        try {
            it->get_to(field);
        } catch (const json::exception&) {
            throw InvalidArgument(std::string("[train] saved option '") + key +
                                  "' has the wrong type");
        }
    };
    get("steps", o.steps);
    get("batch", o.batch);
    get("seq_len", o.seq_len);
    get("grad_accum", o.grad_accum);
    get("optimizer", o.optimizer);
    get("lr", o.lr);
    get("min_lr", o.min_lr);
    get("warmup", o.warmup);
    get("schedule", o.schedule);
    get("weight_decay", o.weight_decay);
    get("beta1", o.beta1);
    get("beta2", o.beta2);
    get("eps", o.eps);
    get("momentum", o.momentum);
    get("decay_embeddings", o.decay_embeddings);
    get("grad_clip", o.grad_clip);
    get("dtype", o.dtype);
    get("loss_scale", o.loss_scale);
    get("loss_scale_init", o.loss_scale_init);
    get("loss_scale_growth", o.loss_scale_growth);
    get("loss_scale_backoff", o.loss_scale_backoff);
    get("loss_scale_growth_interval", o.loss_scale_growth_interval);
    get("eval_every", o.eval_every);
    get("eval_iters", o.eval_iters);
    get("val_fraction", o.val_fraction);
    get("sampling", o.sampling);
    get("threads", o.threads);
    get("batch_split", o.batch_split);
    get("log_every", o.log_every);
    get("save_every", o.save_every);
    std::string seed;
    get("seed", seed);
    if (!seed.empty())
        o.seed = std::stoull(seed);
    return o;
}

// ------------------------------------------------------------------------------ Trainer

Trainer::Trainer(Transformer& model, TrainOptions opts) : model_(model), opts_(std::move(opts)) {
    opts_.validate();
    if (model_.device().type == DeviceType::cpu) {
        FORGE_CHECK(opts_.dtype != "tf32", "[train] --dtype tf32 runs on CUDA only; the model is "
                    "on the CPU (add --device cuda, or use --dtype f32 or bf16)");
        FORGE_CHECK(opts_.dtype != "bf16" || !cpu_bf16_matmul_path().empty(),
                    "[train] --dtype bf16 on the CPU needs AVX512_BF16 or AMX-BF16, which this "
                    "CPU lacks (use --dtype f32)");
        FORGE_CHECK(opts_.dtype != "f16",
                    "[train] --dtype f16 runs on CUDA only: the CPU has no "
                    "f16 compute (add --device cuda, or use --dtype f32 or bf16)");
    }
    if (opts_.loss_scale == "dynamic" || (opts_.loss_scale == "auto" && opts_.dtype == "f16")) {
        scaling_ = Scaling::dynamic;
        scale_ = opts_.loss_scale_init;
    } else if (opts_.loss_scale != "none" && opts_.loss_scale != "auto") {
        scaling_ = Scaling::fixed;
        scale_ = parse_fixed_loss_scale(opts_.loss_scale);
    }
    schedule_.kind = LrSchedule::parse_kind(opts_.schedule);
    schedule_.lr = opts_.lr;
    schedule_.min_lr = opts_.min_lr;
    schedule_.warmup = opts_.warmup;
    schedule_.decay_steps = opts_.steps;
    auto params = collect_parameters(model_, opts_.decay_embeddings);
    for (auto& p : params)
        p.tensor.set_requires_grad(true);
    if (opts_.optimizer == "adamw")
        opt_ =
            std::make_unique<AdamW>(std::move(params), AdamWOptions{opts_.beta1, opts_.beta2,
                                                                    opts_.eps, opts_.weight_decay});
    else
        opt_ = std::make_unique<SGD>(std::move(params),
                                     SgdOptions{opts_.momentum, 0.0, false, opts_.weight_decay});
}

Trainer::~Trainer() = default;

void Trainer::set_data(TokenFile tokens) {
    tokens_ = std::move(tokens);
    const int64_t n = tokens_.size();
    const int64_t n_val = int64_t(double(n) * opts_.val_fraction);
    n_train_ = n - n_val;
    const int64_t need = opts_.seq_len + 1;
    FORGE_CHECK(n_train_ >= need && n_val >= need, "[train] the data has ", n,
                " tokens: the training split (", n_train_, ") and the held-out split (", n_val,
                ") each need at least --seq-len + 1 = ", need,
                " tokens; add data or lower --seq-len");
    const int64_t vocab = model_.config().vocab_size;
    // Ids at or past the model's vocabulary would fail deep in the embedding: check once here.
    for (int64_t i = 0; i < n; i += std::max<int64_t>(1, n / 4096))
        FORGE_CHECK(int64_t(tokens_[i]) < vocab, "[train] token id ", tokens_[i],
                    " in the data is outside the model's vocabulary of ", vocab,
                    " (the tokenizer and the model disagree)");
    sampler_ = std::make_unique<BatchSampler>(
        tokens_, 0, n_train_, opts_.batch, opts_.seq_len,
        opts_.sampling == "random" ? BatchSampler::Mode::random : BatchSampler::Mode::sequential,
        opts_.seed);
}

void Trainer::set_tokenizer(const TrainingTokenizer& tok, DataSpec spec) {
    tokenizer_ = tok;
    data_spec_ = std::move(spec);
}

BatchSplit* Trainer::batch_split() {
    const int slices = opts_.batch_split == "auto"
                           ? BatchSplit::slices_for(model_, opts_.batch, omp_get_max_threads())
                           : 1;
    if (slices < 2) {
        split_.reset();
        return nullptr;
    }
    // (Re)built when the thread count changed or the model's weights moved (Module::to).
    const Tensor& w = opt_->params().front().tensor;
    if (!split_ || split_->slices() != slices || !split_->shares_weights_with(w))
        split_ = std::make_unique<BatchSplit>(model_, opt_->params(), slices);
    return split_.get();
}

StepStats Trainer::train_step() {
    FORGE_CHECK(sampler_, "[train] no data: call set_data() first");
    model_.train();
    const int64_t this_step = step_ + 1; // 1-based in messages, as the progress line counts
    const auto& params = opt_->params();
    const DevicePrecisionScope precision(opts_.dtype, model_.device()); // f32 outside the step
    const bool scaling = scaling_ != Scaling::none;
    const double scale = scale_;
    BatchSplit* split = batch_split();
    double loss_sum = 0;
    for (int64_t micro = 0; micro < opts_.grad_accum; ++micro) {
        auto [x, y] = sampler_->next(); // (B, T) each, on the host: the model copies them
        // The loss is divided over the micro-batches, and multiplied by the loss scale in a
        // separate multiply: by a power of two it only moves exponents, so without overflow
        // the unscaled gradients below equal the unscaled run's bit for bit.
        const double accum = 1.0 / double(opts_.grad_accum);
        double l; // unscaled: a non-finite loss is divergence, not overflow
        if (split) {
            l = split->loss_backward(x, y, accum, scaling ? scale : 1.0);
        } else {
            Tensor loss = model_.loss(x, y);
            l = loss.item();
            if (std::isfinite(l)) {
                if (opts_.grad_accum > 1)
                    loss = mul_scalar(loss, accum);
                if (scaling)
                    loss = mul_scalar(loss, scale);
                loss.backward();
            }
        }
        if (!std::isfinite(l)) {
            if (split)
                split->zero_grads();
            opt_->zero_grad();
            throw Error(detail::str_cat("[train] step ", this_step, ": the loss is ", l,
                                        " (micro-batch ", micro + 1, " of ", opts_.grad_accum, ")"),
                        "the run diverged: lower --lr, raise --warmup or set --grad-clip");
        }
        loss_sum += l;
    }
    if (split)
        split->reduce_grads();
    if (scaling)
        scale_grads(params, 1.0 / scale); // before the norm, clipping and the optimizer
    GradNorm gn = grad_norm(params);
    const double lr = schedule_.at(step_);
    if (gn.nonfinite_index >= 0 && scaling) {
        // Overflow (torch.amp.GradScaler): no update, the scale backs off; the step counts.
        opt_->zero_grad();
        ++skipped_;
        good_steps_ = 0;
        if (scaling_ == Scaling::dynamic)
            scale_ *= opts_.loss_scale_backoff;
        ++step_;
        StepStats s{step_, loss_sum / double(opts_.grad_accum),
                    lr,    std::numeric_limits<double>::infinity(),
                    scale, true};
        if (on_step)
            on_step(s);
        return s;
    }
    if (gn.nonfinite_index >= 0) {
        const std::string name = params[size_t(gn.nonfinite_index)].name;
        opt_->zero_grad();
        throw Error(detail::str_cat("[train] step ", this_step, ": the gradient of '", name,
                                    "' is not finite (nan or inf)"),
                    "the run diverged: lower --lr, raise --warmup, set --grad-clip, or turn on "
                    "--loss-scale dynamic if the gradients overflow");
    }
    if (opts_.grad_clip > 0 && gn.norm > opts_.grad_clip)
        scale_grads(params, opts_.grad_clip / (gn.norm + 1e-6));
    opt_->step(lr);
    opt_->zero_grad();
    ++step_;
    if (scaling_ == Scaling::dynamic && ++good_steps_ >= opts_.loss_scale_growth_interval) {
        scale_ *= opts_.loss_scale_growth;
        good_steps_ = 0;
    }
    StepStats s{step_, loss_sum / double(opts_.grad_accum), lr, gn.norm, scaling ? scale : 1.0,
                false};
    if (on_step)
        on_step(s);
    return s;
}

double Trainer::eval_split(int64_t begin, int64_t end, uint64_t salt) {
    BatchSampler sampler(tokens_, begin, end, opts_.batch, opts_.seq_len,
                         BatchSampler::Mode::random, mix(mix(opts_.seed, uint64_t(step_)), salt));
    BatchSplit* split = batch_split();
    double sum = 0;
    for (int64_t i = 0; i < opts_.eval_iters; ++i) {
        auto [x, y] = sampler.next();
        sum += split ? split->loss(x, y) : model_.loss(x, y).item();
    }
    return sum / double(opts_.eval_iters);
}

EvalStats Trainer::evaluate() {
    FORGE_CHECK(sampler_, "[train] no data: call set_data() first");
    NoGradGuard no_grad;
    const DevicePrecisionScope precision(opts_.dtype, model_.device());
    model_.eval();
    EvalStats e;
    e.step = step_;
    e.train_loss = eval_split(0, n_train_, 1);
    e.val_loss = eval_split(n_train_, tokens_.size(), 2);
    model_.train();
    return e;
}

EvalStats Trainer::fit() {
    FORGE_CHECK(sampler_, "[train] no data: call set_data() first");
    const auto t_start = Clock::now();
    const int64_t tokens_per_step = opts_.batch * opts_.seq_len * opts_.grad_accum;
    Progress progress(opts_, tokens_per_step);
    std::ofstream metrics;
    if (!opts_.metrics_out.empty()) {
        metrics.open(opts_.metrics_out, step_ > 0 ? std::ios::app : std::ios::trunc);
        FORGE_CHECK(metrics, "[train] cannot write --metrics-out ", opts_.metrics_out.string());
    }
    double train_s_since_eval = 0;
    int64_t steps_since_eval = 0;
    EvalStats last;
    auto do_eval = [&] {
        last = evaluate();
        last.tokens_per_s = train_s_since_eval > 0
                                ? double(steps_since_eval * tokens_per_step) / train_s_since_eval
                                : 0;
        last.elapsed_s = elapsed_before_ + seconds_since(t_start);
        char buf[256];
        std::snprintf(buf, sizeof(buf),
                      "eval step %lld: train loss %.4f, val loss %.4f | %s tok/s | elapsed %s",
                      static_cast<long long>(last.step), last.train_loss, last.val_loss,
                      fmt_rate(last.tokens_per_s).c_str(), fmt_duration(last.elapsed_s).c_str());
        progress.line(buf);
        if (metrics.is_open()) {
            json j = {{"step", last.step},
                      {"train_loss", last.train_loss},
                      {"val_loss", last.val_loss},
                      {"tokens_per_s", last.tokens_per_s},
                      {"elapsed_s", last.elapsed_s}};
            metrics << j.dump() << "\n";
            metrics.flush();
        }
        if (on_eval)
            on_eval(last);
        train_s_since_eval = 0;
        steps_since_eval = 0;
    };
    if (step_ == 0 && opts_.eval_every > 0)
        do_eval(); // the untrained baseline (about ln(vocab))
    while (step_ < opts_.steps) {
        const auto t0 = Clock::now();
        StepStats s = train_step();
        const double dt = seconds_since(t0);
        train_s_since_eval += dt;
        ++steps_since_eval;
        progress.step(s, dt);
        if ((opts_.eval_every > 0 && step_ % opts_.eval_every == 0) || step_ == opts_.steps)
            do_eval();
        if (!opts_.out.empty() && opts_.save_every > 0 && step_ % opts_.save_every == 0 &&
            step_ < opts_.steps) {
            elapsed_before_ += seconds_since(t_start);
            save(opts_.out);
            elapsed_before_ -= seconds_since(t_start);
        }
    }
    if (steps_since_eval > 0 || last.step != step_)
        do_eval();
    progress.finish();
    if (!opts_.out.empty()) {
        elapsed_before_ += seconds_since(t_start);
        save(opts_.out);
        progress.line("saved " + opts_.out.string());
    }
    return last;
}

// ---------------------------------------------------------------------------- checkpoints

void Trainer::save(const fs::path& dir) const {
    FORGE_CHECK(tokenizer_.has_value(),
                "[checkpoint] the trainer has no tokenizer to save (set_tokenizer)");
    std::error_code ec;
    fs::create_directories(dir, ec);
    FORGE_CHECK(!ec, "[checkpoint] cannot create ", dir.string(), ": ", ec.message());
    formats::save_safetensors(dir / "model.safetensors", model_.state_dict(), {{"format", "pt"}});
    write_text_atomic(dir / "config.json", model_.config().to_hf_json());
    write_text_atomic(dir / tokenizer_->file_name, tokenizer_->file_bytes);
    formats::save_safetensors(dir / "trainer_state.safetensors", opt_->state_tensors(),
                              {{"optimizer", opt_->name()}});
    const auto st = sampler_ ? sampler_->state() : BatchSampler::State{};
    json j = {{"format", "forge-trainer-state"},
              {"version", 1},
              {"step", step_},
              {"optimizer", opt_->name()},
              {"rng", std::to_string(st.rng)},
              {"data_cursor", st.cursor},
              {"dropout_state", std::to_string(model_.dropout_state())},
              {"elapsed_s", elapsed_before_},
              {"loss_scale", scale_},
              {"loss_scale_good_steps", good_steps_},
              {"skipped_steps", skipped_},
              {"options", json::parse(opts_.to_json())},
              {"data",
               {{"inputs", data_spec_.inputs},
                {"tokenizer", data_spec_.tokenizer},
                {"tokenizer_file", tokenizer_->file_name},
                {"n_tokens", tokens_.size()},
                {"token_key", std::to_string(tokens_.key())}}}};
    write_text_atomic(dir / "trainer_state.json", j.dump(2) + "\n");
}

void Trainer::resume(const fs::path& dir) {
    FORGE_CHECK(sampler_, "[train] resume needs the data: call set_data() first");
    json j = parse_json_file(dir / "trainer_state.json", "the trainer state");
    try {
        FORGE_CHECK(j.value("format", "") == "forge-trainer-state", "[checkpoint] ",
                    (dir / "trainer_state.json").string(), " is not a Forge trainer state");
        const std::string opt_name = j.at("optimizer").get<std::string>();
        FORGE_CHECK(opt_name == opt_->name(), "[checkpoint] ", dir.string(), " was trained with ",
                    opt_name, ", this run uses ", opt_->name());
        load_checkpoint_weights(model_, dir);
        const fs::path state_file = dir / "trainer_state.safetensors";
        if (!fs::exists(state_file))
            throw NotFound("[checkpoint] " + dir.string() + " has no trainer_state.safetensors");
        auto state = formats::load_safetensors(state_file);
        const Device dev = model_.device(); // the moments live with the weights
        for (auto& [name, t] : state)
            if (name != "step") t = t.to(dev);
        opt_->load_state_tensors(state);
        step_ = j.at("step").get<int64_t>();
        // Older checkpoints have no loss-scaler fields: no skipped steps, the initial scale.
        skipped_ = j.value("skipped_steps", int64_t(0));
        good_steps_ = j.value("loss_scale_good_steps", int64_t(0));
        if (scaling_ != Scaling::none && j.contains("loss_scale")) {
            const double saved = j.at("loss_scale").get<double>();
            FORGE_CHECK(std::isfinite(saved) && saved > 0, "[checkpoint] ", dir.string(),
                        ": loss_scale ", saved, " is not a positive number");
            if (scaling_ == Scaling::dynamic)
                scale_ = saved; // a fixed scale comes from the options
        }
        FORGE_CHECK(step_ == opt_->steps_taken() + skipped_, "[checkpoint] ", dir.string(),
                    ": step ", step_, " but the optimizer state has ", opt_->steps_taken(),
                    " steps and ", skipped_, " were skipped for overflow");
        BatchSampler::State st;
        st.rng = std::stoull(j.at("rng").get<std::string>());
        st.cursor = j.at("data_cursor").get<int64_t>();
        sampler_->set_state(st);
        if (j.contains("dropout_state"))
            model_.set_dropout_state(std::stoull(j.at("dropout_state").get<std::string>()));
        elapsed_before_ = j.value("elapsed_s", 0.0);
        if (j.contains("data") && j["data"].contains("token_key") &&
            j["data"]["token_key"].get<std::string>() != std::to_string(tokens_.key()))
            std::fprintf(stderr,
                         "warning: the data or tokenizer changed since %s was saved; the "
                         "run continues on the new tokens\n",
                         dir.string().c_str());
    } catch (const json::exception& e) {
        throw InvalidArgument("[checkpoint] " + (dir / "trainer_state.json").string() +
                              " is corrupt: " + e.what());
    } catch (const std::invalid_argument&) {
        throw InvalidArgument("[checkpoint] " + (dir / "trainer_state.json").string() +
                              " is corrupt: bad rng value");
    }
}

CheckpointInfo read_checkpoint_info(const fs::path& dir) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec))
        throw NotFound("[checkpoint] no such checkpoint folder: " + dir.string(),
                       "pass a folder written by `forge train --out DIR`");
    CheckpointInfo info;
    const fs::path cfg = dir / "config.json";
    if (!fs::exists(cfg, ec))
        throw NotFound("[checkpoint] " + dir.string() + " has no config.json",
                       "pass a folder written by `forge train --out DIR`");
    try {
        info.config = ModelConfig::from_hf_json(read_file_bytes(cfg));
    } catch (const Error& e) {
        throw InvalidArgument("[checkpoint] " + cfg.string() + " is corrupt: " + e.what());
    }
    const fs::path state = dir / "trainer_state.json";
    if (fs::exists(state, ec)) {
        json j = parse_json_file(state, "the trainer state");
        try {
            info.has_trainer_state = true;
            info.step = j.at("step").get<int64_t>();
            info.options = TrainOptions::from_json(j.at("options").dump());
            const auto& d = j.at("data");
            info.data.inputs = d.at("inputs").get<std::vector<std::string>>();
            info.data.tokenizer = d.at("tokenizer").get<std::string>();
            info.tokenizer_file = dir / d.at("tokenizer_file").get<std::string>();
        } catch (const json::exception& e) {
            throw InvalidArgument("[checkpoint] " + state.string() + " is corrupt: " + e.what());
        }
    }
    if (info.tokenizer_file.empty())
        info.tokenizer_file = dir / "tokenizer.json";
    return info;
}

void load_checkpoint_weights(Transformer& model, const fs::path& dir) {
    const fs::path file = dir / "model.safetensors";
    std::error_code ec;
    if (!fs::exists(file, ec))
        throw NotFound("[checkpoint] " + dir.string() + " has no model.safetensors",
                       "pass a folder written by `forge train --out DIR`");
    auto sd = formats::load_safetensors(file);
    try {
        model.load_state_dict(sd, true);
    } catch (const Error& e) {
        throw InvalidArgument("[checkpoint] " + file.string() +
                              " does not match the model of config.json: " + e.what());
    }
}

} // namespace forge
