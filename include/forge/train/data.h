// Training data: text files -> token ids in a memory-mapped cache file (tokenized once, rebuilt
// when the text or the tokenizer changes) -> (B, T) batches, random (seeded) or sequential.
// Not the tokenizers themselves (forge/tokenizers) or the choice of one (train/tokenizer_spec.h).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <forge/core/tensor.h>

namespace forge {

class Tokenizer;

/// The files behind data inputs: a file is itself; a folder gives every regular file under it,
/// recursively, sorted by path, skipping names that start with '.'. Throws NotFound for a path
/// that does not exist and InvalidArgument when no file is found.
std::vector<std::filesystem::path>
list_data_files(const std::vector<std::filesystem::path>& inputs);

/// A fast non-cryptographic 64-bit hash of bytes (content fingerprints, cache keys).
uint64_t hash64(std::string_view bytes, uint64_t seed = 0);
/// The whole file as bytes; throws NotFound / InvalidArgument naming the file.
std::string read_file_bytes(const std::filesystem::path& path);

/// A token file: a 64-byte header ("FGTOKv1", width, count, key) then `size()` ids of `width()`
/// bytes each (2: uint16, 4: uint32, little-endian), memory-mapped read-only. Cheap to copy.
class TokenFile {
  public:
    TokenFile() = default;
    /// Maps `path`; throws InvalidArgument if the header or the size is wrong.
    static TokenFile open(const std::filesystem::path& path);

    int64_t size() const;
    int width() const;
    /// The fingerprint the file was built for (see tokenize_cached).
    uint64_t key() const;
    uint32_t operator[](int64_t i) const;
    /// ids [start, start + n) widened to int64 (the model's id dtype).
    void read(int64_t start, int64_t n, int64_t* out) const;
    const std::filesystem::path& path() const;

    struct Mapping;

  private:
    std::shared_ptr<const Mapping> map_;
};

struct TokenCache {
    TokenFile tokens;
    bool rebuilt = false; ///< false: an existing valid cache was reused
    uint64_t key = 0;     ///< hash of (tokenizer, every file's path, size, mtime, content)
    int64_t n_bytes = 0;  ///< text bytes read
    double seconds = 0;   ///< time spent tokenizing (0 when reused)
};

/// Tokenizes `files` (in order; between files the tokenizer's EOS if it has one) into
/// `cache_dir`/tokens-<hash of the file list and tokenizer>.bin, or reuses that file when its key
/// still matches: the same tokenizer (`tokenizer_hash`, a hash of its definition file) and, for
/// every file, the same size, mtime and content hash. Writes atomically (temp file + rename).
TokenCache tokenize_cached(const std::vector<std::filesystem::path>& files, const Tokenizer& tok,
                           uint64_t tokenizer_hash, const std::filesystem::path& cache_dir,
                           int n_threads = 0);

/// A small counter-free RNG whose whole state is one uint64 (SplitMix64), so checkpoints can
/// save and restore it exactly.
struct Rng {
    uint64_t state = 0;
    uint64_t next();
    /// Uniform in [0, n), n > 0 (Lemire's multiply-shift; bias below 2^-40 for our n).
    uint64_t below(uint64_t n);
};

/// (B, T) inputs and next-token targets drawn from tokens [begin, end).
///  random:     each row starts at a uniform offset in [begin, end - T - 1] (nanoGPT's get_batch)
///  sequential: rows take consecutive windows from a cursor that wraps to `begin`
class BatchSampler {
  public:
    enum class Mode { random, sequential };
    BatchSampler(TokenFile tokens, int64_t begin, int64_t end, int64_t batch, int64_t seq_len,
                 Mode mode, uint64_t seed);

    /// x: (B, T) i64 ids, y: (B, T) i64 targets (x shifted by one).
    std::pair<Tensor, Tensor> next();

    struct State {
        uint64_t rng = 0;
        int64_t cursor = 0;
    };
    State state() const { return {rng_.state, cursor_}; }
    void set_state(const State& s);
    int64_t batch() const { return batch_; }
    int64_t seq_len() const { return seq_len_; }

  private:
    TokenFile tokens_;
    int64_t begin_, end_, batch_, seq_len_;
    Mode mode_;
    Rng rng_;
    int64_t cursor_;
};

} // namespace forge
