// Every tensor op, declared once. Each op validates its inputs (errors name the op and the
// shapes), runs the backend kernel of its inputs' device, and records an autograd node when a
// gradient is needed. Half inputs (f16/bf16) compute in f32 and round once at the end.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include <forge/core/tensor.h>

namespace forge {

// ---------------------------------------------------------------- element-wise
// Binary ops broadcast numpy-style: shapes align from the right, size-1 dims stretch.
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor maximum(const Tensor& a, const Tensor& b); // gradient goes to the larger input
// Comparisons give u8 (0/1) and no gradient.
Tensor eq(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);

// Scalar ops: x op s, element-wise.
Tensor add_scalar(const Tensor& x, double s);
Tensor mul_scalar(const Tensor& x, double s);
Tensor pow_scalar(const Tensor& x, double p);
Tensor rsub_scalar(const Tensor& x, double s); // s - x

Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor abs(const Tensor& x);
/// GELU: tanh approximation (GPT-2) or the exact erf form.
enum class GeluApprox { tanh, erf };
Tensor gelu(const Tensor& x, GeluApprox approx = GeluApprox::tanh);
Tensor silu(const Tensor& x);
/// d gelu(x)/dx and d silu(x)/dx, element-wise (used by the backward passes).
Tensor gelu_grad(const Tensor& x, GeluApprox approx = GeluApprox::tanh);
Tensor silu_grad(const Tensor& x);

/// cond (u8, broadcast) ? a : b
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
/// x with `value` wherever mask (u8, broadcast to x) is non-zero.
Tensor masked_fill(const Tensor& x, const Tensor& mask, double value);

// ---------------------------------------------------------------- reductions
// dims may be negative; empty dims = all dims.
Tensor sum(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
/// Max over dims. Gradient is split evenly among tied maxima (PyTorch's amax rule).
Tensor max(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
/// Sums `x` down to `shape` (the inverse of broadcasting), for gradients of broadcast inputs.
Tensor sum_to(const Tensor& x, const Shape& shape);

// ---------------------------------------------------------------- linear algebra
/// a: (..., M, K), b: (..., K, N) -> (..., M, N); batch dims broadcast; 1-D b is (K) -> (..., M).
/// f32 through BLAS sgemm; f16/bf16 are widened and accumulate in f32.
Tensor matmul(const Tensor& a, const Tensor& b);
/// A linear layer: x (..., K) @ w (K, N) + b (N), then GELU-tanh when `gelu`. One autograd
/// node: the bias and the activation run as one pass over the product, and their backward
/// (activation slope, bias gradient) as one more. w may be a transposed view ((N, K)
/// weight .t()).
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b, bool gelu = false);

// ---------------------------------------------------------------- normalisation, softmax
/// Over dim `dim` (default last).
Tensor softmax(const Tensor& x, int64_t dim = -1);
Tensor log_softmax(const Tensor& x, int64_t dim = -1);
/// x: (..., C), weight/bias: (C) -> (..., C). bias may be undefined.
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps = 1e-5f);
/// x: (..., C), weight: (C) -> (..., C). y = x / sqrt(mean(x^2) + eps) * w
Tensor rms_norm(const Tensor& x, const Tensor& weight, float eps = 1e-6f);

/// Mean cross-entropy of logits (N, V) against targets (N) (i32/i64); rows whose target is
/// ignore_index are skipped (and count nowhere). Fused: never materialises softmax (N, V).
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100);
/// cross_entropy(matmul(x, w.t()), targets): x (..., C), w (V, C) (an LM head as stored),
/// targets (...). Computed over row chunks, with the gradients taken in the same pass when they
/// are needed, so the (N, V) logits never exist whole (the LM head's memory and traffic). x and
/// w may differ in float dtype (computed in the promoted one); targets may be on the host for a
/// device x (validated there, then copied: no wait for the device).
Tensor linear_cross_entropy(const Tensor& x, const Tensor& w, const Tensor& targets,
                            int64_t ignore_index = -100);

// ---------------------------------------------------------------- embedding, RoPE, dropout
/// weight: (V, C), ids: any shape (i32/i64) -> (*ids.shape, C). Backward scatter-adds. ids may
/// be on the host for a device weight (validated there, then copied).
Tensor embedding(const Tensor& weight, const Tensor& ids);

/// Rotary embedding. x: (B, H, T, D), rotates pairs within each head by angle
/// (pos_offset + t) * theta^(-2i/D). neox: pairs (i, i + D/2) (GPT-NeoX, HF Llama);
/// interleaved: pairs (2i, 2i+1) (GPT-J, original Meta Llama).
enum class RopeLayout { neox, interleaved };
struct RopeOptions {
    float theta = 10000.0f;
    int64_t pos_offset = 0;
    RopeLayout layout = RopeLayout::neox;
    int64_t rotary_dim = 0; // 0 = whole head; else only the first rotary_dim features rotate
    bool inverse = false;   // rotate by -angle (the backward pass)
};
Tensor rope(const Tensor& x, const RopeOptions& opts = {});

/// Zeroes each element with probability p, scales the rest by 1/(1-p). Deterministic in
/// (seed, element index): same seed, same mask on any backend.
Tensor dropout(const Tensor& x, double p, uint64_t seed);

// ---------------------------------------------------------------- shape
Tensor concat(const std::vector<Tensor>& xs, int64_t dim);
/// Views of consecutive pieces of `sizes` along dim (they must sum to x.size(dim)).
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim);

// ---------------------------------------------------------------- attention
/// Causal (or full) scaled-dot-product attention with grouped-query heads.
/// q: (B, Hq, Tq, D), k/v: (B, Hkv, Tk, D) with Hq % Hkv == 0 -> (B, Hq, Tq, D).
/// Flash-style: tiled with an online softmax, O(T*D) extra memory forward and backward.
/// With causal and Tq < Tk, query i sits at position Tk - Tq + i (KV-cache decoding).
struct AttentionOptions {
    bool causal = true;
    float scale = 0.0f; // 0 = 1/sqrt(D)
};
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v,
                 const AttentionOptions& opts = {});
/// Self-attention over a fused projection: qkv (B, T, 3 * n_head * D) holds q, k and v side by
/// side (GPT-2's c_attn output) -> (B, T, n_head * D), the heads merged back. One node: one
/// copy lays q, k, v out for the kernel and one copy lays their gradients back into (B, T, 3C),
/// instead of three slices whose gradients are zero-padded to (B, T, 3C) and summed.
Tensor attention_packed(const Tensor& qkv, int64_t n_head, const AttentionOptions& opts = {});
/// The plain decomposition softmax(q k^T * scale + mask) v: O(T^2) memory; the oracle.
Tensor attention_reference(const Tensor& q, const Tensor& k, const Tensor& v,
                           const AttentionOptions& opts = {});

} // namespace forge
