// The CUDA backend: the Backend table on NVIDIA GPUs (Hopper, sm_90a). One context per device
// (a stream, cuBLAS handles); every kernel and copy runs on that one stream, so the caching
// allocator can hand a freed block to the next tensor without waiting. Host-only header: no
// CUDA types, so plain C++ files (registry, optimizer) can include it.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "backends/backend.h"

namespace forge::cuda {

class CudaBackend : public Backend {
  public:
    const char* name() const override { return "cuda"; }
    std::shared_ptr<Storage> allocate(size_t nbytes, Device device) override;
    /// Also copies between the host and the device when one side is on the CPU (both
    /// contiguous, one dtype): the transfer behind Tensor::to(Device).
    void copy(const Tensor& src, const Tensor& dst) override;
    void fill(const Tensor& dst, double value) override;
    void random(const Tensor& dst, RandomKind kind, uint64_t seed, double a, double b) override;

    void unary(UnaryOp op, const Tensor& x, const Tensor& out, double alpha) override;
    void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) override;
    void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) override;
    void reduce(ReduceOp op, const Tensor& x, const std::vector<int64_t>& dims,
                const Tensor& out) override;
    void matmul(const Tensor& a, const Tensor& b, const Tensor& out) override;
    void matmul_bias(const Tensor& a, const Tensor& b, const Tensor& bias,
                     const Tensor& out) override;
    /// Under bf16/f16 autocast: half operands, vocabulary padded to 64 for aligned rows, each
    /// chunk's logits in the half type, overwritten by the gradient in one fused softmax/loss
    /// pass (linear_ce.cu); otherwise the default.
    bool matmul_bias_gelu_aux(const Tensor& a, const Tensor& b, const Tensor& bias,
                              const Tensor& out, const Tensor& aux) override;
    void linear_cross_entropy(const Tensor& x, const Tensor& w, const Tensor& targets,
                              int64_t ignore_index, double grad_scale, const Tensor& losses,
                              const Tensor& dx, const Tensor& dw) override;
    void softmax(const Tensor& x, const Tensor& out, bool log) override;
    void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps,
                    const Tensor& out, const Tensor& mean, const Tensor& rstd) override;
    void layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                             const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                             const Tensor& dw, const Tensor& db) override;
    bool layer_norm_backward_add(const Tensor& dy, const Tensor& x, const Tensor& w,
                                 const Tensor& mean, const Tensor& rstd, const Tensor& dx_add,
                                 const Tensor& dx, const Tensor& dw, const Tensor& db) override;
    void rms_norm(const Tensor& x, const Tensor& w, float eps, const Tensor& out,
                  const Tensor& rstd) override;
    void rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                           const Tensor& rstd, const Tensor& dx, const Tensor& dw) override;
    void cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                       const Tensor& losses, const Tensor& lse) override;
    void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                                int64_t ignore_index, const Tensor& dloss, double inv_count,
                                const Tensor& dlogits) override;
    void embedding(const Tensor& weight, const Tensor& ids, const Tensor& out) override;
    void embedding_backward(const Tensor& dout, const Tensor& ids,
                            const Tensor& dweight) override;
    void rope(const Tensor& x, const RopeOptions& opts, const Tensor& out) override;
    void attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, bool causal,
                   const Tensor& out, const Tensor& lse) override;
    void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                            const Tensor& lse, const Tensor& dout, float scale, bool causal,
                            const Tensor& dq, const Tensor& dk, const Tensor& dv) override;
    /// Both attention kernels read and write rows at any B, H, T strides (attention.cuh).
    bool attention_strided() const override { return true; }
    bool attention_takes_half(const Tensor& q, const Tensor& k, const Tensor& v,
                              bool causal) const override;
    bool binary_mixed_float() const override { return true; }
    /// One pass each, f32 (bias_act.cu; the forward's out may be bf16 / f16); other dtypes take
    /// Backend's default.
    void bias_act(const Tensor& x, const Tensor& b, bool gelu, const Tensor& out) override;
    void bias_act_backward(const Tensor& dy, const Tensor& x, const Tensor& b, bool gelu,
                           const Tensor& dx, const Tensor& db) override;
};

/// The process-wide CUDA backend (registry.cpp hands it out for cuda devices).
/// Timing events on device 0's stream, for the FORGE_PROFILE wrapper (profiling_backend.h):
/// a new event, recording it now, and the ms between two recorded events (waiting for the
/// second; NaN when the runtime is already shutting down at exit).
void* timing_event_create();
void timing_event_record(void* event);
float timing_event_ms(void* a, void* b);
CudaBackend& backend();

/// Per-device state, created on first use. The stream is an opaque cudaStream_t.
struct Context {
    int device = 0;
    void* stream = nullptr;       // cudaStream_t
    void* cublas = nullptr;       // cublasHandle_t
    void* cublaslt = nullptr;     // cublasLtHandle_t (gemm_lt.cpp)
    void* workspace = nullptr;    // cuBLAS workspace on this device
    size_t workspace_bytes = 0;
};
/// Makes `device` current on this thread and returns its context.
Context& context(int device);
inline Context& context(const Tensor& t) { return context(t.device().index); }

/// src or dst on the host, the other on a CUDA device; both contiguous, one dtype. Large copies
/// go through pinned buffers; host -> device returns before the data has landed (stream order).
void copy_host_device(const Tensor& src, const Tensor& dst);

/// Throws DeviceError naming the failing statement, file:line and CUDA's message.
[[noreturn]] void throw_cuda_error(int code, const char* what, const char* file, int line);
/// After a kernel launch: turns a launch error into a DeviceError naming the op.
void check_launch(const char* op);

/// The bf16 tensor-core flash attention (attention_tc.cu): f32 or bf16 q/k/v (out, dq, dk, dv in
/// their type; dout f32 or theirs; lse f32), head dim 64 or 128, not causal with Tq > Tk, rows
/// 16-byte aligned (every tensor's base and B, H, T strides). attention() takes it when
/// allow_reduced_precision_attention() or an autocast is on; otherwise the exact f32 kernel
/// runs. `others`: the outputs (and dout) the pass also touches, held to the same alignment.
bool attention_tc_supported(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                            std::initializer_list<const Tensor*> others = {});
void attention_tc_forward(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                          bool causal, const Tensor& out, const Tensor& lse);
void attention_tc_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                           const Tensor& lse, const Tensor& dout, float scale, bool causal,
                           const Tensor& dq, const Tensor& dk, const Tensor& dv);
/// Warps per block of those kernels, forced for forward and backward alike: 4 or 8, or 0 for
/// the defaults (8, but 4 for the forward at head dim 64); for tests and benchmarks.
void set_attention_tc_warps(int warps);
/// The tensor-core forward on bf16 tensors: 0 the default, 1 the mma.sync kernel f32 tensors
/// take (with set_attention_tc_warps' warps), 2..4 the wgmma kernel's block shapes and
/// exponential splits (attention_wg.cu, visit_fwd_wg); for tests and benchmarks.
void set_attention_tc_fwd_config(int config);
/// The tensor-core backward on bf16 tensors: 0 the default, 1 the mma.sync kernel (with
/// set_attention_tc_warps' warps), 2..3 the wgmma kernel with 1 or 2 warpgroups a block; for
/// tests and benchmarks.
void set_attention_tc_bwd_config(int config);

/// One half-operand GEMM in cuBLAS's column-major terms (matmul.cpp derives them from row-major
/// tensors): C (m x n, ldc) = op_a(A) op_b(B) [+ bias (m) in the epilogue], A and B bf16
/// (or f16), f32 accumulation, C f32 or (half_out, no bias) the operands' half type; `batch`
/// problems at the given element strides.
struct HalfGemm {
    int device = 0;
    bool f16 = false;
    int op_a = 0, op_b = 0; // cublasOperation_t
    int64_t m = 0, n = 0, k = 0, lda = 0, ldb = 0, ldc = 0;
    const void* a = nullptr;
    const void* b = nullptr;
    void* c = nullptr;
    bool half_out = false;
    const void* bias = nullptr; // f32, or the half type when half_out (cuBLASLt's rule)
    // With bias and half_out: GELU-tanh in the epilogue, its input (product + bias) stored to
    // gelu_aux in the half type, aux_ld apart (a multiple of 8).
    void* gelu_aux = nullptr;
    int64_t aux_ld = 0;
    int64_t batch = 1, stride_a = 0, stride_b = 0, stride_c = 0;
    bool accumulate = false; // C += product (beta = 1) instead of C = product
};
/// Runs it through cuBLASLt with the algorithm timed fastest for that problem (gemm_lt.cpp).
/// Where cuBLASLt has no algorithm for it: an error, or with `required` false, false.
bool gemm_half_lt(const HalfGemm& g, bool required = true);
/// out (Bt, M, N) (+)= a (Bt, M, K) b (Bt, K, N), a and b bf16 (or both f16) with matmul's
/// layout rules; out contiguous, f32 or the operands' half type (f32 accumulation either way).
/// For linear_ce.cu: logits straight in the half type, and a weight gradient summed over row
/// chunks without a temporary (accumulate).
void matmul_half(const Tensor& a, const Tensor& b, const Tensor& out, bool accumulate);
/// The cuBLASLt handle of `device`'s context.
void* lt_handle(int device);

/// out[c] = sum over r < rows of partial[r * cols + c] (device pointers, f32, added in f64 in a
/// fixed order) on `stream`: the second stage of the column sums (bias and norm weight
/// gradients) whose first stage writes one row of partial sums per block. Many threads per
/// column, so a few hundred partial rows cost a few microseconds.
void sum_partial_rows(const float* partial, int64_t rows, int64_t cols, float* out, void* stream);
/// dst[i] = bf16(src[i]) for i < n (device pointers) on `stream` (a cudaStream_t).
void convert_f32_to_bf16(const float* src, void* dst, int64_t n, void* stream);
/// dst[i] = f16(src[i]) (round to nearest even; beyond 65504 inf) for i < n, as above.
void convert_f32_to_f16(const float* src, void* dst, int64_t n, void* stream);

/// Fused AdamW over many f32 tensors of one device in one launch per chunk of tensors:
/// m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; w = w * decay_i - step_size * m / (sqrt(v) /
/// bc2_sqrt + eps). decay is per tensor (1 when not decayed). All tensors contiguous f32.
struct AdamWTensor {
    float* w;
    const float* g;
    float* m;
    float* v;
    int64_t n;
    float decay;
};
void adamw_multi_tensor(int device, const std::vector<AdamWTensor>& ts, float b1, float b2,
                        float a1, float a2, float step_size, float bc2_sqrt, float eps);

} // namespace forge::cuda

/// Wraps a CUDA runtime call: throws forge::DeviceError with the statement and file:line.
#define FORGE_CUDA_CHECK(call)                                                                     \
    do {                                                                                           \
        const int forge_cuda_rc_ = int(call);                                                      \
        if (forge_cuda_rc_ != 0)                                                                   \
            ::forge::cuda::throw_cuda_error(forge_cuda_rc_, #call, __FILE__, __LINE__);            \
    } while (0)
