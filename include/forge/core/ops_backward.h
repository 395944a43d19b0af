// Backward passes of the fused NN ops (layer_norm, rms_norm, cross_entropy, embedding) as
// public ops, so their autograd nodes are written with public ops and run on every backend.
// These are not differentiable themselves (Forge has no double backward). Results are in the
// compute dtype (f32 for half inputs); the caller rounds.
#pragma once

#include <cstdint>

#include <forge/core/tensor.h>

namespace forge {

struct LayerNormGrads {
    Tensor dx;      // like x
    Tensor dweight; // (C)
    Tensor dbias;   // (C); undefined unless with_bias
};

/// dy, x: (..., C), weight: (C), mean/rstd: R = numel(x)/C elements (the statistics of the
/// forward pass: mean and 1/sqrt(var + eps) of each row).
LayerNormGrads layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                                   const Tensor& mean, const Tensor& rstd, bool with_bias);

struct RmsNormGrads {
    Tensor dx;      // like x
    Tensor dweight; // (C)
};

/// dy, x: (..., C), weight: (C), rstd: R elements (1/sqrt(mean(x^2) + eps) of each row).
RmsNormGrads rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                               const Tensor& rstd);

/// d(loss)/d(logits) of the mean cross-entropy: (softmax(logits) - onehot(target)) * dloss *
/// inv_count, zero on rows whose target is ignore_index. logits: (..., V); targets: (...)
/// i32/i64; lse: one log-sum-exp per row (from the forward); dloss: one element.
/// -> (..., V). inv_count is 1 / (number of rows not ignored), 0 when all are.
Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                              const Tensor& dloss, int64_t ignore_index, double inv_count);

/// dweight (num_embeddings, C): row v is the sum of the rows of dout whose id is v.
/// dout: (*ids.shape, C), ids: any shape (i32/i64) with values in [0, num_embeddings).
Tensor embedding_backward(const Tensor& dout, const Tensor& ids, int64_t num_embeddings);

} // namespace forge
