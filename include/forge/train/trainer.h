// Trainer: the training loop for a Transformer on a token file (gradient accumulation, global-
// norm clipping, warmup + cosine LR, periodic eval on a held-out split, NaN/inf guard, progress
// and metrics), and the checkpoints it saves and resumes from bit-identically. Not data
// preparation (data.h, tokenizer_spec.h) or the CLI (cli/cmd_train.cpp).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <forge/core/tensor.h>
#include <forge/models/config.h>
#include <forge/train/data.h>
#include <forge/train/optimizer.h>
#include <forge/train/schedule.h>
#include <forge/train/tokenizer_spec.h>

namespace forge {

class Transformer;
class BatchSplit;

struct TrainOptions {
    int64_t steps = 1000;   ///< optimizer updates in total (a resumed run counts from 0 too)
    int64_t batch = 12;     ///< sequences per micro-batch
    int64_t seq_len = 64;   ///< tokens per sequence
    int64_t grad_accum = 1; ///< micro-batches per update (the loss is averaged over them)

    std::string optimizer = "adamw"; ///< "adamw" or "sgd"
    double lr = 1e-3;
    double min_lr = 1e-4;
    int64_t warmup = 100;
    std::string schedule = "cosine"; ///< cosine | linear | constant (decays over `steps`)
    double weight_decay = 0.1;
    double beta1 = 0.9;
    double beta2 = 0.95;
    double eps = 1e-8;
    double momentum = 0.9;         ///< SGD only
    bool decay_embeddings = false; ///< also decay embedding tables (nanoGPT does)
    double grad_clip = 1.0;        ///< max global grad norm; 0 = off
    /// Compute precision (weights, gradients and optimizer state stay f32): "f32" exact;
    /// on CUDA "tf32" TF32 matmuls and "bf16" autocast (bf16 matmuls and attention, f32
    /// accumulation; cuda::set_autocast_bf16); on the CPU "bf16" autocast of the matmuls
    /// (set_cpu_autocast_bf16; needs AVX512_BF16 or AMX). "f16" (CUDA only) autocasts the
    /// matmuls to f16 and is meant to run with loss scaling (loss_scale).
    std::string dtype = "f32";
    /// Loss scaling, as torch.amp.GradScaler: "auto" (dynamic under dtype f16, none
    /// otherwise), "dynamic", "none", or a fixed positive number. The loss is multiplied by
    /// the scale before backward and the gradients by 1/scale after it (exact for powers of
    /// two); a step whose gradients overflow is skipped (see Trainer::train_step).
    std::string loss_scale = "auto";
    double loss_scale_init = 65536.0;          ///< dynamic: the starting scale (2^16)
    double loss_scale_growth = 2.0;            ///< dynamic: factor after growth_interval good steps
    double loss_scale_backoff = 0.5;           ///< dynamic: factor after an overflow
    int64_t loss_scale_growth_interval = 2000; ///< dynamic: consecutive good steps before growing

    int64_t eval_every = 500;        ///< 0 = only at the end
    int64_t eval_iters = 20;         ///< batches per split per eval
    double val_fraction = 0.1;       ///< the last fraction of the tokens is the held-out split
    std::string sampling = "random"; ///< random | sequential
    uint64_t seed = 1337;
    int threads = 0; ///< recorded (determinism needs the same count); set by the CLI
    /// "auto": on the CPU, a small model trains one slice of each batch per thread
    /// (train/batch_split.h); "off": every op is split over the threads instead.
    std::string batch_split = "auto";

    int64_t log_every = 10;            ///< plain progress lines every N steps (0: none)
    bool progress = true;              ///< print progress at all (tests turn it off)
    std::filesystem::path out;         ///< checkpoint folder (empty: do not save)
    int64_t save_every = 0;            ///< also save every N steps (0: only at the end)
    std::filesystem::path metrics_out; ///< JSON lines, one per eval (empty: none)

    /// Throws InvalidArgument naming the first bad field.
    void validate() const;
    std::string to_json() const;
    static TrainOptions from_json(const std::string& json);
};

struct StepStats {
    int64_t step = 0; ///< updates done, including this one
    double loss = 0;  ///< mean training loss over the step's micro-batches
    double lr = 0;
    double grad_norm = 0;  ///< before clipping (of the unscaled gradients; inf/nan if skipped)
    double loss_scale = 1; ///< the scale this step's backward used (1: no loss scaling)
    bool skipped = false;  ///< the gradients overflowed: no optimizer update this step
};

struct EvalStats {
    int64_t step = 0;
    double train_loss = 0;
    double val_loss = 0;
    double tokens_per_s = 0; ///< training throughput since the previous eval (eval time excluded)
    double elapsed_s = 0;    ///< wall time of the run, eval included (continues across resumes)
};

/// The data a run trains on, as recorded in checkpoints.
struct DataSpec {
    std::vector<std::string> inputs; ///< --data paths as given
    std::string tokenizer;           ///< --tokenizer spec
};

class Trainer {
  public:
    /// `model` must outlive the trainer. Builds the optimizer over collect_parameters(model).
    Trainer(Transformer& model, TrainOptions opts);
    ~Trainer();
    Trainer(const Trainer&) = delete;
    Trainer& operator=(const Trainer&) = delete;

    /// The tokens to train on: [0, n - n*val_fraction) trains, the rest is held out.
    void set_data(TokenFile tokens);
    /// The tokenizer and data spec saved in checkpoints.
    void set_tokenizer(const TrainingTokenizer& tok, DataSpec spec);

    /// Trains until options().steps, evaluating, logging and saving as configured. Returns the
    /// last eval.
    EvalStats fit();
    /// One optimizer update (grad_accum micro-batches). Throws forge::Error naming the step and
    /// the tensor if the loss or a gradient is NaN/inf. With loss scaling on, a non-finite
    /// gradient is an overflow instead: the update is skipped (weights and optimizer state
    /// untouched), the scale backs off, and the step still counts (step() and the LR schedule
    /// advance, as PyTorch's loop calls scheduler.step() after a skipped optimizer.step()).
    /// A non-finite loss (before scaling) still throws.
    StepStats train_step();
    /// Mean loss over eval_iters batches of each split, with dropout off. The batches depend
    /// only on (seed, step), so evaluating never changes the training trajectory.
    EvalStats evaluate();

    /// Writes a checkpoint folder: model.safetensors, config.json, tokenizer file,
    /// trainer_state.safetensors (optimizer state), trainer_state.json (step, RNG, data cursor,
    /// options, data spec).
    void save(const std::filesystem::path& dir) const;
    /// Restores weights, optimizer, step and data cursor saved by save(); the run then
    /// continues exactly as if never interrupted (same options, data and thread count).
    void resume(const std::filesystem::path& dir);

    int64_t step() const { return step_; }
    /// The current loss scale (1 when loss scaling is off).
    double loss_scale() const { return scale_; }
    /// Steps skipped for overflowing gradients, over the whole run (resumes included).
    int64_t skipped_steps() const { return skipped_; }
    /// Whether loss scaling is on (options().loss_scale resolved against dtype).
    bool loss_scaling() const { return scaling_ != Scaling::none; }
    const TrainOptions& options() const { return opts_; }
    Optimizer& optimizer() { return *opt_; }
    const LrSchedule& schedule() const { return schedule_; }

    /// Called after every step / eval (tests, custom logging).
    std::function<void(const StepStats&)> on_step;
    std::function<void(const EvalStats&)> on_eval;

  private:
    double eval_split(int64_t begin, int64_t end, uint64_t salt);
    BatchSplit* batch_split(); // null when the step does not split its batch
    Transformer& model_;
    TrainOptions opts_;
    LrSchedule schedule_;
    std::unique_ptr<Optimizer> opt_;
    TokenFile tokens_;
    int64_t n_train_ = 0;
    std::unique_ptr<BatchSampler> sampler_;
    std::unique_ptr<BatchSplit> split_;
    int64_t step_ = 0;
    double elapsed_before_ = 0; // seconds spent in earlier sessions of a resumed run
    enum class Scaling { none, fixed, dynamic };
    Scaling scaling_ = Scaling::none;
    double scale_ = 1;       // the loss scale
    int64_t good_steps_ = 0; // consecutive non-overflow steps since the scale last changed
    int64_t skipped_ = 0;    // overflow steps (step_ counts them, the optimizer does not)
    std::optional<TrainingTokenizer> tokenizer_;
    DataSpec data_spec_;
};

/// What a checkpoint folder holds, read without building a model.
struct CheckpointInfo {
    ModelConfig config;
    std::filesystem::path tokenizer_file; ///< the tokenizer file inside the folder
    bool has_trainer_state = false;
    TrainOptions options; ///< valid when has_trainer_state
    DataSpec data;        ///< valid when has_trainer_state
    int64_t step = 0;
};
/// Reads config.json (and trainer_state.json if present). Throws NotFound / InvalidArgument
/// naming the folder and the file that is missing or corrupt.
CheckpointInfo read_checkpoint_info(const std::filesystem::path& dir);
/// Loads model.safetensors into `model` (strict: names and shapes must match).
void load_checkpoint_weights(Transformer& model, const std::filesystem::path& dir);

/// Sets the OpenMP and OpenBLAS thread counts (n <= 0: leave them).
void set_num_threads(int n);

} // namespace forge
