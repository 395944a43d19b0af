// safetensors: an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
// shape and byte range, then the raw data. Reading validates every field against the file size
// before touching data; writing produces files HF `safetensors` loads.
#pragma once

#include <filesystem>
#include <map>
#include <string>

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

} // namespace forge::formats
