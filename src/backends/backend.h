// The backend interface: one virtual per kernel. Ops (src/core/ops*.cpp) validate inputs,
// allocate outputs and promote dtypes, so kernels may assume what each comment below states.
// A second backend (CUDA) implements this same table; callers never change.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <forge/core/ops.h>
#include <forge/core/tensor.h>

namespace forge {

enum class UnaryOp {
    neg, exp, log, sqrt, rsqrt, tanh, sigmoid, relu, abs,
    gelu_tanh, gelu_erf, silu, gelu_tanh_grad, gelu_erf_grad, silu_grad,
    add_scalar, mul_scalar, pow_scalar, rsub_scalar, // use `alpha`
};
enum class BinaryOp { add, sub, mul, div, maximum, eq, gt, lt };
enum class ReduceOp { sum, max };
enum class RandomKind { normal, uniform, dropout_mask };

/// Conventions for every kernel below, unless its comment says otherwise:
/// - "float" tensors are f32 or f64 (half types were widened by the op);
/// - outputs are contiguous and preallocated; inputs of the fused kernels are contiguous;
/// - every tensor lives on this backend's device.
class Backend {
  public:
    virtual ~Backend() = default;
    virtual const char* name() const = 0;

    virtual std::shared_ptr<Storage> allocate(size_t nbytes, Device device) = 0;
    /// dst[i] = cast(src[i]); same shape; both may be strided (src may broadcast, stride 0).
    virtual void copy(const Tensor& src, const Tensor& dst) = 0;
    /// dst (contiguous, any dtype) = value.
    virtual void fill(const Tensor& dst, double value) = 0;
    /// dst (contiguous float): normal(a=mean, b=std), uniform[a, b), or dropout mask
    /// (0 with probability a, else 1/(1-a)). Element i depends only on (seed, i).
    virtual void random(const Tensor& dst, RandomKind kind, uint64_t seed, double a,
                        double b) = 0;

    /// out = op(x, alpha); x float, same shape as out, may be strided.
    virtual void unary(UnaryOp op, const Tensor& x, const Tensor& out, double alpha) = 0;
    /// a, b: same dtype (f32/f64/i32/i64), already expanded to out's shape (may be strided).
    /// out has a's dtype, or u8 for eq/gt/lt.
    virtual void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) = 0;
    /// Whether binary() also takes float operands of different storage types (f32, bf16, f16:
    /// computed in f32, out in any of them), so ops need not widen half operands first.
    virtual bool binary_mixed_float() const { return false; }
    /// cond u8; cond, a, b expanded to out's shape (may be strided); a, b have out's dtype.
    virtual void where(const Tensor& cond, const Tensor& a, const Tensor& b,
                       const Tensor& out) = 0;
    /// x contiguous; dims sorted and unique; out has x's rank with the reduced dims set to 1.
    virtual void reduce(ReduceOp op, const Tensor& x, const std::vector<int64_t>& dims,
                        const Tensor& out) = 0;

    /// a: (Bt, M, K), b: (Bt, K, N), out: (Bt, M, N). a and b are float of one dtype; each
    /// has a unit stride in one of its two inner dims (row- or column-major matrices) and any
    /// batch stride (0 when broadcast). out is contiguous.
    virtual void matmul(const Tensor& a, const Tensor& b, const Tensor& out) = 0;
    /// out (Bt, M, N) = a b + bias (N, contiguous) on every row, a and b as for matmul. The
    /// default is matmul then bias_act; a backend may add the bias inside its GEMM.
    virtual void matmul_bias(const Tensor& a, const Tensor& b, const Tensor& bias,
                             const Tensor& out);
    /// out (Bt, M, N) = GELU-tanh(a b + bias) and aux (Bt, M, N) = a b + bias (the GELU's
    /// input, which the backward differentiates at), both contiguous in a's half type, bias in
    /// it too: one GEMM with the bias and the GELU in its epilogue. Returns false, touching
    /// nothing, where the backend has no such GEMM for these tensors; the caller then runs the
    /// GEMM and bias_act.
    virtual bool matmul_bias_gelu_aux(const Tensor& a, const Tensor& b, const Tensor& bias,
                                      const Tensor& out, const Tensor& aux) {
        (void)a, (void)b, (void)bias, (void)out, (void)aux;
        return false;
    }

    /// Row-wise over the last dim of x (R, C) -> out (R, C).
    virtual void softmax(const Tensor& x, const Tensor& out, bool log) = 0;
    /// x: (R, C), w/b: (C) (b may be undefined) -> out (R, C), mean/rstd (R). One dtype, except
    /// on CUDA, where f32 x may write a bf16/f16 out (autocast).
    virtual void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps,
                            const Tensor& out, const Tensor& mean, const Tensor& rstd) = 0;
    /// dx (R, C) overwritten; dw, db (C) overwritten (db may be undefined).
    virtual void layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                     const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                                     const Tensor& dw, const Tensor& db) = 0;
    /// The same with dx = the norm's dx + dx_add (R, C) in one pass (autograd folding the
    /// residual stream's gradient in); dy may be in a half type where x is f32. Returns false,
    /// touching nothing, where the backend has no such kernel for these tensors; the op then
    /// adds separately.
    virtual bool layer_norm_backward_add(const Tensor& dy, const Tensor& x, const Tensor& w,
                                         const Tensor& mean, const Tensor& rstd,
                                         const Tensor& dx_add, const Tensor& dx,
                                         const Tensor& dw, const Tensor& db) {
        (void)dy, (void)x, (void)w, (void)mean, (void)rstd, (void)dx_add, (void)dx, (void)dw,
            (void)db;
        return false;
    }
    /// x: (R, C), w: (C) -> out (R, C), rstd (R).
    virtual void rms_norm(const Tensor& x, const Tensor& w, float eps, const Tensor& out,
                          const Tensor& rstd) = 0;
    virtual void rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                   const Tensor& rstd, const Tensor& dx, const Tensor& dw) = 0;
    /// logits (N, V), targets (N) i64 -> losses (N) (0 for ignored rows), lse (N).
    virtual void cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                               const Tensor& losses, const Tensor& lse) = 0;
    /// dlogits (N, V) = (softmax(logits) - onehot(target)) * dloss * inv_count; 0 on ignored
    /// rows. dloss is a 1-element tensor.
    virtual void cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                        const Tensor& lse, int64_t ignore_index,
                                        const Tensor& dloss, double inv_count,
                                        const Tensor& dlogits) = 0;
    /// The LM head and its loss over row chunks, so the (N, V) logits never exist whole:
    /// x (N, C) and w (V, C) contiguous of one float dtype, targets (N) i64 (validated) ->
    /// losses (N) (0 on ignored rows) and, when dx is defined, the gradients of
    /// grad_scale * sum(losses): dx (N, C) and dw (V, C), both overwritten. The default runs
    /// matmul, cross_entropy and cross_entropy_backward per chunk.
    virtual void linear_cross_entropy(const Tensor& x, const Tensor& w, const Tensor& targets,
                                      int64_t ignore_index, double grad_scale,
                                      const Tensor& losses, const Tensor& dx, const Tensor& dw);
    /// Logits per chunk of linear_cross_entropy (rows x V): 2^26 by default (256 MiB in f32;
    /// CUDA's path takes 4x that). Tests set small values to cross chunk boundaries; 0 restores.
    static void set_linear_ce_chunk_elements(int64_t n);
    static int64_t linear_ce_chunk_elements();
    /// weight (V, C), ids (N) i64 (validated in range) -> out (N, C).
    virtual void embedding(const Tensor& weight, const Tensor& ids, const Tensor& out) = 0;
    /// dweight (V, C) is zero on entry; dweight[ids[n]] += dout[n].
    virtual void embedding_backward(const Tensor& dout, const Tensor& ids,
                                    const Tensor& dweight) = 0;
    /// x, out: (B, H, T, D).
    virtual void rope(const Tensor& x, const RopeOptions& opts, const Tensor& out) = 0;
    /// q: (B, Hq, Tq, D), k/v: (B, Hkv, Tk, D) -> out (B, Hq, Tq, D), lse (B, Hq, Tq)
    /// (log-sum-exp of the scaled scores per query row, kept for the backward pass).
    /// q, k, v, out (and the backward's dout, dq, dk, dv) are contiguous, or, where
    /// attention_strided(), any views whose last dim is contiguous (any strides for B, H, T:
    /// e.g. heads read straight out of a packed (B, T, 3C) qkv). lse is always contiguous.
    virtual void attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                           bool causal, const Tensor& out, const Tensor& lse) = 0;
    /// dq, dk, dv overwritten (only their own elements: they may be views into one buffer).
    virtual void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& out, const Tensor& lse, const Tensor& dout,
                                    float scale, bool causal, const Tensor& dq, const Tensor& dk,
                                    const Tensor& dv) = 0;
    /// Whether attention / attention_backward take strided views (see attention). Ops hand
    /// the others contiguous copies.
    virtual bool attention_strided() const { return false; }
    /// Whether attention / attention_backward take these bf16 q, k, v as they are: out, dq, dk,
    /// dv in bf16 too, dout f32 or bf16, lse f32. Ops widen half inputs to f32 otherwise.
    virtual bool attention_takes_half(const Tensor& q, const Tensor& k, const Tensor& v,
                                      bool causal) const {
        (void)q, (void)k, (void)v, (void)causal;
        return false;
    }

    /// A linear layer's epilogue: out (R, N) = act(x (R, N) + b (N)), act GELU-tanh when
    /// `gelu`, else identity; out may be x. The default runs binary add, then unary GELU;
    /// backends override it with one pass. CUDA also takes an f32 x with a bf16 or f16 out, and
    /// in the backward a bf16 or f16 dx (rounded on the store; linear() under autocast).
    virtual void bias_act(const Tensor& x, const Tensor& b, bool gelu, const Tensor& out);
    /// Its backward: dx (R, N) = dy * act'(x + b) (dx may be dy when not `gelu`), db (N) the
    /// column sums of dx, overwritten. With `gelu`, b may be undefined: x is then the GELU's
    /// input itself (matmul_bias_gelu_aux's aux).
    virtual void bias_act_backward(const Tensor& dy, const Tensor& x, const Tensor& b, bool gelu,
                                   const Tensor& dx, const Tensor& db);
};

/// The backend that runs kernels for `device` (throws if none is built in).
Backend& backend_for(Device device);
void register_backend(DeviceType type, Backend* backend);

namespace cpu {
/// While true (per thread), CPU ops run the naive reference kernels (src/backends/cpu/ref):
/// the oracle every fast kernel is tested against.
void set_reference_kernels(bool on);
bool reference_kernels();
/// RAII: reference kernels inside a scope.
struct ReferenceKernelsScope {
    bool prev;
    explicit ReferenceKernelsScope(bool on = true) : prev(reference_kernels()) {
        set_reference_kernels(on);
    }
    ~ReferenceKernelsScope() { set_reference_kernels(prev); }
};
} // namespace cpu

} // namespace forge
