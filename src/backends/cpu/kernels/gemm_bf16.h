// bf16 mixed-precision GEMM for CPU autocast: f32 operands rounded to bf16 (round to nearest
// even), products accumulated in f32, f32 output; the same arithmetic as PyTorch's CPU autocast
// matmul. Three paths chosen at run time: AMX-BF16 tiles, AVX512_BF16 (vdpbf16ps), and a plain
// C++ loop for other CPUs. Not wired into any op here: CpuBackend::matmul decides when to call it.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

namespace forge::cpu {

/// Which bf16 path this CPU runs: none (plain loops), avx512_bf16 (vdpbf16ps), amx (AMX-BF16).
/// What runs, not what pays: vdpbf16ps retires 2x the FLOPs of an f32 FMA on AMD Zen 4 but
/// half of them on Intel Sapphire Rapids, where avx512_bf16 loses to sgemm and only amx wins
/// (docs/PERF.md, ## bf16 GEMM).
enum class Bf16Gemm { none, avx512_bf16, amx };

/// Detected once: cpuid, the OS's saved-state support, and for AMX the Linux permission to use
/// tile data (arch_prctl ARCH_REQ_XCOMP_PERM); a refused permission falls back to avx512_bf16.
Bf16Gemm bf16_gemm_kind();

/// c (M x N, row stride ldc) = bf16(a) (M x K) * bf16(b) (K x N), f32 accumulation, f32 out.
/// a's element (m, k) is a[m * a_rs + k * a_cs]; b's (k, n) is b[k * b_rs + n * b_cs]. The
/// work is split over `threads` OpenMP threads in one parallel region; threads = 1 runs inline.
/// M, N, K >= 1.
void gemm_bf16(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_rs, int64_t a_cs,
               const float* b, int64_t b_rs, int64_t b_cs, float* c, int64_t ldc, int threads);

/// gemm_bf16 on a given path (tests force the AVX512_BF16 path on AMX machines). The path must
/// be one this CPU runs: `kind` <= bf16_gemm_kind(), all three being ordered by capability.
void gemm_bf16_on(Bf16Gemm kind, int64_t M, int64_t N, int64_t K, const float* a, int64_t a_rs,
                  int64_t a_cs, const float* b, int64_t b_rs, int64_t b_cs, float* c, int64_t ldc,
                  int threads);

/// f32 -> bf16 bits exactly as vcvtne2ps2bf16 does it: round to nearest even, NaN kept (made
/// quiet), and f32 denormals flushed to a signed zero (unlike forge::f32_to_bf16, which keeps
/// them), whatever MXCSR says.
inline uint16_t f32_to_bf16_daz(float f) {
    const uint32_t x = std::bit_cast<uint32_t>(f);
    if ((x & 0x7fffffff) > 0x7f800000)
        return uint16_t((x >> 16) | 0x40);
    if ((x & 0x7f800000) == 0)
        return uint16_t((x >> 16) & 0x8000);
    return uint16_t((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

namespace bf16 {
// Grow-only 64-byte-aligned scratch for packed panels. Callers keep one per thread
// (thread_local), so repeated GEMMs reuse warm pages instead of faulting in fresh ones.
template <typename T> class Scratch {
  public:
    T* get(size_t n) {
        if (n > size_) {
            const size_t bytes = (n * sizeof(T) + 63) / 64 * 64;
            buf_.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
            if (!buf_)
                throw std::bad_alloc();
            size_ = n;
        }
        return buf_.get();
    }

  private:
    struct Free {
        void operator()(T* p) const { std::free(p); }
    };
    std::unique_ptr<T, Free> buf_;
    size_t size_ = 0;
};

// One thread's share (t of nt) of c cut into blocks of mr rows and panels of nr columns:
// whole row blocks or whole column panels, whichever leaves the busiest thread the smaller
// area (ties: rows). The split operand is packed by the threads that use it, the other one in
// 1/nt shares.
struct TileRange {
    int64_t m0, m1, j0, j1; // row blocks [m0, m1), column panels [j0, j1)
    bool by_rows;
};
inline TileRange tile_range(int64_t M, int64_t N, int64_t mr, int64_t nr, int t, int nt) {
    const int64_t m_blocks = (M + mr - 1) / mr, n_panels = (N + nr - 1) / nr;
    const bool by_rows = (m_blocks + nt - 1) / nt * mr * N <= (n_panels + nt - 1) / nt * nr * M;
    if (by_rows)
        return {m_blocks * t / nt, m_blocks * (t + 1) / nt, 0, n_panels, true};
    return {0, m_blocks, n_panels * t / nt, n_panels * (t + 1) / nt, false};
}

// Per-path entry points (gemm_bf16_avx512bf16.cpp, gemm_bf16_amx.cpp, gemm_bf16.cpp), same
// contract as gemm_bf16.
void gemm_generic(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_rs, int64_t a_cs,
                  const float* b, int64_t b_rs, int64_t b_cs, float* c, int64_t ldc, int threads);
void gemm_avx512bf16(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_rs, int64_t a_cs,
                     const float* b, int64_t b_rs, int64_t b_cs, float* c, int64_t ldc,
                     int threads);
void gemm_amx(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_rs, int64_t a_cs,
              const float* b, int64_t b_rs, int64_t b_cs, float* c, int64_t ldc, int threads);

// Packing shared by the AVX512_BF16 and AMX paths (gemm_bf16_avx512bf16.cpp).
// Pair panel: dst[p * width + l] = (bf16 x(2p, l), bf16 x(2p+1, l)) as one uint32 (low half
// the even k), for p < n_pairs and l < width; x(k, l) = x[k * k_stride + l * lane_stride],
// zero where k >= K or l >= lanes. B's panels (lanes = columns) and A's row blocks of the
// AVX512_BF16 path (lanes = rows) both take this form: vdpbf16ps's and AMX's B operand.
void pack_pairs(const float* x, int64_t k_stride, int64_t lane_stride, int64_t lanes, int64_t K,
                int64_t n_pairs, int width, uint32_t* dst);
// Rows panel (AMX's A operand): dst[r * k_pad + k] = bf16 x(r, k) for r < rows, k < k_pad;
// x(r, k) = x[r * row_stride + k * k_stride], zero where k >= K; k_pad even.
void pack_rows(const float* x, int64_t row_stride, int64_t k_stride, int64_t rows, int64_t K,
               int64_t k_pad, uint16_t* dst);
} // namespace bf16

} // namespace forge::cpu
