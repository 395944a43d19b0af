// Tests of the NN ops (softmax, log_softmax, layer_norm, rms_norm, cross_entropy, embedding,
// rope, dropout): fast kernels against the reference kernels on every instruction set this CPU
// has, f16/bf16 widening, gradients by finite differences in f64, RoPE against a decomposition
// into core ops, and the error messages. Sizes are small: the whole file runs in well under a
// second (ASan included).
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "backends/backend.h"
#include "backends/cpu/simd/nn_kernels.h"
#include "core/op_test_util.h"
#include <forge/core/ops_backward.h>

namespace forge::test {
namespace {

using cpu::nn::Isa;

// Runs body once per instruction set this CPU has (generic, AVX2, AVX-512), with the fast
// kernels capped to it.
void for_each_isa(const std::function<void()>& body) {
    const Isa all[] = {Isa::generic, Isa::avx2, Isa::avx512};
    const char* names[] = {"generic", "avx2", "avx512"};
    for (int i = 0; i < 3; ++i) {
        if (int(all[i]) > int(cpu::nn::best_isa()))
            break;
        cpu::nn::IsaCapScope cap(all[i]);
        SCOPED_TRACE(std::string("isa ") + names[i]);
        body();
    }
}

// Like expect_fast_matches_ref for ops with several outputs (a value and its gradients).
void expect_all_match_ref(const std::string& what, const std::function<std::vector<Tensor>()>& f,
                          double tol) {
    std::vector<Tensor> ref;
    {
        cpu::ReferenceKernelsScope scope(true);
        ref = f();
    }
    std::vector<Tensor> fast = f();
    ASSERT_EQ(ref.size(), fast.size());
    for (size_t i = 0; i < ref.size(); ++i) {
        const double d = max_rel_diff(fast[i], ref[i]);
        EXPECT_LE(d, tol) << what << ": output " << i << " differs from reference by " << d;
    }
}

// The output of op(leaves) and every leaf's gradient for a fixed random dy.
std::vector<Tensor> value_and_grads(const std::function<Tensor(const std::vector<Tensor>&)>& op,
                                    const std::vector<Tensor>& inputs) {
    std::vector<Tensor> leaves;
    for (const auto& x : inputs) {
        Tensor l = x.detach().clone();
        if (is_floating(l.dtype()))
            l.set_requires_grad(true);
        leaves.push_back(l);
    }
    Tensor y = op(leaves);
    Tensor dy = Tensor::randn(y.shape(), 99, compute_dtype(y.dtype()));
    y.backward(dy);
    std::vector<Tensor> out{y};
    for (const auto& l : leaves)
        if (l.requires_grad())
            out.push_back(l.grad());
    return out;
}

// An f64 leaf that is a transposed (non-contiguous) view: shape `s` with the last two dims'
// strides swapped.
Tensor noncontig_leaf(const Shape& s, uint64_t seed) {
    Shape st = s;
    std::swap(st[st.size() - 1], st[st.size() - 2]);
    Tensor t = Tensor::randn(st, seed, DType::f64).transpose(-1, -2);
    EXPECT_FALSE(t.is_contiguous());
    t.set_requires_grad(true);
    return t;
}

Tensor ids_tensor(const std::vector<int64_t>& v, const Shape& s, DType dt = DType::i64) {
    return Tensor::from_vector(v, s, dt);
}

// Targets for rows x classes, every third row ignore_index.
Tensor make_targets(int64_t rows, int64_t classes, int64_t ignore_index = -100) {
    std::vector<int64_t> t(static_cast<size_t>(rows));
    for (int64_t i = 0; i < rows; ++i)
        t[size_t(i)] = i % 3 == 2 ? ignore_index : (i * 7919 + 3) % classes;
    return ids_tensor(t, {rows});
}

const int64_t kCols[] = {1, 7, 33, 4096};

// ================================================================ fast vs reference, f32

TEST(NnOps, SoftmaxFastMatchesRef) {
    for_each_isa([] {
        for (int64_t c : kCols) {
            Tensor x = Tensor::randn({3, c}, 1, DType::f32, 0.0, 3.0);
            const std::string tag = "C=" + std::to_string(c);
            expect_fast_matches_ref(
                "softmax " + tag, [&] { return softmax(x); }, 1e-5);
            expect_fast_matches_ref(
                "log_softmax " + tag, [&] { return log_softmax(x); }, 1e-5);
            expect_all_match_ref(
                "softmax grad " + tag,
                [&] { return value_and_grads([](auto& in) { return softmax(in[0]); }, {x}); },
                1e-5);
            expect_all_match_ref(
                "log_softmax grad " + tag,
                [&] { return value_and_grads([](auto& in) { return log_softmax(in[0]); }, {x}); },
                1e-5);
        }
        // Large logits (stability), -inf entries (masked scores), a non-contiguous input and a
        // softmax over a leading dim.
        Tensor big = Tensor::randn({4, 50}, 2, DType::f32, 0.0, 200.0);
        expect_fast_matches_ref(
            "softmax large", [&] { return softmax(big); }, 1e-5);
        expect_fast_matches_ref(
            "log_softmax large", [&] { return log_softmax(big); }, 1e-5);
        Tensor masked = Tensor::randn({5, 40}, 3, DType::f32);
        masked.narrow(1, 20, 20).fill_(-INFINITY);
        expect_fast_matches_ref(
            "softmax -inf", [&] { return softmax(masked); }, 1e-5);
        expect_fast_matches_ref(
            "log_softmax -inf", [&] { return log_softmax(masked); }, 1e-5);
        Tensor xt = Tensor::randn({37, 6}, 4, DType::f32).t();
        expect_fast_matches_ref(
            "softmax non-contiguous", [&] { return softmax(xt); }, 1e-5);
        Tensor x3 = Tensor::randn({5, 9, 4}, 5, DType::f32);
        expect_fast_matches_ref(
            "softmax dim 1", [&] { return softmax(x3, 1); }, 1e-5);
    });
}

TEST(NnOps, SoftmaxRowsSumToOneAndMatchDefinition) {
    Tensor x = Tensor::randn({2, 3, 5}, 6, DType::f64);
    Tensor y = softmax(x, 1);
    Tensor s = sum(y, {1});
    for (double v : s.to_vector<double>())
        EXPECT_NEAR(v, 1.0, 1e-12);
    // log_softmax = x - log(sum(exp(x)))
    Tensor expect = sub(x, log(sum(exp(x), {-1}, true)));
    EXPECT_LE(max_rel_diff(log_softmax(x), expect), 1e-12);
    EXPECT_LE(max_rel_diff(softmax(x, -1), exp(expect)), 1e-12);
    // A scalar is a row of one.
    EXPECT_DOUBLE_EQ(softmax(Tensor::scalar(3.0, DType::f64)).item(), 1.0);
}

TEST(NnOps, NormsFastMatchRef) {
    for_each_isa([] {
        for (int64_t c : kCols) {
            const std::string tag = "C=" + std::to_string(c);
            Tensor x = Tensor::randn({5, c}, 10, DType::f32, 0.5, 2.0);
            Tensor w = Tensor::randn({c}, 11, DType::f32);
            Tensor b = Tensor::randn({c}, 12, DType::f32);
            expect_fast_matches_ref(
                "layer_norm " + tag, [&] { return layer_norm(x, w, b, 1e-5f); }, 1e-5);
            expect_fast_matches_ref(
                "rms_norm " + tag, [&] { return rms_norm(x, w, 1e-6f); }, 1e-5);
            expect_all_match_ref(
                "layer_norm grads " + tag,
                [&] {
                    return value_and_grads(
                        [](auto& in) { return layer_norm(in[0], in[1], in[2], 1e-5f); }, {x, w, b});
                },
                1e-5);
            expect_all_match_ref(
                "layer_norm no bias grads " + tag,
                [&] {
                    return value_and_grads(
                        [](auto& in) { return layer_norm(in[0], in[1], Tensor(), 1e-5f); }, {x, w});
                },
                1e-5);
            expect_all_match_ref(
                "rms_norm grads " + tag,
                [&] {
                    return value_and_grads([](auto& in) { return rms_norm(in[0], in[1], 1e-6f); },
                                           {x, w});
                },
                1e-5);
        }
        // Many rows: exercises the threaded paths and the per-thread weight-gradient partials.
        Tensor x = Tensor::randn({48, 768}, 13, DType::f32);
        Tensor w = Tensor::randn({768}, 14, DType::f32);
        expect_all_match_ref(
            "rms_norm 48x768 grads",
            [&] {
                return value_and_grads([](auto& in) { return rms_norm(in[0], in[1], 1e-6f); },
                                       {x, w});
            },
            1e-5);
        expect_all_match_ref(
            "layer_norm 48x768 grads",
            [&] {
                return value_and_grads(
                    [](auto& in) { return layer_norm(in[0], in[1], Tensor(), 1e-5f); }, {x, w});
            },
            1e-5);
        // Non-contiguous x (B, T, C) given as a transposed view.
        Tensor xt = Tensor::randn({2, 20, 3}, 15, DType::f32).transpose(1, 2);
        Tensor w20 = Tensor::randn({20}, 16, DType::f32);
        expect_fast_matches_ref(
            "rms_norm non-contiguous", [&] { return rms_norm(xt, w20, 1e-6f); }, 1e-5);
        expect_fast_matches_ref(
            "layer_norm non-contiguous", [&] { return layer_norm(xt, w20, w20, 1e-5f); }, 1e-5);
    });
}

TEST(NnOps, NormsMatchDefinition) {
    Tensor x = Tensor::randn({3, 8}, 20, DType::f64);
    Tensor w = Tensor::randn({8}, 21, DType::f64);
    Tensor b = Tensor::randn({8}, 22, DType::f64);
    Tensor mu = mean(x, {-1}, true);
    Tensor var = mean(mul(sub(x, mu), sub(x, mu)), {-1}, true);
    Tensor ln = add(mul(div(sub(x, mu), sqrt(add_scalar(var, 1e-5))), w), b);
    EXPECT_LE(max_rel_diff(layer_norm(x, w, b, 1e-5f), ln), 1e-12);
    Tensor rms = mul(mul(x, rsqrt(add_scalar(mean(mul(x, x), {-1}, true), 1e-6))), w);
    EXPECT_LE(max_rel_diff(rms_norm(x, w, 1e-6f), rms), 1e-12);
}

TEST(NnOps, CrossEntropyFastMatchesRef) {
    for_each_isa([] {
        for (int64_t v : {int64_t(1), int64_t(7), int64_t(33), int64_t(4096), int64_t(50304)}) {
            const int64_t n = v == 50304 ? 2 : 6;
            const std::string tag = "V=" + std::to_string(v);
            Tensor logits = Tensor::randn({n, v}, 30, DType::f32, 0.0, 4.0);
            Tensor t = make_targets(n, v);
            expect_fast_matches_ref(
                "cross_entropy " + tag, [&] { return cross_entropy(logits, t); }, 1e-5);
            expect_all_match_ref(
                "cross_entropy grad " + tag,
                [&] {
                    return value_and_grads([&](auto& in) { return cross_entropy(in[0], t); },
                                           {logits});
                },
                1e-5);
        }
        // (B, T, V) logits with (B, T) i32 targets, given as a non-contiguous view.
        Tensor logits = Tensor::randn({40, 2, 3}, 31, DType::f32).permute({1, 2, 0});
        Tensor t = make_targets(6, 40).to(DType::i32).view({2, 3});
        expect_all_match_ref(
            "cross_entropy 3-D grad",
            [&] {
                return value_and_grads([&](auto& in) { return cross_entropy(in[0], t); }, {logits});
            },
            1e-5);
    });
}

TEST(NnOps, CrossEntropyMatchesDefinition) {
    // mean over non-ignored rows of -log_softmax(x)[target]
    Tensor x = Tensor::randn({7, 5}, 32, DType::f64, 0.0, 3.0);
    Tensor t = make_targets(7, 5, -1);
    const double got = cross_entropy(x, t, -1).item();
    Tensor lp = log_softmax(x);
    auto tv = t.to_vector<int64_t>();
    double s = 0;
    int n = 0;
    for (int64_t i = 0; i < 7; ++i) {
        if (tv[size_t(i)] == -1)
            continue;
        s -= lp.at({i, tv[size_t(i)]});
        ++n;
    }
    EXPECT_NEAR(got, s / n, 1e-12);
}

TEST(NnOps, CrossEntropyAllIgnoredIsZero) {
    Tensor x = Tensor::randn({3, 4}, 33, DType::f64);
    x.set_requires_grad(true);
    Tensor t = ids_tensor({-100, -100, -100}, {3});
    Tensor loss = cross_entropy(x, t);
    EXPECT_EQ(loss.item(), 0.0);
    loss.backward();
    for (double g : x.grad().to_vector<double>())
        EXPECT_EQ(g, 0.0);
    // No rows at all: also 0.
    EXPECT_EQ(cross_entropy(Tensor::zeros({0, 4}), ids_tensor({}, {0})).item(), 0.0);
}

TEST(NnOps, EmbeddingFastMatchesRef) {
    for_each_isa([] {
        for (int64_t c : kCols) {
            Tensor w = Tensor::randn({11, c}, 40, DType::f32);
            // Repeated ids: the backward must add, not overwrite.
            Tensor ids = ids_tensor({3, 0, 10, 3, 3, 7}, {2, 3});
            const std::string tag = "C=" + std::to_string(c);
            expect_all_match_ref(
                "embedding " + tag,
                [&] {
                    return value_and_grads([&](auto& in) { return embedding(in[0], ids); }, {w});
                },
                0.0);
        }
        // Threaded backward: many ids, a wide table.
        Tensor w = Tensor::randn({50, 200}, 41, DType::f32);
        std::vector<int64_t> iv(200);
        for (size_t i = 0; i < iv.size(); ++i)
            iv[i] = int64_t(i * 37 % 50);
        Tensor ids = ids_tensor(iv, {200}, DType::i32);
        expect_all_match_ref(
            "embedding 200 ids",
            [&] { return value_and_grads([&](auto& in) { return embedding(in[0], ids); }, {w}); },
            0.0);
    });
}

TEST(NnOps, EmbeddingGathersRows) {
    Tensor w = Tensor::randn({5, 3}, 42, DType::f32);
    Tensor y = embedding(w, ids_tensor({4, 1}, {2}, DType::i32));
    EXPECT_EQ(shape_str(y.shape()), "[2,3]");
    for (int64_t c = 0; c < 3; ++c) {
        EXPECT_EQ(y.at({0, c}), w.at({4, c}));
        EXPECT_EQ(y.at({1, c}), w.at({1, c}));
    }
    // Half weights are gathered exactly (a copy, not a widen-and-round).
    Tensor wh = w.to(DType::bf16);
    Tensor yh = embedding(wh, ids_tensor({2, 2, 0}, {3}));
    EXPECT_EQ(yh.dtype(), DType::bf16);
    EXPECT_EQ(max_rel_diff(yh, embedding(wh.to(DType::f32), ids_tensor({2, 2, 0}, {3}))), 0.0);
    // A scalar id gives one row of shape (C).
    EXPECT_EQ(shape_str(embedding(w, ids_tensor({2}, {})).shape()), "[3]");
}

TEST(NnOps, RopeFastMatchesRef) {
    for_each_isa([] {
        for (RopeLayout layout : {RopeLayout::neox, RopeLayout::interleaved}) {
            const char* lname = layout == RopeLayout::neox ? "neox" : "interleaved";
            // (D, rotary_dim): full heads of common sizes, small and odd pair counts, partial.
            const std::pair<int64_t, int64_t> dims[] = {{64, 0}, {128, 0}, {6, 0}, {2, 0},
                                                        {10, 4}, {96, 64}, {46, 0}};
            for (auto [d, rd] : dims) {
                Tensor x = Tensor::randn({2, 3, 5, d}, 50, DType::f32);
                RopeOptions o;
                o.layout = layout;
                o.rotary_dim = rd;
                o.pos_offset = 1000;
                const std::string tag =
                    std::string(lname) + " D=" + std::to_string(d) + " rd=" + std::to_string(rd);
                expect_fast_matches_ref(
                    "rope " + tag, [&] { return rope(x, o); }, 1e-5);
                expect_all_match_ref(
                    "rope grad " + tag,
                    [&] { return value_and_grads([&](auto& in) { return rope(in[0], o); }, {x}); },
                    1e-5);
            }
            // A non-contiguous x: (B, T, H, D) storage viewed as (B, H, T, D).
            Tensor xt = Tensor::randn({2, 7, 4, 32}, 51, DType::f32).transpose(1, 2);
            RopeOptions o;
            o.layout = layout;
            o.theta = 500000.0f;
            expect_fast_matches_ref(
                std::string("rope non-contiguous ") + lname, [&] { return rope(xt, o); }, 1e-5);
        }
    });
}

// RoPE built from core ops: cos/sin tables (T, rd/2) computed here, then mul/sub/add on
// narrowed halves (neox) or on the even/odd features (interleaved), concat back.
Tensor rope_decomposed(const Tensor& x, const RopeOptions& o) {
    const int64_t b = x.size(0), h = x.size(1), t = x.size(2), d = x.size(3);
    const int64_t rd = o.rotary_dim ? o.rotary_dim : d, half = rd / 2;
    std::vector<double> cv(size_t(t * half)), sv(size_t(t * half));
    for (int64_t p = 0; p < t; ++p)
        for (int64_t i = 0; i < half; ++i) {
            const double freq = 1.0 / std::pow(double(o.theta), double(2 * i) / double(rd));
            const double a = double(o.pos_offset + p) * freq;
            cv[size_t(p * half + i)] = std::cos(a);
            sv[size_t(p * half + i)] = o.inverse ? -std::sin(a) : std::sin(a);
        }
    Tensor c = Tensor::from_vector(cv, {t, half}, x.dtype());
    Tensor s = Tensor::from_vector(sv, {t, half}, x.dtype());
    Tensor rot = x.narrow(3, 0, rd);
    Tensor y;
    if (o.layout == RopeLayout::neox) {
        Tensor x1 = rot.narrow(3, 0, half), x2 = rot.narrow(3, half, half);
        y = concat({sub(mul(x1, c), mul(x2, s)), add(mul(x1, s), mul(x2, c))}, 3);
    } else {
        Tensor pairs = rot.reshape({b, h, t, half, 2});
        Tensor x1 = pairs.select(4, 0), x2 = pairs.select(4, 1);
        Tensor y1 = sub(mul(x1, c), mul(x2, s)), y2 = add(mul(x1, s), mul(x2, c));
        y = concat({y1.unsqueeze(4), y2.unsqueeze(4)}, 4).reshape({b, h, t, rd});
    }
    return rd < d ? concat({y, x.narrow(3, rd, d - rd)}, 3) : y;
}

TEST(NnOps, RopeMatchesDecomposition) {
    for (RopeLayout layout : {RopeLayout::neox, RopeLayout::interleaved}) {
        for (int64_t offset : {int64_t(0), int64_t(17)}) {
            for (int64_t rd : {int64_t(0), int64_t(4)}) {
                RopeOptions o;
                o.layout = layout;
                o.pos_offset = offset;
                o.rotary_dim = rd;
                o.theta = 100.0f;
                Tensor x = Tensor::randn({2, 2, 6, 8}, 60, DType::f64);
                const std::string tag =
                    std::string(layout == RopeLayout::neox ? "neox" : "interleaved") + " offset " +
                    std::to_string(offset) + " rd " + std::to_string(rd);
                EXPECT_LE(max_rel_diff(rope(x, o), rope_decomposed(x, o)), 1e-12) << tag;
                {
                    cpu::ReferenceKernelsScope ref;
                    EXPECT_LE(max_rel_diff(rope(x, o), rope_decomposed(x, o)), 1e-12)
                        << tag << " (reference kernel)";
                }
                Tensor xf = x.to(DType::f32);
                EXPECT_LE(max_rel_diff(rope(xf, o), rope_decomposed(xf, o)), 1e-5) << tag << " f32";
            }
        }
    }
}

TEST(NnOps, RopeInverseUndoesRope) {
    for (RopeLayout layout : {RopeLayout::neox, RopeLayout::interleaved}) {
        for (DType dt : {DType::f64, DType::f32}) {
            RopeOptions o;
            o.layout = layout;
            o.pos_offset = 4096;
            Tensor x = Tensor::randn({1, 4, 9, 64}, 61, dt);
            RopeOptions inv = o;
            inv.inverse = true;
            EXPECT_LE(max_rel_diff(rope(rope(x, o), inv), x), dt == DType::f64 ? 1e-12 : 1e-5);
            EXPECT_LE(max_rel_diff(rope(rope(x, inv), o), x), dt == DType::f64 ? 1e-12 : 1e-5);
        }
    }
    // Position 0 is the identity; decoding at offset t equals row t of a full-sequence rope.
    Tensor x = Tensor::randn({1, 2, 6, 16}, 62, DType::f64);
    EXPECT_EQ(max_rel_diff(rope(x.narrow(2, 0, 1), {}), x.narrow(2, 0, 1)), 0.0);
    RopeOptions at5;
    at5.pos_offset = 5;
    EXPECT_LE(max_rel_diff(rope(x.narrow(2, 5, 1), at5), rope(x).narrow(2, 5, 1)), 1e-15);
}

// ================================================================ half types

TEST(NnOps, HalfTypesWidenAndRoundOnce) {
    for (DType dt : {DType::f16, DType::bf16}) {
        const std::string tag(dtype_name(dt));
        Tensor x = Tensor::randn({4, 33}, 70, DType::f32).to(dt);
        Tensor w = Tensor::randn({33}, 71, DType::f32).to(dt);
        Tensor b = Tensor::randn({33}, 72, DType::f32).to(dt);
        Tensor xf = x.to(DType::f32), wf = w.to(DType::f32), bf = b.to(DType::f32);
        // Each op computes in f32 and rounds once: exactly the f32 op's result rounded.
        EXPECT_EQ(max_rel_diff(softmax(x), softmax(xf).to(dt)), 0.0) << tag;
        EXPECT_EQ(max_rel_diff(log_softmax(x), log_softmax(xf).to(dt)), 0.0) << tag;
        EXPECT_EQ(max_rel_diff(layer_norm(x, w, b), layer_norm(xf, wf, bf).to(dt)), 0.0) << tag;
        EXPECT_EQ(max_rel_diff(rms_norm(x, w), rms_norm(xf, wf).to(dt)), 0.0) << tag;
        Tensor x4 = x.view({2, 2, 1, 33}).narrow(3, 0, 32);
        EXPECT_EQ(max_rel_diff(rope(x4), rope(x4.to(DType::f32)).to(dt)), 0.0) << tag;
        Tensor t = make_targets(4, 33);
        EXPECT_EQ(max_rel_diff(cross_entropy(x, t), cross_entropy(xf, t).to(dt)), 0.0) << tag;
        EXPECT_EQ(softmax(x).dtype(), dt);
        // Fast against reference, within the dtype's tolerance.
        expect_fast_matches_ref(
            "softmax " + tag, [&] { return softmax(x); }, dtype_tolerance(dt));
        expect_fast_matches_ref(
            "layer_norm " + tag, [&] { return layer_norm(x, w, b); }, dtype_tolerance(dt));
        expect_fast_matches_ref(
            "rms_norm " + tag, [&] { return rms_norm(x, w); }, dtype_tolerance(dt));
        expect_fast_matches_ref(
            "rope " + tag, [&] { return rope(x4); }, dtype_tolerance(dt));
        expect_fast_matches_ref(
            "cross_entropy " + tag, [&] { return cross_entropy(x, t); }, dtype_tolerance(dt));
        // Gradients flow back in the input's dtype.
        auto g = value_and_grads([](auto& in) { return rms_norm(in[0], in[1]); }, {x, w});
        EXPECT_EQ(g[1].dtype(), dt);
        EXPECT_EQ(g[2].dtype(), dt);
        auto gf = value_and_grads([](auto& in) { return rms_norm(in[0], in[1]); }, {xf, wf});
        EXPECT_LE(max_rel_diff(g[1], gf[1]), 5 * dtype_tolerance(dt)) << tag;
    }
    // Mixed: bf16 activations with f32 weights compute in f32 and return bf16.
    Tensor x = Tensor::randn({2, 8}, 73, DType::f32).to(DType::bf16);
    Tensor w = Tensor::randn({8}, 74, DType::f32);
    EXPECT_EQ(rms_norm(x, w).dtype(), DType::bf16);
    EXPECT_EQ(max_rel_diff(rms_norm(x, w), rms_norm(x.to(DType::f32), w).to(DType::bf16)), 0.0);
}

// ================================================================ gradients (f64)

TEST(NnOps, GradcheckSoftmax) {
    expect_gradcheck("softmax", [](auto& in) { return softmax(in[0]); }, {rand_leaf({3, 5}, 80)});
    expect_gradcheck("softmax dim 0", [](auto& in) { return softmax(in[0], 0); },
                     {rand_leaf({3, 4, 2}, 81)});
    expect_gradcheck("softmax non-contiguous", [](auto& in) { return softmax(in[0]); },
                     {noncontig_leaf({4, 5}, 82)});
    expect_gradcheck("log_softmax", [](auto& in) { return log_softmax(in[0]); },
                     {rand_leaf({3, 5}, 83)});
    expect_gradcheck("log_softmax dim 1", [](auto& in) { return log_softmax(in[0], 1); },
                     {noncontig_leaf({2, 4, 3}, 84)});
}

TEST(NnOps, GradcheckNorms) {
    expect_gradcheck("layer_norm", [](auto& in) { return layer_norm(in[0], in[1], in[2], 1e-5f); },
                     {rand_leaf({3, 6}, 90), rand_leaf({6}, 91), rand_leaf({6}, 92)});
    expect_gradcheck("layer_norm no bias",
                     [](auto& in) { return layer_norm(in[0], in[1], Tensor(), 1e-5f); },
                     {rand_leaf({2, 3, 5}, 93), rand_leaf({5}, 94)});
    expect_gradcheck("layer_norm non-contiguous",
                     [](auto& in) { return layer_norm(in[0], in[1], in[2], 1e-5f); },
                     {noncontig_leaf({5, 4}, 95), rand_leaf({4}, 96), rand_leaf({4}, 97)});
    // A pre-norm residual block: the gradient pending for s (from the second add) is folded
    // into layer_norm's dx by its backward (autograd's record_folding).
    expect_gradcheck("layer_norm on a residual stream",
                     [](auto& in) {
                         Tensor s = add(in[0], in[1]);
                         return add(s, mul(layer_norm(s, in[2], in[3], 1e-5f), in[1]));
                     },
                     {rand_leaf({4, 6}, 102), rand_leaf({4, 6}, 103), rand_leaf({6}, 104),
                      rand_leaf({6}, 105)});
    expect_gradcheck("rms_norm", [](auto& in) { return rms_norm(in[0], in[1], 1e-6f); },
                     {rand_leaf({3, 7}, 98), rand_leaf({7}, 99)});
    expect_gradcheck("rms_norm non-contiguous",
                     [](auto& in) { return rms_norm(in[0], in[1], 1e-6f); },
                     {noncontig_leaf({2, 4, 6}, 100), rand_leaf({6}, 101)});
}

TEST(NnOps, GradcheckCrossEntropy) {
    Tensor t = make_targets(6, 5);
    expect_gradcheck("cross_entropy ignore_index",
                     [&](auto& in) { return cross_entropy(in[0], t); }, {rand_leaf({6, 5}, 110)});
    Tensor t32 = ids_tensor({1, -1, 0, 3}, {2, 2}, DType::i32);
    expect_gradcheck(
        "cross_entropy 3-D non-contiguous i32",
        [&](auto& in) { return cross_entropy(in[0], t32, -1); },
        {noncontig_leaf({2, 4, 2}, 111).transpose(1, 2).detach().set_requires_grad(true)});
}

TEST(NnOps, GradcheckEmbedding) {
    Tensor ids = ids_tensor({1, 3, 1, 0, 3, 3}, {3, 2});
    expect_gradcheck("embedding", [&](auto& in) { return embedding(in[0], ids); },
                     {rand_leaf({5, 3}, 120)});
    expect_gradcheck("embedding non-contiguous weight",
                     [&](auto& in) { return embedding(in[0], ids); },
                     {noncontig_leaf({4, 3}, 121)});
}

TEST(NnOps, GradcheckRope) {
    for (RopeLayout layout : {RopeLayout::neox, RopeLayout::interleaved}) {
        RopeOptions o;
        o.layout = layout;
        o.pos_offset = 3;
        expect_gradcheck("rope", [&](auto& in) { return rope(in[0], o); },
                         {rand_leaf({1, 2, 3, 4}, 130)});
        RopeOptions partial = o;
        partial.rotary_dim = 2;
        partial.inverse = true;
        expect_gradcheck("rope partial inverse", [&](auto& in) { return rope(in[0], partial); },
                         {rand_leaf({2, 1, 2, 6}, 131)});
        expect_gradcheck(
            "rope non-contiguous", [&](auto& in) { return rope(in[0], o); },
            {noncontig_leaf({1, 2, 4, 3}, 132).transpose(2, 3).detach().set_requires_grad(true)});
    }
}

TEST(NnOps, GradcheckDropout) {
    expect_gradcheck("dropout", [](auto& in) { return dropout(in[0], 0.4, 7); },
                     {rand_leaf({4, 5}, 140)});
    expect_gradcheck("dropout non-contiguous", [](auto& in) { return dropout(in[0], 0.4, 7); },
                     {noncontig_leaf({3, 5}, 141)});
}

// ================================================================ dropout

TEST(NnOps, DropoutMaskIsSeededAndScaled) {
    const double p = 0.3;
    Tensor x = Tensor::ones({40000});
    Tensor y1 = dropout(x, p, 42), y2 = dropout(x, p, 42), y3 = dropout(x, p, 43);
    EXPECT_EQ(max_rel_diff(y1, y2), 0.0) << "same seed, same mask";
    EXPECT_GT(max_rel_diff(y1, y3), 0.0) << "another seed, another mask";
    auto v = y1.to_vector<float>();
    int64_t kept = 0;
    for (float e : v) {
        if (e == 0.0f)
            continue;
        ++kept;
        ASSERT_FLOAT_EQ(e, float(1.0 / (1.0 - p))) << "kept values scale by 1/(1-p)";
    }
    // Binomial(4e4, 0.7): sd 0.0023 of the rate; 0.01 is 4.4 sd (and the seed is fixed).
    EXPECT_NEAR(double(kept) / double(v.size()), 1.0 - p, 0.01);
    // The mean is preserved in expectation.
    EXPECT_NEAR(mean(y1).item(), 1.0, 0.02);
    // Same mask for any strides: element i depends on (seed, i) only.
    Tensor xt = Tensor::ones({300, 200}).t();
    EXPECT_EQ(max_rel_diff(dropout(xt, p, 5), dropout(xt.contiguous(), p, 5)), 0.0);
    // The gradient is the mask: with x = 1, dx = y.
    Tensor leaf = Tensor::ones({1000});
    leaf.set_requires_grad(true);
    Tensor y = dropout(leaf, p, 9);
    sum(y).backward();
    EXPECT_EQ(max_rel_diff(leaf.grad(), y.detach()), 0.0);
    // p = 0 is the identity (the same tensor).
    EXPECT_TRUE(dropout(x, 0.0, 1).shares_storage(x));
    // bf16 keeps its dtype.
    EXPECT_EQ(dropout(x.to(DType::bf16), p, 1).dtype(), DType::bf16);
}

// ================================================================ errors

TEST(NnOps, ErrorsNameTheOpAndShapes) {
    Tensor x = Tensor::randn({2, 4}, 150);
    expect_error([&] { rms_norm(x, Tensor::ones({5})); },
                 "[rms_norm] weight has 5 elements, x's last dim is 4");
    expect_error([&] { layer_norm(x, Tensor::ones({4}), Tensor::ones({3})); },
                 "[layer_norm] bias has 3 elements, x's last dim is 4");
    expect_error(
        [&] {
            layer_norm(x, Tensor::ones({2, 2}), Tensor());
        },
        "[layer_norm] weight has shape [2,2]");
    expect_error([&] { layer_norm(x, Tensor(), Tensor()); }, "[layer_norm] weight is undefined");
    expect_error([&] { rms_norm(x, Tensor::ones({4}), -1.0f); }, "[rms_norm] eps");
    expect_error([&] { softmax(x, 2); }, "[softmax] dim 2 out of range");
    expect_error([&] { log_softmax(Tensor::arange(4), 0); },
                 "[log_softmax] expects a float tensor");

    Tensor logits = Tensor::randn({3, 5}, 151);
    expect_error(
        [&] {
            cross_entropy(logits, ids_tensor({1, 9, 2}, {3}));
        },
        "[cross_entropy] target 9 at row 1 is out of range for 5 classes");
    expect_error([&] { cross_entropy(logits, ids_tensor({1, -3, 2}, {3})); }, "target -3 at row 1");
    expect_error(
        [&] {
            cross_entropy(logits, ids_tensor({1, 2}, {2}));
        },
        "[cross_entropy] logits [3,5] need targets of shape [3], got [2]");
    expect_error([&] { cross_entropy(logits, Tensor::zeros({3})); },
                 "[cross_entropy] targets must be i32 or i64, got f32");
    expect_error([&] { cross_entropy(Tensor::arange(3), ids_tensor({0}, {})); },
                 "[cross_entropy] expects a float tensor");

    Tensor w = Tensor::randn({5, 3}, 152);
    expect_error(
        [&] {
            embedding(w, ids_tensor({0, 7}, {2}));
        },
        "[embedding] id 7 (position 1 of ids [2]) out of range for vocab size 5");
    expect_error([&] { embedding(w, ids_tensor({-1}, {1})); }, "[embedding] id -1");
    expect_error([&] { embedding(Tensor::ones({5}), ids_tensor({0}, {1})); },
                 "[embedding] weight must be (V, C), got [5]");
    expect_error([&] { embedding(w, Tensor::zeros({2})); }, "[embedding] ids must be i32 or i64");

    expect_error(
        [&] {
            rope(Tensor::randn({2, 3, 4}, 153));
        },
        "[rope] x must be (B, H, T, D), got [2,3,4]");
    expect_error([&] { rope(Tensor::randn({1, 1, 2, 5}, 154)); }, "[rope] the rotated width 5");
    RopeOptions o;
    o.rotary_dim = 10;
    expect_error([&] { rope(Tensor::randn({1, 1, 2, 8}, 155), o); }, "[rope] rotary_dim 10");
    o = {};
    o.pos_offset = -1;
    expect_error([&] { rope(Tensor::randn({1, 1, 2, 8}, 156), o); }, "[rope] pos_offset");

    expect_error([&] { dropout(x, 1.0, 0); }, "[dropout] p must be in [0, 1), got 1");
    expect_error([&] { dropout(x, -0.1, 0); }, "[dropout] p must be in [0, 1)");
    expect_error([&] { dropout(x, NAN, 0); }, "[dropout] p must be in [0, 1)");

    // The public backward ops check their inputs too.
    expect_error(
        [&] {
            embedding_backward(Tensor::ones({2, 3}), ids_tensor({0}, {1}), 4);
        },
        "[embedding_backward] dout [2,3] must be ids' shape plus one dim");
    expect_error([&] { rms_norm_backward(x, x, Tensor::ones({4}), Tensor::ones({3})); },
                 "[rms_norm_backward] x [2,4] has 2 rows but rstd [3]");
}

} // namespace
} // namespace forge::test

namespace forge::test {
namespace {

// linear(x, w, b, gelu) is one node over the fused bias/GELU kernels: its value and every
// gradient equal the composition of matmul, add and gelu (each tested on its own), on every
// instruction set and on the reference kernels, with row counts and widths that leave tails
// (to f32 rounding: the bias gradient and the products sum in other orders).
TEST(NnOps, LinearMatchesMatmulAddGelu) {
    for (bool gelu_act : {false, true})
        for (auto [R, K, N] : {std::array<int64_t, 3>{3, 5, 7}, {70, 33, 130}, {130, 16, 17}}) {
            SCOPED_TRACE("gelu " + std::to_string(gelu_act) + " R " + std::to_string(R) + " K " +
                         std::to_string(K) + " N " + std::to_string(N));
            const std::vector<Tensor> in{Tensor::randn({2, R, K}, 1), Tensor::randn({K, N}, 2),
                                         Tensor::randn({N}, 3)};
            auto fused = [&](const std::vector<Tensor>& t) {
                return linear(t[0], t[1], t[2], gelu_act);
            };
            auto composed = [&](const std::vector<Tensor>& t) {
                Tensor z = add(matmul(t[0], t[1]), t[2]);
                return gelu_act ? gelu(z, GeluApprox::tanh) : z;
            };
            const auto want = value_and_grads(composed, in);
            for_each_isa([&] {
                const auto got = value_and_grads(fused, in);
                ASSERT_EQ(got.size(), want.size());
                for (size_t i = 0; i < got.size(); ++i)
                    EXPECT_LE(max_rel_diff(got[i], want[i]), 1e-4) << "output " << i;
            });
            cpu::ReferenceKernelsScope ref(true);
            const auto got_ref = value_and_grads(fused, in);
            for (size_t i = 0; i < got_ref.size(); ++i)
                EXPECT_LE(max_rel_diff(got_ref[i], want[i]), 1e-4) << "reference, output " << i;
        }
}

// linear_cross_entropy against its definition, cross_entropy(matmul(x, w^T)): loss and both
// gradients, with chunk boundaries that do not divide the rows (a chunk budget of 3 x V logits
// gives chunks of 3, 3, 3, 2 rows), ignored rows, f64 and f32, fast and reference kernels.
TEST(NnOps, LinearCrossEntropyMatchesUnfused) {
    struct ChunkScope {
        explicit ChunkScope(int64_t n) { Backend::set_linear_ce_chunk_elements(n); }
        ~ChunkScope() { Backend::set_linear_ce_chunk_elements(0); }
    };
    const int64_t V = 37, C = 12;
    for (const DType dt : {DType::f64, DType::f32})
        for (const int64_t budget : {int64_t(0), 3 * V})
            for (const bool ref_kernels : {false, true}) {
                SCOPED_TRACE(std::string(dtype_name(dt)) + " budget " + std::to_string(budget) +
                             (ref_kernels ? " reference" : " fast"));
                cpu::ReferenceKernelsScope ref(ref_kernels);
                ChunkScope chunks(budget);
                Tensor t = make_targets(11, V).view({11});
                auto run = [&](bool fused) {
                    Tensor x = Tensor::randn({11, C}, 7, dt), w = Tensor::randn({V, C}, 8, dt);
                    x.set_requires_grad(true);
                    w.set_requires_grad(true);
                    Tensor loss = fused ? linear_cross_entropy(x, w, t)
                                        : cross_entropy(matmul(x, w.t()), t);
                    mul_scalar(loss, 3.0).backward(); // a gradient other than 1 flows in
                    return std::vector<Tensor>{loss, x.grad(), w.grad()};
                };
                const auto got = run(true), want = run(false);
                const double tol = dt == DType::f64 ? 1e-12 : 1e-5;
                for (size_t i = 0; i < got.size(); ++i)
                    EXPECT_LE(max_rel_diff(got[i], want[i]), tol) << "output " << i;
            }
}

TEST(NnOps, LinearCrossEntropyGradcheckAndEdges) {
    Tensor t = ids_tensor({1, -100, 4, 0, 2, 2}, {2, 3});
    expect_gradcheck("linear_cross_entropy 3-D x",
                     [&](auto& in) { return linear_cross_entropy(in[0], in[1], t); },
                     {rand_leaf({2, 3, 4}, 130), rand_leaf({5, 4}, 131)});
    // Every row ignored: loss 0 and zero gradients, as cross_entropy.
    Tensor x = rand_leaf({3, 4}, 132), w = rand_leaf({5, 4}, 133);
    Tensor loss = linear_cross_entropy(x, w, ids_tensor({-100, -100, -100}, {3}));
    EXPECT_EQ(loss.item(), 0.0);
    loss.backward();
    for (double g : x.grad().to_vector<double>()) EXPECT_EQ(g, 0.0);
    for (double g : w.grad().to_vector<double>()) EXPECT_EQ(g, 0.0);
    // Without gradients (eval) only the loss.
    {
        NoGradGuard ng;
        EXPECT_NEAR(linear_cross_entropy(x, w, make_targets(3, 5)).item(),
                    cross_entropy(matmul(x, w.t()), make_targets(3, 5)).item(), 1e-12);
    }
    // Bad input: one clear error each.
    const Tensor t3 = make_targets(3, 5);
    EXPECT_THROW(linear_cross_entropy(x, w.t(), t3), InvalidArgument);          // w (C, V)
    EXPECT_THROW(linear_cross_entropy(x, w, make_targets(4, 5)), InvalidArgument); // rows
    EXPECT_THROW(linear_cross_entropy(x, w, ids_tensor({0, 5, 1}, {3})), InvalidArgument);
    // Mixed float dtypes (a half x from a norm under autocast, f32 w) compute in the promoted
    // dtype: here f64 x with f32 w is the f64 op on w widened.
    EXPECT_EQ(linear_cross_entropy(x, w.to(DType::f32), t3).item(),
              linear_cross_entropy(x, w.to(DType::f32).to(DType::f64), t3).item());
    try {
        linear_cross_entropy(x, w, ids_tensor({0, 7, 1}, {3}));
        ADD_FAILURE() << "no error for a target out of range";
    } catch (const InvalidArgument& e) {
        EXPECT_NE(std::string(e.what()).find("target 7 at row 1 is out of range"),
                  std::string::npos)
            << e.what();
    }
}

TEST(NnOps, LinearRejectsMismatchedBias) {
    const Tensor x = Tensor::randn({4, 3}, 1), w = Tensor::randn({3, 5}, 2);
    EXPECT_THROW(linear(x, w, Tensor::randn({4}, 3)), Error);
    EXPECT_THROW(linear(x, w.reshape({15}), Tensor::randn({5}, 3)), Error);
}

} // namespace
} // namespace forge::test
