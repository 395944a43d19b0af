// Byte-pair encoding over a Vocab and a pair -> merge table. One engine serves tiktoken rank files
// (rank-of-concatenation rule), GPT-2 merges and HF BPE models (byte-level or over characters,
// with byte_fallback/unk). Merging is linear-ish: short pieces use a small array, long pieces a
// heap over a linked list, so a 1 MB piece costs O(n log n).
#pragma once

#include <atomic>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "impl.h"

namespace forge::tok {

struct BpeConfig {
    bool byte_level = false;    ///< symbols start as single bytes (surfaces are raw bytes)
    bool ignore_merges = false; ///< a piece that is itself a token is emitted as is
    bool byte_fallback = false; ///< unknown characters become <0xXX> tokens
    std::optional<TokenId> unk; ///< unknown characters become this (fused if fuse_unk)
    bool fuse_unk = false;
    std::string continuing_subword_prefix; ///< HF BPE: prefix of non-initial symbols
    std::string end_of_word_suffix;        ///< HF BPE: suffix of the final symbol
    bool use_cache = true;
};

class BpeModel : public Model {
  public:
    BpeModel(Vocab vocab, BpeConfig cfg);

    /// tiktoken's rule: two adjacent parts merge when their concatenation is a token, lowest
    /// rank (= id) first. Builds the pair table from every two-way split of every token.
    void add_rank_merges();
    /// One HF/GPT-2 merge "a b" with priority `rank`; false when a, b or a+b is not a token.
    bool add_merge(std::string_view a, std::string_view b, std::uint32_t rank);
    void finish();
    /// Every merge (a, b, rank) in rank order (ties by a, then b): GPT-2/HF merges, or for
    /// rank-merge vocabularies each two-way split of a token, ranked by the token.
    std::vector<std::tuple<TokenId, TokenId, std::uint32_t>> merges() const;

    void encode_piece(std::string_view piece, std::vector<TokenId>& out) const override;
    const Vocab& vocab() const override { return vocab_; }
    bool byte_level() const override { return cfg_.byte_level; }
    std::optional<TokenId> unk_id() const override { return cfg_.unk; }
    std::string name() const override { return "BPE"; }
    const BpeConfig& config() const { return cfg_; }

  private:
    void encode_segment(std::string_view piece, std::vector<TokenId>& out) const;
    void initial_symbols(std::string_view piece, std::vector<TokenId>& syms) const;
    void merge_small(std::vector<TokenId>& syms) const;
    void merge_large(std::vector<TokenId>& syms) const;
    void merge(std::vector<TokenId>& syms) const;

    Vocab vocab_;
    BpeConfig cfg_;
    PairMap pairs_;
    TokenId byte_ids_[256];
    std::uint64_t cache_owner_;
    /// SentencePiece-style vocabularies (no pre-tokenizer; words start with U+2581): when no
    /// token has U+2581 after another character, no merge crosses a word start, so a long
    /// piece can be cut before each such U+2581 and its words merged (and cached) one by one.
    bool split_at_metaspace_ = false;
};

} // namespace forge::tok
