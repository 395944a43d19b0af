// Choosing the tokenizer a training run uses: `char` (the data's distinct characters), `byte`
// (256 byte tokens), `bpe:N` (a byte-level BPE trained on the data) or a tokenizer file. Each
// comes with the exact file that defines it, which checkpoints carry as tokenizer.json.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <forge/tokenizers/tokenizer.h>

namespace forge {

struct TrainingTokenizer {
    Tokenizer tokenizer;
    std::string spec;       ///< what was asked for: "char", "byte", "bpe:4096" or a path
    std::string file_name;  ///< name in a checkpoint: "tokenizer.json" (or e.g. "x.tiktoken")
    std::string file_bytes; ///< that file's contents
    uint64_t hash = 0;      ///< hash64(file_bytes): the token cache's tokenizer key
};

/// HF tokenizer.json for a character-level vocabulary: a BPE model without merges (so
/// Tokenizer::load reads it) whose vocab is `chars` (UTF-8 strings, one code point each) with
/// ids in the given order, no normalizer or pre-tokenizer, and a Fuse decoder (tokens joined
/// without spaces). Characters outside the vocab
/// are dropped when encoding (there is no unknown token).
std::string char_tokenizer_json(const std::vector<std::string>& chars);
/// The distinct code points of UTF-8 `text`, sorted by code point, each as UTF-8 (invalid bytes
/// count as U+FFFD, as the tokenizers' invalid-UTF-8 policy reads them).
std::vector<std::string> distinct_chars(std::string_view text);
/// HF tokenizer.json for the 256 single bytes (byte-level BPE without merges; GPT-2 pre-split).
std::string byte_tokenizer_json();

/// Builds the tokenizer `spec` names. char and bpe:N read `data_files` (bpe:N trains on them,
/// caching the result in `cache_dir` keyed by the data's content and N). Throws InvalidArgument
/// for an unknown spec, NotFound for a missing file.
TrainingTokenizer make_training_tokenizer(const std::string& spec,
                                          const std::vector<std::filesystem::path>& data_files,
                                          const std::filesystem::path& cache_dir,
                                          int n_threads = 0);
/// A tokenizer from its definition file (a checkpoint's tokenizer.json, a .tiktoken, ...).
TrainingTokenizer load_training_tokenizer(const std::filesystem::path& path,
                                          const std::string& spec = {});

} // namespace forge
