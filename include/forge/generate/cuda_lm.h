// CudaLM: batch-1 generation of a forge::Transformer on a CUDA GPU. Weights are cast once to
// bf16 on the device (norms, biases and GPT-2's position table stay f32); each state owns a
// static bf16 KV cache; a decode step is one persistent kernel whose phases (bf16 GEMVs with
// fused norms and epilogues, split-K attention) meet at grid-wide barriers, or ~5 kernels per
// layer where the GPU cannot hold that kernel's grid at once; either is captured once in a CUDA
// graph and replayed, since at batch 1 the launches, not the GPU, would set the pace. Prompts (more
// than one token) prefill through the model's ops on the GPU (batched matmuls) under the caller's
// precision switches. Not for batched decoding: the serving engine's eval_batch falls back to one
// sequence at a time.
//
// Built from a GGUF file (from_gguf, or a ModelConfig and QuantLM's tensor Lookup), the matrices
// stay Q8_0 / Q4_0 on the device (F32 / F16 / BF16 ones become bf16; other types are requantized
// to Q8_0 at load, as QuantLM does; Q8_0 / Q4_0 blocks are split into values and scales on the
// device, the same bytes in 16-byte aligned rows); norms, biases and GPT-2's position table are
// f32. The decode step runs as the persistent kernel when every matrix and the embedding share
// one format (bf16, Q8_0 or Q4_0, the latter two with int8_dot), else as kernels per op, in a
// CUDA graph either way. A prompt prefills in batches through an f32 Transformer of the same
// (dequantized) weights on the GPU (Options::gguf_batched_prefill, 4 bytes per parameter more),
// or, without one, one decode step per token.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <forge/generate/generator.h>
#include <forge/infer/quant_lm.h>
#include <forge/models/config.h>
#include <forge/quant/ggml_types.h>

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
        /// Q8_0 / Q4_0 matrices: round the GEMV input to int8 per 32 values and take integer dot
        /// products (dp4a), as llama.cpp's MMVQ and QuantLM do; false: f32 products of the
        /// dequantized weights.
        bool int8_dot = true;
        /// From GGUF (from_gguf, from_transformer): also load the weights dequantized into an
        /// f32 Transformer on the GPU (formats::gguf_to_model) and prefill prompts through its
        /// ops in batches of prefill_chunk, as for a Transformer; decode steps still read the
        /// quantized matrices. Costs 4 bytes per parameter of GPU memory (and as much host memory
        /// while loading) on top of the quantized weights. False: a prompt prefills as one decode
        /// step per token.
        bool gguf_batched_prefill = true;
    };
    /// Moves `model` to cuda:0 if it is elsewhere (the prefill runs its ops there) and makes the
    /// bf16 copies. The model must outlive this object. Throws DeviceError in a build without
    /// CUDA or without a GPU, InvalidArgument for shapes the kernels do not take (head dim other
    /// than 32/64/128, n_embd or n_ff not a multiple of 8, more than 8 query heads per kv head).
    explicit CudaLM(Transformer& model, Options opts);
    explicit CudaLM(Transformer& model) : CudaLM(model, Options{}) {}
    /// A model of ggml-typed tensors named as llama.cpp's GGUF files name them (gpt2 or llama
    /// architecture; QuantLM's conventions), copied to cuda:0; `lookup` is used only during the
    /// call. Throws InvalidArgument naming a missing tensor, a shape that disagrees with cfg, or
    /// a shape the kernels do not take; DeviceError without a GPU. `prefill_model`: the same
    /// weights as a Transformer of `cfg` (formats::gguf_to_model of the file), moved to cuda:0 and
    /// held, through which prompts then prefill in batches; null: one decode step per prompt
    /// token (Options::gguf_batched_prefill is for from_gguf and from_transformer).
    CudaLM(const ModelConfig& cfg, const infer::QuantLM::Lookup& lookup, Options opts,
           std::shared_ptr<Transformer> prefill_model = nullptr);
    /// The model of a GGUF file. Throws NotFound, or InvalidArgument naming the file and problem
    /// (with gguf_batched_prefill, also where formats::gguf_to_model rejects the file).
    static std::unique_ptr<CudaLM> from_gguf(const std::filesystem::path& path, Options opts);
    static std::unique_ptr<CudaLM> from_gguf(const std::filesystem::path& path) {
        return from_gguf(path, Options{});
    }
    /// `model` as `forge convert --type type` would write it (formats::gguf_writer), on the GPU:
    /// the same tensors QuantLM::from_transformer(model, type) runs on the CPU.
    static std::unique_ptr<CudaLM> from_transformer(Transformer& model, quant::GgmlType type,
                                                    Options opts);
    static std::unique_ptr<CudaLM> from_transformer(Transformer& model, quant::GgmlType type) {
        return from_transformer(model, type, Options{});
    }
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
    /// Whether decode steps run as one persistent kernel (Options::persistent, the GPU takes a
    /// cooperative launch of its grid, and, from GGUF, one weight format as above).
    bool persistent_active() const;
    /// Whether prompts prefill through a Transformer's ops in batches (always when built from
    /// one; from GGUF with Options::gguf_batched_prefill), not one decode step per token.
    bool batched_prefill_active() const;
    /// Bytes of weights one decode step reads (the matrices as stored, the head included).
    int64_t weight_bytes_per_token() const;
    /// "bf16", "q8_0", "q4_0" or "mixed": how the layers' matrices and the head are stored.
    std::string weight_format() const;

    struct Impl;

  private:
    // ids (> 1 of them) through the model's ops, then their K/V into the bf16 cache; without a
    // Transformer (GGUF without gguf_batched_prefill), one decode step per token.
    void prefill(State& state, std::span<const TokenId> ids);
    std::unique_ptr<Impl> impl_;
};

} // namespace forge
