// CPU memory, copies, fills and the counter-based random generator (shared by the fast and the
// reference CPU backends).
#include "backends/cpu/cpu_backend.h"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
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

MemoryStats memory_stats() { return {g_current.load(), g_peak.load()}; }
void reset_peak_memory() { g_peak.store(g_current.load()); }

std::shared_ptr<Storage> CpuBackend::allocate(size_t nbytes, Device device) {
    size_t rounded = (std::max<size_t>(nbytes, 1) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    if (!p)
        throw DeviceError("out of memory: failed to allocate " + std::to_string(nbytes) +
                          " bytes on the CPU (" + std::to_string(memory_stats().current) +
                          " bytes in use by tensors)");
    note_alloc(rounded);
    return std::make_shared<Storage>(p, nbytes, device, [rounded](void* q) {
        std::free(q);
        g_current.fetch_sub(rounded);
    });
}

void CpuBackend::copy(const Tensor& src, const Tensor& dst) {
    if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous()) {
        if (src.data_ptr() != dst.data_ptr())
            std::memmove(dst.data_ptr(), src.data_ptr(), dst.nbytes());
        return;
    }
    const Shape &ss = src.strides(), &ds = dst.strides();
    visit_dtype(src.dtype(), [&]<typename S>() {
        visit_dtype(dst.dtype(), [&]<typename D>() {
            const S* sp = src.data<S>();
            D* dp = dst.data<D>();
            for_each_row<2>(dst.shape(), {&ss, &ds}, [&](auto off, int64_t n, auto inner) {
                const S* s = sp + off[0];
                D* d = dp + off[1];
                for (int64_t i = 0; i < n; ++i) {
                    if constexpr (std::is_same_v<S, D>)
                        d[i * inner[1]] = s[i * inner[0]];
                    else
                        d[i * inner[1]] = store_from_double<D>(load_as_double(s[i * inner[0]]));
                }
            });
        });
    });
}

void CpuBackend::fill(const Tensor& dst, double value) {
    visit_dtype(dst.dtype(), [&]<typename T>() {
        T v = store_from_double<T>(value);
        T* p = dst.data<T>();
        const int64_t n = dst.numel();
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
