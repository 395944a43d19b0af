// Optimizers (AdamW, SGD with momentum), the weight-decay rule, and global-norm gradient
// clipping. Updates run in place under NoGradGuard: a fused OpenMP loop over f32 data on the
// CPU, public ops elsewhere. Not the LR schedule (schedule.h) or the training loop (trainer.h).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <forge/core/tensor.h>

namespace forge::nn {
class Module;
}

namespace forge {

/// One trainable tensor as an optimizer sees it.
struct ParamRef {
    std::string name;  ///< dotted name from named_parameters() (the first one, for tied tensors)
    Tensor tensor;     ///< the parameter itself (updated in place)
    bool decay = true; ///< weight decay applies to it
};

/// The default weight-decay rule: decay matrices (rank >= 2), but not norms or biases (rank 1)
/// and not embedding tables (names containing "wte", "wpe", "embed"), as the decoupled-decay
/// literature recommends; with `decay_embeddings` embedding tables are decayed too (nanoGPT's
/// rule: every tensor of rank >= 2).
bool default_weight_decay(const std::string& name, const Tensor& t, bool decay_embeddings = false);

/// The distinct parameters of a module (a tied tensor appears once, under its first name) with
/// the default decay rule applied.
std::vector<ParamRef> collect_parameters(const nn::Module& module, bool decay_embeddings = false);

/// Base of the optimizers. step(lr) applies one update to every parameter that has a gradient;
/// state_tensors()/load_state_tensors() round-trip the state exactly (checkpoints).
class Optimizer {
  public:
    explicit Optimizer(std::vector<ParamRef> params);
    virtual ~Optimizer() = default;
    Optimizer(const Optimizer&) = delete;
    Optimizer& operator=(const Optimizer&) = delete;

    /// One update at learning rate `lr` (the schedule's value for this step).
    virtual void step(double lr) = 0;
    /// "adamw" or "sgd".
    virtual std::string name() const = 0;
    /// The state as named f32 tensors ("exp_avg.<param>", ...) plus "step" (i64 scalar).
    virtual std::map<std::string, Tensor> state_tensors() const = 0;
    /// Restores state_tensors(); throws InvalidArgument naming a missing or misshapen tensor.
    virtual void load_state_tensors(const std::map<std::string, Tensor>& state) = 0;

    /// Clears every parameter's gradient.
    void zero_grad() const;
    const std::vector<ParamRef>& params() const { return params_; }
    /// Updates taken so far.
    int64_t steps_taken() const { return t_; }

  protected:
    std::vector<ParamRef> params_;
    int64_t t_ = 0;
};

struct AdamWOptions {
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 0.0; ///< decoupled: p -= lr * wd * p, only where ParamRef::decay
};

/// AdamW (Loshchilov & Hutter, https://arxiv.org/abs/1711.05101), the update of
/// torch.optim.AdamW (amsgrad off): p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
/// p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps). Moments are f32 whatever the
/// parameter dtype.
class AdamW : public Optimizer {
  public:
    AdamW(std::vector<ParamRef> params, AdamWOptions opts = {});
    void step(double lr) override;
    std::string name() const override { return "adamw"; }
    std::map<std::string, Tensor> state_tensors() const override;
    void load_state_tensors(const std::map<std::string, Tensor>& state) override;
    const AdamWOptions& options() const { return opts_; }

  private:
    AdamWOptions opts_;
    std::vector<Tensor> m_, v_; // per parameter, f32, same shape
};

struct SgdOptions {
    double momentum = 0.9;
    double dampening = 0.0;
    bool nesterov = false;
    double weight_decay = 0.0; ///< coupled L2 (g += wd * p), as torch.optim.SGD, where decay
};

/// SGD with momentum, the update of torch.optim.SGD: b = momentum b + (1 - dampening) g
/// (b = g on the first step); p -= lr * (nesterov ? g + momentum b : b).
class SGD : public Optimizer {
  public:
    SGD(std::vector<ParamRef> params, SgdOptions opts = {});
    void step(double lr) override;
    std::string name() const override { return "sgd"; }
    std::map<std::string, Tensor> state_tensors() const override;
    void load_state_tensors(const std::map<std::string, Tensor>& state) override;

  private:
    SgdOptions opts_;
    std::vector<Tensor> buf_; // momentum buffers, f32
};

/// The global L2 norm of the gradients and, if it is not finite, which parameter first made it
/// so. The sum runs in fixed chunks in f64, so it is the same for any thread count.
struct GradNorm {
    double norm = 0.0;
    int64_t nonfinite_index = -1; ///< index into params of the first non-finite gradient, or -1
};
GradNorm grad_norm(const std::vector<ParamRef>& params);

/// Multiplies every gradient by `factor` in place.
void scale_grads(const std::vector<ParamRef>& params, double factor);

/// torch.nn.utils.clip_grad_norm_: if the global norm exceeds max_norm, scales gradients by
/// max_norm / (norm + 1e-6). Returns the norm before clipping. max_norm <= 0: no clipping.
double clip_grad_norm(const std::vector<ParamRef>& params, double max_norm);

} // namespace forge
