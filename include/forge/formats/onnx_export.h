// ONNX export of a Transformer's forward pass: one graph from `input_ids` (int64, (batch,
// sequence), both dims dynamic) to `logits` (float, (batch, sequence, vocab)), written with the
// ONNX protos of libonnx and standard opset-17 ops only, so onnxruntime and other runtimes run
// it. Not the KV-cache decode step (the graph recomputes every position) and not training.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace forge {
class Transformer;
}

namespace forge::formats {

/// Where the weights go. ONNX files are protobufs, which cannot exceed 2 GiB: larger models
/// keep their weights in a side file ("external data", as the ONNX spec defines it).
enum class OnnxExternalData {
    automatic, ///< external when the weights pass 1.8 GiB, else inside the .onnx
    always,    ///< every weight in `<out>.data` next to the .onnx file
    never,     ///< inside the .onnx; throws InvalidArgument when that would pass 2 GiB
};

struct OnnxExportOptions {
    /// The default domain's opset. 17 is the lowest with LayerNormalization; the graph uses
    /// nothing newer, and libonnx 1.12 (Debian 12) knows nothing past 17.
    int64_t opset = 17;
    OnnxExternalData external_data = OnnxExternalData::automatic;
    /// Run onnx::checker::check_model on the finished model before writing it.
    bool check = true;
    std::string graph_name = "forge";
};

/// Writes `model` (weights as float32 initializers, HF tensor names) as an ONNX model at `out`.
/// The graph: token embedding (+ learned positions for GPT-2), per block pre-norm causal
/// self-attention (RoPE with the config's theta and Llama 3 scaling, grouped-query heads) and
/// MLP (tanh-GELU or SwiGLU), final norm, LM head (tied or not). Throws InvalidArgument for a
/// bad option or a model too big for the chosen external_data mode, forge::Error when the file
/// cannot be written or the checker rejects the model (a bug: report it).
void export_onnx(const Transformer& model, const std::filesystem::path& out,
                 const OnnxExportOptions& opts = {});

} // namespace forge::formats
