// Data parallelism over CPU threads for small models: each thread runs forward and backward of
// its own slice of the batch's rows on a weight-sharing copy of the model
// (Transformer::share_weights), with every op inside single-threaded; the slices' gradients
// are then summed into the model's parameters in slice order.
//
// Why: at nanoGPT's CPU size (4 x 128 wide, 768 tokens a step) each op is a few hundred
// microseconds, and splitting every op over the threads paid a fork/join per op (~130 a step);
// element-wise ops ran slower on two threads than on one (docs/PERF.md, "Session 9"). A slice
// per thread has one join per micro-batch.
//
// The bits of the losses and gradients depend on the number of slices (the sums are taken in
// another order than a single-threaded step's), so, as before, same seed + same thread count
// gives the same run.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <forge/core/tensor.h>
#include <forge/models/transformer.h>
#include <forge/train/optimizer.h>

namespace forge {

class BatchSplit {
  public:
    /// How many slices a step of `batch` rows should be cut into for `model` (1: do not split):
    /// the thread count, at most one slice per row, on the CPU only, and only while the
    /// slices' gradient copies stay small (kMaxGradBytes), since large models already split
    /// each op well.
    static int slices_for(const Transformer& model, int64_t batch, int threads);
    static constexpr int64_t kMaxGradBytes = int64_t(256) << 20;

    /// `params` are the optimizer's (deduplicated) parameters of `model`.
    BatchSplit(Transformer& model, const std::vector<ParamRef>& params, int slices);
    int slices() const { return int(copies_.size()); }
    /// Whether the slices' copies still share storage with `param` (one of the model's).
    bool shares_weights_with(const Tensor& param) const;

    /// Forward and backward of one micro-batch x, y: (B, T). Returns the batch's mean loss
    /// (the slices' means weighted by their rows). Each slice backpropagates its loss times
    /// its share of the rows times `grad_factor` (1 / micro-batches), then times `loss_scale`
    /// in a separate multiply (a power of two only moves exponents). A slice whose
    /// loss is not finite does not backpropagate; the returned mean is then not finite either,
    /// and the caller is to clear the gradients (zero_grads) and fail the step.
    double loss_backward(const Tensor& x, const Tensor& y, double grad_factor, double loss_scale);
    /// The batch's mean loss, in the model's current train/eval mode and the calling thread's
    /// grad mode (call it under NoGradGuard).
    double loss(const Tensor& x, const Tensor& y);
    /// Sets each parameter's .grad to the sum of the slices' gradients and clears theirs.
    void reduce_grads();
    /// Clears the slices' gradients (after a failed step).
    void zero_grads();

  private:
    // Runs f(slice, x rows, y rows) on one thread per slice; rethrows the first error.
    template <typename F> void run(const Tensor& x, const Tensor& y, F f);

    Transformer& model_;
    std::vector<ParamRef> params_;
    std::vector<std::unique_ptr<Transformer>> copies_;
    std::vector<std::vector<Tensor>> copy_params_; // [slice][i] aliases params_[i]
};

} // namespace forge
