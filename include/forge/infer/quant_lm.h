// The inference engine: a decoder-only LM (llama and gpt2 architectures) that runs on ggml-typed
// weights (its weight matrices moved at load into one huge-page arena, repacked for its kernels,
// in place of the source; token embeddings read where they lie), with no autograd and an f32 KV
// cache per sequence. Prefill runs the
// prompt through the quantized GEMM, decode one token at a time through GEMV, both on a
// persistent worker pool (no OpenMP). Tensors follow llama.cpp's GGUF conventions: names
// (token_embd.weight, blk.N.attn_q.weight, ...), (out, in) rows for every linear weight, and
// Llama's Q/K rows permuted so RoPE rotates adjacent pairs. It is a forge::CausalLM, so
// Generator, Session and the server use it unchanged.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <forge/generate/generator.h>
#include <forge/models/config.h>
#include <forge/quant/ggml_types.h>

namespace forge {
class Transformer;
} // namespace forge

namespace forge::infer {

/// A tensor as GGUF holds it: ne in ggml order (ne[0] innermost), data of `type`.
struct TensorRef {
    quant::GgmlType type = quant::GgmlType::f32;
    std::vector<int64_t> ne;
    const void* data = nullptr;
    /// data lies in a read-only file mapping: once the engine has repacked a matrix into memory
    /// of its own it drops these pages (they would be re-read from the file, never written).
    bool in_mapping = false;
};

struct EngineOptions {
    /// Worker threads, the calling thread included; <= 0: all hardware threads.
    int n_threads = 0;
    /// Prompt tokens per prefill pass (bounds activation memory).
    int64_t prefill_chunk = 512;
};

class QuantLM : public CausalLM {
  public:
    /// Finds a tensor by its GGUF name; nullopt when the file lacks it.
    using Lookup = std::function<std::optional<TensorRef>(const std::string& name)>;

    /// Builds the engine over tensors that stay valid while `keep_alive` lives (the engine
    /// holds it). Weight matrices of F32, F16, Q8_0, Q4_0 and Q4_K are copied into one arena
    /// (with AVX-512 VNNI all but Q4_K repacked in groups of 16 rows), and the pages of those
    /// marked in_mapping dropped; BF16 is widened to F32 and Q4_1, Q5_K and Q6_K are
    /// requantized to Q8_0 at load. Throws InvalidArgument
    /// naming a missing tensor or a shape that disagrees with cfg.
    QuantLM(const ModelConfig& cfg, const Lookup& lookup, std::shared_ptr<const void> keep_alive,
            EngineOptions opts = {});
    ~QuantLM() override;

    /// The same model with its weights converted as `forge convert` would (formats::save_gguf:
    /// every matrix to `type`, with formats::gguf_tensor_type's fallback for rows that do not
    /// fit the blocks; norms and biases F32; llama.cpp's names and layouts).
    static std::unique_ptr<QuantLM> from_transformer(Transformer& model, quant::GgmlType type,
                                                     EngineOptions opts = {});

    /// The model of a GGUF file (llama or gpt2 architecture), its tensors read from the
    /// file's mapping. Throws NotFound, or InvalidArgument naming the file and the problem.
    static std::unique_ptr<QuantLM> from_gguf(const std::filesystem::path& path,
                                              EngineOptions opts = {});

    /// Random weights (uniform, std 0.02; norms 1, biases 0) of `type`, for benchmarks: the
    /// same work per token as a trained model of that shape.
    static std::unique_ptr<QuantLM> random(const ModelConfig& cfg, quant::GgmlType type,
                                           uint64_t seed = 1, EngineOptions opts = {});

    int64_t n_vocab() const override;
    int64_t n_ctx() const override;
    std::unique_ptr<State> new_state(int64_t capacity) override;
    void eval(State& state, std::span<const TokenId> ids, std::vector<float>& logits) override;
    /// As eval, but `logits` gets the logits of every position: (ids.size(), n_vocab).
    void eval_all(State& state, std::span<const TokenId> ids, std::vector<float>& logits);

    const ModelConfig& config() const;
    /// Bytes of weight data the engine reads per token (all matrices, embeddings row excluded).
    int64_t weight_bytes() const;
    int n_threads() const;

    struct Impl;

  private:
    std::unique_ptr<Impl> impl_;
};

} // namespace forge::infer
