// Attention on strided rows (Backend::attention_strided): attention_packed reading q, k, v in
// the packed (B, T, 3C) qkv and writing out and dqkv in place, checked against the CPU reference
// at GPT-2 shapes (exact kernel 1e-5, bf16 tensor-core kernel 1e-2); and the CUDA kernels given
// strided views against the same kernels on contiguous copies (same bits, but dq of the
// tensor-core backward, which adds with atomics), with the padding around the views untouched.
#include <cmath>
#include <string>
#include <utility>

#include "backends/cuda/cuda_backend.h"
#include "cuda/cuda_test_util.h"

namespace forge::test {
namespace {

struct ReducedPrecision { // the bf16 tensor-core kernel for f32 attention, in this scope
    explicit ReducedPrecision(bool on) { cuda::set_allow_reduced_precision_attention(on); }
    ~ReducedPrecision() { cuda::set_allow_reduced_precision_attention(false); }
};

struct PackedCase {
    int64_t B, T, H, D;
    bool causal;
};

std::string packed_name(const PackedCase& c, bool tc) {
    return std::string(tc ? "tc " : "exact ") + "attention_packed B" + std::to_string(c.B) + " T" +
           std::to_string(c.T) + " H" + std::to_string(c.H) + " D" + std::to_string(c.D) +
           (c.causal ? " causal" : "");
}

// out and dqkv of attention_packed(qkv) with a random upstream gradient.
std::vector<Tensor> run_packed(const PackedCase& c, Device d) {
    const int64_t C = c.H * c.D;
    Tensor qkv = leaf_on({c.B, c.T, 3 * C}, 1, d);
    Tensor out = attention_packed(qkv, c.H, {.causal = c.causal});
    sum(mul(out, randn_on(out.shape(), 2, d))).backward();
    return {out, qkv.grad()};
}

// GPT-2's layout (C = 768, 12 heads of 64) plus a head dim of 128, T with tails; the exact
// kernel against the CPU reference to 1e-5, the tensor-core kernel to its bf16 bound.
TEST(CudaAttentionLayout, PackedMatchesCpuReference) {
    const PackedCase cases[] = {
        {2, 200, 12, 64, true},
        {1, 130, 6, 128, true},
        {2, 70, 12, 64, false},
        {1, 33, 2, 6, true}, // D % 4 != 0: rows misaligned in the packed buffer, the copies
    };
    for (const PackedCase& c : cases) {
        std::vector<Tensor> ref;
        {
            cpu::ReferenceKernelsScope scope(true);
            ref = run_packed(c, Device::cpu());
        }
        for (bool tc : {false, true}) {
            if (tc && c.D % 64 != 0)
                continue;
            ReducedPrecision flag(tc);
            const std::vector<Tensor> got = run_packed(c, kCuda);
            const char* names[] = {"out", "dqkv"};
            for (size_t i = 0; i < ref.size(); ++i) {
                if (tc) {
                    EXPECT_LE(norm_rel_diff(got[i], ref[i]), 1e-2)
                        << packed_name(c, tc) << names[i];
                    EXPECT_LE(max_rel_diff(got[i], ref[i]), 5e-2) << packed_name(c, tc) << names[i];
                } else {
                    EXPECT_LE(max_rel_diff(got[i], ref[i]), 1e-5) << packed_name(c, tc) << names[i];
                }
            }
        }
    }
}

// The op under bf16 autocast (the training step's setting) picks the tensor-core kernel too.
TEST(CudaAttentionLayout, PackedUnderAutocastWithinBf16Tolerance) {
    const PackedCase c{2, 256, 12, 64, true};
    std::vector<Tensor> ref;
    {
        cpu::ReferenceKernelsScope scope(true);
        ref = run_packed(c, Device::cpu());
    }
    std::vector<Tensor> exact = run_packed(c, kCuda), got;
    {
        cuda::PrecisionScope bf16("bf16");
        got = run_packed(c, kCuda);
    }
    for (size_t i = 0; i < ref.size(); ++i) {
        EXPECT_LE(norm_rel_diff(got[i], ref[i]), 1e-2) << i;
        EXPECT_GT(max_rel_diff(got[i], exact[i]), 1e-6) << i; // bf16 rounding: tc kernel ran
    }
}

// A bf16 qkv (autocast's qkv projection) goes to the tensor-core kernel as it is: bf16 out and
// dqkv (widened by the leaf's to()), against the CPU reference in f64 on the same bf16 values,
// and against the widened f32 path on them (the same arithmetic: only out's rounding to bf16
// differs).
TEST(CudaAttentionLayout, PackedBf16QkvReadAsStored) {
    const PackedCase cases[] = {{2, 200, 12, 64, true}, {1, 130, 6, 128, true},
                                {2, 70, 12, 64, false}};
    for (const PackedCase& c : cases) {
        const int64_t C = c.H * c.D;
        auto run = [&](Device d, DType in_dt) {
            Tensor qkv = leaf_on({c.B, c.T, 3 * C}, 1, d);
            Tensor out = attention_packed(qkv.to(DType::bf16).to(in_dt), c.H, {.causal = c.causal});
            sum(mul(out, randn_on(out.shape(), 2, d))).backward();
            return std::vector<Tensor>{out, qkv.grad()};
        };
        std::vector<Tensor> ref, got, widened;
        {
            cpu::ReferenceKernelsScope scope(true);
            ref = run(Device::cpu(), DType::f64);
        }
        {
            cuda::PrecisionScope bf16("bf16");
            got = run(kCuda, DType::bf16);
            widened = run(kCuda, DType::f32);
        }
        const std::string what = packed_name(c, true) + " bf16 qkv";
        EXPECT_EQ(dtype_name(got[0].dtype()), "bf16") << what;
        for (size_t i = 0; i < ref.size(); ++i) {
            EXPECT_LE(norm_rel_diff(got[i], ref[i]), 1e-2) << what << i;
            EXPECT_LE(max_rel_diff(got[i], ref[i]), 5e-2) << what << i;
        }
        EXPECT_LE(max_rel_diff(got[0], widened[0]), 8e-3) << what; // out's rounding alone
    }
}

// A bf16 qkv leaf under bf16 autocast, in a strided (B, T, 3C) view (rows padded by 8 elements):
// out and dqkv come back in bf16, the upstream gradient read in bf16 or f32 as it comes; against
// the f32 op on the same values (the exact kernel, no autocast), GPT-2's layout and D = 128.
TEST(CudaAttentionLayout, PackedBf16QkvUnderAutocastMatchesF32Op) {
    const PackedCase cases[] = {{2, 200, 12, 64, true}, {1, 130, 6, 128, true},
                                {2, 70, 12, 64, false}, {1, 333, 4, 128, false}};
    for (const PackedCase& c : cases) {
        const int64_t C = c.H * c.D;
        const Tensor qkv16 =
            Tensor::randn({c.B, c.T, 3 * C + 8}, 1, DType::bf16).narrow(2, 0, 3 * C);
        const Tensor g16 = Tensor::randn({c.B, c.T, C}, 2, DType::bf16);
        // out and dqkv of attention_packed on qkv16's values in dtype dt, upstream gradient g.
        auto run = [&](DType dt, const Tensor& g) {
            Tensor buf = qkv16.to(kCuda).to(dt).detach(); // a strided view's copy, then a view
            Tensor padded = Tensor::zeros({c.B, c.T, 3 * C + 8}, dt, kCuda);
            padded.narrow(2, 0, 3 * C).copy_(buf);
            Tensor qkv = padded.narrow(2, 0, 3 * C).detach();
            qkv.set_requires_grad(true);
            Tensor out = attention_packed(qkv, c.H, {.causal = c.causal});
            out.backward(g.to(kCuda));
            return std::vector<Tensor>{out, qkv.grad()};
        };
        const std::vector<Tensor> ref = run(DType::f32, g16.to(DType::f32));
        const cuda::PrecisionScope bf16("bf16");
        for (DType g_dt : {DType::bf16, DType::f32}) {
            const std::string what = packed_name(c, true) + " bf16 qkv leaf, " +
                                     std::string(dtype_name(g_dt)) + " gradient ";
            const std::vector<Tensor> got = run(DType::bf16, g16.to(g_dt));
            const char* names[] = {"out", "dqkv"};
            for (size_t i = 0; i < ref.size(); ++i) {
                EXPECT_EQ(dtype_name(got[i].dtype()), "bf16") << what << names[i];
                EXPECT_LE(norm_rel_diff(got[i], ref[i]), 1e-2) << what << names[i];
                EXPECT_LE(max_rel_diff(got[i], ref[i]), 5e-2) << what << names[i];
            }
        }
    }
}

// (B, H, T, D) views for the kernels: heads interleaved along T ((B, T, H, D) order) in a
// buffer whose rows carry `pad` extra floats, so row starts are T-strided and padded. The
// padding holds a sentinel the kernels must not touch.
constexpr float kSentinel = 7.25f;
struct Strided {
    Tensor buf, view; // (B, T, H, D + pad) and its (B, H, T, D) view
};
Strided strided_heads(int64_t B, int64_t H, int64_t T, int64_t D, int64_t pad, uint64_t seed,
                      DType dt = DType::f32) {
    Tensor buf = Tensor::full({B, T, H, D + pad}, kSentinel, dt, kCuda);
    Tensor v = buf.narrow(3, 0, D).permute({0, 2, 1, 3});
    if (seed)
        v.copy_(randn_on({B, H, T, D}, seed, kCuda, dt));
    return {buf, v};
}
// The sentinel padding of a buffer made by strided_heads is intact.
void expect_padding_intact(const Strided& s, const std::string& what) {
    const int64_t D = s.view.size(3), pad = s.buf.size(3) - D;
    for (float x : s.buf.narrow(3, D, pad).to(DType::f32).to(Device::cpu()).to_vector<float>())
        if (x != kSentinel) {
            ADD_FAILURE() << what << ": the padding next to the rows was overwritten";
            return;
        }
}

struct LayoutCase {
    int64_t B, Hq, Hkv, Tq, Tk, D;
    bool causal;
};

// Forward and backward on strided views against the same kernel on contiguous copies; q, k, v,
// out, dout and the gradients in dt (bf16: the tensor-core kernel on bf16 tensors).
void check_strided_matches_contiguous(const LayoutCase& c, bool tc, DType dt = DType::f32) {
    const std::string what = std::string(tc ? "tc " : "exact ") + std::string(dtype_name(dt)) +
                             " strided B" + std::to_string(c.B) + " Hq" + std::to_string(c.Hq) +
                             " Hkv" + std::to_string(c.Hkv) + " Tq" +
                             std::to_string(c.Tq) + " Tk" + std::to_string(c.Tk) + " D" +
                             std::to_string(c.D) + (c.causal ? " causal" : "");
    ReducedPrecision flag(tc);
    Backend& be = cuda::backend();
    const float scale = 1.0f / std::sqrt(float(c.D));
    const int64_t pad = 8;
    const Strided q = strided_heads(c.B, c.Hq, c.Tq, c.D, pad, 1, dt);
    const Strided k = strided_heads(c.B, c.Hkv, c.Tk, c.D, pad, 2, dt);
    const Strided v = strided_heads(c.B, c.Hkv, c.Tk, c.D, pad, 3, dt);
    const Strided g = strided_heads(c.B, c.Hq, c.Tq, c.D, pad, 4, dt);
    const Strided out = strided_heads(c.B, c.Hq, c.Tq, c.D, pad, 0, dt);
    const Strided dq = strided_heads(c.B, c.Hq, c.Tq, c.D, pad, 0, dt);
    const Strided dk = strided_heads(c.B, c.Hkv, c.Tk, c.D, pad, 0, dt);
    const Strided dv = strided_heads(c.B, c.Hkv, c.Tk, c.D, pad, 0, dt);
    Tensor lse = Tensor::empty({c.B, c.Hq, c.Tq}, DType::f32, kCuda);
    be.attention(q.view, k.view, v.view, scale, c.causal, out.view, lse);
    be.attention_backward(q.view, k.view, v.view, out.view, lse, g.view, scale, c.causal, dq.view,
                          dk.view, dv.view);

    Tensor qc = q.view.contiguous(), kc = k.view.contiguous(), vc = v.view.contiguous();
    Tensor gc = g.view.contiguous();
    auto like = [](const Tensor& t) { return Tensor::empty(t.shape(), t.dtype(), kCuda); };
    Tensor out_c = like(qc), dq_c = like(qc), dk_c = like(kc), dv_c = like(vc);
    Tensor lse_c = like(lse);
    be.attention(qc, kc, vc, scale, c.causal, out_c, lse_c);
    be.attention_backward(qc, kc, vc, out_c, lse_c, gc, scale, c.causal, dq_c, dk_c, dv_c);

    auto same = [&](const Tensor& a, const Tensor& b, const char* name) {
        EXPECT_EQ(a.to(DType::f32).contiguous().to(Device::cpu()).to_vector<float>(),
                  b.to(DType::f32).to(Device::cpu()).to_vector<float>())
            << what << " " << name;
    };
    same(out.view, out_c, "out");
    same(lse, lse_c, "lse");
    same(dk.view, dk_c, "dk");
    same(dv.view, dv_c, "dv");
    // The tensor-core dq adds key blocks' contributions atomically, in no fixed order.
    if (tc) { // bf16 dq: rounded from the f32 sums, so at most an ulp apart
        EXPECT_LE(max_rel_diff(dq.view, dq_c), dt == DType::bf16 ? 1e-2 : 1e-5) << what << " dq";
    } else {
        same(dq.view, dq_c, "dq");
    }
    expect_padding_intact(out, what + " out");
    expect_padding_intact(dq, what + " dq");
    expect_padding_intact(dk, what + " dk");
    expect_padding_intact(dv, what + " dv");
    // And the values are right: the CPU reference within the kernel's bound.
    Tensor o_ref;
    {
        cpu::ReferenceKernelsScope scope(true);
        const DType rdt = dt == DType::bf16 ? DType::f64 : DType::f32; // on the same values
        o_ref = attention_reference(qc.to(Device::cpu()).to(rdt), kc.to(Device::cpu()).to(rdt),
                                    vc.to(Device::cpu()).to(rdt), {.causal = c.causal});
    }
    EXPECT_LE(norm_rel_diff(out.view, o_ref), tc ? 1e-2 : 1e-5) << what << " out vs reference";
    // bf16 rounding shows: the tensor-core kernel took the strided views, not the exact one.
    if (tc) {
        EXPECT_GT(max_rel_diff(out.view, o_ref), 1e-6) << what;
    }
}

TEST(CudaAttentionLayout, StridedViewsMatchContiguous) {
    const LayoutCase cases[] = {
        {2, 4, 4, 100, 100, 64, true}, {1, 8, 2, 130, 130, 128, true},  // GQA 4:1
        {1, 4, 2, 37, 150, 64, true},  {2, 2, 2, 200, 333, 128, false}, // Tq != Tk
        {1, 4, 1, 300, 300, 64, true},
    };
    for (const LayoutCase& c : cases) {
        for (bool tc : {false, true})
            check_strided_matches_contiguous(c, tc);
        check_strided_matches_contiguous(c, true, DType::bf16); // bf16 views as stored
    }
    // Head dims the tensor-core kernel does not take, through the exact kernel only.
    check_strided_matches_contiguous({1, 2, 1, 9, 23, 200, false}, false);
    check_strided_matches_contiguous({2, 2, 2, 17, 17, 16, true}, false);
}

// attention() (not packed) with strided q, k, v straight from (B, T, H, D) projections: GQA,
// Tq != Tk, and a view misaligned for the tensor-core kernel (copied), against the CPU.
TEST(CudaAttentionLayout, AttentionOnStridedInputsMatchesCpu) {
    for (bool tc : {false, true}) {
        ReducedPrecision flag(tc);
        expect_cuda_matches_cpu(
            tc ? "tc attention strided inputs" : "attention strided inputs",
            [&](Device d) {
                const int64_t B = 2, Hq = 8, Hkv = 2, Tq = 45, Tk = 90, D = 64;
                Tensor qb = leaf_on({B, Tq, Hq, D}, 1, d), kb = leaf_on({B, Tk, Hkv, D}, 2, d);
                Tensor vb = leaf_on({B, Tk + 1, Hkv, D}, 3, d);
                Tensor q = qb.permute({0, 2, 1, 3}), k = kb.permute({0, 2, 1, 3});
                // Offset by one row: still 16-byte aligned rows. And q's copy offset by one float.
                Tensor v = vb.narrow(1, 1, Tk).permute({0, 2, 1, 3});
                Tensor o = attention(q, k, v, {.causal = true});
                Tensor o2 = attention(q.narrow(3, 1, D - 1), k.narrow(3, 1, D - 1),
                                      v.narrow(3, 1, D - 1), {.causal = false});
                sum(mul(o, randn_on(o.shape(), 4, d))).backward();
                return std::vector<Tensor>{o, o2, qb.grad(), kb.grad(), vb.grad()};
            },
            tc ? 5e-2 : 1e-5);
    }
}

} // namespace
} // namespace forge::test
