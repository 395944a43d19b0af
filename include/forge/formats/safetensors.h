// safetensors: an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
// shape and byte range, then the raw data. Reading validates every field against the file size
// before touching data; writing produces files HF `safetensors` loads.
#pragma once

#include <filesystem>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <forge/core/tensor.h>

namespace forge::formats {

/// Reads every tensor of a .safetensors file (F32, F64, F16, BF16, I32, I64, U8).
/// Throws NotFound, or InvalidArgument naming the file and what is wrong.
std::map<std::string, Tensor> load_safetensors(const std::filesystem::path& path);
/// The same from bytes in memory; `origin` names them in errors.
std::map<std::string, Tensor> parse_safetensors(const std::string& bytes,
                                                const std::string& origin = "<memory>");
/// Optional "__metadata__" string map of a file.
std::map<std::string, std::string> safetensors_metadata(const std::filesystem::path& path);

/// Writes tensors (sorted by name, 8-byte aligned header) atomically (temp file + rename).
void save_safetensors(const std::filesystem::path& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// ---- sharded checkpoints (HF layout) ----

struct SafetensorsShardOptions {
    /// Tensor bytes per shard; a tensor larger than this gets a shard of its own. HF's
    /// save_pretrained default is "5GB" (5e9 bytes).
    uint64_t max_shard_bytes = 5'000'000'000ull;
    /// File names: `<prefix>.safetensors`, or `<prefix>-0000N-of-0000M.safetensors` plus
    /// `<prefix>.safetensors.index.json`.
    std::string prefix = "model";
};

/// Writes `tensors` into folder `dir` (created if needed): one `model.safetensors` when they fit
/// in one shard, else shards filled in name order plus the index (metadata.total_size = sum of
/// tensor bytes, weight_map: name -> shard file), as HF transformers writes and reads them.
/// Every shard carries `metadata`. Stale files of the other layout are removed. Returns the
/// files written (shards, then the index).
std::vector<std::filesystem::path>
save_safetensors_sharded(const std::filesystem::path& dir,
                         const std::map<std::string, Tensor>& tensors,
                         const SafetensorsShardOptions& opts = {},
                         const std::map<std::string, std::string>& metadata = {});

/// model.safetensors.index.json, parsed and checked: a JSON object with a "weight_map" object
/// of tensor name -> plain shard file name (no path separators, not "." or ".."), and an
/// optional "metadata" object whose "total_size", if present, is an unsigned integer.
struct SafetensorsIndex {
    std::map<std::string, std::string> weight_map;
    uint64_t total_size = 0; ///< 0 when the index does not say
};
/// `origin` names the text in errors. Throws InvalidArgument.
SafetensorsIndex parse_safetensors_index(const std::string& json_text,
                                         const std::string& origin = "<memory>");

/// Every tensor of a sharded checkpoint, given its index file: each shard (relative to the
/// index's folder) is read once; every tensor the index lists must be in the shard it names,
/// and every tensor of a shard must be listed there. Throws NotFound (index or shard missing)
/// or InvalidArgument naming the file and the tensor.
std::map<std::string, Tensor> load_safetensors_sharded(const std::filesystem::path& index_file);

/// A folder's weights: `model.safetensors` if present, else the shards
/// `model.safetensors.index.json` names. Throws NotFound when it has neither.
std::map<std::string, Tensor> load_safetensors_dir(const std::filesystem::path& dir);

} // namespace forge::formats
