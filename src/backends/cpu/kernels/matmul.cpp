// Fast CPU matmul: OpenBLAS sgemm/dgemm per batch matrix, with the transpose flags read from the
// strides (the op layer guarantees each matrix is row- or column-major), so transposed views
// are multiplied without a copy.
#include <algorithm>
#include <cstdint>

#include <cblas.h>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/cpu_common.h"

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
// one row, which measured 2-4x slower than sgemv on GPT-2's decode shapes (docs/PERF.md).
// c (1 x N) = a (1 x K) B (K x N); B row-major is y = B^T a, B column-major (stored N x K) is
// y = B_stored a. a's K elements are 1 apart (row-major) or A.ld apart (column-major).
inline void gemm(const BlasOperand& A, const BlasOperand& B, int M, int N, int K, const float* a,
                 const float* b, float* c) {
    if (M == 1) {
        const int inc_a = A.trans == CblasNoTrans ? 1 : A.ld;
        if (B.trans == CblasNoTrans)
            cblas_sgemv(CblasRowMajor, CblasTrans, K, N, 1.0f, b, B.ld, a, inc_a, 0.0f, c, 1);
        else
            cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, 1.0f, b, B.ld, a, inc_a, 0.0f, c, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, A.trans, B.trans, M, N, K, 1.0f, a, A.ld, b, B.ld, 0.0f, c, N);
}
inline void gemm(const BlasOperand& A, const BlasOperand& B, int M, int N, int K, const double* a,
                 const double* b, double* c) {
    if (M == 1) {
        const int inc_a = A.trans == CblasNoTrans ? 1 : A.ld;
        if (B.trans == CblasNoTrans)
            cblas_dgemv(CblasRowMajor, CblasTrans, K, N, 1.0, b, B.ld, a, inc_a, 0.0, c, 1);
        else
            cblas_dgemv(CblasRowMajor, CblasNoTrans, N, K, 1.0, b, B.ld, a, inc_a, 0.0, c, 1);
        return;
    }
    cblas_dgemm(CblasRowMajor, A.trans, B.trans, M, N, K, 1.0, a, A.ld, b, B.ld, 0.0, c, N);
}

// OpenBLAS runs a GEMM on one thread below M*N*K = 64^3 (its SMP threshold), so a batch of
// such matrices is spread over our OpenMP threads instead; larger ones use OpenBLAS's own
// threads, one matrix at a time (nesting both would oversubscribe the cores). A batch whose
// total work is below kMinParallel multiply-adds (a few microseconds) stays on one thread: a
// fork/join would cost more than it saves.
constexpr int64_t kSmallGemm = 64 * 64 * 64;
constexpr int64_t kMinParallel = 1 << 16;

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
    visit_float(out.dtype(), [&]<typename T>() {
        const T* ap = a.data<T>();
        const T* bp = b.data<T>();
        T* op = out.data<T>();
        const bool parallel = M * N * K < kSmallGemm && Bt > 1 && Bt * M * N * K >= kMinParallel;
#pragma omp parallel for schedule(static) if (parallel)
        for (int64_t i = 0; i < Bt; ++i)
            gemm(A, B, int(M), int(N), int(K), ap + i * sa, bp + i * sb, op + i * M * N);
    });
}

} // namespace forge::cpu
