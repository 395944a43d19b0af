// forge::attention (the fused flash kernel of the inputs' backend, with its fused backward) and
// forge::attention_reference (the same function as a plain decomposition into public ops: the
// oracle, differentiable through those ops). Shape/dtype/device validation is shared.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "backends/backend.h"
#include "core/op_helpers.h"
#include <forge/autograd/autograd.h>
#include <forge/core/ops.h>
#include <forge/core/tensor.h>

namespace forge {

namespace {

struct AttentionDims {
    int64_t B, Hq, Hkv, Tq, Tk, D;
    float scale;
};

// q: (B, Hq, Tq, D), k/v: (B, Hkv, Tk, D), Hq % Hkv == 0, one float dtype, one device.
AttentionDims check_attention(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                              const AttentionOptions& opts) {
    detail::check_float(op, q);
    detail::check_float(op, k);
    detail::check_float(op, v);
    detail::check_same_device(op, {q, k, v});
    const std::string shapes =
        "q " + shape_str(q.shape()) + ", k " + shape_str(k.shape()) + ", v " + shape_str(v.shape());
    FORGE_CHECK(q.dtype() == k.dtype() && q.dtype() == v.dtype(), "[", op, "] dtypes differ: q ",
                dtype_name(q.dtype()), ", k ", dtype_name(k.dtype()), ", v ",
                dtype_name(v.dtype()));
    FORGE_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "[", op,
                "] expects q, k, v of shape (B, H, T, D); got ", shapes);
    FORGE_CHECK(k.shape() == v.shape(), "[", op, "] k and v shapes differ: ", shapes);
    AttentionDims s{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3), 0.0f};
    FORGE_CHECK(k.size(0) == s.B, "[", op, "] batch sizes differ: ", shapes);
    FORGE_CHECK(k.size(3) == s.D, "[", op, "] head dims differ (", s.D, " and ", k.size(3),
                "): ", shapes);
    FORGE_CHECK(s.Hkv > 0 && s.Hq % s.Hkv == 0, "[", op, "] query heads (", s.Hq,
                ") must be a multiple of key/value heads (", s.Hkv, "): ", shapes);
    FORGE_CHECK(s.Tk > 0 || s.Tq == 0, "[", op, "] no keys to attend to: ", shapes);
    FORGE_CHECK(!opts.causal || s.Tq <= s.Tk, "[", op, "] causal attention needs Tq <= Tk (", s.Tq,
                " queries, ", s.Tk, " keys): ", shapes);
    FORGE_CHECK(std::isfinite(opts.scale), "[", op, "] scale must be finite, got ", opts.scale);
    s.scale =
        opts.scale != 0.0f ? opts.scale : float(1.0 / std::sqrt(double(std::max<int64_t>(s.D, 1))));
    return s;
}

// Whether the rows of t (B, H, T, D) can go to a strided attention kernel as they are: last dim
// contiguous, and the base and the B, H, T strides 16-byte aligned (the CUDA tensor-core kernel
// loads rows 16 bytes at a time; a misaligned view would fall back to the slower exact kernel, so
// it gets a contiguous copy instead).
bool rows_aligned16(const Tensor& t) {
    if (t.dim() != 4 || (t.strides()[3] != 1 && t.size(3) != 1))
        return false;
    if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0)
        return false;
    const int64_t item = int64_t(dtype_size(t.dtype()));
    for (int d = 0; d < 3; ++d)
        if (t.size(d) > 1 && t.strides()[size_t(d)] * item % 16 != 0)
            return false;
    return true;
}

// t (B, H, T, D) as the kernel takes it: in the compute dtype (half widened once), the view itself
// where the backend takes strided rows and they are aligned, else a contiguous copy.
Tensor kernel_layout(const Tensor& t, DType cdt, bool strided) {
    Tensor c = t.detach().to(cdt);
    return strided && rows_aligned16(c) ? c : c.contiguous();
}

} // namespace

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts) {
    const AttentionDims s = check_attention("attention", q, k, v, opts);
    const DType dt = q.dtype();
    const bool causal = opts.causal;
    Backend& be = detail::backend_of(q);
    const bool strided = be.attention_strided();
    DType cdt = compute_dtype(dt);
    bool half_kernel = false; // bf16 q, k, v as stored: out, dq, dk, dv bf16, lse f32
    Tensor qc, kc, vc, out_c, lse;
    {
        NoGradGuard no_grad;
        if (dt == DType::bf16 && strided) {
            qc = kernel_layout(q, dt, strided);
            kc = kernel_layout(k, dt, strided);
            vc = kernel_layout(v, dt, strided);
            half_kernel = be.attention_takes_half(qc, kc, vc, causal);
        }
        if (half_kernel) {
            cdt = dt;
        } else {
            qc = kernel_layout(qc.defined() ? qc : q, cdt, strided);
            kc = kernel_layout(kc.defined() ? kc : k, cdt, strided);
            vc = kernel_layout(vc.defined() ? vc : v, cdt, strided);
        }
        out_c = detail::empty_on(q, {s.B, s.Hq, s.Tq, s.D}, cdt);
        lse = detail::empty_on(q, {s.B, s.Hq, s.Tq}, half_kernel ? DType::f32 : cdt);
        if (out_c.numel() > 0)
            be.attention(qc, kc, vc, s.scale, causal, out_c, lse);
    }
    Tensor out = out_c.dtype() != dt ? out_c.to(dt) : out_c;
    if (autograd::needs_grad({q, k, v})) {
        // The backward recomputes the probabilities from q, k and the saved lse (B, Hq, Tq):
        // O(T * D) saved state, never the (Tq, Tk) matrix.
        autograd::record("attention", out, {q, k, v},
                         [qc, kc, vc, o = out_c.detach(), lse, s, causal, dt, cdt, strided,
                          half_kernel](const Tensor& g) -> std::vector<Tensor> {
                             // The kernel overwrites dq, dk, dv; with no queries (Tq = 0) they stay
                             // zero.
                             const bool run = o.numel() > 0;
                             auto grad_like = [&](const Tensor& x) {
                                 return run ? Tensor::empty(x.shape(), cdt, x.device())
                                            : Tensor::zeros(x.shape(), cdt, x.device());
                             };
                             Tensor dq = grad_like(qc), dk = grad_like(kc), dv = grad_like(vc);
                             if (run) {
                                 // The half kernel reads an f32 or bf16 dout as it is.
                                 const bool g_as_is = half_kernel && (g.dtype() == DType::f32 ||
                                                                      g.dtype() == cdt);
                                 const Tensor gc =
                                     kernel_layout(g, g_as_is ? g.dtype() : cdt, strided);
                                 detail::backend_of(qc).attention_backward(
                                     qc, kc, vc, o, lse, gc, s.scale, causal, dq, dk, dv);
                             }
                             return {dq.to(dt), dk.to(dt), dv.to(dt)};
                         });
    }
    return out;
}

Tensor attention_packed(const Tensor& qkv, int64_t n_head, const AttentionOptions& opts) {
    detail::check_float("attention_packed", qkv);
    FORGE_CHECK(qkv.dim() == 3 && n_head > 0 && qkv.size(2) % (3 * n_head) == 0,
                "[attention_packed] expects qkv (B, T, 3 * n_head * D) with n_head = ", n_head,
                ", got ", shape_str(qkv.shape()));
    const int64_t B = qkv.size(0), T = qkv.size(1), C = qkv.size(2) / 3, H = n_head, D = C / H;
    const DType dt = qkv.dtype();
    // A half qkv (autocast's GEMM output) goes to a strided backend as it is where its kernel
    // takes half rows (bf16 out and dqkv; lse f32; the gradient read as it comes, f32 or bf16),
    // else widened once to f32 there (f32 out and dqkv: the next GEMM rounds them itself).
    const bool strided_half = is_half(dt) && detail::backend_of(qkv).attention_strided();
    if (is_half(dt) && !strided_half) { // widened per slice by attention(): the plain composition
        auto p = split(qkv, {C, C, C}, 2);
        auto heads = [&](const Tensor& t) { return t.reshape({B, T, H, D}).permute({0, 2, 1, 3}); };
        return attention(heads(p[0]), heads(p[1]), heads(p[2]), opts)
            .permute({0, 2, 1, 3})
            .reshape({B, T, C});
    }
    // Part i of a contiguous (B, T, n C) buffer as heads (B, H, T, D): a view, rows n C apart.
    auto heads_of = [B, T, H, D](const Tensor& buf, int64_t n, int64_t i) {
        return buf.view({B, T, n, H, D}).select(2, i).permute({0, 2, 1, 3});
    };
    Backend& be = detail::backend_of(qkv);
    Tensor qkv_c, out, out_h, lse;
    AttentionDims s{};
    bool in_place = false, half_kernel = false;
    DType grad_dt = dt; // dqkv's dtype (and dout's, but for the half kernel): the kernel's
    {
        NoGradGuard no_grad;
        qkv_c = qkv.detach().contiguous();
        if (strided_half) {
            half_kernel = rows_aligned16(heads_of(qkv_c, 3, 0)) &&
                          be.attention_takes_half(heads_of(qkv_c, 3, 0), heads_of(qkv_c, 3, 1),
                                                  heads_of(qkv_c, 3, 2), opts.causal);
            if (!half_kernel) {
                qkv_c = qkv_c.to(DType::f32);
                grad_dt = DType::f32;
            }
        }
        // A backend that takes strided rows reads q, k, v in the packed buffer and writes out in
        // (B, T, H, D) order, where the rows stay 16-byte aligned for its fast kernel (C and D
        // multiples of 4 floats); otherwise q, k, v and out are copied to and from its layout.
        in_place = be.attention_strided() && rows_aligned16(heads_of(qkv_c, 3, 0));
        Tensor q, k, v;
        if (in_place) {
            q = heads_of(qkv_c, 3, 0), k = heads_of(qkv_c, 3, 1), v = heads_of(qkv_c, 3, 2);
            out = detail::empty_on(qkv_c, {B, T, C}, qkv_c.dtype());
            out_h = heads_of(out, 1, 0);
        } else { // (B, T, 3, H, D) -> (3, B, H, T, D): q, k and v each contiguous (B, H, T, D).
            qkv_c = qkv_c.view({B, T, 3, H, D}).permute({2, 0, 3, 1, 4}).contiguous();
            q = qkv_c.select(0, 0), k = qkv_c.select(0, 1), v = qkv_c.select(0, 2);
            out_h = detail::empty_on(qkv_c, {B, H, T, D}, qkv_c.dtype());
        }
        s = check_attention("attention_packed", q, k, v, opts);
        lse = detail::empty_on(qkv_c, {B, H, T}, half_kernel ? DType::f32 : grad_dt);
        if (out_h.numel() > 0)
            be.attention(q, k, v, s.scale, opts.causal, out_h, lse);
        if (!in_place)
            out = out_h.permute({0, 2, 1, 3}).contiguous().view({B, T, C});
    }
    if (autograd::needs_grad({qkv})) {
        // Saved: the packed (or split) q, k, v, the output in the kernel's layout, lse (B, H, T).
        autograd::record(
            "attention_packed", out, {qkv},
            [qkv_c, out_h, lse, s, causal = opts.causal, in_place, heads_of, B, T, C, H, D,
             grad_dt, half_kernel](const Tensor& g) -> std::vector<Tensor> {
                Backend& be = detail::backend_of(g);
                // The kernel's dtype; the half kernel reads an f32 or bf16 gradient as it is.
                const bool g_as_is =
                    half_kernel && (g.dtype() == DType::f32 || g.dtype() == grad_dt);
                const Tensor gc = g.to(g_as_is ? g.dtype() : grad_dt).contiguous();
                if (in_place) { // dq, dk, dv written straight into the (B, T, 3C) gradient
                    Tensor dqkv = detail::empty_on(g, {B, T, 3 * C}, grad_dt);
                    if (out_h.numel() > 0)
                        be.attention_backward(
                            heads_of(qkv_c, 3, 0), heads_of(qkv_c, 3, 1), heads_of(qkv_c, 3, 2),
                            out_h, lse, heads_of(gc, 1, 0), s.scale, causal,
                            heads_of(dqkv, 3, 0), heads_of(dqkv, 3, 1), heads_of(dqkv, 3, 2));
                    return {dqkv};
                }
                Tensor dpacked = out_h.numel() > 0
                                     ? Tensor::empty(qkv_c.shape(), qkv_c.dtype(), qkv_c.device())
                                     : Tensor::zeros(qkv_c.shape(), qkv_c.dtype(), qkv_c.device());
                if (out_h.numel() > 0) {
                    // (B, T, C) -> (B, H, T, D), the kernel's layout of dO.
                    Tensor dout = heads_of(gc, 1, 0).contiguous();
                    be.attention_backward(qkv_c.select(0, 0), qkv_c.select(0, 1),
                                          qkv_c.select(0, 2), out_h, lse, dout, s.scale, causal,
                                          dpacked.select(0, 0), dpacked.select(0, 1),
                                          dpacked.select(0, 2));
                }
                // (3, B, H, T, D) -> (B, T, 3, H, D) = (B, T, 3C)
                return {dpacked.permute({1, 3, 0, 2, 4}).contiguous().view({B, T, 3 * C})};
            });
    }
    return out;
}

Tensor attention_reference(const Tensor& q, const Tensor& k, const Tensor& v,
                           const AttentionOptions& opts) {
    const AttentionDims s = check_attention("attention_reference", q, k, v, opts);
    // GQA: query head h reads kv-head h / (Hq / Hkv); repeat each kv-head over its group,
    // (B, Hkv, Tk, D) -> (B, Hkv, G, Tk, D) (a stride-0 view) -> (B, Hq, Tk, D) (a copy).
    Tensor kk = k, vv = v;
    if (s.Hq != s.Hkv) {
        const Shape grouped{s.B, s.Hkv, s.Hq / s.Hkv, s.Tk, s.D};
        kk = k.unsqueeze(2).expand(grouped).reshape({s.B, s.Hq, s.Tk, s.D});
        vv = v.unsqueeze(2).expand(grouped).reshape({s.B, s.Hq, s.Tk, s.D});
    }
    // scores (B, Hq, Tq, Tk) = q k^T * scale
    Tensor scores = mul_scalar(matmul(q, kk.transpose(-2, -1)), s.scale);
    if (opts.causal) {
        // query i sits at position Tk - Tq + i and sees keys j <= that position
        std::vector<float> m(size_t(s.Tq * s.Tk));
        for (int64_t i = 0; i < s.Tq; ++i)
            for (int64_t j = 0; j < s.Tk; ++j)
                m[size_t(i * s.Tk + j)] = j > s.Tk - s.Tq + i ? 1.0f : 0.0f;
        Tensor mask = Tensor::from_vector(m, {s.Tq, s.Tk}, DType::u8).to(q.device());
        scores = masked_fill(scores, mask, -std::numeric_limits<double>::infinity());
    }
    return matmul(softmax(scores, -1), vv);
}

} // namespace forge
