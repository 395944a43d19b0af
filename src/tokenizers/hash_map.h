// Open-addressing hash maps for the BPE hot path: token bytes -> id and (left, right) id pair ->
// merge. Insert-only, built once at load time, read from many threads.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

namespace forge::tok {

inline std::uint64_t hash_bytes(const char* p, std::size_t n) {
    // 64-bit FNV-1a over 8-byte words, then a murmur finaliser.
    std::uint64_t h = 0xcbf29ce484222325ULL ^ (n * 0x9E3779B97F4A7C15ULL);
    while (n >= 8) {
        std::uint64_t w;
        std::memcpy(&w, p, 8);
        h = (h ^ w) * 0x100000001b3ULL;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    if (n) {
        std::uint64_t w = 0;
        std::memcpy(&w, p, n);
        h = (h ^ w) * 0x100000001b3ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

inline std::uint64_t hash_u64(std::uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

/// string_view -> int32. Keys must outlive the map (they point into the vocabulary's storage).
/// Slots are 16 bytes; keys up to 8 bytes (most tokens) are stored in the slot itself, so a
/// lookup touches one cache line and never the key storage.
class BytesMap {
  public:
    void reserve(std::size_t n) {
        std::size_t cap = 16;
        while (cap < n * 2)
            cap <<= 1;
        slots_.assign(cap, Slot{});
        mask_ = cap - 1;
        size_ = 0;
    }
    /// Inserts or overwrites.
    void insert(std::string_view key, std::int32_t value) {
        if ((size_ + 1) * 2 > slots_.size())
            grow();
        std::size_t i = hash_bytes(key.data(), key.size()) & mask_;
        std::uint64_t word = pack(key);
        while (true) {
            Slot& s = slots_[i];
            if (s.value < 0) {
                s.len = static_cast<std::uint32_t>(key.size());
                s.value = value;
                if (key.size() <= 8)
                    s.word = word;
                else
                    s.word = reinterpret_cast<std::uintptr_t>(key.data());
                ++size_;
                return;
            }
            if (equal(s, key, word)) {
                s.value = value;
                return;
            }
            i = (i + 1) & mask_;
        }
    }
    /// The value, or -1.
    std::int32_t find(std::string_view key) const {
        if (slots_.empty())
            return -1;
        std::size_t i = hash_bytes(key.data(), key.size()) & mask_;
        std::uint64_t word = pack(key);
        while (true) {
            const Slot& s = slots_[i];
            if (s.value < 0)
                return -1;
            if (equal(s, key, word))
                return s.value;
            i = (i + 1) & mask_;
        }
    }
    std::size_t size() const { return size_; }

  private:
    struct Slot {
        std::uint64_t word = 0; // the key's bytes (len <= 8) or a pointer to them
        std::uint32_t len = 0;
        std::int32_t value = -1;
    };
    static std::uint64_t pack(std::string_view key) {
        std::uint64_t w = 0;
        if (key.size() <= 8)
            std::memcpy(&w, key.data(), key.size());
        return w;
    }
    static bool equal(const Slot& s, std::string_view key, std::uint64_t word) {
        if (s.len != key.size())
            return false;
        if (key.size() <= 8)
            return s.word == word;
        return std::memcmp(reinterpret_cast<const char*>(s.word), key.data(), key.size()) == 0;
    }
    void grow() {
        std::vector<Slot> old = std::move(slots_);
        reserve(old.empty() ? 16 : old.size());
        for (const Slot& s : old) {
            if (s.value < 0)
                continue;
            if (s.len <= 8) {
                char buf[8];
                std::memcpy(buf, &s.word, 8);
                // Inline keys must be re-inserted from a stable copy: keep them inline.
                insert_inline(std::string_view(buf, s.len), s.word, s.value);
            } else {
                insert(std::string_view(reinterpret_cast<const char*>(s.word), s.len), s.value);
            }
        }
    }
    void insert_inline(std::string_view key, std::uint64_t word, std::int32_t value) {
        std::size_t i = hash_bytes(key.data(), key.size()) & mask_;
        while (slots_[i].value >= 0)
            i = (i + 1) & mask_;
        slots_[i] = Slot{word, static_cast<std::uint32_t>(key.size()), value};
        ++size_;
    }
    std::vector<Slot> slots_;
    std::size_t mask_ = 0;
    std::size_t size_ = 0;
};

/// (left id, right id) -> (priority, merged id).
class PairMap {
  public:
    struct Value {
        std::uint32_t rank;
        std::int32_t id;
    };
    void reserve(std::size_t n) {
        std::size_t cap = 16;
        while (cap < n * 2)
            cap <<= 1;
        keys_.assign(cap, kEmpty);
        values_.assign(cap, Value{0, -1});
        mask_ = cap - 1;
        size_ = 0;
    }
    static std::uint64_t key(std::int32_t a, std::int32_t b) {
        return (std::uint64_t(std::uint32_t(a)) << 32) | std::uint32_t(b);
    }
    /// Inserts unless present with a better (lower) rank.
    void insert(std::int32_t a, std::int32_t b, Value v) {
        if ((size_ + 1) * 2 > keys_.size())
            grow();
        std::uint64_t k = key(a, b);
        std::size_t i = hash_u64(k) & mask_;
        while (true) {
            if (keys_[i] == kEmpty) {
                keys_[i] = k;
                values_[i] = v;
                ++size_;
                return;
            }
            if (keys_[i] == k) {
                if (v.rank < values_[i].rank)
                    values_[i] = v;
                return;
            }
            i = (i + 1) & mask_;
        }
    }
    /// Calls f(a, b, value) for every pair.
    template <typename F> void for_each(F f) const {
        for (std::size_t i = 0; i < keys_.size(); ++i)
            if (keys_[i] != kEmpty)
                f(std::int32_t(keys_[i] >> 32), std::int32_t(keys_[i] & 0xffffffffu), values_[i]);
    }
    /// nullptr when the pair does not merge.
    const Value* find(std::int32_t a, std::int32_t b) const {
        if (keys_.empty())
            return nullptr;
        std::uint64_t k = key(a, b);
        std::size_t i = hash_u64(k) & mask_;
        while (true) {
            std::uint64_t kk = keys_[i];
            if (kk == k)
                return &values_[i];
            if (kk == kEmpty)
                return nullptr;
            i = (i + 1) & mask_;
        }
    }
    std::size_t size() const { return size_; }

  private:
    static constexpr std::uint64_t kEmpty = ~std::uint64_t(0);
    void grow() {
        auto old_k = std::move(keys_);
        auto old_v = std::move(values_);
        reserve(old_k.empty() ? 16 : old_k.size());
        for (std::size_t i = 0; i < old_k.size(); ++i)
            if (old_k[i] != kEmpty)
                insert(std::int32_t(old_k[i] >> 32), std::int32_t(old_k[i] & 0xffffffff), old_v[i]);
    }
    std::vector<std::uint64_t> keys_;
    std::vector<Value> values_;
    std::size_t mask_ = 0;
    std::size_t size_ = 0;
};

} // namespace forge::tok
