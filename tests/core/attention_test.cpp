// attention: the short-sequence and flash kernels (every SIMD path: D % 16, D % 8, other D)
// against the reference kernel, forward, lse and gradients, in every float dtype; results
// independent of the thread count; the fused op against its decomposition attention_reference;
// gradcheck of both; causal alignment with Tq < Tk; memory that stays O(T * D); and the error
// messages.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <omp.h>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/simd/nn_kernels.h"
#include "core/op_test_util.h"

namespace forge::test {
namespace {

struct AttnCase {
    int64_t B, Hq, Hkv, Tq, Tk, D;
    bool causal;
    std::string str() const {
        return "Attention(B=" + std::to_string(B) + ",Hq=" + std::to_string(Hq) +
               ",Hkv=" + std::to_string(Hkv) + ",Tq=" + std::to_string(Tq) +
               ",Tk=" + std::to_string(Tk) + ",D=" + std::to_string(D) +
               ",causal=" + (causal ? "1" : "0") + ")";
    }
};

// Up to Tq, Tk = 256 the short-sequence kernels run (rows in blocks of 8, one tile of keys);
// past that the flash kernels (64 x 64 tiles). The cases cover one partial block or tile, several
// with a partial last one, Tq < Tk (queries aligned to the end), GQA and MQA, and head sizes
// taking each SIMD path; the last three are long enough for the flash path.
std::vector<AttnCase> cases() {
    return {
        {1, 2, 2, 5, 5, 16, true},     {1, 2, 2, 5, 5, 16, false},
        {2, 4, 2, 70, 70, 16, true},   {1, 4, 1, 70, 70, 32, false},
        {1, 2, 2, 3, 130, 16, true},   {1, 2, 1, 67, 150, 32, true},
        {1, 1, 1, 129, 129, 64, true}, {1, 2, 2, 20, 20, 8, true},
        {1, 2, 2, 20, 33, 12, true},   {1, 2, 2, 20, 33, 12, false},
        {1, 1, 1, 65, 65, 80, false},  {1, 1, 1, 1, 40, 16, true},
        {1, 2, 1, 67, 300, 32, true},  {1, 1, 1, 260, 260, 16, false},
        {1, 2, 2, 270, 270, 24, true},
    };
}

// The short-sequence kernels at the lengths around their block and tile edges (1, 7, 63, 64,
// 65, 128, 200, 256), the head sizes of the models (32, 64, 128) and one no SIMD policy takes
// (20), causal and not, Tq < Tk, Tq > Tk (non-causal), GQA, and MQA with B = 1 (its backward
// has fewer kv-heads than threads and takes the flash kernel).
std::vector<AttnCase> short_cases() {
    return {
        {2, 4, 2, 1, 1, 32, true},      {1, 2, 2, 7, 7, 32, false},
        {2, 4, 4, 63, 63, 32, true},    {2, 4, 2, 64, 64, 64, true},
        {1, 2, 1, 65, 65, 128, false},  {1, 4, 2, 128, 128, 32, true},
        {1, 2, 2, 200, 200, 64, true},  {1, 2, 1, 256, 256, 32, false},
        {1, 2, 2, 256, 256, 128, true}, {1, 2, 2, 64, 64, 20, true},
        {1, 2, 2, 7, 100, 32, true},    {1, 2, 2, 100, 60, 64, false},
        {1, 4, 1, 200, 256, 128, true},
    };
}

struct QKV {
    Tensor q, k, v;
};
QKV make_qkv(const AttnCase& c, DType dt, uint64_t seed, bool grad) {
    QKV x{Tensor::randn({c.B, c.Hq, c.Tq, c.D}, seed, DType::f32).to(dt),
          Tensor::randn({c.B, c.Hkv, c.Tk, c.D}, seed + 1, DType::f32).to(dt),
          Tensor::randn({c.B, c.Hkv, c.Tk, c.D}, seed + 2, DType::f32).to(dt)};
    if (grad) {
        x.q.set_requires_grad(true);
        x.k.set_requires_grad(true);
        x.v.set_requires_grad(true);
    }
    return x;
}

// out, dq, dk, dv of one forward + backward (with a fixed random output gradient), flattened
// into one tensor for comparison.
Tensor forward_backward(const QKV& x, bool causal,
                        const std::function<Tensor(const Tensor&, const Tensor&, const Tensor&,
                                                   const AttentionOptions&)>& fn) {
    for (const Tensor* t : {&x.q, &x.k, &x.v})
        t->zero_grad();
    AttentionOptions opts;
    opts.causal = causal;
    Tensor out = fn(x.q, x.k, x.v, opts);
    Tensor g = Tensor::randn(out.shape(), 99, DType::f32).to(out.dtype());
    out.backward(g);
    NoGradGuard ng;
    return concat(
        {out.detach().flatten(), x.q.grad().flatten(), x.k.grad().flatten(), x.v.grad().flatten()},
        0);
}

TEST(Attention, FastMatchesReferenceForwardAndBackward) {
    // Every case in f32 under each instruction set this CPU has (capped like the NN kernels'
    // tests, so an AVX-512 machine also runs the AVX2 and scalar policies); a few cases in the
    // other dtypes, whose kernels are the scalar policy (f64) or the f32 ones behind a
    // conversion (f16, bf16).
    using cpu::nn::Isa;
    const auto all = cases();
    for (Isa isa : {Isa::generic, Isa::avx2, Isa::avx512}) {
        if (int(isa) > int(cpu::nn::best_isa()))
            break;
        cpu::nn::IsaCapScope cap(isa);
        // The scalar policy is also the f64 path below; half of the cases suffice for it.
        for (size_t i = 0; i < all.size(); i += isa == Isa::generic ? 2 : 1) {
            const AttnCase& c = all[i];
            QKV x = make_qkv(c, DType::f32, 7, true);
            expect_fast_matches_ref(
                c.str() + " dtype=f32 isa=" + std::to_string(int(isa)),
                [&] { return forward_backward(x, c.causal, attention); }, 1e-5);
        }
    }
    for (DType dt : {DType::f64, DType::f16, DType::bf16}) {
        for (size_t i = 2; i < all.size(); i += 3) {
            const AttnCase& c = all[i];
            QKV x = make_qkv(c, dt, 7, true);
            const std::string what = c.str() + " dtype=" + std::string(dtype_name(dt));
            expect_fast_matches_ref(
                what, [&] { return forward_backward(x, c.causal, attention); },
                dtype_tolerance(dt));
        }
    }
}

TEST(Attention, ShortSequencesMatchReference) {
    // The short-sequence kernels under each instruction set, f32, and the scalar policy in f64,
    // against the reference kernels (plain loops over the full score matrix).
    using cpu::nn::Isa;
    for (Isa isa : {Isa::generic, Isa::avx2, Isa::avx512}) {
        if (int(isa) > int(cpu::nn::best_isa()))
            break;
        cpu::nn::IsaCapScope cap(isa);
        for (const auto& c : short_cases()) {
            QKV x = make_qkv(c, DType::f32, 17, true);
            expect_fast_matches_ref(
                c.str() + " dtype=f32 isa=" + std::to_string(int(isa)),
                [&] { return forward_backward(x, c.causal, attention); }, 1e-5);
        }
    }
    for (const auto& c : short_cases()) {
        QKV x = make_qkv(c, DType::f64, 19, true);
        expect_fast_matches_ref(
            c.str() + " dtype=f64", [&] { return forward_backward(x, c.causal, attention); },
            1e-12);
    }
}

TEST(Attention, ResultsDoNotDependOnThreadCount) {
    // Each (batch, head) task sums in a fixed order: one thread and two agree bitwise. (With
    // more threads than (batch, kv-head) pairs, grouped-query heads take another path, whose
    // per-query-head dK/dV partials sum in another order; 2 threads stay below that here.)
    for (const AttnCase& c :
         {AttnCase{2, 4, 4, 64, 64, 32, true}, AttnCase{2, 4, 2, 128, 128, 64, false},
          AttnCase{1, 4, 2, 300, 300, 32, true}}) {
        QKV x = make_qkv(c, DType::f32, 23, true);
        const int n = omp_get_max_threads();
        omp_set_num_threads(1);
        Tensor one = forward_backward(x, c.causal, attention);
        omp_set_num_threads(2);
        Tensor two = forward_backward(x, c.causal, attention);
        omp_set_num_threads(n);
        EXPECT_EQ(max_rel_diff(one, two), 0.0) << c.str();
    }
}

TEST(Attention, LogSumExpMatchesReferenceKernel) {
    // lse (B, Hq, Tq) is the state the backward pass runs on: check it at the kernel level.
    auto all = cases();
    for (const auto& c : short_cases())
        all.push_back(c);
    for (const auto& c : all) {
        QKV x = make_qkv(c, DType::f32, 11, false);
        auto run = [&](bool ref) {
            cpu::ReferenceKernelsScope scope(ref);
            Tensor out = Tensor::empty({c.B, c.Hq, c.Tq, c.D});
            Tensor lse = Tensor::empty({c.B, c.Hq, c.Tq});
            backend_for(x.q.device())
                .attention(x.q, x.k, x.v, float(1.0 / std::sqrt(double(c.D))), c.causal, out, lse);
            return lse;
        };
        EXPECT_LE(max_rel_diff(run(false), run(true)), 1e-5) << c.str();
    }
}

TEST(Attention, MatchesDecomposition) {
    // The fused op against softmax(q k^T * scale + mask) v built from public ops: outputs and
    // gradients, in f64 so only the algorithms differ. Every third case: the decomposition is
    // the slow side.
    const auto all = cases();
    for (size_t i = 0; i < all.size(); i += 3) {
        const AttnCase& c = all[i];
        QKV x = make_qkv(c, DType::f64, 21, true);
        Tensor fused = forward_backward(x, c.causal, attention);
        Tensor plain = forward_backward(x, c.causal, attention_reference);
        EXPECT_LE(max_rel_diff(fused, plain), 1e-10) << c.str();
    }
}

TEST(Attention, ExplicitScaleAndDefault) {
    AttnCase c{1, 2, 2, 9, 9, 16, true};
    QKV x = make_qkv(c, DType::f64, 31, false);
    AttentionOptions dflt, explicit_scale, other;
    explicit_scale.scale = 0.25f; // 1/sqrt(16)
    other.scale = 0.7f;
    EXPECT_LE(
        max_rel_diff(attention(x.q, x.k, x.v, dflt), attention(x.q, x.k, x.v, explicit_scale)),
        1e-12);
    EXPECT_LE(
        max_rel_diff(attention(x.q, x.k, x.v, other), attention_reference(x.q, x.k, x.v, other)),
        1e-10);
}

TEST(Attention, CausalQueriesSitAtTheEnd) {
    // With Tq < Tk, query i is at position Tk - Tq + i: the last query sees every key, so it
    // equals the non-causal result; and changing keys after a query's position leaves it alone.
    AttnCase c{1, 2, 2, 4, 10, 8, true};
    QKV x = make_qkv(c, DType::f64, 41, false);
    AttentionOptions causal, full;
    full.causal = false;
    Tensor oc = attention(x.q, x.k, x.v, causal), of = attention(x.q, x.k, x.v, full);
    EXPECT_LE(max_rel_diff(oc.narrow(2, 3, 1), of.narrow(2, 3, 1)), 1e-12);
    EXPECT_GT(max_rel_diff(oc.narrow(2, 0, 1), of.narrow(2, 0, 1)), 1e-6);
    // Query 0 sits at position 6: keys 7..9 must not matter.
    Tensor k2 = x.k.clone(), v2 = x.v.clone();
    k2.narrow(2, 7, 3).copy_(Tensor::full({1, 2, 3, 8}, 5.0, DType::f64));
    v2.narrow(2, 7, 3).copy_(Tensor::full({1, 2, 3, 8}, -5.0, DType::f64));
    Tensor o2 = attention(x.q, k2, v2, causal);
    EXPECT_LE(max_rel_diff(o2.narrow(2, 0, 1), oc.narrow(2, 0, 1)), 1e-12);
    EXPECT_GT(max_rel_diff(o2.narrow(2, 3, 1), oc.narrow(2, 3, 1)), 1e-6);
}

TEST(Attention, NonContiguousInputs) {
    // Heads split from a projection: (B, T, H, D) viewed as (B, H, T, D) through a transpose.
    Tensor q = Tensor::randn({2, 9, 4, 16}, 51, DType::f32).transpose(1, 2);
    Tensor k = Tensor::randn({2, 11, 2, 16}, 52, DType::f32).transpose(1, 2);
    Tensor v = Tensor::randn({2, 11, 2, 32}, 53, DType::f32).narrow(3, 8, 16).transpose(1, 2);
    AttentionOptions opts;
    expect_fast_matches_ref(
        "Attention(non-contiguous)", [&] { return attention(q, k, v, opts); }, 1e-5);
    EXPECT_LE(max_rel_diff(attention(q, k, v, opts), attention_reference(q, k, v, opts)), 1e-5);
}

TEST(Attention, Gradcheck) {
    auto fused = [](bool causal) {
        return [causal](const std::vector<Tensor>& x) {
            AttentionOptions o;
            o.causal = causal;
            return attention(x[0], x[1], x[2], o);
        };
    };
    expect_gradcheck(
        "Attention(causal)", fused(true),
        {rand_leaf({1, 2, 5, 4}, 60), rand_leaf({1, 2, 5, 4}, 61), rand_leaf({1, 2, 5, 4}, 62)});
    expect_gradcheck(
        "Attention(full)", fused(false),
        {rand_leaf({2, 1, 4, 3}, 63), rand_leaf({2, 1, 6, 3}, 64), rand_leaf({2, 1, 6, 3}, 65)});
    expect_gradcheck(
        "Attention(GQA, causal, Tq<Tk)", fused(true),
        {rand_leaf({1, 4, 3, 4}, 66), rand_leaf({1, 2, 5, 4}, 67), rand_leaf({1, 2, 5, 4}, 68)});
    // A transposed (non-contiguous) leaf.
    Tensor qt = Tensor::randn({1, 4, 2, 4}, 69, DType::f64).transpose(1, 2);
    qt.set_requires_grad(true);
    expect_gradcheck("Attention(non-contiguous q)", fused(true),
                     {qt, rand_leaf({1, 2, 4, 4}, 70), rand_leaf({1, 2, 4, 4}, 71)});
    // The decomposition is differentiable through its ops too.
    expect_gradcheck(
        "AttentionReference(GQA, causal)",
        [](const std::vector<Tensor>& x) { return attention_reference(x[0], x[1], x[2]); },
        {rand_leaf({1, 2, 3, 4}, 72), rand_leaf({1, 1, 4, 4}, 73), rand_leaf({1, 1, 4, 4}, 74)});
}

TEST(Attention, ExtraMemoryIsLinearInT) {
    // Forward + backward at T = 1024 (one head, D = 16): a (T, T) score matrix alone would be
    // 4 MiB; the flash path's extra memory is O(T * D) plus per-thread tiles.
    const int64_t T = 1024, D = 16;
    Tensor q = Tensor::randn({1, 1, T, D}, 81), k = Tensor::randn({1, 1, T, D}, 82),
           v = Tensor::randn({1, 1, T, D}, 83);
    q.set_requires_grad(true);
    k.set_requires_grad(true);
    v.set_requires_grad(true);
    Tensor g = Tensor::randn({1, 1, T, D}, 84);
    // Tiles are per thread: 2 threads, so the bound holds on any machine (16 threads' tiles
    // alone came to 0.9 MB).
    const int n = omp_get_max_threads();
    omp_set_num_threads(2);
    const size_t before = cpu::memory_stats().current;
    cpu::reset_peak_memory();
    attention(q, k, v).backward(g);
    const size_t extra = cpu::memory_stats().peak - before;
    omp_set_num_threads(n);
    EXPECT_LT(extra, size_t(T * T * 4 / 8)) << "peak extra bytes " << extra;
}

TEST(Attention, NoQueries) {
    Tensor q = Tensor::zeros({1, 2, 0, 8}), k = Tensor::randn({1, 2, 3, 8}, 90);
    Tensor v = Tensor::randn({1, 2, 3, 8}, 91);
    k.set_requires_grad(true);
    Tensor out = attention(q, k, v);
    EXPECT_EQ(shape_str(out.shape()), "[1,2,0,8]");
    sum(out).backward();
    EXPECT_EQ(max_rel_diff(k.grad(), Tensor::zeros({1, 2, 3, 8})), 0.0);
}

TEST(Attention, Errors) {
    Tensor q = Tensor::zeros({1, 4, 5, 8}), k = Tensor::zeros({1, 2, 5, 8}),
           v = Tensor::zeros({1, 2, 5, 8});
    expect_error([&] { attention(q.select(0, 0), k, v); },
                 "[attention] expects q, k, v of shape (B, H, T, D); got q [4,5,8], k [1,2,5,8]");
    expect_error(
        [&] {
            attention(q, Tensor::zeros({1, 2, 5, 4}), Tensor::zeros({1, 2, 5, 4}));
        },
        "[attention] head dims differ (8 and 4): q [1,4,5,8], k [1,2,5,4]");
    expect_error(
        [&] {
            attention(q, Tensor::zeros({1, 3, 5, 8}), Tensor::zeros({1, 3, 5, 8}));
        },
        "[attention] query heads (4) must be a multiple of key/value heads (3)");
    expect_error(
        [&] {
            attention(q, k, Tensor::zeros({1, 2, 6, 8}));
        },
        "[attention] k and v shapes differ: q [1,4,5,8], k [1,2,5,8], v [1,2,6,8]");
    expect_error(
        [&] {
            attention(q, Tensor::zeros({2, 2, 5, 8}), Tensor::zeros({2, 2, 5, 8}));
        },
        "[attention] batch sizes differ");
    expect_error([&] { attention(q, k.to(DType::f64), v); },
                 "[attention] dtypes differ: q f32, k f64, v f32");
    expect_error([&] { attention(q, k.to(DType::i64), v); }, "[attention] expects a float tensor");
    expect_error(
        [&] {
            attention(Tensor::zeros({1, 4, 6, 8}), k, v);
        },
        "[attention] causal attention needs Tq <= Tk (6 queries, 5 keys): q [1,4,6,8]");
    expect_error([&] { attention_reference(q.select(0, 0), k, v); },
                 "[attention_reference] expects q, k, v of shape (B, H, T, D)");
    // Tq > Tk is fine without the causal mask.
    AttentionOptions full;
    full.causal = false;
    EXPECT_EQ(shape_str(attention(Tensor::zeros({1, 4, 6, 8}), k, v, full).shape()), "[1,4,6,8]");
}

} // namespace
} // namespace forge::test
