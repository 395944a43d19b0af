// Matmul through cuBLAS: one strided-batched GEMM per call. The op layer hands each matrix
// row-major (column stride 1) or column-major (row stride 1), with any batch stride (0 when
// broadcast), so the transposes come from the strides and nothing is copied.
// cuBLAS is column-major; a row-major (M, N) output is the column-major (N, M) matrix
// C^T = B^T A^T, so the call computes that with B as the first operand.
// f32 runs in full f32 (CUBLAS_COMPUTE_32F) unless forge::cuda::set_allow_tf32(true) (TF32
// tensor cores) or set_autocast_bf16(true) / set_autocast_f16(true): then both operands are
// copied to bf16 / f16 (one pass each) and cuBLAS multiplies bf16 x bf16 (CUDA_R_16BF) or
// f16 x f16 (CUDA_R_16F) on tensor cores with f32 accumulation and f32 output, through
// cuBLASLt with a timed choice of algorithm per problem (gemm_lt.cpp).
// (COMPUTE_32F_FAST_16BF on f32 operands gave TF32's results and speed on an H200, so the copies
// are explicit.) Operands that are bf16 or f16 already (both of one type; linear() rounds each
// operand once under autocast and hands them here) go to the GEMM as they are, f32 output or
// one of their type.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "backends/cuda/cuda_backend.h"

namespace forge::cuda {

namespace {

// A stored matrix as cuBLAS sees it, for the product C^T = X^T-ish: `x` of shape (rows, cols)
// with strides (rs, cs). Returns the op that turns the column-major view of its memory into
// the transpose of x (the factor C^T needs), and the leading dimension.
struct Operand {
    cublasOperation_t op;
    int64_t ld;
};
Operand transpose_operand(int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
    if (cs == 1) // row-major: its column-major view is x^T already
        return {CUBLAS_OP_N, std::max<int64_t>(rs, std::max<int64_t>(cols, 1))};
    // column-major (rs == 1): the view is x itself, so transpose it
    return {CUBLAS_OP_T, std::max<int64_t>(cs, std::max<int64_t>(rows, 1))};
}

// The bf16 (or f16) copy of every element x's view can reach (its span from data_ptr, strides
// kept), so the GEMM reads it with x's own leading dimension and batch stride. Freed (to the
// allocator's cache, stream-ordered) when the caller drops it.
std::shared_ptr<Storage> half_copy(const Tensor& x, bool f16, void* stream) {
    int64_t span = 1;
    for (int64_t d = 0; d < x.dim(); ++d)
        span += (x.size(d) - 1) * x.strides()[size_t(d)];
    auto buf = backend().allocate(size_t(span) * 2, x.device());
    if (f16)
        convert_f32_to_f16(x.data<float>(), buf->data, span, stream);
    else
        convert_f32_to_bf16(x.data<float>(), buf->data, span, stream);
    return buf;
}

} // namespace

namespace {

// The column-major problem for out (Bt, M, N) = a (Bt, M, K) b (Bt, K, N), half operands at
// a_data / b_data with a's and b's strides: C^T = B^T A^T, so cuBLAS's "A" is our b.
HalfGemm half_problem(const Tensor& a, const Tensor& b, const Tensor& out, const void* a_data,
                      const void* b_data, bool f16) {
    const int64_t M = a.size(1), K = a.size(2), N = b.size(2);
    const Operand ob = transpose_operand(K, N, b.strides()[1], b.strides()[2]); // gives B^T
    const Operand oa = transpose_operand(M, K, a.strides()[1], a.strides()[2]); // gives A^T
    HalfGemm g;
    g.device = out.device().index;
    g.f16 = f16;
    g.op_a = int(ob.op), g.op_b = int(oa.op);
    g.m = N, g.n = M, g.k = K, g.lda = ob.ld, g.ldb = oa.ld, g.ldc = N;
    g.a = b_data, g.b = a_data, g.c = out.data_ptr();
    g.half_out = out.dtype() != DType::f32;
    g.batch = a.size(0), g.stride_a = b.strides()[0], g.stride_b = a.strides()[0],
    g.stride_c = M * N;
    return g;
}

} // namespace

// a: (Bt, M, K), b: (Bt, K, N), out: (Bt, M, N) contiguous.
void CudaBackend::matmul(const Tensor& a, const Tensor& b, const Tensor& out) {
    const int64_t Bt = a.size(0), M = a.size(1), K = a.size(2), N = b.size(2);
    if (out.numel() == 0) return;
    FORGE_CHECK(M < INT32_MAX && N < INT32_MAX && K < INT32_MAX && Bt < INT32_MAX,
                "[matmul] a dimension of ", shape_str(a.shape()), " x ", shape_str(b.shape()),
                " exceeds cuBLAS's 32-bit sizes");
    Context& c = context(out);
    auto h = cublasHandle_t(c.cublas);
    const bool half_in = a.dtype() == DType::bf16 || a.dtype() == DType::f16;
    if (half_in) {
        FORGE_CHECK(b.dtype() == a.dtype() &&
                        (out.dtype() == DType::f32 || out.dtype() == a.dtype()),
                    "[matmul] CUDA takes ", dtype_name(a.dtype()),
                    " operands only in pairs with an f32 output or one of their type, got ",
                    dtype_name(a.dtype()), " x ", dtype_name(b.dtype()), " -> ",
                    dtype_name(out.dtype()));
        if (K == 0) return fill(out, 0.0);
        gemm_half_lt(half_problem(a, b, out, a.data_ptr(), b.data_ptr(),
                                  a.dtype() == DType::f16));
    } else if (out.dtype() == DType::f32 && (autocast_bf16() || autocast_f16()) && K > 0) {
        // Half copies of both operands' memory spans (same strides), half x half -> f32. bf16
        // wins if both switches are on (PrecisionScope sets at most one).
        const bool f16 = !autocast_bf16();
        auto ab = half_copy(a, f16, c.stream), bb = half_copy(b, f16, c.stream);
        gemm_half_lt(half_problem(a, b, out, ab->data, bb->data, f16));
    } else if (out.dtype() == DType::f32) {
        const Operand ob = transpose_operand(K, N, b.strides()[1], b.strides()[2]); // gives B^T
        const Operand oa = transpose_operand(M, K, a.strides()[1], a.strides()[2]); // gives A^T
        const long long sb = b.strides()[0], sa = a.strides()[0], so = M * N;
        const float one = 1.0f, zero = 0.0f;
        const cublasComputeType_t ct =
            allow_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
        FORGE_CUDA_CHECK(cublasGemmStridedBatchedEx(
            h, ob.op, oa.op, int(N), int(M), int(K), &one, b.data_ptr(), CUDA_R_32F, int(ob.ld),
            sb, a.data_ptr(), CUDA_R_32F, int(oa.ld), sa, &zero, out.data_ptr(), CUDA_R_32F,
            int(N), so, int(Bt), ct, CUBLAS_GEMM_DEFAULT));
    } else {
        FORGE_ASSERT(out.dtype() == DType::f64);
        const Operand ob = transpose_operand(K, N, b.strides()[1], b.strides()[2]);
        const Operand oa = transpose_operand(M, K, a.strides()[1], a.strides()[2]);
        const long long sb = b.strides()[0], sa = a.strides()[0], so = M * N;
        const double one = 1.0, zero = 0.0;
        FORGE_CUDA_CHECK(cublasDgemmStridedBatched(
            h, ob.op, oa.op, int(N), int(M), int(K), &one, b.data<double>(), int(ob.ld), sb,
            a.data<double>(), int(oa.ld), sa, &zero, out.data<double>(), int(N), so, int(Bt)));
    }
}

void matmul_half(const Tensor& a, const Tensor& b, const Tensor& out, bool accumulate) {
    FORGE_CHECK((a.dtype() == DType::bf16 || a.dtype() == DType::f16) &&
                    b.dtype() == a.dtype() &&
                    (out.dtype() == DType::f32 || out.dtype() == a.dtype()) &&
                    out.is_contiguous(),
                "[matmul] matmul_half takes bf16 or f16 operands and a contiguous f32 output or "
                "one of their type, got ",
                dtype_name(a.dtype()), " x ", dtype_name(b.dtype()), " -> ",
                dtype_name(out.dtype()));
    if (out.numel() == 0) return;
    if (a.size(2) == 0) {
        if (!accumulate) backend().fill(out, 0.0);
        return;
    }
    HalfGemm g = half_problem(a, b, out, a.data_ptr(), b.data_ptr(), a.dtype() == DType::f16);
    g.accumulate = accumulate;
    gemm_half_lt(g);
}

// Half operands: the bias rides in cuBLASLt's epilogue (one pass over out fewer). Otherwise the
// default: the GEMM, then bias_act.
void CudaBackend::matmul_bias(const Tensor& a, const Tensor& b, const Tensor& bias,
                              const Tensor& out) {
    const bool half_in = a.dtype() == DType::bf16 || a.dtype() == DType::f16;
    // The bias has the output's type: f32, or (a half output) the operands' type.
    if (!half_in || out.numel() == 0 || a.size(2) == 0 || bias.dtype() != out.dtype() ||
        !bias.is_contiguous() || reinterpret_cast<uintptr_t>(bias.data_ptr()) % 16 != 0)
        return Backend::matmul_bias(a, b, bias, out);
    FORGE_CHECK(b.dtype() == a.dtype() &&
                    (out.dtype() == DType::f32 || out.dtype() == a.dtype()),
                "[matmul_bias] CUDA takes ", dtype_name(a.dtype()),
                " operands only in pairs with an f32 output or one of their type");
    HalfGemm g = half_problem(a, b, out, a.data_ptr(), b.data_ptr(), a.dtype() == DType::f16);
    g.bias = bias.data_ptr();
    gemm_half_lt(g);
}

// GELU-tanh and the bias in cuBLASLt's epilogue (CUBLASLT_EPILOGUE_GELU_AUX_BIAS), which also
// stores the GELU's input for the backward: no pass of its own over the product (bias_act read
// it and wrote the output, 80 us a layer of GPT-2's at 16 x 1024 tokens on an H200).
bool CudaBackend::matmul_bias_gelu_aux(const Tensor& a, const Tensor& b, const Tensor& bias,
                                       const Tensor& out, const Tensor& aux) {
    const bool half_in = a.dtype() == DType::bf16 || a.dtype() == DType::f16;
    const int64_t N = out.size(2);
    if (!half_in || b.dtype() != a.dtype() || out.dtype() != a.dtype() ||
        aux.dtype() != a.dtype() || bias.dtype() != a.dtype() || !out.is_contiguous() ||
        !aux.is_contiguous() || aux.shape() != out.shape() || !bias.is_contiguous() ||
        out.numel() == 0 || a.size(2) == 0 || N % 8 != 0 || out.size(0) != 1 ||
        reinterpret_cast<uintptr_t>(bias.data_ptr()) % 16 != 0 ||
        reinterpret_cast<uintptr_t>(aux.data_ptr()) % 16 != 0)
        return false;
    HalfGemm g = half_problem(a, b, out, a.data_ptr(), b.data_ptr(), a.dtype() == DType::f16);
    g.bias = bias.data_ptr();
    g.gelu_aux = aux.data_ptr();
    g.aux_ld = N; // column-major: the output's rows are its N columns
    return gemm_half_lt(g, /*required=*/false);
}

} // namespace forge::cuda
