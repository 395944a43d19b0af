// CudaLM: batch-1 generation of a forge::Transformer on a CUDA GPU. Weights are cast once to
// bf16 on the device (norms, biases and GPT-2's position table stay f32); each state owns a
// static bf16 KV cache; a decode step is one persistent kernel whose phases (bf16 GEMVs with
// fused norms and epilogues, split-K attention) meet at grid-wide barriers, or ~5 kernels per
// layer where the GPU cannot hold that kernel's grid at once; either is captured once in a CUDA
// graph and replayed, since at batch 1 the launches, not the GPU, would set the pace. Prompts (more
// than one token) prefill through the model's ops on the GPU (batched matmuls) under the caller's
// precision switches. Not for batched decoding: the serving engine's eval_batch falls back to one
// sequence at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include <forge/generate/generator.h>

namespace forge {

class Transformer;

class CudaLM : public CausalLM {
  public:
    struct Options {
        /// Capture the decode step in a CUDA graph (false: launch its kernels one by one).
        bool graph = true;
        /// Run the decode step as one persistent kernel (false: ~5 kernels per layer).
        bool persistent = true;
        /// Prompt tokens per prefill forward (bounds activation memory).
        int64_t prefill_chunk = 1024;
    };
    /// Moves `model` to cuda:0 if it is elsewhere (the prefill runs its ops there) and makes the
    /// bf16 copies. The model must outlive this object. Throws DeviceError in a build without
    /// CUDA or without a GPU, InvalidArgument for shapes the kernels do not take (head dim other
    /// than 32/64/128, n_embd or n_ff not a multiple of 8, more than 8 query heads per kv head).
    explicit CudaLM(Transformer& model, Options opts);
    explicit CudaLM(Transformer& model) : CudaLM(model, Options{}) {}
    ~CudaLM() override;

    int64_t n_vocab() const override;
    int64_t n_ctx() const override;
    std::unique_ptr<State> new_state(int64_t capacity) override;
    void eval(State& state, std::span<const TokenId> ids, std::vector<float>& logits) override;

    /// Greedy decoding with no host round trip: feeds `first`, then each step's argmax (taken
    /// on the device), for n steps; returns the n tokens it picked. For benchmarks and tests.
    std::vector<TokenId> greedy(State& state, TokenId first, int64_t n);
    /// Whether decode steps replay a CUDA graph (false after a failed capture: eager launches).
    bool graph_active() const;
    /// Whether decode steps run as one persistent kernel (Options::persistent, and the GPU
    /// takes a cooperative launch of its grid).
    bool persistent_active() const;
    /// Bytes of weights one decode step reads (the bf16 matrices, the head included).
    int64_t weight_bytes_per_token() const;

    struct Impl;

  private:
    // ids (> 1 of them) through the model's ops, then their K/V into the bf16 cache.
    void prefill(State& state, std::span<const TokenId> ids);
    std::unique_ptr<Impl> impl_;
};

} // namespace forge
