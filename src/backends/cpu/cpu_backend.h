// The two CPU backends: CpuBackend (fast kernels: OpenBLAS, SIMD, OpenMP) and CpuRefBackend
// (plain loops, no intrinsics, no threads: the oracle). The reference backend inherits memory,
// copy, fill and random from the fast one and overrides every compute kernel.
#pragma once

#include "backends/backend.h"

namespace forge::cpu {

/// Bytes of CPU tensor storage in use now, the most since the last reset, and the bytes of
/// freed large blocks the allocator keeps for reuse.
struct MemoryStats {
    size_t current = 0;
    size_t peak = 0;
    size_t cached = 0;
};
MemoryStats memory_stats();
void reset_peak_memory();
/// Returns the allocator's cached blocks to the system.
void empty_cache();

class CpuBackend : public Backend {
  public:
    const char* name() const override { return "cpu"; }
    std::shared_ptr<Storage> allocate(size_t nbytes, Device device) override;
    void copy(const Tensor& src, const Tensor& dst) override;
    void fill(const Tensor& dst, double value) override;
    void random(const Tensor& dst, RandomKind kind, uint64_t seed, double a, double b) override;

    void unary(UnaryOp op, const Tensor& x, const Tensor& out, double alpha) override;
    void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) override;
    void bias_act(const Tensor& x, const Tensor& b, bool gelu, const Tensor& out) override;
    void bias_act_backward(const Tensor& dy, const Tensor& x, const Tensor& b, bool gelu,
                           const Tensor& dx, const Tensor& db) override;
    void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) override;
    void reduce(ReduceOp op, const Tensor& x, const std::vector<int64_t>& dims,
                const Tensor& out) override;
    void matmul(const Tensor& a, const Tensor& b, const Tensor& out) override;
    void softmax(const Tensor& x, const Tensor& out, bool log) override;
    void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps,
                    const Tensor& out, const Tensor& mean, const Tensor& rstd) override;
    void layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                             const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                             const Tensor& dw, const Tensor& db) override;
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
    /// The short-sequence kernels read strided heads in place; the flash ones via copies.
    bool attention_strided() const override { return true; }
    void attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, bool causal,
                   const Tensor& out, const Tensor& lse) override;
    void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                            const Tensor& lse, const Tensor& dout, float scale, bool causal,
                            const Tensor& dq, const Tensor& dk, const Tensor& dv) override;
};

class CpuRefBackend : public CpuBackend {
  public:
    const char* name() const override { return "cpu-ref"; }
    // The fused bias kernels as their unfused definition (the oracle of the fused ones).
    void bias_act(const Tensor& x, const Tensor& b, bool gelu, const Tensor& out) override {
        Backend::bias_act(x, b, gelu, out);
    }
    void bias_act_backward(const Tensor& dy, const Tensor& x, const Tensor& b, bool gelu,
                           const Tensor& dx, const Tensor& db) override {
        Backend::bias_act_backward(dy, x, b, gelu, dx, db);
    }
    void unary(UnaryOp op, const Tensor& x, const Tensor& out, double alpha) override;
    void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) override;
    void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) override;
    void reduce(ReduceOp op, const Tensor& x, const std::vector<int64_t>& dims,
                const Tensor& out) override;
    void matmul(const Tensor& a, const Tensor& b, const Tensor& out) override;
    void softmax(const Tensor& x, const Tensor& out, bool log) override;
    void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps,
                    const Tensor& out, const Tensor& mean, const Tensor& rstd) override;
    void layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                             const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                             const Tensor& dw, const Tensor& db) override;
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
    bool attention_strided() const override { return false; } // contiguous reference loops
    void attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, bool causal,
                   const Tensor& out, const Tensor& lse) override;
    void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                            const Tensor& lse, const Tensor& dout, float scale, bool causal,
                            const Tensor& dq, const Tensor& dk, const Tensor& dv) override;
};

} // namespace forge::cpu
