// Forge's one tokenizer interface: text <-> token ids for byte-level BPE (tiktoken rank files,
// GPT-2 encoder.json + vocab.bpe, HF tokenizer.json), WordPiece, Unigram and SentencePiece
// `.model` files. Not the BPE trainer or chat templates (bpe_trainer.h, chat_template.h).
//
// Invalid UTF-8 policy (docs/tokenizers.md): byte-level BPE vocabularies (tiktoken, GPT-2, HF
// ByteLevel) encode every input byte losslessly: a byte that is not part of a valid UTF-8
// character becomes its own piece and is encoded as that byte's token, so decode(encode(x)) == x
// for any byte string. Models over characters (WordPiece, Unigram, SentencePiece, BPE without
// ByteLevel) see each invalid byte replaced by U+FFFD first. decode() returns the tokens' exact
// bytes; IncrementalDecoder never emits half a character and turns bytes that cannot become
// valid UTF-8 into U+FFFD.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace forge {

using TokenId = std::int32_t;

/// A token outside the ordinary vocabulary: `<|endoftext|>`, `<s>`, or an added token.
struct SpecialToken {
    std::string text;    ///< exact text (UTF-8) that stands for it
    TokenId id = -1;     ///< its id
    bool special = true; ///< false: an HF added token that is ordinary text (always matched)
};

struct EncodeOptions {
    /// Special tokens whose text in the input is encoded as the special token. By default
    /// (tiktoken's rule) special-token text in the input is ordinary text.
    std::vector<std::string> allowed_special;
    /// Every special token is allowed (the CLI's --allow-special).
    bool allow_all_special = false;
    /// Add BOS/EOS as the file's post-processor says (HF TemplateProcessing, SentencePiece
    /// bos/eos). Off by default: encode() returns the text's tokens only.
    bool add_special_tokens = false;
};

struct DecodeOptions {
    /// Leave out special tokens (those with special == true) from the text.
    bool skip_special_tokens = false;
};

class Tokenizer;

/// Streams the text of ids one at a time, e.g. while generating. Never emits half a UTF-8
/// character: bytes of a character that is not complete yet wait for the next token.
class IncrementalDecoder {
  public:
    class State;
    explicit IncrementalDecoder(std::unique_ptr<State> state);
    IncrementalDecoder(IncrementalDecoder&&) noexcept;
    IncrementalDecoder& operator=(IncrementalDecoder&&) noexcept;
    ~IncrementalDecoder();

    /// The text that `id` completes (possibly empty), valid UTF-8.
    std::string push(TokenId id);
    /// The rest: bytes still waiting (an incomplete character becomes U+FFFD).
    std::string flush();

  private:
    std::unique_ptr<State> state_;
};

/// A loaded tokenizer. Cheap to copy (the vocabulary is shared and immutable); every const
/// method is safe to call from several threads at once.
class Tokenizer {
  public:
    class Impl;

    /// Loads `path`, telling the format from it: a `.tiktoken` rank file (r50k_base,
    /// p50k_base, cl100k_base, o200k_base are recognised by name or size, with their regexes
    /// and special tokens), a `tokenizer.json` (or a folder holding one), a GPT-2 folder with
    /// `encoder.json` + `vocab.bpe`, or a SentencePiece `.model`.
    /// Throws NotFound (no such file) or InvalidArgument (malformed or unsupported contents).
    static Tokenizer load(const std::filesystem::path& path);

    /// An HF tokenizer.json given as text; `origin` names it in error messages.
    static Tokenizer from_tokenizer_json(std::string_view json,
                                         std::string_view origin = "tokenizer.json");

    /// A tiktoken-style byte-level BPE: `tokens[i]` is the raw bytes of token i, whose rank is
    /// i (every one of the 256 single bytes must be present); `pattern` is the PCRE2-syntax
    /// pre-tokenizer regex; `specials` have ids outside [0, tokens.size()) or free slots.
    static Tokenizer from_ranks(std::vector<std::string> tokens, std::string pattern,
                                std::vector<SpecialToken> specials, std::string name = "custom");

    /// A `.tiktoken` file (base64 bytes + rank per line) with an explicit pattern and specials.
    static Tokenizer from_tiktoken_file(const std::filesystem::path& path, std::string pattern,
                                        std::vector<SpecialToken> specials);

    /// The regex of a known OpenAI encoding ("r50k_base", "gpt2", "p50k_base", "cl100k_base",
    /// "o200k_base"); throws InvalidArgument for any other name.
    static std::string known_pattern(std::string_view encoding);
    /// The special tokens of a known OpenAI encoding.
    static std::vector<SpecialToken> known_special_tokens(std::string_view encoding);

    Tokenizer(const Tokenizer&);
    Tokenizer(Tokenizer&&) noexcept;
    Tokenizer& operator=(const Tokenizer&);
    Tokenizer& operator=(Tokenizer&&) noexcept;
    ~Tokenizer();

    /// text (UTF-8, see the invalid UTF-8 policy above) -> ids.
    std::vector<TokenId> encode(std::string_view text, const EncodeOptions& opts = {}) const;
    /// encode() of each text, spread over `n_threads` threads (0: all hardware threads).
    std::vector<std::vector<TokenId>> encode_batch(std::span<const std::string> texts,
                                                   const EncodeOptions& opts = {},
                                                   int n_threads = 0) const;
    /// ids -> text: the tokens' exact bytes joined (through the file's decoder, if it has one).
    /// Throws InvalidArgument for an id outside the vocabulary.
    std::string decode(std::span<const TokenId> ids, const DecodeOptions& opts = {}) const;
    IncrementalDecoder incremental_decoder(const DecodeOptions& opts = {}) const;

    /// One past the largest id (ordinary vocabulary and special tokens).
    std::size_t vocab_size() const;
    /// The surface of one token as stored: raw bytes for byte-level vocabularies, the vocab
    /// string (e.g. "▁the", "##ing") otherwise. Throws InvalidArgument for an unknown id.
    std::string token(TokenId id) const;
    /// The id of a token given as token() prints it, or of a special token's text.
    std::optional<TokenId> token_to_id(std::string_view token) const;

    /// Special and added tokens, in id order.
    const std::vector<SpecialToken>& special_tokens() const;
    std::optional<TokenId> bos_id() const;
    std::optional<TokenId> eos_id() const;
    std::optional<TokenId> pad_id() const;
    std::optional<TokenId> unk_id() const;

    /// What was loaded, e.g. "tiktoken:cl100k_base", "tokenizer.json:BPE", "sentencepiece".
    const std::string& kind() const;

    /// For the library's own parts (trainer, formats): the implementation.
    const Impl& impl() const { return *impl_; }
    explicit Tokenizer(std::shared_ptr<const Impl> impl);

  private:
    std::shared_ptr<const Impl> impl_;
};

} // namespace forge
