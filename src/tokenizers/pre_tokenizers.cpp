// HF pre-tokenizers (see pre_tokenizers.h). Pieces are views into the input where possible;
// pre-tokenizers that change text (ByteLevel's prefix space, Metaspace) store new strings.
#include "pre_tokenizers.h"

#include <nlohmann/json.hpp>

#include "json_util.h"
#include "unicode.h"

namespace forge::tok {

std::string regex_escape(std::string_view s) {
    std::string out;
    for (char c : s) {
        if (std::string_view("\\^$.|?*+()[]{}-/").find(c) != std::string_view::npos)
            out += '\\';
        out += c;
    }
    return out;
}

std::string json_pattern(const nlohmann::json& j, std::string_view origin, std::string_view where,
                         bool& is_regex) {
    if (j.is_object() && j.contains("String") && j["String"].is_string()) {
        is_regex = false;
        return j["String"].get<std::string>();
    }
    if (j.is_object() && j.contains("Regex") && j["Regex"].is_string()) {
        is_regex = true;
        return j["Regex"].get<std::string>();
    }
    json_fail(origin, where, "pattern must be {\"String\": ...} or {\"Regex\": ...}");
}

namespace {

struct Segment {
    std::size_t b, e;
    bool delim;
};

// Applies HF's SplitDelimiterBehavior to segments covering one piece.
void apply_behavior(std::string_view piece, const std::vector<Segment>& segs, SplitBehavior beh,
                    std::vector<std::string_view>& out) {
    auto emit = [&](std::size_t b, std::size_t e) {
        if (e > b)
            out.push_back(piece.substr(b, e - b));
    };
    switch (beh) {
    case SplitBehavior::removed:
        for (const auto& s : segs)
            if (!s.delim)
                emit(s.b, s.e);
        break;
    case SplitBehavior::isolated:
        for (const auto& s : segs)
            emit(s.b, s.e);
        break;
    case SplitBehavior::merged_with_previous: {
        std::size_t start = 0;
        bool open = false;
        for (const auto& s : segs) {
            if (s.delim) {
                emit(start, s.e);
                start = s.e;
                open = false;
            } else {
                if (open)
                    emit(start, s.b);
                start = s.b;
                open = true;
            }
        }
        if (open)
            emit(start, segs.back().e);
        break;
    }
    case SplitBehavior::merged_with_next: {
        std::size_t start = 0;
        bool pending_delim = false;
        for (const auto& s : segs) {
            if (s.delim) {
                if (pending_delim)
                    emit(start, s.b);
                start = s.b;
                pending_delim = true;
            } else {
                if (!pending_delim)
                    start = s.b;
                emit(start, s.e);
                pending_delim = false;
            }
        }
        if (pending_delim)
            emit(start, segs.back().e);
        break;
    }
    case SplitBehavior::contiguous: {
        std::size_t i = 0;
        while (i < segs.size()) {
            if (!segs[i].delim) {
                emit(segs[i].b, segs[i].e);
                ++i;
                continue;
            }
            std::size_t b = segs[i].b, e = segs[i].e;
            while (i + 1 < segs.size() && segs[i + 1].delim)
                e = segs[++i].e;
            emit(b, e);
            ++i;
        }
        break;
    }
    }
}

// Splits every piece of `in` with `f(piece, out_views)`, keeping storage alive.
template <typename F> void split_each(const Pieces& in, Pieces& out, F&& f) {
    out.views.clear();
    for (const auto& v : in.views)
        f(v, out.views);
}

void move_storage(const Pieces& in, Pieces& out) {
    out.text_start = in.text_start;
    auto& src = const_cast<Pieces&>(in).storage;
    for (auto& s : src)
        out.storage.push_back(std::move(s));
    src.clear();
}

class RegexPieces : public PreTokenizer {
  public:
    RegexPieces(const std::string& pattern, std::string_view origin) : re_(pattern, origin) {}
    bool split_views(std::string_view text, std::vector<std::string_view>& out) const override {
        out.clear();
        re_.for_each_match(text, [&](std::size_t b, std::size_t e) {
            out.push_back(text.substr(b, e - b));
        });
        return true;
    }
    void split(const Pieces& in, Pieces& out) const override {
        split_each(in, out, [&](std::string_view p, std::vector<std::string_view>& o) {
            re_.for_each_match(p, [&](std::size_t b, std::size_t e) { o.push_back(p.substr(b, e - b)); });
        });
        move_storage(in, out);
    }

  private:
    Regex re_;
};

// Split / Whitespace: regex or literal with a behavior and invert.
class SplitPre : public PreTokenizer {
  public:
    SplitPre(std::string pattern, bool is_regex, SplitBehavior beh, bool invert, std::string_view origin,
             RegexFlavor flavor = RegexFlavor::onig)
        : literal_(is_regex ? "" : pattern), beh_(beh), invert_(invert) {
        if (is_regex)
            re_ = std::make_unique<Regex>(pattern, origin, flavor);
    }
    void split_one(std::string_view p, std::vector<std::string_view>& out) const {
        std::vector<Segment> segs;
        std::size_t last = 0;
        auto on_match = [&](std::size_t b, std::size_t e) {
            if (b > last)
                segs.push_back({last, b, invert_});
            segs.push_back({b, e, !invert_});
            last = e;
        };
        if (re_) {
            re_->for_each_match(p, on_match);
        } else if (!literal_.empty()) {
            std::size_t pos = 0;
            while ((pos = p.find(literal_, pos)) != std::string_view::npos) {
                on_match(pos, pos + literal_.size());
                pos += literal_.size();
            }
        }
        if (last < p.size())
            segs.push_back({last, p.size(), invert_});
        if (!segs.empty())
            apply_behavior(p, segs, beh_, out);
    }
    bool split_views(std::string_view text, std::vector<std::string_view>& out) const override {
        out.clear();
        split_one(text, out);
        return true;
    }
    void split(const Pieces& in, Pieces& out) const override {
        split_each(in, out, [&](std::string_view p, std::vector<std::string_view>& o) { split_one(p, o); });
        move_storage(in, out);
    }

  private:
    std::unique_ptr<Regex> re_;
    std::string literal_;
    SplitBehavior beh_;
    bool invert_;
};

// Splits on characters chosen by a predicate (whitespace, punctuation, digits, a delimiter).
template <typename Pred> class CharSplit : public PreTokenizer {
  public:
    CharSplit(Pred pred, SplitBehavior beh) : pred_(pred), beh_(beh) {}
    void split_one(std::string_view p, std::vector<std::string_view>& out) const {
        std::vector<Segment> segs;
        std::size_t i = 0;
        while (i < p.size()) {
            std::size_t b = i;
            char32_t cp = utf8_next(p, i);
            bool d = pred_(cp);
            // Non-delimiters merge into runs; delimiters stay one character each.
            if (!d && !segs.empty() && !segs.back().delim && segs.back().e == b)
                segs.back().e = i;
            else
                segs.push_back({b, i, d});
        }
        if (!segs.empty())
            apply_behavior(p, segs, beh_, out);
    }
    bool split_views(std::string_view text, std::vector<std::string_view>& out) const override {
        out.clear();
        split_one(text, out);
        return true;
    }
    void split(const Pieces& in, Pieces& out) const override {
        split_each(in, out, [&](std::string_view p, std::vector<std::string_view>& o) { split_one(p, o); });
        move_storage(in, out);
    }

  private:
    Pred pred_;
    SplitBehavior beh_;
};
template <typename Pred> std::unique_ptr<PreTokenizer> char_split(Pred p, SplitBehavior b) {
    return std::make_unique<CharSplit<Pred>>(p, b);
}

class ByteLevelPre : public PreTokenizer {
  public:
    ByteLevelPre(bool add_prefix_space, bool use_regex, std::string_view origin)
        : add_prefix_space_(add_prefix_space) {
        if (use_regex)
            re_ = std::make_unique<Regex>(kGpt2Pattern, origin);
    }
    bool split_views(std::string_view text, std::vector<std::string_view>& out) const override {
        if (add_prefix_space_)
            return false;
        out.clear();
        if (!re_) {
            if (!text.empty())
                out.push_back(text);
            return true;
        }
        re_->for_each_match(text, [&](std::size_t b, std::size_t e) { out.push_back(text.substr(b, e - b)); });
        return true;
    }
    void split(const Pieces& in, Pieces& out) const override {
        out.views.clear();
        move_storage(in, out);
        for (std::string_view p : in.views) {
            if (p.empty())
                continue;
            if (add_prefix_space_ && p[0] != ' ')
                p = out.own(" " + std::string(p));
            if (!re_) {
                if (!p.empty())
                    out.views.push_back(p);
                continue;
            }
            re_->for_each_match(p, [&](std::size_t b, std::size_t e) { out.views.push_back(p.substr(b, e - b)); });
        }
    }

  private:
    bool add_prefix_space_;
    std::unique_ptr<Regex> re_;
};

class MetaspacePre : public PreTokenizer {
  public:
    enum class Prepend { always, first, never };
    MetaspacePre(std::string replacement, Prepend prepend, bool split)
        : repl_(std::move(replacement)), prepend_(prepend), split_(split) {}
    void split(const Pieces& in, Pieces& out) const override {
        out.views.clear();
        move_storage(in, out);
        for (std::string_view p : in.views) {
            if (p.empty())
                continue;
            bool first = in.text_start && p.data() == in.text_start;
            std::string s;
            s.reserve(p.size() + 4);
            for (char c : p) {
                if (c == ' ')
                    s += repl_;
                else
                    s += c;
            }
            bool add = prepend_ == Prepend::always || (prepend_ == Prepend::first && first);
            if (add && s.compare(0, repl_.size(), repl_) != 0)
                s = repl_ + s;
            std::string_view v = out.own(std::move(s));
            if (first)
                out.text_start = v.data();
            if (!split_) {
                if (!v.empty())
                    out.views.push_back(v);
                continue;
            }
            // Split with MergedWithNext on the replacement character.
            std::size_t start = 0, pos = 0;
            while ((pos = v.find(repl_, pos)) != std::string_view::npos) {
                if (pos > start)
                    out.views.push_back(v.substr(start, pos - start));
                start = pos;
                pos += repl_.size();
            }
            if (start < v.size())
                out.views.push_back(v.substr(start));
        }
    }

  private:
    std::string repl_;
    Prepend prepend_;
    bool split_;
};

class SequencePre : public PreTokenizer {
  public:
    explicit SequencePre(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {}
    bool split_views(std::string_view text, std::vector<std::string_view>& out) const override {
        if (steps_.size() == 1)
            return steps_[0]->split_views(text, out);
        return false;
    }
    void split(const Pieces& in, Pieces& out) const override {
        Pieces cur;
        cur.views = in.views;
        move_storage(in, cur);
        for (const auto& s : steps_) {
            Pieces next;
            s->split(cur, next);
            cur = std::move(next);
        }
        out = std::move(cur);
    }

  private:
    std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

SplitBehavior parse_behavior(const nlohmann::json& j, std::string_view origin, std::string_view where) {
    std::string b = json_string_or(j, "behavior", "Isolated", origin, where);
    if (b == "Removed")
        return SplitBehavior::removed;
    if (b == "Isolated")
        return SplitBehavior::isolated;
    if (b == "MergedWithPrevious")
        return SplitBehavior::merged_with_previous;
    if (b == "MergedWithNext")
        return SplitBehavior::merged_with_next;
    if (b == "Contiguous")
        return SplitBehavior::contiguous;
    json_fail(origin, where, "unknown split behavior \"" + b + "\"");
}

} // namespace

std::unique_ptr<PreTokenizer> make_regex_pieces(const std::string& pattern, std::string_view origin) {
    return std::make_unique<RegexPieces>(pattern, origin);
}

bool has_byte_level(const nlohmann::json& j) {
    if (!j.is_object())
        return false;
    auto t = j.value("type", std::string());
    if (t == "ByteLevel")
        return true;
    if (t == "Sequence" && j.contains("pretokenizers") && j["pretokenizers"].is_array())
        for (const auto& s : j["pretokenizers"])
            if (has_byte_level(s))
                return true;
    return false;
}

std::string byte_level_split_pattern(const nlohmann::json& j) {
    auto is = [](const nlohmann::json& o, const char* type) {
        return o.is_object() && o.value("type", std::string()) == type;
    };
    auto flag = [](const nlohmann::json& o, const char* key, bool dflt) {
        return o.contains(key) && o[key].is_boolean() ? o[key].get<bool>() : dflt;
    };
    if (is(j, "ByteLevel"))
        return flag(j, "use_regex", true) && !flag(j, "add_prefix_space", true) ? kGpt2Pattern : "";
    if (!is(j, "Sequence") || !j.contains("pretokenizers") || !j["pretokenizers"].is_array() ||
        j["pretokenizers"].size() != 2)
        return "";
    const auto& split = j["pretokenizers"][0];
    const auto& bl = j["pretokenizers"][1];
    if (!is(split, "Split") || !is(bl, "ByteLevel") || flag(bl, "use_regex", true) ||
        flag(bl, "add_prefix_space", true) || flag(split, "invert", false) ||
        split.value("behavior", std::string()) != "Isolated" || !split.contains("pattern") ||
        !split["pattern"].is_object() || !split["pattern"].contains("Regex") ||
        !split["pattern"]["Regex"].is_string())
        return "";
    return split["pattern"]["Regex"].get<std::string>();
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& j, std::string_view origin) {
    const std::string where = "pre_tokenizer";
    std::string type = json_type(j, origin, where);
    if (type == "Sequence") {
        const auto& arr = json_at(j, "pretokenizers", origin, where);
        if (!arr.is_array())
            json_fail(origin, where, "Sequence.pretokenizers must be an array");
        std::vector<std::unique_ptr<PreTokenizer>> steps;
        for (const auto& s : arr)
            steps.push_back(make_pre_tokenizer(s, origin));
        return std::make_unique<SequencePre>(std::move(steps));
    }
    if (type == "ByteLevel")
        return std::make_unique<ByteLevelPre>(json_bool_or(j, "add_prefix_space", true, origin, where),
                                              json_bool_or(j, "use_regex", true, origin, where), origin);
    if (type == "Split") {
        bool is_regex = false;
        std::string pat = json_pattern(json_at(j, "pattern", origin, where), origin, where, is_regex);
        return std::make_unique<SplitPre>(pat, is_regex, parse_behavior(j, origin, where),
                                          json_bool_or(j, "invert", false, origin, where), origin);
    }
    if (type == "Whitespace")
        return std::make_unique<SplitPre>(R"(\w+|[^\w\s]+)", true, SplitBehavior::removed, true, origin,
                                          RegexFlavor::rust);
    if (type == "WhitespaceSplit")
        return char_split([](char32_t c) { return is_whitespace(c); }, SplitBehavior::removed);
    if (type == "BertPreTokenizer") {
        std::vector<std::unique_ptr<PreTokenizer>> steps;
        steps.push_back(char_split([](char32_t c) { return is_whitespace(c); }, SplitBehavior::removed));
        steps.push_back(char_split([](char32_t c) { return is_punctuation(c); }, SplitBehavior::isolated));
        return std::make_unique<SequencePre>(std::move(steps));
    }
    if (type == "Punctuation")
        return char_split([](char32_t c) { return is_punctuation(c); }, parse_behavior(j, origin, where));
    if (type == "Digits") {
        if (json_bool_or(j, "individual_digits", false, origin, where))
            return char_split([](char32_t c) { return is_digit(c); }, SplitBehavior::isolated);
        return char_split([](char32_t c) { return is_digit(c); }, SplitBehavior::contiguous);
    }
    if (type == "CharDelimiterSplit") {
        std::string d = json_string(j, "delimiter", origin, where);
        std::size_t i = 0;
        if (d.empty() || utf8_char_len(d, 0) != d.size())
            json_fail(origin, where, "CharDelimiterSplit.delimiter must be one character");
        char32_t dc = utf8_next(d, i);
        return char_split([dc](char32_t c) { return c == dc; }, SplitBehavior::removed);
    }
    if (type == "Metaspace") {
        std::string repl = json_string_or(j, "replacement", "\xE2\x96\x81", origin, where);
        MetaspacePre::Prepend prep = MetaspacePre::Prepend::always;
        if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) {
            std::string s = j["prepend_scheme"];
            if (s == "first")
                prep = MetaspacePre::Prepend::first;
            else if (s == "never")
                prep = MetaspacePre::Prepend::never;
            else if (s != "always")
                json_fail(origin, where, "Metaspace.prepend_scheme must be always, first or never");
        } else if (!json_bool_or(j, "add_prefix_space", true, origin, where)) {
            prep = MetaspacePre::Prepend::never;
        }
        return std::make_unique<MetaspacePre>(repl, prep, json_bool_or(j, "split", true, origin, where));
    }
    json_fail(origin, where, "unsupported pre_tokenizer type \"" + type + "\"");
}

} // namespace forge::tok
