// ModelConfig: one struct for the GPT-2 and Llama families, the named presets with their
// published shapes, the HF config.json mapping, and the size estimator behind `forge info`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <forge/core/dtype.h>

namespace forge {

enum class ModelFamily { gpt2, llama };

struct ModelConfig {
    ModelFamily family = ModelFamily::gpt2;
    int64_t vocab_size = 50257;
    int64_t n_ctx = 1024;       // max positions (GPT-2's learned table; Llama's max_position)
    int64_t n_layer = 12;
    int64_t n_head = 12;
    int64_t n_head_kv = 12;     // < n_head: grouped-query attention
    int64_t n_embd = 768;
    int64_t n_ff = 3072;        // MLP hidden size
    int64_t head_dim = 0;       // 0 = n_embd / n_head
    float norm_eps = 1e-5f;
    float rope_theta = 10000.0f;
    // Llama 3 RoPE frequency scaling ("rope_scaling" with rope_type "llama3"); factor 0 = off.
    float rope_scaling_factor = 0.0f;
    float rope_low_freq_factor = 1.0f;
    float rope_high_freq_factor = 4.0f;
    int64_t rope_original_max_pos = 8192;
    bool tie_embeddings = true;
    float dropout = 0.0f;
    bool checkpoint_activations = false; // recompute each block in the backward pass

    int64_t dim_head() const { return head_dim ? head_dim : n_embd / n_head; }
    /// Throws InvalidArgument naming the field if the shapes are inconsistent.
    void validate() const;

    /// Presets: tiny, gpt2, gpt2-medium, llama-1b, llama-3b, llama-7b, llama-8b, llama-13b,
    /// llama-70b. Throws InvalidArgument listing the names for an unknown one.
    static ModelConfig preset(const std::string& name);
    static std::vector<std::string> preset_names();

    /// HF config.json (model_type "gpt2" or "llama") <-> ModelConfig.
    static ModelConfig from_hf_json(const std::string& json_text);
    std::string to_hf_json() const;

    /// Parameter count, computed from the shapes (equals HF transformers' for the same config).
    int64_t num_parameters() const;
    /// Bytes of K and V cache per token (all layers) at `dtype`.
    int64_t kv_cache_bytes_per_token(DType dtype) const;
};

/// Llama 3 RoPE scaling: per rotated pair (dim_head / 2 of them), the divisor of its base
/// frequency (llama.cpp stores these as rope_freqs.weight). All 1 when scaling is off.
std::vector<float> llama3_rope_factors(const ModelConfig& c);

} // namespace forge
