// Shared pieces of the training tests: a scratch folder, a small text corpus, a tiny model.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>

#include <forge/models/config.h>
#include <forge/train/data.h>

namespace forge::test {

/// A fresh folder under the build tree, removed first if it exists.
inline std::filesystem::path scratch(const std::string& name) {
    auto p = std::filesystem::path(FORGE_BINARY_DIR) / "train_test_tmp" / name;
    std::filesystem::remove_all(p);
    std::filesystem::create_directories(p);
    return p;
}

/// The first `bytes` of the repository's tinyshakespeare.txt.
inline std::string shakespeare(size_t bytes) {
    return read_file_bytes(FORGE_SOURCE_DIR "/data/tinyshakespeare.txt").substr(0, bytes);
}

inline void write_file(const std::filesystem::path& p, const std::string& text) {
    std::ofstream o(p, std::ios::binary | std::ios::trunc);
    o << text;
}

/// A 2-layer GPT-2 with 32-wide embeddings and 16 positions.
inline ModelConfig tiny_config(int64_t vocab) {
    ModelConfig c = ModelConfig::preset("tiny");
    c.vocab_size = vocab;
    c.n_layer = 2;
    c.n_head = 2;
    c.n_head_kv = 2;
    c.n_embd = 32;
    c.n_ff = 128;
    c.n_ctx = 16;
    c.head_dim = 0;
    c.dropout = 0;
    return c;
}

} // namespace forge::test
