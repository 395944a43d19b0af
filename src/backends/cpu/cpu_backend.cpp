// CPU memory, copies, fills and the counter-based random generator (shared by the fast and the
// reference CPU backends).
#include "backends/cpu/cpu_backend.h"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>

#include "backends/cpu/cpu_common.h"

namespace forge::cpu {

namespace {
std::atomic<size_t> g_current{0}, g_peak{0};

void note_alloc(size_t n) {
    size_t now = g_current.fetch_add(n) + n;
    size_t peak = g_peak.load();
    while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
    }
}

// splitmix64: a counter-based generator; element i of a stream depends only on (seed, i).
inline uint64_t mix(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
// Uniform in (0, 1), never 0 (safe for log).
inline double uniform01(uint64_t seed, uint64_t i) {
    uint64_t r = mix(mix(seed) ^ i);
    return (double(r >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}
} // namespace

// A caching allocator for large blocks: a tensor's storage freed in one step is handed to a
// tensor of the same size class in the next, so training steps stop paying glibc's fresh-page
// faults (measured 3-6x the kernel time for 32+ MiB outputs). Blocks below kCacheMin go straight
// to the system allocator, which is fast at those sizes. Size classes are 8 per power of two,
// so a reused block wastes at most 12.5%.
namespace {
constexpr size_t kCacheMin = 64 << 10;
constexpr size_t kCacheMaxBytes = size_t(2) << 30; // beyond this, freed blocks go back to the OS

size_t size_class(size_t n) {
    n = (std::max<size_t>(n, 1) + 63) / 64 * 64;
    if (n < kCacheMin) return n;
    int top = 63 - __builtin_clzll(n);
    size_t step = size_t(1) << (top - 3);
    return (n + step - 1) / step * step;
}

struct BlockCache {
    std::mutex mu;
    std::multimap<size_t, void*> free_blocks; // size class -> block
    size_t cached = 0;
    ~BlockCache() {
        for (auto& [n, p] : free_blocks)
            std::free(p);
    }
};
BlockCache& block_cache() {
    static BlockCache c;
    return c;
}
std::atomic<size_t> g_cached{0};

void* take_block(size_t cls) {
    if (cls >= kCacheMin) {
        BlockCache& c = block_cache();
        std::lock_guard lock(c.mu);
        auto it = c.free_blocks.find(cls);
        if (it != c.free_blocks.end()) {
            void* p = it->second;
            c.free_blocks.erase(it);
            c.cached -= cls;
            g_cached.store(c.cached);
            return p;
        }
    }
    return std::aligned_alloc(64, cls);
}

void give_block(void* p, size_t cls) {
    if (cls >= kCacheMin) {
        BlockCache& c = block_cache();
        std::lock_guard lock(c.mu);
        if (c.cached + cls <= kCacheMaxBytes) {
            c.free_blocks.emplace(cls, p);
            c.cached += cls;
            g_cached.store(c.cached);
            return;
        }
    }
    std::free(p);
}
} // namespace

MemoryStats memory_stats() { return {g_current.load(), g_peak.load(), g_cached.load()}; }
void reset_peak_memory() { g_peak.store(g_current.load()); }

void empty_cache() {
    BlockCache& c = block_cache();
    std::lock_guard lock(c.mu);
    for (auto& [n, p] : c.free_blocks)
        std::free(p);
    c.free_blocks.clear();
    c.cached = 0;
    g_cached.store(0);
}

std::shared_ptr<Storage> CpuBackend::allocate(size_t nbytes, Device device) {
    const size_t cls = size_class(nbytes);
    void* p = take_block(cls);
    if (!p) {
        empty_cache(); // the OS may satisfy it once our cached blocks are back
        p = std::aligned_alloc(64, cls);
    }
    if (!p)
        throw DeviceError("out of memory: failed to allocate " + std::to_string(nbytes) +
                          " bytes on the CPU (" + std::to_string(memory_stats().current) +
                          " bytes in use by tensors)");
    note_alloc(cls);
    return std::make_shared<Storage>(p, nbytes, device, [cls](void* q) {
        g_current.fetch_sub(cls);
        give_block(q, cls);
    });
}

// Copies and fills of at least this many elements split over the OpenMP threads (a permuted
// activation made contiguous, a gradient zeroed): run serially, the other threads wait.
constexpr int64_t kParallelCopyMin = 1 << 15;

void CpuBackend::copy(const Tensor& src, const Tensor& dst) {
    if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous()) {
        if (src.data_ptr() != dst.data_ptr())
            std::memmove(dst.data_ptr(), src.data_ptr(), dst.nbytes());
        return;
    }
    const Shape &ss = src.strides(), &ds = dst.strides();
    // Large copies of rank >= 2 split the outermost dim over the threads: each index of it is
    // the same walk over the remaining dims from its own base offsets.
    const bool split = dst.numel() >= kParallelCopyMin && dst.dim() >= 2 && dst.size(0) >= 2;
    const int64_t n0 = split ? dst.size(0) : 1;
    const Shape inner_shape = split ? Shape(dst.shape().begin() + 1, dst.shape().end()) : dst.shape();
    const Shape inner_ss = split ? Shape(ss.begin() + 1, ss.end()) : ss;
    const Shape inner_ds = split ? Shape(ds.begin() + 1, ds.end()) : ds;
    visit_dtype(src.dtype(), [&]<typename S>() {
        visit_dtype(dst.dtype(), [&]<typename D>() {
#pragma omp parallel for schedule(static) if (split)
            for (int64_t i0 = 0; i0 < n0; ++i0) {
                const S* sp = src.data<S>() + (split ? i0 * ss[0] : 0);
                D* dp = dst.data<D>() + (split ? i0 * ds[0] : 0);
                for_each_row<2>(inner_shape, {&inner_ss, &inner_ds},
                                [&](auto off, int64_t n, auto inner) {
                                    const S* s = sp + off[0];
                                    D* d = dp + off[1];
                                    for (int64_t i = 0; i < n; ++i) {
                                        if constexpr (std::is_same_v<S, D>)
                                            d[i * inner[1]] = s[i * inner[0]];
                                        else
                                            d[i * inner[1]] = store_from_double<D>(
                                                load_as_double(s[i * inner[0]]));
                                    }
                                });
            }
        });
    });
}

void CpuBackend::fill(const Tensor& dst, double value) {
    visit_dtype(dst.dtype(), [&]<typename T>() {
        const T v = store_from_double<T>(value);
        T* p = dst.data<T>();
        const int64_t n = dst.numel();
#pragma omp parallel for schedule(static) if (n >= kParallelCopyMin)
        for (int64_t i = 0; i < n; ++i)
            p[i] = v;
    });
}

void CpuBackend::random(const Tensor& dst, RandomKind kind, uint64_t seed, double a, double b) {
    visit_float(dst.dtype(), [&]<typename T>() {
        T* p = dst.data<T>();
        const int64_t n = dst.numel();
#pragma omp parallel for if (n > 65536)
        for (int64_t i = 0; i < n; ++i) {
            double v;
            switch (kind) {
            case RandomKind::normal: { // Box-Muller on two independent counters
                double u1 = uniform01(seed, uint64_t(2 * i));
                double u2 = uniform01(seed, uint64_t(2 * i + 1));
                v = a + b * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
                break;
            }
            case RandomKind::uniform: v = a + (b - a) * uniform01(seed, uint64_t(i)); break;
            case RandomKind::dropout_mask:
                v = uniform01(seed, uint64_t(i)) < a ? 0.0 : 1.0 / (1.0 - a);
                break;
            default: v = 0;
            }
            p[i] = T(v);
        }
    });
}

} // namespace forge::cpu
