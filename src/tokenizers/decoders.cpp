// HF decoders (see decoders.h).
#include "decoders.h"

#include <nlohmann/json.hpp>

#include "json_util.h"
#include "regex.h"
#include "unicode.h"

namespace forge::tok {

namespace {

class ByteLevelDec : public Decoder {
  public:
    explicit ByteLevelDec(bool bytes) : bytes_(bytes) {}
    void decode_chain(std::vector<std::string>& t) const override {
        std::string out;
        for (const auto& s : t) {
            if (bytes_) {
                out += s;
                continue;
            }
            // Map each alphabet character back to its byte; others pass as UTF-8.
            std::size_t i = 0;
            while (i < s.size()) {
                std::size_t b = i;
                if (utf8_char_len(s, i) == 0) {
                    out.push_back(s[i++]);
                    continue;
                }
                int byte = unicode_to_byte(utf8_next(s, i));
                if (byte >= 0)
                    out.push_back(char(byte));
                else
                    out.append(s.substr(b, i - b));
            }
        }
        t.assign(1, std::move(out));
    }

  private:
    bool bytes_;
};

void replace_all(std::string& s, std::string_view from, std::string_view to) {
    if (from.empty())
        return;
    std::string out;
    std::size_t last = 0, pos = 0;
    while ((pos = s.find(from, last)) != std::string::npos) {
        out.append(s, last, pos - last);
        out.append(to);
        last = pos + from.size();
    }
    out.append(s, last);
    s = std::move(out);
}

class MetaspaceDec : public Decoder {
  public:
    MetaspaceDec(std::string repl, bool strip_first) : repl_(std::move(repl)), strip_first_(strip_first) {}
    void decode_chain(std::vector<std::string>& t) const override {
        for (std::size_t i = 0; i < t.size(); ++i) {
            replace_all(t[i], repl_, " ");
            if (i == 0 && strip_first_ && !t[i].empty() && t[i][0] == ' ')
                t[i].erase(0, 1);
        }
    }

  private:
    std::string repl_;
    bool strip_first_;
};

std::string cleanup(std::string s) {
    static const std::pair<const char*, const char*> reps[] = {
        {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"},
        {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
    for (auto [a, b] : reps)
        replace_all(s, a, b);
    return s;
}

class WordPieceDec : public Decoder {
  public:
    WordPieceDec(std::string prefix, bool clean) : prefix_(std::move(prefix)), clean_(clean) {}
    void decode_chain(std::vector<std::string>& t) const override {
        for (std::size_t i = 0; i < t.size(); ++i) {
            if (i != 0) {
                if (t[i].compare(0, prefix_.size(), prefix_) == 0)
                    t[i].erase(0, prefix_.size());
                else
                    t[i].insert(0, " ");
            }
            if (clean_)
                t[i] = cleanup(std::move(t[i]));
        }
    }

  private:
    std::string prefix_;
    bool clean_;
};

class BpeDec : public Decoder {
  public:
    explicit BpeDec(std::string suffix) : suffix_(std::move(suffix)) {}
    void decode_chain(std::vector<std::string>& t) const override {
        for (std::size_t i = 0; i < t.size(); ++i)
            replace_all(t[i], suffix_, i + 1 == t.size() ? "" : " ");
    }

  private:
    std::string suffix_;
};

// <0xAB> tokens become bytes; runs of them that are valid UTF-8 become that text, others one
// U+FFFD per byte.
class ByteFallbackDec : public Decoder {
  public:
    void decode_chain(std::vector<std::string>& t) const override {
        std::vector<std::string> out;
        std::string bytes;
        std::size_t n_bytes = 0;
        auto flush = [&] {
            if (n_bytes == 0)
                return;
            if (utf8_valid(bytes)) {
                out.push_back(bytes);
            } else {
                for (std::size_t k = 0; k < n_bytes; ++k)
                    out.push_back("\xEF\xBF\xBD");
            }
            bytes.clear();
            n_bytes = 0;
        };
        for (auto& s : t) {
            int b = parse_byte(s);
            if (b >= 0) {
                bytes.push_back(char(b));
                ++n_bytes;
                continue;
            }
            flush();
            out.push_back(std::move(s));
        }
        flush();
        t = std::move(out);
    }

  private:
    static int parse_byte(const std::string& s) {
        if (s.size() != 6 || s.compare(0, 3, "<0x") != 0 || s[5] != '>')
            return -1;
        int v = 0;
        for (int k = 3; k < 5; ++k) {
            char c = s[std::size_t(k)];
            int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                                   : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
            if (d < 0)
                return -1;
            v = v * 16 + d;
        }
        return v;
    }
};

class FuseDec : public Decoder {
  public:
    void decode_chain(std::vector<std::string>& t) const override {
        std::string out;
        for (const auto& s : t)
            out += s;
        t.assign(1, std::move(out));
    }
};

// Removes up to `start` leading and `stop` trailing characters equal to `content` per token.
class StripDec : public Decoder {
  public:
    StripDec(std::string content, std::size_t start, std::size_t stop)
        : content_(std::move(content)), start_(start), stop_(stop) {}
    void decode_chain(std::vector<std::string>& t) const override {
        if (content_.empty())
            return;
        for (auto& s : t) {
            std::size_t b = 0;
            for (std::size_t k = 0; k < start_ && s.compare(b, content_.size(), content_) == 0; ++k)
                b += content_.size();
            std::size_t e = s.size();
            for (std::size_t k = 0; k < stop_ && e >= b + content_.size() &&
                                    s.compare(e - content_.size(), content_.size(), content_) == 0;
                 ++k)
                e -= content_.size();
            s = s.substr(b, e - b);
        }
    }

  private:
    std::string content_;
    std::size_t start_, stop_;
};

class ReplaceDec : public Decoder {
  public:
    ReplaceDec(std::string pattern, bool is_regex, std::string content, std::string_view origin)
        : literal_(is_regex ? "" : pattern), content_(std::move(content)) {
        if (is_regex)
            re_ = std::make_unique<Regex>(pattern, origin);
    }
    void decode_chain(std::vector<std::string>& t) const override {
        for (auto& s : t) {
            if (!re_) {
                replace_all(s, literal_, content_);
                continue;
            }
            std::string out;
            std::size_t last = 0;
            std::string_view v = s;
            re_->for_each_match(v, [&](std::size_t b, std::size_t e) {
                out.append(v.substr(last, b - last));
                out += content_;
                last = e;
            });
            out.append(v.substr(last));
            s = std::move(out);
        }
    }

  private:
    std::unique_ptr<Regex> re_;
    std::string literal_, content_;
};

class CtcDec : public Decoder {
  public:
    CtcDec(std::string pad, std::string delim, bool clean)
        : pad_(std::move(pad)), delim_(std::move(delim)), clean_(clean) {}
    void decode_chain(std::vector<std::string>& t) const override {
        std::vector<std::string> out;
        for (std::size_t i = 0; i < t.size(); ++i) {
            if (i > 0 && t[i] == t[i - 1])
                continue;
            std::string s = t[i];
            replace_all(s, pad_, "");
            if (clean_) {
                s = cleanup(std::move(s));
                replace_all(s, delim_, " ");
            }
            if (!s.empty())
                out.push_back(std::move(s));
        }
        t = std::move(out);
    }

  private:
    std::string pad_, delim_;
    bool clean_;
};

class SequenceDec : public Decoder {
  public:
    explicit SequenceDec(std::vector<std::unique_ptr<Decoder>> steps) : steps_(std::move(steps)) {}
    void decode_chain(std::vector<std::string>& t) const override {
        for (const auto& d : steps_)
            d->decode_chain(t);
    }

  private:
    std::vector<std::unique_ptr<Decoder>> steps_;
};

} // namespace

bool is_byte_level_decoder(const nlohmann::json& j) {
    if (!j.is_object())
        return false;
    auto t = j.value("type", std::string());
    if (t == "ByteLevel")
        return true;
    if (t == "Sequence" && j.contains("decoders") && j["decoders"].is_array() &&
        j["decoders"].size() == 1)
        return is_byte_level_decoder(j["decoders"][0]);
    return false;
}

std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j, std::string_view origin,
                                      bool surfaces_are_bytes) {
    const std::string where = "decoder";
    std::string type = json_type(j, origin, where);
    if (type == "Sequence") {
        const auto& arr = json_at(j, "decoders", origin, where);
        if (!arr.is_array())
            json_fail(origin, where, "Sequence.decoders must be an array");
        std::vector<std::unique_ptr<Decoder>> steps;
        for (const auto& s : arr)
            steps.push_back(make_decoder(s, origin, surfaces_are_bytes));
        return std::make_unique<SequenceDec>(std::move(steps));
    }
    if (type == "ByteLevel")
        return std::make_unique<ByteLevelDec>(surfaces_are_bytes);
    if (type == "Metaspace") {
        std::string repl = json_string_or(j, "replacement", "\xE2\x96\x81", origin, where);
        bool strip = true;
        if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string())
            strip = j["prepend_scheme"] != "never";
        else
            strip = json_bool_or(j, "add_prefix_space", true, origin, where);
        return std::make_unique<MetaspaceDec>(repl, strip);
    }
    if (type == "WordPiece")
        return std::make_unique<WordPieceDec>(json_string_or(j, "prefix", "##", origin, where),
                                              json_bool_or(j, "cleanup", true, origin, where));
    if (type == "BPEDecoder")
        return std::make_unique<BpeDec>(json_string_or(j, "suffix", "</w>", origin, where));
    if (type == "ByteFallback")
        return std::make_unique<ByteFallbackDec>();
    if (type == "Fuse")
        return std::make_unique<FuseDec>();
    if (type == "Strip")
        return std::make_unique<StripDec>(json_string_or(j, "content", " ", origin, where),
                                          std::size_t(json_int_or(j, "start", 0, origin, where)),
                                          std::size_t(json_int_or(j, "stop", 0, origin, where)));
    if (type == "Replace") {
        bool is_regex = false;
        std::string pat = json_pattern(json_at(j, "pattern", origin, where), origin, where, is_regex);
        return std::make_unique<ReplaceDec>(pat, is_regex, json_string(j, "content", origin, where), origin);
    }
    if (type == "CTC")
        return std::make_unique<CtcDec>(json_string_or(j, "pad_token", "<pad>", origin, where),
                                        json_string_or(j, "word_delimiter_token", "|", origin, where),
                                        json_bool_or(j, "cleanup", true, origin, where));
    json_fail(origin, where, "unsupported decoder type \"" + type + "\"");
}

} // namespace forge::tok
