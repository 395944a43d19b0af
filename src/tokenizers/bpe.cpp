// Byte-pair encoding engine (see bpe.h).
#include "bpe.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <unordered_map>

#include "unicode.h"
#include <forge/core/error.h>

namespace forge::tok {

namespace {

std::atomic<std::uint64_t> g_next_owner{1};

// Per-thread cache of piece -> ids for pieces that needed merging. Each thread keeps caches for
// the last few models it used; a model's id is never reused, so a stale cache is never read.
struct StringHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return hash_bytes(s.data(), s.size()); }
};
struct PieceCache {
    std::uint64_t owner = 0;
    std::unordered_map<std::string, std::pair<std::uint32_t, std::uint32_t>, StringHash,
                       std::equal_to<>>
        map;
    std::vector<TokenId> ids;
    void reset(std::uint64_t o) {
        owner = o;
        map.clear();
        ids.clear();
    }
};
constexpr std::size_t kCacheMaxPiece = 64;
constexpr std::size_t kCacheMaxEntries = 1 << 16;
constexpr int kCaches = 4;

PieceCache& cache_for(std::uint64_t owner) {
    thread_local PieceCache caches[kCaches];
    thread_local int next = 0;
    for (auto& c : caches)
        if (c.owner == owner)
            return c;
    PieceCache& c = caches[next];
    next = (next + 1) % kCaches;
    c.reset(owner);
    return c;
}

constexpr std::uint32_t kNoRank = 0xFFFFFFFFu;
constexpr std::size_t kSmall = 64;

} // namespace

BpeModel::BpeModel(Vocab vocab, BpeConfig cfg)
    : vocab_(std::move(vocab)), cfg_(std::move(cfg)), cache_owner_(g_next_owner++) {
    std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
}

void BpeModel::add_rank_merges() {
    std::size_t n = vocab_.size();
    pairs_.reserve(n * 2);
    for (std::size_t id = 0; id < n; ++id) {
        if (!vocab_.has(TokenId(id)))
            continue;
        std::string_view s = vocab_.surface(TokenId(id));
        for (std::size_t k = 1; k < s.size(); ++k) {
            TokenId a = vocab_.find(s.substr(0, k));
            if (a < 0)
                continue;
            TokenId b = vocab_.find(s.substr(k));
            if (b < 0)
                continue;
            pairs_.insert(a, b, {std::uint32_t(id), TokenId(id)});
        }
    }
}

bool BpeModel::add_merge(std::string_view a, std::string_view b, std::uint32_t rank) {
    TokenId ia = vocab_.find(a), ib = vocab_.find(b);
    if (ia < 0 || ib < 0)
        return false;
    std::string merged(a);
    std::string_view tail = b;
    const auto& pre = cfg_.continuing_subword_prefix;
    if (!pre.empty() && tail.substr(0, pre.size()) == pre)
        tail.remove_prefix(pre.size());
    merged.append(tail);
    TokenId out = vocab_.find(merged);
    if (out < 0)
        return false;
    pairs_.insert(ia, ib, {rank, out});
    return true;
}

std::vector<std::tuple<TokenId, TokenId, std::uint32_t>> BpeModel::merges() const {
    std::vector<std::tuple<TokenId, TokenId, std::uint32_t>> out;
    pairs_.for_each([&](TokenId a, TokenId b, const PairMap::Value& v) { out.emplace_back(a, b, v.rank); });
    std::sort(out.begin(), out.end(), [](const auto& x, const auto& y) {
        return std::tie(std::get<2>(x), std::get<0>(x), std::get<1>(x)) <
               std::tie(std::get<2>(y), std::get<0>(y), std::get<1>(y));
    });
    return out;
}

void BpeModel::finish() {
    // Is cutting before word-initial U+2581 exact? (see bpe.h)
    static constexpr std::string_view kMeta = "\xE2\x96\x81";
    if (!cfg_.byte_level && vocab_.find(kMeta) >= 0 && cfg_.continuing_subword_prefix.empty() &&
        cfg_.end_of_word_suffix.empty()) {
        bool safe = true;
        for (std::size_t id = 0; id < vocab_.size() && safe; ++id) {
            if (!vocab_.has(TokenId(id)))
                continue;
            std::string_view s = vocab_.surface(TokenId(id));
            for (std::size_t p = s.find(kMeta, 1); p != std::string_view::npos; p = s.find(kMeta, p + 1)) {
                if (p < kMeta.size() || s.substr(p - kMeta.size(), kMeta.size()) != kMeta) {
                    safe = false;
                    break;
                }
            }
        }
        split_at_metaspace_ = safe;
    }
    for (int b = 0; b < 256; ++b) {
        char c = char(b);
        if (cfg_.byte_level) {
            byte_ids_[b] = vocab_.find(std::string_view(&c, 1));
        } else if (cfg_.byte_fallback) {
            char buf[8];
            std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
            byte_ids_[b] = vocab_.find(buf);
        }
    }
}

void BpeModel::initial_symbols(std::string_view w, std::vector<TokenId>& syms) const {
    syms.clear();
    if (cfg_.byte_level && cfg_.continuing_subword_prefix.empty() && cfg_.end_of_word_suffix.empty()) {
        for (unsigned char c : w) {
            TokenId id = byte_ids_[c];
            if (id < 0)
                id = cfg_.unk ? *cfg_.unk : -1;
            if (id >= 0)
                syms.push_back(id);
        }
        return;
    }
    bool prev_unk = false;
    std::string buf;
    std::size_t i = 0;
    while (i < w.size()) {
        std::size_t len = cfg_.byte_level ? 1 : utf8_char_len(w, i);
        if (len == 0)
            len = 1;
        std::string_view ch = w.substr(i, len);
        buf.clear();
        if (i > 0)
            buf += cfg_.continuing_subword_prefix;
        buf.append(ch);
        if (i + len == w.size())
            buf += cfg_.end_of_word_suffix;
        i += len;
        TokenId id = vocab_.find(buf);
        if (id >= 0) {
            syms.push_back(id);
            prev_unk = false;
            continue;
        }
        if (cfg_.byte_fallback) {
            bool all = true;
            for (unsigned char c : ch)
                all = all && byte_ids_[c] >= 0;
            if (all) {
                for (unsigned char c : ch)
                    syms.push_back(byte_ids_[c]);
                prev_unk = false;
                continue;
            }
        }
        if (cfg_.unk) {
            if (!(cfg_.fuse_unk && prev_unk))
                syms.push_back(*cfg_.unk);
            prev_unk = true;
        }
    }
}

void BpeModel::merge_small(std::vector<TokenId>& syms) const {
    std::size_t n = syms.size();
    std::uint32_t rank[kSmall];
    TokenId out[kSmall];
    TokenId* s = syms.data();
    for (std::size_t i = 0; i + 1 < n; ++i) {
        const PairMap::Value* v = pairs_.find(s[i], s[i + 1]);
        rank[i] = v ? v->rank : kNoRank;
        out[i] = v ? v->id : -1;
    }
    while (n > 1) {
        std::size_t best = 0;
        std::uint32_t best_rank = kNoRank;
        for (std::size_t i = 0; i + 1 < n; ++i)
            if (rank[i] < best_rank) {
                best_rank = rank[i];
                best = i;
            }
        if (best_rank == kNoRank)
            break;
        s[best] = out[best];
        // Remove symbol best+1 and pair slot best+1 (pair slot best is recomputed).
        std::memmove(s + best + 1, s + best + 2, (n - best - 2) * sizeof(TokenId));
        if (best + 3 <= n) { // pair slots best+2 .. n-2 move down by one
            std::memmove(rank + best + 1, rank + best + 2, (n - best - 3) * sizeof(std::uint32_t));
            std::memmove(out + best + 1, out + best + 2, (n - best - 3) * sizeof(TokenId));
        }
        --n;
        if (best + 1 < n) {
            const PairMap::Value* v = pairs_.find(s[best], s[best + 1]);
            rank[best] = v ? v->rank : kNoRank;
            out[best] = v ? v->id : -1;
        }
        if (best > 0) {
            const PairMap::Value* v = pairs_.find(s[best - 1], s[best]);
            rank[best - 1] = v ? v->rank : kNoRank;
            out[best - 1] = v ? v->id : -1;
        }
    }
    syms.resize(n);
}

void BpeModel::merge_large(std::vector<TokenId>& syms) const {
    // Linked list of symbols + a min-heap of (rank << 32 | position) keys, 8 bytes each. A
    // popped key is stale when its position died or its pair now merges with another rank;
    // an equal rank means the same merge, so checking the rank is enough.
    std::size_t n = syms.size();
    std::vector<std::int32_t> prev(n), next(n);
    for (std::size_t i = 0; i < n; ++i) {
        prev[i] = std::int32_t(i) - 1;
        next[i] = i + 1 < n ? std::int32_t(i + 1) : -1;
    }
    std::vector<std::uint64_t> heap;
    heap.reserve(n);
    for (std::size_t i = 0; i + 1 < n; ++i)
        if (const PairMap::Value* v = pairs_.find(syms[i], syms[i + 1]))
            heap.push_back((std::uint64_t(v->rank) << 32) | i);
    auto later = std::greater<std::uint64_t>();
    std::make_heap(heap.begin(), heap.end(), later);
    std::vector<char> alive(n, 1);
    auto push = [&](std::int32_t l, std::int32_t r) {
        if (const PairMap::Value* v = pairs_.find(syms[std::size_t(l)], syms[std::size_t(r)])) {
            heap.push_back((std::uint64_t(v->rank) << 32) | std::uint32_t(l));
            std::push_heap(heap.begin(), heap.end(), later);
        }
    };
    while (!heap.empty()) {
        std::pop_heap(heap.begin(), heap.end(), later);
        std::uint64_t key = heap.back();
        heap.pop_back();
        auto p = std::int32_t(key & 0xffffffffu);
        auto rank = std::uint32_t(key >> 32);
        if (!alive[std::size_t(p)])
            continue;
        std::int32_t q = next[std::size_t(p)];
        if (q < 0)
            continue;
        const PairMap::Value* v = pairs_.find(syms[std::size_t(p)], syms[std::size_t(q)]);
        if (!v || v->rank != rank)
            continue;
        syms[std::size_t(p)] = v->id;
        alive[std::size_t(q)] = 0;
        next[std::size_t(p)] = next[std::size_t(q)];
        if (next[std::size_t(q)] >= 0)
            prev[std::size_t(next[std::size_t(q)])] = p;
        if (prev[std::size_t(p)] >= 0)
            push(prev[std::size_t(p)], p);
        if (next[std::size_t(p)] >= 0)
            push(p, next[std::size_t(p)]);
    }
    std::size_t k = 0;
    for (std::int32_t i = 0; i >= 0; i = next[std::size_t(i)])
        syms[k++] = syms[std::size_t(i)];
    syms.resize(k);
}

void BpeModel::merge(std::vector<TokenId>& syms) const {
    if (syms.size() < 2)
        return;
    if (syms.size() <= kSmall)
        merge_small(syms);
    else
        merge_large(syms);
}

void BpeModel::encode_piece(std::string_view w, std::vector<TokenId>& out) const {
    if (w.empty())
        return;
    if (cfg_.ignore_merges) {
        TokenId id = vocab_.find(w);
        if (id >= 0) {
            out.push_back(id);
            return;
        }
    }
    if (!split_at_metaspace_) {
        encode_segment(w, out);
        return;
    }
    // Cut before each U+2581 that follows a character other than U+2581.
    static constexpr std::string_view kMeta = "\xE2\x96\x81";
    std::size_t start = 0, p = w.find(kMeta, 1);
    while (p != std::string_view::npos) {
        bool after_meta = p >= kMeta.size() && w.substr(p - kMeta.size(), kMeta.size()) == kMeta;
        if (!after_meta && p > start) {
            encode_segment(w.substr(start, p - start), out);
            start = p;
        }
        p = w.find(kMeta, p + 1);
    }
    encode_segment(w.substr(start), out);
}

void BpeModel::encode_segment(std::string_view w, std::vector<TokenId>& out) const {
    if (w.empty())
        return;
    PieceCache* cache = nullptr;
    if (cfg_.use_cache && w.size() <= kCacheMaxPiece) {
        cache = &cache_for(cache_owner_);
        auto it = cache->map.find(w);
        if (it != cache->map.end()) {
            const TokenId* p = cache->ids.data() + it->second.first;
            out.insert(out.end(), p, p + it->second.second);
            return;
        }
    }
    thread_local std::vector<TokenId> syms;
    initial_symbols(w, syms);
    merge(syms);
    out.insert(out.end(), syms.begin(), syms.end());
    if (cache) {
        if (cache->map.size() >= kCacheMaxEntries)
            cache->reset(cache_owner_);
        cache->map.emplace(std::string(w),
                           std::make_pair(std::uint32_t(cache->ids.size()), std::uint32_t(syms.size())));
        cache->ids.insert(cache->ids.end(), syms.begin(), syms.end());
    }
}

} // namespace forge::tok
