// Transformer: one decoder-only model for the GPT-2 family (learned positions, LayerNorm, GELU,
// biases, tied embeddings) and the Llama family (RoPE, RMSNorm, SwiGLU, grouped-query
// attention, untied head), chosen by ModelConfig::family. Its parameter names are HF's for the
// family, so state_dict() round-trips through HF safetensors checkpoints.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include <forge/core/tensor.h>
#include <forge/models/config.h>
#include <forge/nn/module.h>

namespace forge {

/// Keys and values of every layer for `batch` sequences, up to `capacity` positions.
/// k[l], v[l]: (B, n_head_kv, capacity, head_dim); positions [0, length) are filled.
struct KVCache {
    std::vector<Tensor> k, v;
    int64_t length = 0;
    int64_t capacity = 0;

    static KVCache create(const ModelConfig& cfg, int64_t batch, int64_t capacity,
                          DType dtype = DType::f32, Device device = {});
    void reset() { length = 0; }
    /// Bytes held by the cache tensors.
    int64_t nbytes() const;
};

class Transformer : public nn::Module {
  public:
    /// A model with freshly initialised weights (GPT-2's init: N(0, 0.02), residual
    /// projections scaled by 1/sqrt(2 n_layer); norms at 1, biases at 0). Same seed, same weights.
    explicit Transformer(const ModelConfig& cfg, uint64_t seed = 1337);
    ~Transformer() override;

    /// A second model over this one's weights: the same storage (an in-place update of either
    /// shows in both) behind its own parameter handles, so it records its own graph and
    /// gradients and has its own dropout stream. The trainer runs one per thread on a slice
    /// of the batch (train/batch_split.h). Moving either model to another device breaks the
    /// sharing.
    std::unique_ptr<Transformer> share_weights() const;

    const ModelConfig& config() const { return cfg_; }

    /// ids: (B, T) i32/i64 -> logits (B, T, vocab). With a cache, the T new tokens sit at
    /// positions cache->length .. +T (their K/V are appended; length advances by T).
    /// Throws InvalidArgument if positions would exceed n_ctx or the cache's capacity, or if an
    /// id is outside the vocabulary.
    Tensor forward(const Tensor& ids, KVCache* cache = nullptr);
    /// Mean cross-entropy of forward(ids) against targets (B, T); targets equal to
    /// ignore_index are skipped.
    Tensor loss(const Tensor& ids, const Tensor& targets, int64_t ignore_index = -100);

    /// The dropout stream's position: each training forward draws fresh masks from it.
    /// Checkpoints save it so a resumed run draws the same masks as an uninterrupted one.
    uint64_t dropout_state() const;
    void set_dropout_state(uint64_t state);

    /// Llama's per-pair RoPE frequency divisors (head_dim / 2 of them), in place of those the
    /// config's Llama 3 scaling rule gives: a GGUF's rope_freqs.weight, which llama.cpp (and
    /// Forge's quantized engines) apply as stored. Throws InvalidArgument for a GPT-2 model, a
    /// count other than head_dim / 2, or a value that is not finite and positive.
    void set_rope_freq_factors(std::vector<float> factors);

    /// Hidden states after the final norm: (B, T, n_embd) (used for embeddings).
    Tensor hidden(const Tensor& ids, KVCache* cache = nullptr);

    /// One decode step for S independent sequences (continuous batching), without gradients
    /// or dropout: ids[s] is the next token of the sequence whose batch-1 cache is caches[s];
    /// it sits at position caches[s]->length, which then advances by one. Norms, projections
    /// and the MLP run on (S, C) matrices, so the weights are read once for all S; attention
    /// runs per sequence over its own cache. Returns the final-norm hidden states (S, n_embd).
    /// Throws InvalidArgument for a cache of another model or batch size, a full cache, a
    /// position past n_ctx, an id outside the vocabulary, or S == 0.
    Tensor decode_step(std::span<const int64_t> ids, std::span<KVCache* const> caches);

    struct Impl;

  private:
    struct SharedWeights {};
    Transformer(const Transformer& src, SharedWeights);
    ModelConfig cfg_;
    std::unique_ptr<Impl> impl_;
};

} // namespace forge
