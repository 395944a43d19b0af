// SentencePiece `.model` files through the sentencepiece library itself. Control pieces (<s>,
// </s>, <pad>, ...) and <unk> are this tokenizer's special tokens: text that spells them is
// ordinary text unless allowed; user-defined pieces are always matched (as SentencePiece does).
#include <sentencepiece_processor.h>

#include "impl.h"
#include "unicode.h"
#include <forge/core/error.h>

namespace forge::tok {

namespace {

// TrainerSpec.model_type (field 3 of field 2) of a serialized ModelProto: 1 unigram, 2 BPE;
// 1 (the proto default) when absent or unreadable.
int proto_model_type(std::string_view b) {
    auto varint = [&](size_t& i, uint64_t& v) {
        v = 0;
        for (int shift = 0; i < b.size() && shift < 64; shift += 7) {
            uint8_t c = uint8_t(b[i++]);
            v |= uint64_t(c & 0x7f) << shift;
            if (!(c & 0x80)) return true;
        }
        return false;
    };
    // Walks one message, returning the payload of length-delimited `want` or the varint `want`.
    auto find = [&](std::string_view msg, uint64_t want, bool delimited, std::string_view& sub,
                    uint64_t& val) {
        std::string_view saved = b;
        b = msg;
        size_t i = 0;
        uint64_t key, len;
        bool found = false;
        while (!found && i < b.size() && varint(i, key)) {
            const uint64_t field = key >> 3, wire = key & 7;
            if (wire == 0) {
                if (!varint(i, len)) break;
                if (field == want && !delimited) val = len, found = true;
            } else if (wire == 2) {
                if (!varint(i, len) || len > b.size() - i) break;
                if (field == want && delimited) sub = b.substr(i, size_t(len)), found = true;
                i += size_t(len);
            } else if (wire == 5) {
                i += 4;
            } else if (wire == 1) {
                i += 8;
            } else {
                break;
            }
        }
        b = saved;
        return found;
    };
    std::string_view trainer;
    uint64_t type = 1;
    if (find(b, 2, true, trainer, type)) find(trainer, 3, false, trainer, type);
    return int(type);
}

class SentencePieceImpl : public Tokenizer::Impl {
  public:
    SentencePieceImpl(const std::string& blob, std::string origin) : path_(std::move(origin)) {
        auto st = sp_.LoadFromSerializedProto(blob);
        if (!st.ok())
            throw InvalidArgument(detail::str_cat("[tokenizer] ", path_,
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

    SpModelInfo info() const {
        SpModelInfo out;
        const int n = sp_.GetPieceSize();
        out.pieces.reserve(size_t(n));
        for (int i = 0; i < n; ++i) {
            int type = 1;
            if (sp_.IsUnknown(i)) type = 2;
            else if (sp_.IsControl(i)) type = 3;
            else if (sp_.IsByte(i)) type = 6;
            else if (sp_.IsUnused(i)) type = 5;
            // (this sentencepiece version has no IsUserDefined: such pieces read as normal)
            out.pieces.push_back({sp_.IdToPiece(i), sp_.GetScore(i), type});
        }
        out.is_bpe = proto_model_type(sp_.serialized_model_proto()) == 2;
        // The normalizer spec is not exposed: a dummy prefix shows as a U+2581 the text lacks.
        std::vector<std::string> pieces;
        out.add_dummy_prefix = sp_.Encode("a", &pieces).ok() && !pieces.empty() &&
                               pieces[0].rfind("\xE2\x96\x81", 0) == 0;
        return out;
    }

  private:
    std::string path_;
    sentencepiece::SentencePieceProcessor sp_;
};

} // namespace

std::shared_ptr<Tokenizer::Impl> load_sentencepiece(const std::string& path) {
    return std::make_shared<SentencePieceImpl>(read_file(path), path);
}

std::shared_ptr<Tokenizer::Impl> load_sentencepiece_proto(std::string blob, std::string origin) {
    return std::make_shared<SentencePieceImpl>(blob, std::move(origin));
}

std::optional<SpModelInfo> sentencepiece_info(const Tokenizer::Impl& impl) {
    if (auto* sp = dynamic_cast<const SentencePieceImpl*>(&impl)) return sp->info();
    return std::nullopt;
}

} // namespace forge::tok
