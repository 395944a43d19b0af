// CpuBackend::rope: builds cos/sin tables per (position, pair) in double, then rotates rows with
// the f32 SIMD kernel for the CPU's instruction set (simd/nn_rows.h) or the generic loop below
// (f64, CPUs without AVX2). f32 tables are cached per thread (a few entries: q and k of a layer
// and the backward's inverse share them), since computing T * rd/2 sin/cos pairs costs about
// as much as rotating a small batch. Formulas and layouts: ref/rope.cpp.
#include <cmath>
#include <memory>
#include <vector>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/cpu_common.h"
#include "backends/cpu/simd/nn_kernels.h"

namespace forge::cpu {

namespace {

struct RopeKey {
    float theta;
    int64_t pos_offset, seq, rd;
    bool neox, inverse;
    bool operator==(const RopeKey&) const = default;
};

// Tables for positions pos_offset .. pos_offset + seq - 1:
//   neox:        cs/sn (seq, rd/2): cos and sin of pair i
//   interleaved: cs/sn (seq, rd): [c0, c0, c1, c1, ...] and [-s0, s0, -s1, s1, ...]
// sin is negated for the inverse rotation. Angles and sin/cos in double, then rounded to T.
template <typename T> struct RopeTables {
    RopeKey key;
    std::vector<T> cs, sn;

    explicit RopeTables(const RopeKey& k) : key(k) {
        const int64_t half = k.rd / 2, width = k.neox ? half : k.rd;
        cs.resize(size_t(k.seq * width));
        sn.resize(size_t(k.seq * width));
        std::vector<double> inv_freq(static_cast<size_t>(half));
        for (int64_t i = 0; i < half; ++i)
            inv_freq[size_t(i)] = std::pow(double(k.theta), -2.0 * double(i) / double(k.rd));
#pragma omp parallel for schedule(static) if (k.seq * half >= 4096)
        for (int64_t t = 0; t < k.seq; ++t) {
            const double pos = double(k.pos_offset + t);
            T* c = cs.data() + t * width;
            T* s = sn.data() + t * width;
            for (int64_t i = 0; i < half; ++i) {
                const double a = pos * inv_freq[size_t(i)];
                const double cv = std::cos(a), sv = k.inverse ? -std::sin(a) : std::sin(a);
                if (k.neox) {
                    c[i] = T(cv);
                    s[i] = T(sv);
                } else {
                    c[2 * i] = c[2 * i + 1] = T(cv);
                    s[2 * i] = T(-sv);
                    s[2 * i + 1] = T(sv);
                }
            }
        }
    }
};

// The last few f32 tables this thread used.
const RopeTables<float>& cached_tables(const RopeKey& key) {
    constexpr size_t kEntries = 4;
    thread_local std::vector<std::unique_ptr<RopeTables<float>>> cache;
    thread_local size_t next = 0;
    for (const auto& e : cache)
        if (e->key == key)
            return *e;
    auto t = std::make_unique<RopeTables<float>>(key);
    if (cache.size() < kEntries) {
        cache.push_back(std::move(t));
        return *cache.back();
    }
    cache[next] = std::move(t);
    const auto& out = *cache[next];
    next = (next + 1) % kEntries;
    return out;
}

template <typename T>
void rope_generic(const T* x, T* y, const T* cs, const T* sn, int64_t n_rows, int64_t seq,
                  int64_t d, int64_t rd, bool neox) {
    const int64_t half = rd / 2;
#pragma omp parallel for schedule(static) if (n_rows * d >= nn::kParallelMinElems && n_rows > 1)
    for (int64_t r = 0; r < n_rows; ++r) {
        const T* xr = x + r * d;
        T* yr = y + r * d;
        const int64_t t = r % seq;
        if (neox) {
            const T *c = cs + t * half, *s = sn + t * half;
            for (int64_t i = 0; i < half; ++i) {
                const T x0 = xr[i], x1 = xr[i + half];
                yr[i] = x0 * c[i] - x1 * s[i];
                yr[i + half] = x0 * s[i] + x1 * c[i];
            }
        } else {
            const T *c = cs + t * rd, *s = sn + t * rd;
            for (int64_t i = 0; i < rd; i += 2) {
                const T x0 = xr[i], x1 = xr[i + 1];
                yr[i] = x0 * c[i] + x1 * s[i];
                yr[i + 1] = x1 * c[i + 1] + x0 * s[i + 1];
            }
        }
        for (int64_t k = rd; k < d; ++k)
            yr[k] = xr[k];
    }
}

} // namespace

// x, out: (B, H, T, D) contiguous.
void CpuBackend::rope(const Tensor& x, const RopeOptions& opts, const Tensor& out) {
    const int64_t seq = x.size(2), d = x.size(3), n_rows = x.size(0) * x.size(1) * seq;
    const int64_t rd = opts.rotary_dim == 0 ? d : opts.rotary_dim;
    const bool neox = opts.layout == RopeLayout::neox;
    const RopeKey key{opts.theta, opts.pos_offset, seq, rd, neox, opts.inverse};
    if (x.dtype() == DType::f32) {
        const RopeTables<float>& tb = cached_tables(key);
        const float* xp = x.data<float>();
        float* yp = out.data<float>();
        switch (nn::active_isa()) {
        case nn::Isa::avx512:
            return nn::avx512::rope(xp, yp, tb.cs.data(), tb.sn.data(), n_rows, seq, d, rd, neox);
        case nn::Isa::avx2:
            return nn::avx2::rope(xp, yp, tb.cs.data(), tb.sn.data(), n_rows, seq, d, rd, neox);
        case nn::Isa::generic:
            return rope_generic(xp, yp, tb.cs.data(), tb.sn.data(), n_rows, seq, d, rd, neox);
        }
    }
    visit_float(x.dtype(), [&]<typename T>() {
        RopeTables<T> tb(key);
        rope_generic(x.data<T>(), out.data<T>(), tb.cs.data(), tb.sn.data(), n_rows, seq, d, rd,
                     neox);
    });
}

} // namespace forge::cpu
