// The f32 row kernels of the NN ops (softmax, norms, cross-entropy, RoPE) per instruction set,
// and the run-time choice between them. The kernels are the templates of nn_rows.h
// instantiated in src/backends/cpu/kernels/*_avx2.cpp and *_avx512.cpp; the CpuBackend methods
// in src/backends/cpu/kernels/<op>.cpp call them, and run their own generic loops for f64 and
// for CPUs without AVX2. All pointers are to contiguous row-major data.
#pragma once

#include <atomic>
#include <cstdint>

namespace forge::cpu::nn {

enum class Isa : int { generic = 0, avx2 = 1, avx512 = 2 };

/// The best instruction set this CPU runs: AVX-512 (F, BW, VL, DQ), AVX2 + FMA, or neither.
inline Isa best_isa() {
    static const Isa isa = [] {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
            return Isa::avx512;
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
            return Isa::avx2;
        return Isa::generic;
    }();
    return isa;
}

inline std::atomic<int>& isa_cap() {
    static std::atomic<int> cap{int(Isa::avx512)};
    return cap;
}

/// The instruction set the kernels use: the best one, capped by set_isa_cap (tests use the
/// cap to run the AVX2 and generic paths on an AVX-512 machine).
inline Isa active_isa() {
    const int best = int(best_isa()), cap = isa_cap().load(std::memory_order_relaxed);
    return Isa(best < cap ? best : cap);
}
inline void set_isa_cap(Isa cap) {
    isa_cap().store(int(cap), std::memory_order_relaxed);
}

/// RAII: cap the instruction set within a scope.
struct IsaCapScope {
    int prev;
    explicit IsaCapScope(Isa cap) : prev(isa_cap().load()) { set_isa_cap(cap); }
    ~IsaCapScope() { isa_cap().store(prev); }
    IsaCapScope(const IsaCapScope&) = delete;
    IsaCapScope& operator=(const IsaCapScope&) = delete;
};

// One copy of these declarations per instruction set (namespaces avx2 and avx512).
// Shapes: x/y/dy/dx (rows, cols); w/b/dw/db (cols); mean/rstd/losses/lse/targets (rows).
#define FORGE_NN_ROW_KERNELS                                                                       \
    void softmax(const float* x, float* y, int64_t rows, int64_t cols, bool log);                  \
    void layer_norm(const float* x, const float* w, const float* b, float eps, float* y,           \
                    float* mean, float* rstd, int64_t rows, int64_t cols);                         \
    /* scratch: n_threads * 2 * cols zeros; per-thread partial dw and db sums land there. */       \
    void layer_norm_backward(const float* dy, const float* x, const float* w, const float* mean,   \
                             const float* rstd, float* dx, float* scratch, int n_threads,          \
                             int64_t rows, int64_t cols);                                          \
    void rms_norm(const float* x, const float* w, float eps, float* y, float* rstd, int64_t rows,  \
                  int64_t cols);                                                                   \
    /* scratch: n_threads * cols zeros; per-thread partial dw sums land there. */                  \
    void rms_norm_backward(const float* dy, const float* x, const float* w, const float* rstd,     \
                           float* dx, float* scratch, int n_threads, int64_t rows, int64_t cols);  \
    void cross_entropy(const float* logits, const int64_t* targets, int64_t ignore_index,          \
                       float* losses, float* lse, int64_t rows, int64_t cols);                     \
    void cross_entropy_backward(const float* logits, const int64_t* targets, const float* lse,     \
                                int64_t ignore_index, float scale, float* dlogits, int64_t rows,   \
                                int64_t cols);                                                     \
    /* x, y: (n_rows = B*H*T, d); cs, sn: the tables of rope_tables() (T rows). */                 \
    void rope(const float* x, float* y, const float* cs, const float* sn, int64_t n_rows,          \
              int64_t seq, int64_t d, int64_t rd, bool neox);                                     \
    /* Matmuls of 1..8 rows (simd/gemv_rows.h): outputs [r0, r1) / [c0, c1) of each y row. */   \
    void gemv_dot_rows(int rows, const float* w, int64_t ld, const float* x, int64_t xs,           \
                       float* y, int64_t ys, int64_t r0, int64_t r1, int64_t K);                   \
    void gemv_axpy_cols(int rows, const float* w, int64_t ld, const float* x, int64_t xs,          \
                        float* y, int64_t ys, int64_t c0, int64_t c1, int64_t K);

namespace avx2 {
FORGE_NN_ROW_KERNELS
}
namespace avx512 {
FORGE_NN_ROW_KERNELS
}

#undef FORGE_NN_ROW_KERNELS

/// Rows worth splitting across threads: below this many elements OpenMP costs more than it
/// saves.
constexpr int64_t kParallelMinElems = 1 << 15;

} // namespace forge::cpu::nn
