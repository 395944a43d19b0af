// WordPiece: greedy longest match first, as BERT and HF do. Unigram: Viterbi over all pieces
// (best total log-probability), unknown characters scored min_score - 10 as in HF.
#include "models.h"

#include <limits>

#include <nlohmann/json.hpp>

#include "json_util.h"
#include "unicode.h"

namespace forge::tok {

namespace {

class WordPieceModel : public Model {
  public:
    WordPieceModel(Vocab vocab, TokenId unk, std::string prefix, std::size_t max_chars)
        : vocab_(std::move(vocab)), unk_(unk), prefix_(std::move(prefix)), max_chars_(max_chars) {}

    void encode_piece(std::string_view w, std::vector<TokenId>& out) const override {
        if (w.empty())
            return;
        std::size_t n_chars = 0;
        for (std::size_t i = 0; i < w.size();) {
            std::size_t len = utf8_char_len(w, i);
            i += len ? len : 1;
            ++n_chars;
        }
        if (n_chars > max_chars_) {
            out.push_back(unk_);
            return;
        }
        std::size_t mark = out.size();
        std::size_t start = 0;
        std::string buf;
        while (start < w.size()) {
            std::size_t end = w.size();
            TokenId found = -1;
            while (start < end) {
                buf.clear();
                if (start > 0)
                    buf += prefix_;
                buf.append(w.substr(start, end - start));
                found = vocab_.find(buf);
                if (found >= 0)
                    break;
                // Drop the last character.
                std::size_t k = end - 1;
                while (k > start && (static_cast<unsigned char>(w[k]) & 0xC0) == 0x80)
                    --k;
                end = k;
            }
            if (found < 0) {
                out.resize(mark);
                out.push_back(unk_);
                return;
            }
            out.push_back(found);
            start = end;
        }
    }
    const Vocab& vocab() const override { return vocab_; }
    std::optional<TokenId> unk_id() const override { return unk_; }
    std::string name() const override { return "WordPiece"; }

  private:
    Vocab vocab_;
    TokenId unk_;
    std::string prefix_;
    std::size_t max_chars_;
};

class UnigramModel : public Model {
  public:
    UnigramModel(Vocab vocab, std::vector<double> scores, std::optional<TokenId> unk, bool byte_fallback)
        : vocab_(std::move(vocab)), scores_(std::move(scores)), unk_(unk), byte_fallback_(byte_fallback) {
        min_score_ = std::numeric_limits<double>::max();
        for (std::size_t i = 0; i < scores_.size(); ++i) {
            if (!vocab_.has(TokenId(i)))
                continue;
            min_score_ = std::min(min_score_, scores_[i]);
            max_len_ = std::max(max_len_, vocab_.surface(TokenId(i)).size());
        }
        for (int b = 0; b < 256; ++b) {
            char buf[8];
            std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
            byte_ids_[b] = vocab_.find(buf);
        }
    }

    void encode_piece(std::string_view s, std::vector<TokenId>& out) const override {
        if (s.empty())
            return;
        const double unk_score = min_score_ - 10.0;
        std::size_t n = s.size();
        struct Node {
            double score = 0;
            std::size_t start = 0;
            TokenId id = -1;
            bool set = false;
        };
        std::vector<Node> best(n + 1);
        best[0].set = true;
        std::size_t pos = 0;
        while (pos < n) {
            std::size_t mblen = utf8_char_len(s, pos);
            if (mblen == 0)
                mblen = 1;
            if (best[pos].set) {
                double base = best[pos].score;
                bool single = false;
                std::size_t end = pos;
                while (end < n && end - pos < max_len_) {
                    std::size_t len = utf8_char_len(s, end);
                    end += len ? len : 1;
                    if (end - pos > max_len_)
                        break;
                    TokenId id = vocab_.find(s.substr(pos, end - pos));
                    if (id < 0)
                        continue;
                    double cand = base + scores_[std::size_t(id)];
                    Node& t = best[end];
                    if (!t.set || cand > t.score)
                        t = {cand, pos, id, true};
                    if (end - pos == mblen)
                        single = true;
                }
                if (!single) {
                    double cand = base + unk_score;
                    Node& t = best[pos + mblen];
                    if (!t.set || cand > t.score)
                        t = {cand, pos, unk_ ? *unk_ : -1, true};
                }
            }
            pos += mblen;
        }
        // Back-track; fuse runs of unknown characters into one piece.
        std::vector<std::pair<std::size_t, std::size_t>> spans; // [start, end) reversed
        std::vector<bool> is_unk;
        std::size_t end = n;
        while (end > 0) {
            const Node& nd = best[end];
            bool u = unk_ && nd.id == *unk_;
            if (u && !is_unk.empty() && is_unk.back())
                spans.back().first = nd.start;
            else {
                spans.push_back({nd.start, end});
                is_unk.push_back(u);
            }
            end = nd.start;
        }
        for (std::size_t k = spans.size(); k-- > 0;) {
            std::string_view piece = s.substr(spans[k].first, spans[k].second - spans[k].first);
            TokenId id = vocab_.find(piece);
            if (id >= 0) {
                out.push_back(id);
                continue;
            }
            if (byte_fallback_) {
                bool all = true;
                for (unsigned char c : piece)
                    all = all && byte_ids_[c] >= 0;
                if (all) {
                    for (unsigned char c : piece)
                        out.push_back(byte_ids_[c]);
                    continue;
                }
            }
            if (!unk_)
                throw InvalidArgument("[tokenizer] Unigram: text has a character outside the vocabulary "
                                      "and the model has no unk_id");
            out.push_back(*unk_);
        }
    }
    const Vocab& vocab() const override { return vocab_; }
    std::optional<TokenId> unk_id() const override { return unk_; }
    std::string name() const override { return "Unigram"; }

  private:
    Vocab vocab_;
    std::vector<double> scores_;
    std::optional<TokenId> unk_;
    bool byte_fallback_;
    double min_score_ = 0;
    std::size_t max_len_ = 0;
    TokenId byte_ids_[256];
};

} // namespace

std::unique_ptr<Model> make_wordpiece(const nlohmann::json& m, std::string_view origin) {
    const std::string where = "model (WordPiece)";
    const auto& v = json_at(m, "vocab", origin, where);
    if (!v.is_object())
        json_fail(origin, where, "vocab must be an object of token -> id");
    Vocab vocab;
    for (auto it = v.begin(); it != v.end(); ++it) {
        if (!it.value().is_number_integer() || it.value().get<long long>() < 0)
            json_fail(origin, where, "vocab entry \"" + it.key() + "\" has no non-negative id");
        vocab.set(it.value().get<TokenId>(), it.key());
    }
    vocab.finish();
    std::string unk = json_string_or(m, "unk_token", "[UNK]", origin, where);
    TokenId unk_id = vocab.find(unk);
    if (unk_id < 0)
        json_fail(origin, where, "unk_token \"" + unk + "\" is not in the vocab");
    return std::make_unique<WordPieceModel>(
        std::move(vocab), unk_id, json_string_or(m, "continuing_subword_prefix", "##", origin, where),
        std::size_t(json_int_or(m, "max_input_chars_per_word", 100, origin, where)));
}

std::unique_ptr<Model> make_unigram(const nlohmann::json& m, std::string_view origin) {
    const std::string where = "model (Unigram)";
    const auto& v = json_at(m, "vocab", origin, where);
    if (!v.is_array() || v.empty())
        json_fail(origin, where, "vocab must be a non-empty array of [piece, score]");
    Vocab vocab;
    std::vector<double> scores;
    TokenId id = 0;
    for (const auto& e : v) {
        if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_number())
            json_fail(origin, where, "vocab entry " + std::to_string(id) + " is not [piece, score]");
        vocab.set(id, e[0].get<std::string>());
        scores.push_back(e[1].get<double>());
        ++id;
    }
    vocab.finish();
    std::optional<TokenId> unk;
    long long u = json_int_or(m, "unk_id", -1, origin, where);
    if (u >= 0) {
        if (u >= id)
            json_fail(origin, where, "unk_id " + std::to_string(u) + " is outside the vocab");
        unk = TokenId(u);
    }
    return std::make_unique<UnigramModel>(std::move(vocab), std::move(scores), unk,
                                          json_bool_or(m, "byte_fallback", false, origin, where));
}

} // namespace forge::tok
