// forge::Tokenizer: format detection, special/added-token matching, batching over threads and
// streaming decode. The encoding itself lives in the Impl (pipeline.cpp, sentencepiece.cpp).
#include <forge/tokenizers/tokenizer.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "impl.h"
#include "unicode.h"
#include <forge/core/error.h>

namespace forge {

namespace fs = std::filesystem;

namespace {

bool is_word_char_at(std::string_view s, std::size_t i, bool before) {
    // The character just before i (before == true) or at i.
    if (before) {
        if (i == 0)
            return false;
        std::size_t k = i - 1;
        while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80)
            --k;
        if (tok::utf8_char_len(s, k) == 0)
            return false;
        char32_t cp = tok::utf8_next(s, k);
        return cp == '_' || tok::is_alphanumeric(cp);
    }
    if (i >= s.size() || tok::utf8_char_len(s, i) == 0)
        return false;
    char32_t cp = tok::utf8_next(s, i);
    return cp == '_' || tok::is_alphanumeric(cp);
}

bool is_space_byte(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

// Splits `text` on the given added tokens (leftmost; longest at one position), encoding the
// text between them with the Impl.
void encode_with_added(const Tokenizer::Impl& impl, std::string_view text,
                       const std::vector<const tok::AddedToken*>& cands,
                       std::vector<TokenId>& out) {
    std::vector<std::size_t> next(cands.size(), 0);
    std::vector<bool> valid(cands.size(), false);
    std::size_t seg_start = 0, pos = 0;
    while (pos <= text.size()) {
        std::size_t best = std::string_view::npos;
        std::size_t best_k = 0;
        for (std::size_t k = 0; k < cands.size(); ++k) {
            if (!valid[k] || next[k] < pos) {
                next[k] = text.find(cands[k]->text, pos);
                valid[k] = true;
            }
            // cands are sorted longest first, so strict < keeps the longest at a position.
            if (next[k] < best) {
                best = next[k];
                best_k = k;
            }
        }
        if (best == std::string_view::npos)
            break;
        const tok::AddedToken& a = *cands[best_k];
        std::size_t mb = best, me = best + a.text.size();
        if (a.single_word &&
            (is_word_char_at(text, mb, true) || is_word_char_at(text, me, false))) {
            // Not a whole word here: look for this token again one byte later.
            next[best_k] = text.find(a.text, best + 1);
            continue;
        }
        if (a.lstrip)
            while (mb > seg_start && is_space_byte(text[mb - 1]))
                --mb;
        if (a.rstrip)
            while (me < text.size() && is_space_byte(text[me]))
                ++me;
        impl.encode_ordinary(text.substr(seg_start, mb - seg_start), out, seg_start == 0);
        out.push_back(a.id);
        seg_start = pos = me;
        if (me == text.size())
            break;
    }
    if (seg_start < text.size())
        impl.encode_ordinary(text.substr(seg_start), out, seg_start == 0);
}

// Streams byte-concatenative tokenizers a token at a time.
class BytesStream : public IncrementalDecoder::State {
  public:
    BytesStream(std::shared_ptr<const Tokenizer::Impl> impl, bool skip)
        : impl_(std::move(impl)), skip_(skip) {}
    std::string push(TokenId id) override {
        if (skip_ && impl_->is_special_id(id))
            return {};
        pending_ += impl_->token_bytes(id);
        return take(false);
    }
    std::string flush() override { return take(true); }

  private:
    std::string take(bool all) {
        std::string out;
        std::size_t i = 0, n = pending_.size();
        while (i < n) {
            std::size_t len = tok::utf8_char_len(pending_, i);
            if (len) {
                out.append(pending_, i, len);
                i += len;
                continue;
            }
            std::string_view rest(pending_.data() + i, n - i);
            if (!all && rest.size() <= 3 && tok::utf8_incomplete_tail(rest) == rest.size())
                break; // wait for the rest of the character
            out += "\xEF\xBF\xBD";
            ++i;
        }
        pending_.erase(0, i);
        return out;
    }
    std::shared_ptr<const Tokenizer::Impl> impl_;
    bool skip_;
    std::string pending_;
};

// Any tokenizer: decodes the tokens not yet emitted behind an "anchor" token that decodes
// cleanly on its own, so decoders that treat the first token specially (Metaspace, Strip,
// WordPiece) see the new tokens as mid-text, and byte-fallback runs are decoded together.
// Emits once the new text ends in a complete character (no incomplete tail, no trailing U+FFFD).
class WindowStream : public IncrementalDecoder::State {
  public:
    WindowStream(std::shared_ptr<const Tokenizer::Impl> impl, bool skip)
        : impl_(std::move(impl)), skip_(skip) {
        find_anchor();
    }
    std::string push(TokenId id) override {
        pending_.push_back(id);
        return take(false);
    }
    std::string flush() override { return take(true); }

  private:
    void find_anchor() {
        auto clean = [&](TokenId id) {
            if (impl_->is_special_id(id))
                return false;
            std::string t;
            std::vector<TokenId> one{id};
            try {
                impl_->decode_append(one, false, t);
            } catch (const Error&) {
                return false;
            }
            bool ok = !t.empty() && tok::utf8_valid(t) &&
                      t.find("\xEF\xBF\xBD") == std::string::npos &&
                      static_cast<unsigned char>(t.back()) < 0x80 &&
                      std::isalnum(static_cast<unsigned char>(t.back()));
            if (ok)
                anchor_text_ = t;
            return ok;
        };
        for (const char* cand : {"a",
                                 "\xE2\x96\x81"
                                 "a",
                                 "e", "the",
                                 "\xE2\x96\x81"
                                 "the",
                                 "x"}) {
            auto id = impl_->token_to_id(cand);
            if (id && clean(*id)) {
                anchor_ = *id;
                return;
            }
        }
        for (TokenId id = 0; std::size_t(id) < impl_->n_vocab && id < 4096; ++id)
            if (clean(id)) {
                anchor_ = id;
                return;
            }
    }
    std::string take(bool all) {
        if (pending_.empty())
            return {};
        std::string text;
        if (started_ && anchor_ >= 0) {
            std::vector<TokenId> w;
            w.reserve(pending_.size() + 1);
            w.push_back(anchor_);
            w.insert(w.end(), pending_.begin(), pending_.end());
            impl_->decode_append(w, skip_, text);
            if (text.compare(0, anchor_text_.size(), anchor_text_) == 0)
                text.erase(0, anchor_text_.size());
            else { // the decoder merged across the anchor: decode the new tokens alone
                text.clear();
                impl_->decode_append(pending_, skip_, text);
            }
        } else {
            impl_->decode_append(pending_, skip_, text);
        }
        if (!all) {
            // Hold back an incomplete character or a byte-fallback run still missing bytes.
            if (tok::utf8_incomplete_tail(text) > 0)
                return {};
            if (text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0 &&
                pending_.size() < 4)
                return {};
        }
        pending_.clear();
        if (!text.empty())
            started_ = true;
        return tok::utf8_replace_invalid(text);
    }
    std::shared_ptr<const Tokenizer::Impl> impl_;
    bool skip_;
    TokenId anchor_ = -1;
    std::string anchor_text_;
    bool started_ = false;
    std::vector<TokenId> pending_;
};

} // namespace

// ---- IncrementalDecoder

IncrementalDecoder::IncrementalDecoder(std::unique_ptr<State> state) : state_(std::move(state)) {}
IncrementalDecoder::IncrementalDecoder(IncrementalDecoder&&) noexcept = default;
IncrementalDecoder& IncrementalDecoder::operator=(IncrementalDecoder&&) noexcept = default;
IncrementalDecoder::~IncrementalDecoder() = default;
std::string IncrementalDecoder::push(TokenId id) {
    return state_->push(id);
}
std::string IncrementalDecoder::flush() {
    return state_->flush();
}

// ---- Tokenizer

Tokenizer::Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(const Tokenizer&) = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(const Tokenizer&) = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const fs::path& path) {
    std::error_code ec;
    if (!fs::exists(path, ec))
        throw NotFound(detail::str_cat("[tokenizer] ", path.string(), " does not exist"),
                       "pass a .tiktoken file, a tokenizer.json, a GPT-2 folder with encoder.json "
                       "and vocab.bpe, or a SentencePiece .model");
    if (fs::is_directory(path, ec)) {
        if (fs::exists(path / "tokenizer.json", ec))
            return load(path / "tokenizer.json");
        if (fs::exists(path / "encoder.json", ec) && fs::exists(path / "vocab.bpe", ec))
            return Tokenizer(tok::load_gpt2_folder(path.string()));
        for (const char* name : {"tokenizer.model", "spiece.model", "sentencepiece.bpe.model"})
            if (fs::exists(path / name, ec))
                return load(path / name);
        throw InvalidArgument(detail::str_cat("[tokenizer] ", path.string(),
                                              ": folder has no tokenizer.json, encoder.json + "
                                              "vocab.bpe, or SentencePiece .model"));
    }
    std::string ext = path.extension().string();
    std::string name = path.filename().string();
    if (ext == ".tiktoken")
        return Tokenizer(tok::load_tiktoken(path.string(), {}, {}, {}));
    if (ext == ".model")
        return Tokenizer(tok::load_sentencepiece(path.string()));
    if (ext == ".json") {
        std::string text = tok::read_file(path.string());
        std::string config;
        auto cfg = path.parent_path() / "tokenizer_config.json";
        if (name == "tokenizer.json" && fs::exists(cfg, ec))
            config = tok::read_file(cfg.string());
        return Tokenizer(tok::load_hf_json(text, path.string(), config));
    }
    // No telling extension: sniff the contents.
    std::string head = tok::read_file(path.string()).substr(0, 64);
    std::size_t k = 0;
    while (k < head.size() && is_space_byte(head[k]))
        ++k;
    if (k < head.size() && head[k] == '{')
        return Tokenizer(tok::load_hf_json(tok::read_file(path.string()), path.string(), {}));
    if (!head.empty() && head[0] == '\x0a') // protobuf field 1 (pieces), as in SentencePiece
        return Tokenizer(tok::load_sentencepiece(path.string()));
    return Tokenizer(tok::load_tiktoken(path.string(), {}, {}, {}));
}

Tokenizer Tokenizer::from_tokenizer_json(std::string_view json, std::string_view origin) {
    return Tokenizer(tok::load_hf_json(json, origin, {}));
}

Tokenizer Tokenizer::from_ranks(std::vector<std::string> tokens, std::string pattern,
                                std::vector<SpecialToken> specials, std::string name) {
    return Tokenizer(
        tok::make_rank_bpe(std::move(tokens), std::move(pattern), std::move(specials), name, name));
}

Tokenizer Tokenizer::from_tiktoken_file(const fs::path& path, std::string pattern,
                                        std::vector<SpecialToken> specials) {
    FORGE_CHECK(!pattern.empty(), "[tokenizer] ", path.string(), ": a pattern is required");
    return Tokenizer(tok::load_tiktoken(path.string(), std::move(pattern), std::move(specials),
                                        path.stem().string()));
}

std::vector<TokenId> Tokenizer::encode(std::string_view text, const EncodeOptions& opts) const {
    std::vector<TokenId> out;
    out.reserve(text.size() / 3 + 8);
    if (opts.add_special_tokens)
        out.insert(out.end(), impl_->post.prefix.begin(), impl_->post.prefix.end());
    std::vector<const tok::AddedToken*> cands;
    for (const auto& a : impl_->added) {
        bool allowed = !a.special || opts.allow_all_special ||
                       std::find(opts.allowed_special.begin(), opts.allowed_special.end(),
                                 a.text) != opts.allowed_special.end();
        if (allowed && !a.text.empty())
            cands.push_back(&a);
    }
    for (const auto& name : opts.allowed_special) {
        bool known = std::any_of(impl_->added.begin(), impl_->added.end(),
                                 [&](const tok::AddedToken& a) { return a.text == name; });
        FORGE_CHECK(known, "[tokenizer] ", impl_->kind, ": allowed_special names \"", name,
                    "\", which is not a special token of this tokenizer");
    }
    if (cands.empty())
        impl_->encode_ordinary(text, out);
    else
        encode_with_added(*impl_, text, cands, out);
    if (opts.add_special_tokens)
        out.insert(out.end(), impl_->post.suffix.begin(), impl_->post.suffix.end());
    return out;
}

namespace {

// Worker threads that live as long as the process, so encode_batch's threads keep their warm
// thread-local piece caches between calls (threads made per call started cold and made two
// threads slower than one). run(n, job) calls job() on n - 1 workers and the caller, and returns
// when all have finished.
class BatchPool {
  public:
    static BatchPool& get() {
        static BatchPool pool;
        return pool;
    }
    void run(int n, const std::function<void()>& job) {
        std::lock_guard one_batch_at_a_time(run_mu_);
        {
            std::unique_lock lock(mu_);
            while (int(workers_.size()) < n - 1)
                workers_.emplace_back([this, id = int(workers_.size())] { loop(id); });
            job_ = &job;
            active_ = n - 1;
            pending_ = n - 1;
            ++generation_;
        }
        cv_.notify_all();
        job();
        std::unique_lock lock(mu_);
        done_.wait(lock, [&] { return pending_ == 0; });
        job_ = nullptr;
    }
    ~BatchPool() {
        {
            std::lock_guard lock(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        for (auto& t : workers_)
            t.join();
    }

  private:
    void loop(int id) {
        uint64_t seen = 0;
        std::unique_lock lock(mu_);
        while (true) {
            cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
            if (stop_)
                return;
            seen = generation_;
            if (id >= active_)
                continue; // not needed for this batch
            const std::function<void()>* job = job_;
            lock.unlock();
            (*job)();
            lock.lock();
            if (--pending_ == 0)
                done_.notify_one();
        }
    }
    std::mutex run_mu_, mu_;
    std::condition_variable cv_, done_;
    std::vector<std::thread> workers_;
    const std::function<void()>* job_ = nullptr;
    int active_ = 0, pending_ = 0;
    uint64_t generation_ = 0;
    bool stop_ = false;
};

} // namespace

std::vector<std::vector<TokenId>> Tokenizer::encode_batch(std::span<const std::string> texts,
                                                          const EncodeOptions& opts,
                                                          int n_threads) const {
    std::vector<std::vector<TokenId>> out(texts.size());
    if (n_threads <= 0)
        n_threads = int(std::max(1u, std::thread::hardware_concurrency()));
    n_threads = int(std::min<std::size_t>(std::size_t(n_threads), texts.size()));
    if (n_threads <= 1) {
        for (std::size_t i = 0; i < texts.size(); ++i)
            out[i] = encode(texts[i], opts);
        return out;
    }
    std::atomic<std::size_t> next{0};
    std::exception_ptr error;
    std::atomic<bool> failed{false};
    std::mutex error_mu;
    const std::function<void()> work = [&] {
        try {
            for (std::size_t i; !failed && (i = next.fetch_add(1)) < texts.size();)
                out[i] = encode(texts[i], opts);
        } catch (...) {
            std::lock_guard lock(error_mu);
            if (!failed.exchange(true))
                error = std::current_exception();
        }
    };
    BatchPool::get().run(n_threads, work);
    if (error)
        std::rethrow_exception(error);
    return out;
}

std::string Tokenizer::decode(std::span<const TokenId> ids, const DecodeOptions& opts) const {
    std::string out;
    impl_->decode_append(ids, opts.skip_special_tokens, out);
    return out;
}

IncrementalDecoder Tokenizer::incremental_decoder(const DecodeOptions& opts) const {
    if (impl_->concatenative())
        return IncrementalDecoder(std::make_unique<BytesStream>(impl_, opts.skip_special_tokens));
    return IncrementalDecoder(std::make_unique<WindowStream>(impl_, opts.skip_special_tokens));
}

std::size_t Tokenizer::vocab_size() const {
    return impl_->n_vocab;
}
std::string Tokenizer::token(TokenId id) const {
    return impl_->token(id);
}
std::optional<TokenId> Tokenizer::token_to_id(std::string_view t) const {
    return impl_->token_to_id(t);
}
const std::vector<SpecialToken>& Tokenizer::special_tokens() const {
    return impl_->specials;
}
std::optional<TokenId> Tokenizer::bos_id() const {
    return impl_->bos;
}
std::optional<TokenId> Tokenizer::eos_id() const {
    return impl_->eos;
}
std::optional<TokenId> Tokenizer::pad_id() const {
    return impl_->pad;
}
std::optional<TokenId> Tokenizer::unk_id() const {
    return impl_->unk;
}
const std::string& Tokenizer::kind() const {
    return impl_->kind;
}

} // namespace forge
