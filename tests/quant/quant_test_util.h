// Shared pieces of the quantized-kernel tests: a 64-byte aligned zeroed buffer and seeded
// gaussian data.
#pragma once

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

namespace forge::test {

struct AlignedBuf {
    std::vector<uint8_t> v;
    uint8_t* p;
    explicit AlignedBuf(size_t n) : v(n + 64, 0) { align(); }
    AlignedBuf& operator=(const AlignedBuf& o) {
        v.assign(o.v.size(), 0);
        align();
        std::memcpy(p, o.p, o.v.size() - 64);
        return *this;
    }
    void align() { p = v.data() + (64 - reinterpret_cast<uintptr_t>(v.data()) % 64) % 64; }
};

inline std::vector<float> gaussian(int64_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.f, 1.f);
    std::vector<float> x(static_cast<size_t>(n));
    for (auto& v : x) v = dist(rng);
    return x;
}

} // namespace forge::test
