// ONNX export of a Transformer's forward pass: one graph from `input_ids` (int64, (batch,
// sequence), both dims dynamic) to `logits` (float, (batch, sequence, vocab)), standard
// opset-17 ops only, so onnxruntime and other runtimes run it. The file is an onnx.proto
// ModelProto (checked in tests by libonnx's parser and checker, and run by onnxruntime). Not the
// KV-cache decode step (the graph recomputes every position) and not training.
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
    /// The default domain's opset, 17..21. 17 is the lowest with LayerNormalization and the
    /// newest libonnx 1.12 (Debian 12) checks; the graph uses no op changed after it except
    /// ReduceMean (axes as an input from 18), which follows the opset asked for.
    int64_t opset = 17;
    OnnxExternalData external_data = OnnxExternalData::automatic;
    std::string graph_name = "forge";
};

/// Writes `model` (weights as float32 initializers, HF tensor names) as an ONNX model at `out`.
/// The graph: token embedding (+ learned positions for GPT-2), per block pre-norm causal
/// self-attention (RoPE with the config's theta and Llama 3 scaling, grouped-query heads) and
/// MLP (tanh-GELU or SwiGLU), final norm, LM head (tied or not). Throws InvalidArgument for a
/// bad option (opset outside 17..21, empty path) or a model too big for the chosen
/// external_data mode (`never` past 2 GiB), InvalidArgument naming the file when it cannot be
/// written. Writes `<out>.tmp` then renames; a stale `<out>.data` is removed when unused.
void export_onnx(const Transformer& model, const std::filesystem::path& out,
                 const OnnxExportOptions& opts = {});

} // namespace forge::formats
