// Fast CPU matmul: OpenBLAS sgemm/dgemm per batch matrix (or our AVX-512 sgemm for small
// models' f32 shapes, see own_sgemm), with the transpose flags read from the strides (the op
// layer guarantees each matrix is row- or column-major), so transposed views are multiplied
// without a copy.
#include <algorithm>
#include <type_traits>
#include <vector>
#include <cstdint>

#include <cblas.h>
#include <omp.h>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/cpu_common.h"
#include "backends/cpu/kernels/gemm_bf16.h"
#include "backends/cpu/kernels/sgemm.h"
#include "backends/cpu/simd/nn_kernels.h"

namespace forge::cpu {

namespace {

// BLAS view of one (rows x cols) operand with strides (rs, cs): row-major is NoTrans with
// ld = rs; column-major is the transpose of a row-major (cols x rows) matrix with ld = cs.
struct BlasOperand {
    CBLAS_TRANSPOSE trans;
    int ld;
};

BlasOperand blas_operand(int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
    if (cs == 1 && rs >= std::max<int64_t>(cols, 1))
        return {CblasNoTrans, int(rs)};
    FORGE_ASSERT(rs == 1 && cs >= std::max<int64_t>(rows, 1));
    return {CblasTrans, int(cs)};
}

// M = 1 (decoding) goes to GEMV: OpenBLAS 0.3.21's sgemm packs the whole of B first even for
// one row, which measured 2-4x slower than sgemv on GPT-2's decode shapes (docs/PERF.md). f32
// with AVX2 uses our kernels (few_rows_f32 below); this BLAS path serves f64 and older CPUs.
// c (1 x N) = a (1 x K) B (K x N); B row-major is y = B^T a, B column-major (stored N x K) is
// y = B_stored a. a's K elements are 1 apart (row-major) or A.ld apart (column-major).
inline void gemm_ld(const BlasOperand& A, const BlasOperand& B, int M, int N, int K,
                    const float* a, const float* b, float* c, int ldc) {
    if (M == 1) {
        const int inc_a = A.trans == CblasNoTrans ? 1 : A.ld;
        if (B.trans == CblasNoTrans)
            cblas_sgemv(CblasRowMajor, CblasTrans, K, N, 1.0f, b, B.ld, a, inc_a, 0.0f, c, 1);
        else
            cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, 1.0f, b, B.ld, a, inc_a, 0.0f, c, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, A.trans, B.trans, M, N, K, 1.0f, a, A.ld, b, B.ld, 0.0f, c, ldc);
}
inline void gemm_ld(const BlasOperand& A, const BlasOperand& B, int M, int N, int K,
                    const double* a, const double* b, double* c, int ldc) {
    if (M == 1) {
        const int inc_a = A.trans == CblasNoTrans ? 1 : A.ld;
        if (B.trans == CblasNoTrans)
            cblas_dgemv(CblasRowMajor, CblasTrans, K, N, 1.0, b, B.ld, a, inc_a, 0.0, c, 1);
        else
            cblas_dgemv(CblasRowMajor, CblasNoTrans, N, K, 1.0, b, B.ld, a, inc_a, 0.0, c, 1);
        return;
    }
    cblas_dgemm(CblasRowMajor, A.trans, B.trans, M, N, K, 1.0, a, A.ld, b, B.ld, 0.0, c, ldc);
}

// One thread pool: OpenBLAS runs single-threaded (pinned once below) and our OpenMP threads
// split the work. With OpenBLAS's own pthreads beside libgomp's workers the two pools fought
// for the cores (sched_yield took ~20% of a nanoGPT-sized training step; docs/PERF.md).
// Work split: a batch of matrices goes one matrix per thread; a single matrix is cut into
// row blocks (or column blocks when it has few rows, e.g. GEMV), each a GEMM of its own.
// Below kMinParallel multiply-adds (a few microseconds) a fork/join costs more than it saves.
constexpr int64_t kMinParallel = 1 << 16;

extern "C" void openblas_set_num_threads(int);
const bool kOpenblasSingleThreaded = [] {
    openblas_set_num_threads(1);
    return true;
}();

// Our AVX-512 sgemm (sgemm.h) ran the products of small models (N <= 512, K <= 768) up to 12%
// faster than OpenBLAS's on one core of the Xeon and Zen 4, but GPT-2's (768 x 3072) 4-9%
// slower on the Xeon, and it loses where N leaves much of its last 32-column panel empty (the
// 65 logits of a char-level model); docs/PERF.md, "Session 9".
bool own_sgemm(int64_t N, int64_t K) {
    const int64_t padded = (N + 31) / 32 * 32;
    return N <= 512 && K <= 768 && N * 10 >= padded * 9 && nn::active_isa() == nn::Isa::avx512;
}

// Rows [r0, r1) and columns [c0, c1) of c = a b as one BLAS call (or one of ours).
template <typename T>
void gemm_block(const BlasOperand& A, const BlasOperand& B, int64_t N, int64_t K, const T* a,
                const T* b, T* c, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    // Row r of a starts at r * lda (row-major) or r (column-major); column j of b likewise.
    const T* a0 = a + (A.trans == CblasNoTrans ? r0 * A.ld : r0);
    const T* b0 = b + (B.trans == CblasNoTrans ? c0 : c0 * B.ld);
    if constexpr (std::is_same_v<T, float>) {
        if (r1 - r0 > 1 && own_sgemm(c1 - c0, K)) {
            const bool ra = A.trans == CblasNoTrans, rb = B.trans == CblasNoTrans;
            sgemm_avx512(r1 - r0, c1 - c0, K, a0, ra ? A.ld : 1, ra ? 1 : A.ld, b0, rb ? B.ld : 1,
                         rb ? 1 : B.ld, c + r0 * N + c0, N);
            return;
        }
    }
    gemm_ld(A, B, int(r1 - r0), int(c1 - c0), int(K), a0, b0, c + r0 * N + c0, int(N));
}

// Products of at most kFewRows rows go to our own kernels (simd/gemv_rows.h), whose per-row
// sums do not depend on the row count: decode steps of 1..16 sequences give each sequence the
// same bits.
constexpr int64_t kFewRows = 16;

// c (M x N) = a (M x K) B (K x N) in f32, M <= kFewRows, outputs split over `threads`.
void few_rows_f32(const BlasOperand& A, const BlasOperand& B, int64_t M, int64_t N, int64_t K,
                  const float* a, const float* b, float* c, int threads) {
    std::vector<float> packed;
    int64_t xs = A.ld;
    if (A.trans != CblasNoTrans) { // a is column-major: make its rows contiguous
        packed.resize(size_t(M * K));
        for (int64_t m = 0; m < M; ++m)
            for (int64_t k = 0; k < K; ++k) packed[size_t(m * K + k)] = a[m + k * A.ld];
        a = packed.data();
        xs = K;
    }
    const bool avx512 = nn::active_isa() == nn::Isa::avx512;
    const auto dot = avx512 ? nn::avx512::gemv_dot_rows : nn::avx2::gemv_dot_rows;
    const auto axpy = avx512 ? nn::avx512::gemv_axpy_cols : nn::avx2::gemv_axpy_cols;
    // Column chunks of 64 floats (whole cache lines of c) per thread.
    const int64_t chunk = std::max<int64_t>(64, (N + 64 * threads - 1) / (64 * threads) * 64);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t c0 = 0; c0 < N; c0 += chunk) {
        const int64_t c1 = std::min(N, c0 + chunk);
        // Rows of a that share each weight load: 8 fit AVX-512's 32 registers, 4 AVX2's 16.
        const int64_t group = avx512 ? 8 : 4;
        for (int64_t m = 0; m < M; m += group) {
            const int rows = int(std::min(group, M - m));
            if (B.trans == CblasNoTrans)
                axpy(rows, b, B.ld, a + m * xs, xs, c + m * N, N, c0, c1, K);
            else
                dot(rows, b, B.ld, a + m * xs, xs, c + m * N, N, c0, c1, K);
        }
    }
}

} // namespace

// a: (Bt, M, K), b: (Bt, K, N) with unit stride in one matrix dim and any batch stride;
// out: (Bt, M, N) contiguous.
void CpuBackend::matmul(const Tensor& a, const Tensor& b, const Tensor& out) {
    const int64_t Bt = a.size(0), M = a.size(1), K = a.size(2), N = b.size(2);
    FORGE_CHECK(M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX, "[matmul] matrix dims ", M, "x",
                K, " and ", K, "x", N, " exceed the BLAS int range");
    const BlasOperand A = blas_operand(M, K, a.strides()[1], a.strides()[2]);
    const BlasOperand B = blas_operand(K, N, b.strides()[1], b.strides()[2]);
    const int64_t sa = a.strides()[0], sb = b.strides()[0];
    const int threads = Bt * M * N * K >= kMinParallel ? omp_get_max_threads() : 1;
    if (M <= kFewRows && out.dtype() == DType::f32 && nn::active_isa() != nn::Isa::generic) {
        for (int64_t i = 0; i < Bt; ++i)
            few_rows_f32(A, B, M, N, K, a.data<float>() + i * sa, b.data<float>() + i * sb,
                         out.data<float>() + i * M * N, threads);
        return;
    }
    if (out.dtype() == DType::f32 && cpu_autocast_bf16()) {
        // bf16 autocast (set_cpu_autocast_bf16): one gemm_bf16 per matrix, which splits its
        // tiles over the threads itself; a batch of at least `threads` matrices goes one per
        // thread instead.
        const auto one = [&](int64_t i, int nt) {
            gemm_bf16(M, N, K, a.data<float>() + i * sa, a.strides()[1], a.strides()[2],
                      b.data<float>() + i * sb, b.strides()[1], b.strides()[2],
                      out.data<float>() + i * M * N, N, nt);
        };
        if (Bt >= threads && threads > 1) {
#pragma omp parallel for schedule(static)
            for (int64_t i = 0; i < Bt; ++i) one(i, 1);
        } else {
            for (int64_t i = 0; i < Bt; ++i) one(i, threads);
        }
        return;
    }
    visit_float(out.dtype(), [&]<typename T>() {
        if (M == 1) { // f64, or no AVX2: BLAS's GEMV, one call at a time (see gemv_rows.h)
            for (int64_t i = 0; i < Bt; ++i)
                gemm_block(A, B, N, K, a.data<T>() + i * sa, b.data<T>() + i * sb,
                           out.data<T>() + i * N, 0, 1, 0, N);
            return;
        }
        const T* ap = a.data<T>();
        const T* bp = b.data<T>();
        T* op = out.data<T>();
        if (Bt >= threads) {
#pragma omp parallel for schedule(static) if (threads > 1)
            for (int64_t i = 0; i < Bt; ++i)
                gemm_block(A, B, N, K, ap + i * sa, bp + i * sb, op + i * M * N, 0, M, 0, N);
            return;
        }
        // Few large matrices: each is cut into `threads` blocks, rows in multiples of 16 (or
        // columns in multiples of 64 when M is small), so no two threads share a cache line.
        const bool by_rows = M >= 16 * threads;
        const int64_t extent = by_rows ? M : N, quantum = by_rows ? 16 : 64;
        const int64_t chunk = (extent / quantum + threads - 1) / threads * quantum;
        const int64_t step = std::max<int64_t>(chunk, quantum);
        for (int64_t i = 0; i < Bt; ++i) {
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
            for (int64_t s0 = 0; s0 < extent; s0 += step) {
                const int64_t s1 = std::min(extent, s0 + step);
                if (by_rows)
                    gemm_block(A, B, N, K, ap + i * sa, bp + i * sb, op + i * M * N, s0, s1, 0, N);
                else
                    gemm_block(A, B, N, K, ap + i * sa, bp + i * sb, op + i * M * N, 0, M, s0, s1);
            }
        }
    });
}

} // namespace forge::cpu
