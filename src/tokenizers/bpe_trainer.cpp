// Byte-level BPE training: count regex-split words over threads, then merge pairs incrementally
// (a lazy max-heap of pairs, each holding the words it occurs in), and write HF tokenizer.json.
// Encoding with the result is Tokenizer's job, not this file's.
#include <forge/tokenizers/bpe_trainer.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <queue>
#include <sstream>
#include <thread>
#include <unordered_map>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <nlohmann/json.hpp>
#include <pcre2.h>

#include <forge/core/error.h>

namespace forge {
namespace {

// GPT-2's reversible byte -> printable code point map: bytes that are printable Latin-1 map to
// themselves, the others to 256, 257, ... in byte order.
struct ByteLevelMap {
    char32_t code_point[256];
    std::string utf8[256];
    ByteLevelMap() {
        int next = 256;
        for (int b = 0; b < 256; ++b) {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
            code_point[b] = static_cast<char32_t>(printable ? b : next++);
            char32_t cp = code_point[b];
            std::string s;
            if (cp < 0x80) {
                s.push_back(static_cast<char>(cp));
            } else { // every code point here is below 0x800: two bytes
                s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
                s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
            }
            utf8[b] = std::move(s);
        }
    }
};

const ByteLevelMap& byte_level() {
    static const ByteLevelMap map;
    return map;
}

std::string to_byte_level(std::string_view raw) {
    const auto& map = byte_level();
    std::string out;
    out.reserve(raw.size() * 2);
    for (unsigned char c : raw)
        out += map.utf8[c];
    return out;
}

// Returns the offset of the first invalid UTF-8 sequence, or npos. Rejects overlong forms,
// surrogates and code points above U+10FFFF, as PCRE2 would.
std::size_t find_invalid_utf8(std::string_view s) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    std::size_t n = s.size(), i = 0;
    while (i < n) {
        unsigned char c = p[i];
        if (c < 0x80) {
            ++i;
            continue;
        }
        std::size_t len;
        char32_t cp, min;
        if ((c & 0xE0) == 0xC0) {
            len = 2, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return i;
        }
        if (i + len > n)
            return i;
        for (std::size_t k = 1; k < len; ++k) {
            if ((p[i + k] & 0xC0) != 0x80)
                return i;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return i;
        i += len;
    }
    return std::string_view::npos;
}

// A compiled PCRE2 pattern (JIT when available), shared by threads; each thread brings its own
// Matcher (match data).
class Regex {
  public:
    explicit Regex(const std::string& pattern) {
        int err = 0;
        PCRE2_SIZE err_offset = 0;
        code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                              PCRE2_UTF | PCRE2_UCP, &err, &err_offset, nullptr);
        if (!code_) {
            PCRE2_UCHAR buf[256];
            pcre2_get_error_message(err, buf, sizeof buf);
            throw InvalidArgument(
                detail::str_cat("[bpe_trainer] bad pre-tokenizer regex at offset ", err_offset,
                                ": ", reinterpret_cast<char*>(buf)));
        }
        jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
    }
    ~Regex() { pcre2_code_free(code_); }
    Regex(const Regex&) = delete;
    Regex& operator=(const Regex&) = delete;

    class Matcher {
      public:
        explicit Matcher(const Regex& re)
            : re_(re), data_(pcre2_match_data_create_from_pattern(re.code_, nullptr)) {
            FORGE_ASSERT(data_ != nullptr);
        }
        ~Matcher() { pcre2_match_data_free(data_); }
        Matcher(const Matcher&) = delete;
        Matcher& operator=(const Matcher&) = delete;

        // Calls piece(std::string_view) for every match of `text` and every stretch between
        // matches (HF's "isolated" split), in order. `text` must be valid UTF-8.
        template <typename F> void split(std::string_view text, F&& piece) {
            auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
            std::size_t pos = 0, n = text.size();
            while (pos < n) {
                int rc = re_.jit_ ? pcre2_jit_match(re_.code_, subject, n, pos, 0, data_, nullptr)
                                  : pcre2_match(re_.code_, subject, n, pos, PCRE2_NO_UTF_CHECK,
                                                data_, nullptr);
                if (rc == PCRE2_ERROR_NOMATCH)
                    break;
                if (rc < 0) {
                    PCRE2_UCHAR buf[256];
                    pcre2_get_error_message(rc, buf, sizeof buf);
                    throw InvalidArgument(detail::str_cat("[bpe_trainer] regex match failed: ",
                                                          reinterpret_cast<char*>(buf)));
                }
                PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data_);
                std::size_t start = ov[0], end = ov[1];
                if (end == start) { // an empty match: step over one character, keep it unsplit
                    end = start + 1;
                    while (end < n && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80)
                        ++end;
                    if (start > pos)
                        piece(text.substr(pos, start - pos));
                    piece(text.substr(start, end - start));
                    pos = end;
                    continue;
                }
                if (start > pos)
                    piece(text.substr(pos, start - pos));
                piece(text.substr(start, end - start));
                pos = end;
            }
            if (pos < n)
                piece(text.substr(pos));
        }

      private:
        const Regex& re_;
        pcre2_match_data* data_;
    };

  private:
    pcre2_code* code_ = nullptr;
    bool jit_ = false;
};

// The tokenizers' invalid UTF-8 policy: a byte that is not part of a valid character is a piece
// of its own (byte-level BPE encodes it as that byte); the valid runs around it are regex-split.
template <typename F> void split_valid(Regex::Matcher& matcher, std::string_view text, F&& piece) {
    while (!text.empty()) {
        std::size_t bad = find_invalid_utf8(text);
        if (bad == std::string_view::npos) {
            matcher.split(text, piece);
            return;
        }
        if (bad > 0)
            matcher.split(text.substr(0, bad), piece);
        piece(text.substr(bad, 1));
        text.remove_prefix(bad + 1);
    }
}

using WordCounts = std::unordered_map<std::string, std::uint64_t>;

// Whether the text may be cut just after the '\n' before index i without changing what the
// regex sees: always when lines are split on their own, else only where that '\n' sits between
// two ASCII non-space characters (no match, and no lookahead, of the GPT-2, cl100k or o200k
// patterns then reaches across it).
bool is_cut_point(std::string_view text, std::size_t i, bool split_lines) {
    if (split_lines || i >= text.size())
        return true;
    auto solid = [](unsigned char c) { return c > ' ' && c < 0x7F; };
    return i >= 2 && solid(static_cast<unsigned char>(text[i - 2])) &&
           solid(static_cast<unsigned char>(text[i]));
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// One word during training: its symbols (token ids) and how often it occurs.
struct Word {
    std::vector<std::uint32_t> symbols;
    std::uint64_t count;
};

using PairKey = std::uint64_t; // (left << 32) | right: orders like the (left, right) tuple
PairKey pair_key(std::uint32_t a, std::uint32_t b) {
    return (PairKey(a) << 32) | b;
}

struct HeapEntry {
    std::uint64_t count;
    PairKey pair;
    std::uint32_t where; // index into the list of word-index lists
};
// Max-heap order: higher count first, then the smaller pair (HF tokenizers' tie rule).
struct HeapLess {
    bool operator()(const HeapEntry& x, const HeapEntry& y) const {
        if (x.count != y.count)
            return x.count < y.count;
        return x.pair > y.pair;
    }
};

struct PairChange {
    PairKey pair;
    int delta;
};

// Replaces every non-overlapping (a, b), left to right, by `merged`, and records how the counts
// of neighbouring pairs change (per occurrence; the caller weights them by the word count).
void merge_word(std::vector<std::uint32_t>& s, std::uint32_t a, std::uint32_t b,
                std::uint32_t merged, std::vector<PairChange>& changes) {
    std::size_t out = 0, n = s.size();
    for (std::size_t i = 0; i < n;) {
        if (i + 1 < n && s[i] == a && s[i + 1] == b) {
            if (out > 0) {
                changes.push_back({pair_key(s[out - 1], a), -1});
                changes.push_back({pair_key(s[out - 1], merged), +1});
            }
            if (i + 2 < n) {
                changes.push_back({pair_key(b, s[i + 2]), -1});
                changes.push_back({pair_key(merged, s[i + 2]), +1});
            }
            s[out++] = merged;
            i += 2;
        } else {
            s[out++] = s[i++];
        }
    }
    s.resize(out);
}

} // namespace

struct BpeTrainer::Impl {
    BpeTrainerOptions opts;
    BpeTrainerStats stats;
    std::unique_ptr<Regex> regex;
    WordCounts counts;

    void count_text(std::string_view text);
};

BpeTrainer::BpeTrainer(BpeTrainerOptions opts) : impl_(std::make_unique<Impl>()) {
    if (opts.pattern.empty())
        opts.pattern = std::string(BpeTrainerOptions::kGpt2Pattern);
    for (std::size_t i = 0; i < opts.special_tokens.size(); ++i) {
        const auto& sp = opts.special_tokens[i];
        FORGE_CHECK(!sp.empty(), "[bpe_trainer] special token ", i, " is empty");
        FORGE_CHECK(find_invalid_utf8(sp) == std::string_view::npos, "[bpe_trainer] special token ",
                    i, " is not valid UTF-8");
        for (std::size_t j = 0; j < i; ++j)
            FORGE_CHECK(opts.special_tokens[j] != sp, "[bpe_trainer] special token '", sp,
                        "' is listed twice");
    }
    std::size_t n_alphabet = opts.full_byte_alphabet ? 256 : 1;
    FORGE_CHECK(opts.vocab_size >= opts.special_tokens.size() + n_alphabet,
                "[bpe_trainer] vocab_size ", opts.vocab_size, " is smaller than the ",
                opts.special_tokens.size(), " special tokens plus ",
                opts.full_byte_alphabet ? "the 256 byte symbols" : "one byte symbol");
    FORGE_CHECK(opts.vocab_size <= 0xFFFFFFF0u, "[bpe_trainer] vocab_size ", opts.vocab_size,
                " is too large");
    FORGE_CHECK(opts.n_threads >= 0, "[bpe_trainer] n_threads must be >= 0, got ", opts.n_threads);
    impl_->regex = std::make_unique<Regex>(opts.pattern);
    impl_->opts = std::move(opts);
}

BpeTrainer::~BpeTrainer() = default;
BpeTrainer::BpeTrainer(BpeTrainer&&) noexcept = default;
BpeTrainer& BpeTrainer::operator=(BpeTrainer&&) noexcept = default;

const BpeTrainerOptions& BpeTrainer::options() const {
    return impl_->opts;
}
const BpeTrainerStats& BpeTrainer::stats() const {
    return impl_->stats;
}

void BpeTrainer::add_text(std::string_view text) {
    auto t0 = std::chrono::steady_clock::now();
    impl_->count_text(text);
    impl_->stats.n_bytes += text.size();
    impl_->stats.count_seconds += seconds_since(t0);
}

void BpeTrainer::Impl::count_text(std::string_view text) {
    // 1. Cut out special tokens (leftmost occurrence first, the longest at equal positions).
    std::vector<std::string_view> spans;
    if (opts.special_tokens.empty()) {
        spans.push_back(text);
    } else {
        std::size_t pos = 0;
        while (pos < text.size()) {
            std::size_t best = std::string_view::npos, best_len = 0;
            for (const auto& sp : opts.special_tokens) {
                std::size_t at = text.find(sp, pos);
                if (at < best ||
                    (at == best && at != std::string_view::npos && sp.size() > best_len)) {
                    best = at;
                    best_len = sp.size();
                }
            }
            if (best == std::string_view::npos) {
                spans.push_back(text.substr(pos));
                break;
            }
            if (best > pos)
                spans.push_back(text.substr(pos, best - pos));
            pos = best + best_len;
        }
    }

    // 2. Cut the spans into chunks of about equal size at safe points, one batch per thread.
    unsigned n_threads = opts.n_threads > 0 ? static_cast<unsigned>(opts.n_threads)
                                            : std::max(1u, std::thread::hardware_concurrency());
    const std::size_t target = std::max<std::size_t>(1 << 16, text.size() / (n_threads * 4) + 1);
    std::vector<std::string_view> chunks;
    for (auto span : spans) {
        std::size_t start = 0;
        while (start < span.size()) {
            std::size_t end = span.size();
            for (std::size_t from = start + target - 1; from < span.size();) {
                std::size_t nl = span.find('\n', from);
                if (nl == std::string_view::npos)
                    break;
                if (is_cut_point(span, nl + 1, opts.split_lines)) {
                    end = nl + 1;
                    break;
                }
                from = nl + 1;
            }
            chunks.push_back(span.substr(start, end - start));
            start = end;
        }
    }
    n_threads = static_cast<unsigned>(std::min<std::size_t>(n_threads, chunks.size()));
    if (n_threads == 0)
        return;

    // 3. Each thread counts its chunks into a map of views into `text`.
    std::vector<std::unordered_map<std::string_view, std::uint64_t>> local(n_threads);
    std::vector<std::uint64_t> n_words(n_threads, 0);
    std::vector<std::exception_ptr> errors(n_threads);
    auto work = [&](unsigned t) {
        try {
            Regex::Matcher matcher(*regex);
            auto& map = local[t];
            std::uint64_t n = 0;
            auto piece = [&](std::string_view w) {
                ++map[w];
                ++n;
            };
            for (std::size_t c = t; c < chunks.size(); c += n_threads) {
                std::string_view chunk = chunks[c];
                if (!opts.split_lines) {
                    split_valid(matcher, chunk, piece);
                    continue;
                }
                std::size_t pos = 0;
                while (pos < chunk.size()) {
                    std::size_t nl = chunk.find('\n', pos);
                    std::size_t end = nl == std::string_view::npos ? chunk.size() : nl + 1;
                    split_valid(matcher, chunk.substr(pos, end - pos), piece);
                    pos = end;
                }
            }
            n_words[t] = n;
        } catch (...) {
            errors[t] = std::current_exception();
        }
    };
    if (n_threads == 1) {
        work(0);
    } else {
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < n_threads; ++t)
            threads.emplace_back(work, t);
        for (auto& th : threads)
            th.join();
    }
    for (auto& e : errors)
        if (e)
            std::rethrow_exception(e);
    for (unsigned t = 0; t < n_threads; ++t) {
        for (const auto& [w, c] : local[t])
            counts[std::string(w)] += c;
        stats.n_words += n_words[t];
    }
    stats.n_unique_words = counts.size();
}

void BpeTrainer::add_path(const std::filesystem::path& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    auto st = fs::status(path, ec);
    if (ec || !fs::exists(st))
        throw NotFound("[bpe_trainer] no such file or folder: " + path.string());
    std::vector<fs::path> files;
    if (fs::is_directory(st)) {
        for (auto it = fs::recursive_directory_iterator(
                 path, fs::directory_options::follow_directory_symlink, ec);
             !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
            if (it->is_regular_file())
                files.push_back(it->path());
        }
        FORGE_CHECK(!ec, "[bpe_trainer] cannot list folder ", path.string(), ": ", ec.message());
        std::sort(files.begin(), files.end());
    } else {
        files.push_back(path);
    }
    for (const auto& f : files) {
        std::ifstream in(f, std::ios::binary);
        FORGE_CHECK(in, "[bpe_trainer] cannot open ", f.string());
        std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        FORGE_CHECK(!in.bad(), "[bpe_trainer] cannot read ", f.string());
        try {
            add_text(text);
        } catch (const InvalidArgument& e) {
            throw InvalidArgument(f.string() + ": " + e.what());
        }
    }
}

TrainedBpe BpeTrainer::train() {
    auto t0 = std::chrono::steady_clock::now();
    const auto& opts = impl_->opts;
    const auto& map = byte_level();

    // Vocabulary: special tokens, then the byte alphabet ordered by mapped code point (as HF
    // sorts its alphabet), then merges. `key` is the tokenizer.json spelling, used to spot a merge
    // that spells an existing token (HF then reuses that id).
    TrainedBpe out;
    out.pattern = opts.pattern;
    out.special_tokens = opts.special_tokens;
    std::vector<std::string> keys;
    std::unordered_map<std::string, std::uint32_t> key_to_id;
    auto add_token = [&](std::string raw, std::string key) -> std::uint32_t {
        auto it = key_to_id.find(key);
        if (it != key_to_id.end())
            return it->second;
        auto id = static_cast<std::uint32_t>(out.tokens.size());
        out.tokens.push_back(std::move(raw));
        key_to_id.emplace(key, id);
        keys.push_back(std::move(key));
        return id;
    };
    for (const auto& sp : opts.special_tokens)
        add_token(sp, sp);

    // Unique words in byte order, so ids and word indices never depend on hashing or threads.
    std::vector<std::pair<std::string_view, std::uint64_t>> uniq;
    uniq.reserve(impl_->counts.size());
    for (const auto& [w, c] : impl_->counts)
        uniq.emplace_back(w, c);
    std::sort(uniq.begin(), uniq.end());

    bool seen[256] = {};
    for (const auto& [w, c] : uniq)
        for (unsigned char b : w)
            seen[b] = true;
    std::vector<int> bytes;
    for (int b = 0; b < 256; ++b)
        if (seen[b] || opts.full_byte_alphabet)
            bytes.push_back(b);
    std::sort(bytes.begin(), bytes.end(),
              [&](int x, int y) { return map.code_point[x] < map.code_point[y]; });
    std::uint32_t byte_id[256] = {};
    for (int b : bytes)
        byte_id[b] = add_token(std::string(1, static_cast<char>(b)), map.utf8[b]);

    std::vector<Word> words(uniq.size());
    for (std::size_t i = 0; i < uniq.size(); ++i) {
        words[i].count = uniq[i].second;
        words[i].symbols.reserve(uniq[i].first.size());
        for (unsigned char b : uniq[i].first)
            words[i].symbols.push_back(byte_id[b]);
    }

    // Pair counts and, per pair, the words holding it.
    std::unordered_map<PairKey, std::int64_t> pair_count;
    std::unordered_map<PairKey, std::uint32_t> pair_where;
    std::vector<std::vector<std::uint32_t>> where_lists;
    for (std::uint32_t wi = 0; wi < words.size(); ++wi) {
        const auto& s = words[wi].symbols;
        for (std::size_t k = 0; k + 1 < s.size(); ++k) {
            PairKey p = pair_key(s[k], s[k + 1]);
            pair_count[p] += static_cast<std::int64_t>(words[wi].count);
            auto [it, fresh] =
                pair_where.try_emplace(p, static_cast<std::uint32_t>(where_lists.size()));
            if (fresh)
                where_lists.emplace_back();
            auto& list = where_lists[it->second];
            if (list.empty() || list.back() != wi)
                list.push_back(wi);
        }
    }
    std::vector<HeapEntry> initial;
    initial.reserve(pair_where.size());
    for (const auto& [p, where] : pair_where)
        initial.push_back({static_cast<std::uint64_t>(pair_count[p]), p, where});
    pair_where.clear();
    std::priority_queue<HeapEntry, std::vector<HeapEntry>, HeapLess> heap(HeapLess{},
                                                                          std::move(initial));

    std::vector<PairChange> changes;
    std::vector<std::pair<PairKey, std::uint32_t>> gained; // (pair, word) for new pairs
    while (out.tokens.size() < opts.vocab_size && !heap.empty()) {
        HeapEntry top = heap.top();
        heap.pop();
        auto actual = static_cast<std::uint64_t>(std::max<std::int64_t>(0, pair_count[top.pair]));
        if (top.count != actual) { // stale: counts only drop after an entry is pushed
            top.count = actual;
            heap.push(top);
            continue;
        }
        if (top.count < 1 || top.count < opts.min_frequency)
            break;
        auto a = static_cast<std::uint32_t>(top.pair >> 32);
        auto b = static_cast<std::uint32_t>(top.pair & 0xFFFFFFFFu);
        std::uint32_t merged = add_token(out.tokens[a] + out.tokens[b], keys[a] + keys[b]);
        out.merges.push_back({a, b, merged});

        gained.clear();
        std::vector<std::uint32_t> where = std::move(where_lists[top.where]);
        where_lists[top.where] = {};
        for (std::uint32_t wi : where) {
            changes.clear();
            merge_word(words[wi].symbols, a, b, merged, changes);
            auto weight = static_cast<std::int64_t>(words[wi].count);
            for (const auto& ch : changes) {
                pair_count[ch.pair] += ch.delta * weight;
                if (ch.delta > 0)
                    gained.emplace_back(ch.pair, wi);
            }
        }
        // New pairs enter the heap once each, with the words they were found in. Sorting keeps
        // the heap's insertion order (and so everything) independent of hashing.
        std::sort(gained.begin(), gained.end());
        gained.erase(std::unique(gained.begin(), gained.end()), gained.end());
        for (std::size_t i = 0; i < gained.size();) {
            PairKey p = gained[i].first;
            std::vector<std::uint32_t> list;
            for (; i < gained.size() && gained[i].first == p; ++i)
                list.push_back(gained[i].second);
            std::int64_t c = pair_count[p];
            if (c > 0) {
                heap.push({static_cast<std::uint64_t>(c), p,
                           static_cast<std::uint32_t>(where_lists.size())});
                where_lists.push_back(std::move(list));
            }
        }
    }
    impl_->stats.merge_seconds = seconds_since(t0);
    return out;
}

std::string TrainedBpe::to_tokenizer_json() const {
    FORGE_CHECK(!pattern.empty(), "[bpe_trainer] TrainedBpe has no pattern");
    const bool gpt2 = pattern == BpeTrainerOptions::kGpt2Pattern;
    // JSON string literal (escaped by nlohmann so every control character is handled).
    auto quote = [](const std::string& s) {
        return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::strict);
    };
    std::vector<std::string> keys(tokens.size());
    for (std::size_t i = 0; i < tokens.size(); ++i)
        keys[i] = quote(i < special_tokens.size() ? tokens[i] : to_byte_level(tokens[i]));

    // Written by hand (vocab and merges can hold 10^5 entries; a JSON object that keeps
    // insertion order would be quadratic), laid out like HF's own files.
    std::string out;
    out.reserve(tokens.size() * 40 + merges.size() * 30 + 4096);
    out += "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n";
    out += "  \"added_tokens\": [";
    for (std::size_t i = 0; i < special_tokens.size(); ++i) {
        FORGE_CHECK(i < tokens.size() && tokens[i] == special_tokens[i],
                    "[bpe_trainer] special token ", i, " is not at id ", i);
        out += i ? ",\n" : "\n";
        out += "    {\"id\": " + std::to_string(i) + ", \"content\": " + keys[i] +
               ", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, "
               "\"normalized\": false, \"special\": true}";
    }
    out += special_tokens.empty() ? "],\n" : "\n  ],\n";
    out += "  \"normalizer\": null,\n";
    std::string byte_level_pre =
        std::string("{\"type\": \"ByteLevel\", \"add_prefix_space\": false, "
                    "\"trim_offsets\": true, \"use_regex\": ") +
        (gpt2 ? "true}" : "false}");
    if (gpt2) {
        out += "  \"pre_tokenizer\": " + byte_level_pre + ",\n";
    } else {
        out += "  \"pre_tokenizer\": {\n    \"type\": \"Sequence\",\n    \"pretokenizers\": [\n"
               "      {\"type\": \"Split\", \"pattern\": {\"Regex\": " +
               quote(pattern) + "}, \"behavior\": \"Isolated\", \"invert\": false},\n      " +
               byte_level_pre + "\n    ]\n  },\n";
    }
    out += "  \"post_processor\": null,\n";
    out += "  \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, "
           "\"trim_offsets\": true, \"use_regex\": true},\n";
    out +=
        "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": null,\n"
        "    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n"
        "    \"fuse_unk\": false,\n    \"byte_fallback\": false,\n    \"ignore_merges\": false,\n"
        "    \"vocab\": {";
    // A merge may spell an existing token (the id is then shared): write each key once.
    for (std::size_t i = 0; i < keys.size(); ++i) {
        out += i ? ",\n      " : "\n      ";
        out += keys[i] + ": " + std::to_string(i);
    }
    out += keys.empty() ? "},\n" : "\n    },\n";
    out += "    \"merges\": [";
    for (std::size_t i = 0; i < merges.size(); ++i) {
        const auto& m = merges[i];
        FORGE_CHECK(m.left < keys.size() && m.right < keys.size() && m.result < keys.size(),
                    "[bpe_trainer] merge ", i, " refers to an id outside the vocabulary");
        out += i ? ",\n      [" : "\n      [";
        out += keys[m.left] + ", " + keys[m.right] + "]";
    }
    out += merges.empty() ? "]\n  }\n}\n" : "\n    ]\n  }\n}\n";
    return out;
}

void TrainedBpe::save(const std::filesystem::path& path) const {
    std::string text = to_tokenizer_json();
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    FORGE_CHECK(f, "[bpe_trainer] cannot open ", path.string(), " for writing");
    f.write(text.data(), static_cast<std::streamsize>(text.size()));
    f.close();
    FORGE_CHECK(f, "[bpe_trainer] failed writing ", path.string());
}

} // namespace forge
