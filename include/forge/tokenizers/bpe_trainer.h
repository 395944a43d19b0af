// Trains a byte-level BPE vocabulary (GPT-2 style: bytes mapped to printable characters, text
// pre-split by a regex) and writes it as a Hugging Face tokenizer.json. It does not encode:
// load the file it writes with forge::Tokenizer::load.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace forge {

struct BpeTrainerOptions {
    /// The GPT-2 pre-tokenizer regex; `pattern` defaults to it.
    static constexpr std::string_view kGpt2Pattern =
        R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
    /// The cl100k_base pre-tokenizer regex (case-insensitive contractions, 1-3 digit groups).
    static constexpr std::string_view kCl100kPattern =
        R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

    /// Final vocabulary size, counting the special tokens and the byte alphabet. Training stops
    /// earlier when no pair occurs `min_frequency` times.
    std::size_t vocab_size = 4096;
    /// Special tokens get ids 0..n-1 in this order; their text is cut out of the training data.
    std::vector<std::string> special_tokens{};
    /// A pair must occur at least this often (weighted by word counts) to be merged.
    std::uint64_t min_frequency = 2;
    /// Pre-tokenizer regex (PCRE2 syntax, Unicode properties). Empty means kGpt2Pattern. The
    /// GPT-2 pattern is saved as a ByteLevel pre-tokenizer, any other as Split + ByteLevel.
    std::string pattern{};
    /// Pre-split each line (with its '\n') on its own, as HF's train-from-files does. When false,
    /// the regex runs over whole texts, so runs like "\n\n" can become tokens (threads then cut
    /// only at a '\n' between two ASCII non-space characters, where no match or lookahead of the
    /// GPT-2, cl100k or o200k patterns reaches across).
    bool split_lines = true;
    /// Put all 256 byte symbols in the vocabulary (so any input encodes). When false only the bytes
    /// seen in the data are (HF's trainer without an initial alphabet does this).
    bool full_byte_alphabet = true;
    /// Threads for counting words; 0 = hardware concurrency. The result never depends on it.
    int n_threads = 0;
};

/// What training produced: ids are positions in `tokens`.
struct TrainedBpe {
    /// id -> the token's raw bytes (special tokens as their text).
    std::vector<std::string> tokens;
    /// Merges in rank order: (left id, right id) -> result id.
    struct Merge {
        std::uint32_t left, right, result;
    };
    std::vector<Merge> merges;
    /// Ids 0..n-1 hold these.
    std::vector<std::string> special_tokens;
    /// The pre-tokenizer regex used (never empty).
    std::string pattern;

    /// The Hugging Face tokenizer.json text: BPE model (vocab, merges as [left, right] pairs),
    /// ByteLevel (or Split + ByteLevel) pre-tokenizer, ByteLevel decoder, special added_tokens.
    std::string to_tokenizer_json() const;
    /// Writes to_tokenizer_json() to `path`; throws forge::InvalidArgument if it cannot.
    void save(const std::filesystem::path& path) const;
};

/// Figures from one training run (for logs and benchmarks).
struct BpeTrainerStats {
    std::uint64_t n_bytes = 0;        // text bytes counted
    std::uint64_t n_words = 0;        // pre-tokenized pieces counted
    std::uint64_t n_unique_words = 0; // distinct pieces
    double count_seconds = 0;         // pre-splitting + counting in add_text (not file reads)
    double merge_seconds = 0;         // the merge loop
};

/// Usage: BpeTrainer t({.vocab_size = 4096}); t.add_path("data/"); t.train().save("tok.json");
/// add_* may be called any number of times before train(); counting uses threads, merging is
/// incremental (a max-heap of pairs and, per pair, the words that hold it). Ties between pairs of
/// equal count go to the pair whose (left id, right id) is smallest, as in HF tokenizers.
class BpeTrainer {
  public:
    explicit BpeTrainer(BpeTrainerOptions opts = {});
    ~BpeTrainer();
    BpeTrainer(BpeTrainer&&) noexcept;
    BpeTrainer& operator=(BpeTrainer&&) noexcept;

    /// Counts the words of `text` (UTF-8). A byte that is not part of a valid UTF-8 character
    /// is a word of its own, as the byte-level tokenizers encode it (tokenizer.h's policy).
    void add_text(std::string_view text);
    /// Counts a file, or every regular file under a folder (recursively, in sorted order).
    void add_path(const std::filesystem::path& path);
    /// Runs the merges over everything added so far. Can be called again after adding more.
    TrainedBpe train();

    const BpeTrainerOptions& options() const;
    const BpeTrainerStats& stats() const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace forge
