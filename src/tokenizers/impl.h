// The parts a tokenizer is built from (HF's pipeline: normalizer -> pre-tokenizer -> model ->
// post-processor; decoder for the way back) and Tokenizer::Impl, which owns one of each.
// Internal: only src/tokenizers and the library's own parts include this.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hash_map.h"
#include <forge/tokenizers/tokenizer.h>

namespace forge::tok {

/// Pieces of text after pre-tokenization: views into the input or into `storage`.
struct Pieces {
    std::vector<std::string_view> views;
    std::vector<std::unique_ptr<std::string>> storage;
    /// Where the original text starts, when this text is at its start (HF's offset 0, which
    /// Metaspace's prepend_scheme "first" looks at); nullptr otherwise.
    const char* text_start = nullptr;
    std::string_view own(std::string s) {
        storage.push_back(std::make_unique<std::string>(std::move(s)));
        return *storage.back();
    }
};

/// id <-> token surface. Surfaces are raw bytes for byte-level vocabularies.
class Vocab {
  public:
    /// Adds (or overwrites) a token; grows the id space to cover `id`.
    void set(TokenId id, std::string_view surface);
    /// Builds the lookup map; call after the last set().
    void finish();
    std::size_t size() const { return offsets_.empty() ? 0 : offsets_.size() - 1; }
    bool has(TokenId id) const {
        return id >= 0 && std::size_t(id) < size() && present_[std::size_t(id)];
    }
    std::string_view surface(TokenId id) const {
        return std::string_view(data_.data() + offsets_[std::size_t(id)],
                                offsets_[std::size_t(id) + 1] - offsets_[std::size_t(id)]);
    }
    TokenId find(std::string_view s) const { return map_.find(s); }
    /// For the decode fast path: all surfaces in one buffer.
    const std::string& data() const { return data_; }
    const std::vector<std::uint32_t>& offsets() const { return offsets_; }

  private:
    std::vector<std::pair<TokenId, std::string>> pending_;
    std::string data_;
    std::vector<std::uint32_t> offsets_;
    std::vector<bool> present_;
    BytesMap map_;
};

class Model {
  public:
    virtual ~Model() = default;
    /// Appends the ids of one pre-tokenized piece.
    virtual void encode_piece(std::string_view piece, std::vector<TokenId>& out) const = 0;
    virtual const Vocab& vocab() const = 0;
    /// Surfaces are raw bytes (byte-level BPE).
    virtual bool byte_level() const { return false; }
    virtual std::optional<TokenId> unk_id() const { return std::nullopt; }
    virtual std::string name() const = 0;
};

class Normalizer {
  public:
    virtual ~Normalizer() = default;
    virtual std::string normalize(std::string_view s) const = 0;
};

class PreTokenizer {
  public:
    virtual ~PreTokenizer() = default;
    /// Splits each piece of `in` further, writing `out`.
    virtual void split(const Pieces& in, Pieces& out) const = 0;
    /// Fast path: splits one text, calling emit for each piece, when the pre-tokenizer needs no
    /// storage (regex splits). Returns false if it cannot.
    virtual bool split_views(std::string_view, std::vector<std::string_view>&) const {
        return false;
    }
};

class Decoder {
  public:
    virtual ~Decoder() = default;
    /// HF's decode_chain: token surfaces in, surfaces out (usually fewer, finally one).
    virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

/// Adds BOS/EOS-like ids around an encoding (HF post_processor, SentencePiece bos/eos).
struct PostProcessor {
    std::vector<TokenId> prefix, suffix;
};

/// An added/special token as the matcher needs it (HF flags included).
struct AddedToken {
    std::string text;
    TokenId id = -1;
    bool special = true;
    bool lstrip = false, rstrip = false, single_word = false;
};

} // namespace forge::tok

namespace forge {

class IncrementalDecoder::State {
  public:
    virtual ~State() = default;
    virtual std::string push(TokenId id) = 0;
    virtual std::string flush() = 0;
};

class Tokenizer::Impl {
  public:
    virtual ~Impl() = default;

    /// Encodes text that holds no special tokens to be matched. `at_start`: the text begins
    /// the caller's input (false for text after an added token).
    virtual void encode_ordinary(std::string_view text, std::vector<TokenId>& out,
                                 bool at_start = true) const = 0;
    /// Appends the text of ids (special tokens included unless skipped).
    virtual void decode_append(std::span<const TokenId> ids, bool skip_special,
                               std::string& out) const = 0;
    /// The stored surface of an id (throws for unknown ids).
    virtual std::string token(TokenId id) const = 0;
    virtual std::optional<TokenId> token_to_id(std::string_view s) const = 0;
    /// True when decode(ids) is the plain concatenation of each id's bytes, so streaming can be
    /// done a token at a time.
    virtual bool concatenative() const { return false; }
    /// For concatenative tokenizers: the bytes of one id (throws for unknown ids).
    virtual std::string_view token_bytes(TokenId id) const;

    std::string kind;
    std::size_t n_vocab = 0;
    std::vector<SpecialToken> specials; // id order
    std::vector<tok::AddedToken> added; // matcher input
    std::optional<TokenId> bos, eos, pad, unk;
    tok::PostProcessor post;
    /// The one regex that splits text before a byte-level BPE (tiktoken, GPT-2 folders, HF
    /// ByteLevel with use_regex or Split + ByteLevel); empty for any other pre-tokenizer. GGUF
    /// export names it (tokenizer.ggml.pre).
    std::string split_pattern;

    bool is_special_id(TokenId id) const;
    /// Fills `specials` from `added` and sets n_vocab to cover them.
    void finish_specials(std::size_t model_size);
};

} // namespace forge

namespace forge::tok {

/// The general tokenizer: normalizer -> pre-tokenizers -> model; decoders back.
class PipelineImpl : public Tokenizer::Impl {
  public:
    std::unique_ptr<Normalizer> normalizer;
    std::unique_ptr<PreTokenizer> pre_tokenizer;
    std::unique_ptr<Model> model;
    std::unique_ptr<Decoder> decoder;
    /// Decoding is the concatenation of byte surfaces (byte-level model + ByteLevel decoder).
    bool concat_decode = false;

    void encode_ordinary(std::string_view text, std::vector<TokenId>& out,
                         bool at_start = true) const override;
    void decode_append(std::span<const TokenId> ids, bool skip_special,
                       std::string& out) const override;
    std::string token(TokenId id) const override;
    std::optional<TokenId> token_to_id(std::string_view s) const override;
    bool concatenative() const override { return concat_decode; }
    std::string_view token_bytes(TokenId id) const override;

  private:
    void encode_valid(std::string_view text, std::vector<TokenId>& out, bool at_start) const;
    const SpecialToken* special_for(TokenId id) const;

    // Byte-level decode: every id's bytes (vocabulary or special text) in one buffer, built on
    // first use. entry = offset << 8 | flags; flags: 1 present, 2 special.
    struct DecodeTable {
        std::string bytes;
        std::vector<std::uint64_t> entry;
        std::vector<std::uint32_t> len;
    };
    const DecodeTable& decode_table() const;
    mutable std::once_flag decode_once_;
    mutable DecodeTable decode_table_;
};

// Factories (one file each).
std::shared_ptr<Tokenizer::Impl> load_tiktoken(const std::string& path, std::string pattern,
                                               std::vector<SpecialToken> specials,
                                               std::string name);
std::shared_ptr<Tokenizer::Impl> make_rank_bpe(std::vector<std::string> tokens, std::string pattern,
                                               std::vector<SpecialToken> specials,
                                               std::string name, std::string_view origin);
std::shared_ptr<Tokenizer::Impl> load_gpt2_folder(const std::string& dir);
std::shared_ptr<Tokenizer::Impl> load_hf_json(std::string_view json, std::string_view origin,
                                              std::string_view config_json);
std::shared_ptr<Tokenizer::Impl> load_sentencepiece(const std::string& path);
/// A SentencePiece model from its serialized ModelProto bytes; `origin` names it in errors.
std::shared_ptr<Tokenizer::Impl> load_sentencepiece_proto(std::string blob, std::string origin);

/// One piece of a SentencePiece model; `type` is SentencePiece's (1 normal, 2 unknown,
/// 3 control, 4 user-defined, 5 unused, 6 byte), the same numbers GGUF's token_type uses.
struct SpPiece {
    std::string piece;
    float score = 0;
    int type = 1;
};
/// The pieces of a SentencePiece tokenizer in id order, or nullopt for any other kind.
/// `add_dummy_prefix`: whether it prepends U+2581 to the text.
struct SpModelInfo {
    std::vector<SpPiece> pieces;
    bool add_dummy_prefix = true;
    bool is_bpe = false; ///< a BPE model (false: Unigram, word or char)
};
std::optional<SpModelInfo> sentencepiece_info(const Tokenizer::Impl& impl);

std::string read_file(const std::string& path);

} // namespace forge::tok
