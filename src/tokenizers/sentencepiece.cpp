// SentencePiece `.model` files through the sentencepiece library itself. Control pieces (<s>,
// </s>, <pad>, ...) and <unk> are this tokenizer's special tokens: text that spells them is
// ordinary text unless allowed; user-defined pieces are always matched (as SentencePiece does).
#include <sentencepiece_processor.h>

#include "impl.h"
#include "unicode.h"
#include <forge/core/error.h>

namespace forge::tok {

namespace {

class SentencePieceImpl : public Tokenizer::Impl {
  public:
    explicit SentencePieceImpl(const std::string& path) : path_(path) {
        std::string blob = read_file(path);
        auto st = sp_.LoadFromSerializedProto(blob);
        if (!st.ok())
            throw InvalidArgument(detail::str_cat("[tokenizer] ", path,
                                                  ": not a SentencePiece model: ", st.ToString()));
        kind = "sentencepiece";
        int n = sp_.GetPieceSize();
        for (int i = 0; i < n; ++i)
            if (sp_.IsControl(i) || sp_.IsUnknown(i))
                added.push_back({sp_.IdToPiece(i), TokenId(i), true, false, false, false});
        auto opt = [](int id) { return id >= 0 ? std::optional<TokenId>(id) : std::nullopt; };
        bos = opt(sp_.bos_id());
        eos = opt(sp_.eos_id());
        pad = opt(sp_.pad_id());
        unk = opt(sp_.unk_id());
        if (bos)
            post.prefix.push_back(*bos);
        finish_specials(std::size_t(n));
    }

    void encode_ordinary(std::string_view text, std::vector<TokenId>& out, bool) const override {
        if (text.empty())
            return;
        std::vector<int> ids;
        std::string fixed;
        if (!utf8_valid(text)) {
            fixed = utf8_replace_invalid(text);
            text = fixed;
        }
        auto st = sp_.Encode(std::string_view(text.data(), text.size()), &ids);
        if (!st.ok())
            throw InvalidArgument(detail::str_cat("[tokenizer] ", path_, ": encode failed: ", st.ToString()));
        out.insert(out.end(), ids.begin(), ids.end());
    }

    void decode_append(std::span<const TokenId> ids, bool skip_special, std::string& out) const override {
        // Runs of ordinary pieces decode through SentencePiece; special pieces are their text.
        std::vector<int> run;
        auto flush = [&] {
            if (run.empty())
                return;
            std::string s;
            auto st = sp_.Decode(run, &s);
            if (!st.ok())
                throw InvalidArgument(detail::str_cat("[tokenizer] ", path_, ": decode failed: ", st.ToString()));
            out += s;
            run.clear();
        };
        int n = sp_.GetPieceSize();
        for (TokenId id : ids) {
            if (id < 0 || id >= n)
                throw InvalidArgument(detail::str_cat("[tokenizer] ", path_, ": token id ", id,
                                                      " is outside the vocabulary (size ", n, ")"));
            if (sp_.IsControl(id) || (skip_special && sp_.IsUnknown(id))) {
                // <unk> itself decodes through SentencePiece (as " \u2047 ").
                flush();
                if (!skip_special)
                    out += sp_.IdToPiece(id);
                continue;
            }
            run.push_back(id);
        }
        flush();
    }

    std::string token(TokenId id) const override {
        if (id < 0 || id >= sp_.GetPieceSize())
            throw InvalidArgument(detail::str_cat("[tokenizer] ", path_, ": token id ", id,
                                                  " is outside the vocabulary (size ", sp_.GetPieceSize(), ")"));
        return sp_.IdToPiece(id);
    }

    std::optional<TokenId> token_to_id(std::string_view s) const override {
        int id = sp_.PieceToId(std::string_view(s.data(), s.size()));
        if (sp_.IsUnknown(id) && sp_.IdToPiece(id) != s)
            return std::nullopt;
        return id;
    }

  private:
    std::string path_;
    sentencepiece::SentencePieceProcessor sp_;
};

} // namespace

std::shared_ptr<Tokenizer::Impl> load_sentencepiece(const std::string& path) {
    return std::make_shared<SentencePieceImpl>(path);
}

} // namespace forge::tok
