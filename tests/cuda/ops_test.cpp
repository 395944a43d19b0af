// Every CUDA kernel against the CPU reference kernel on seeded random inputs: f32 within 1e-5
// (matmul with TF32 off), f64 to rounding, bf16 within 1e-2; plus gradients through autograd
// on CUDA tensors compared with the same graph on the CPU.
#include <algorithm>
#include <limits>

#include "cuda/cuda_test_util.h"
#include "backends/cuda/cuda_backend.h"
#include <forge/core/ops_backward.h>
#include <forge/serve/middleware.h>
#include <forge/train/optimizer.h>

namespace forge::test {
namespace {

// ---------------------------------------------------------------- copies, fill, random

TEST(CudaCopy, HostDeviceRoundTripSmallAndChunked) {
    // 1 KiB (pageable path) and 40 MiB (pinned, five 8 MiB chunks, a partial last one).
    for (int64_t n : {int64_t(256), int64_t(10 << 20) + 123}) {
        Tensor h = Tensor::randn({n}, 3, DType::f32);
        Tensor d = h.to(kCuda);
        EXPECT_EQ(d.device(), kCuda);
        Tensor back = d.to(Device::cpu());
        EXPECT_EQ(back.device(), Device::cpu());
        EXPECT_EQ(max_rel_diff(back, h), 0.0) << n;
    }
}

TEST(CudaCopy, StridedAndCastingCopies) {
    expect_cuda_matches_cpu(
        "transpose/narrow/expand copies",
        [](Device d) {
            Tensor x = randn_on({6, 5, 7}, 1, d);
            Tensor row = randn_on({7}, 2, d);
            return std::vector<Tensor>{x.transpose(0, 2).contiguous(),
                                       x.narrow(1, 1, 3).permute({2, 0, 1}).contiguous(),
                                       row.expand({4, 7}).contiguous(), x.select(2, 3).clone()};
        },
        0.0);
    for (DType from : {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i32, DType::i64,
                       DType::u8})
        for (DType to : {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i32,
                         DType::i64, DType::u8})
            expect_cuda_matches_cpu(
                std::string("cast ") + std::string(dtype_name(from)) + " -> " +
                    std::string(dtype_name(to)),
                [&](Device d) {
                    // values in [0, 100) so every cast is defined (u8 included)
                    Tensor x = Tensor::rand({3, 37}, 5, DType::f64, 0.0, 100.0).to(from).to(d);
                    return std::vector<Tensor>{x.to(to), x.t().to(to)};
                },
                0.0);
}

TEST(CudaCopy, FillEveryDtype) {
    for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i32, DType::i64,
                     DType::u8})
        expect_cuda_matches_cpu(
            "fill", [&](Device d) { return std::vector<Tensor>{Tensor::full({5, 3}, 3.3, dt, d)}; },
            0.0);
}

TEST(CudaRandom, SameSeedSameValuesAsCpu) {
    for (DType dt : {DType::f32, DType::f64})
        expect_cuda_matches_cpu(
            "randn/rand/dropout",
            [&](Device d) {
                Tensor x = Tensor::ones({1000, 33}, dt, d);
                return std::vector<Tensor>{Tensor::randn({1000, 33}, 42, dt, 0.5, 2.0, d),
                                           Tensor::rand({77, 5}, 7, dt, -1.0, 3.0, d),
                                           dropout(x, 0.25, 99)};
            },
            dt == DType::f32 ? 1e-6 : 1e-13);
}

// ---------------------------------------------------------------- element-wise, reductions

TEST(CudaElementwise, UnaryOps) {
    for (DType dt : {DType::f32, DType::f64, DType::bf16})
        expect_cuda_matches_cpu(
            "unary",
            [&](Device d) {
                Tensor x = randn_on({9, 31}, 11, d, dt);
                Tensor p = add_scalar(abs(x), 0.1); // positive, for log/sqrt/pow
                Tensor xt = x.t();                   // strided input
                return std::vector<Tensor>{
                    neg(xt),           exp(x),           log(p),
                    sqrt(p),           rsqrt(p),         tanh(xt),
                    sigmoid(x),        relu(xt),         abs(x),
                    gelu(xt),          gelu(x, GeluApprox::erf),
                    silu(x),           gelu_grad(x),     gelu_grad(xt, GeluApprox::erf),
                    silu_grad(x),      add_scalar(x, 2.5), mul_scalar(xt, -3.0),
                    pow_scalar(p, 1.7), rsub_scalar(x, 4.0)};
            },
            tol_of(dt));
}

TEST(CudaElementwise, BinaryBroadcastCompareWhere) {
    for (DType dt : {DType::f32, DType::f64, DType::i64, DType::i32})
        expect_cuda_matches_cpu(
            "binary",
            [&](Device d) {
                Tensor a = Tensor::rand({4, 1, 6}, 1, DType::f64, -5, 5).to(dt).to(d);
                Tensor b = Tensor::rand({3, 1}, 2, DType::f64, 1, 5).to(dt).to(d);
                Tensor c = Tensor::rand({6, 4}, 3, DType::f64, -5, 5).to(dt).to(d).t();
                return std::vector<Tensor>{add(a, b), sub(a, b),    mul(a, c), div(a, b),
                                           maximum(a, b), eq(a, a), gt(a, b), lt(c, a),
                                           where(gt(a, b), a, b)};
            },
            tol_of(dt == DType::f32 ? DType::f32 : DType::f64));
    expect_cuda_matches_cpu(
        "masked_fill",
        [](Device d) {
            Tensor x = randn_on({5, 8}, 4, d);
            return std::vector<Tensor>{masked_fill(x, gt(x, Tensor::scalar(0.3, DType::f32, d)),
                                                   -std::numeric_limits<double>::infinity())};
        },
        0.0);
}

// The CPU reference sums f32 in f32, in order (error ~1e-5 over 300 terms); the CUDA kernel
// accumulates in double. The oracle for f32 is therefore the reference kernel run in f64 on the
// same values, rounded to f32 at the end.
TEST(CudaReduce, SumMeanMaxOverDims) {
    for (DType dt : {DType::f32, DType::f64, DType::i64})
        expect_cuda_matches_cpu(
            "reduce",
            [&](Device d) {
                Tensor x = Tensor::rand({7, 300, 5}, 6, DType::f64, -3, 3).to(dt);
                if (d.type == DeviceType::cpu && dt == DType::f32) {
                    std::vector<Tensor> r;
                    Tensor x64 = x.to(DType::f64);
                    for (Tensor t : {sum(x64), sum(x64, {0}), sum(x64, {1}), sum(x64, {2}, true),
                                     sum(x64, {0, 2}), max(x64), max(x64, {1}), max(x64, {0, 2}),
                                     mean(x64, {-1}), sum(x64.transpose(0, 1), {1})})
                        r.push_back(t.to(DType::f32));
                    return r;
                }
                x = x.to(d);
                std::vector<Tensor> r = {sum(x), sum(x, {0}), sum(x, {1}), sum(x, {2}, true),
                                         sum(x, {0, 2}), max(x), max(x, {1}), max(x, {0, 2})};
                if (is_floating(dt)) {
                    r.push_back(mean(x, {-1}));
                    r.push_back(sum(x.transpose(0, 1), {1}));
                }
                return r;
            },
            tol_of(dt == DType::i64 ? DType::f64 : dt));
    // Bias-gradient shape: many rows, few columns (the chunked two-pass path).
    expect_cuda_matches_cpu(
        "sum over rows",
        [](Device d) {
            Tensor x = randn_on({8192, 96}, 9, d);
            if (d.type == DeviceType::cpu) // f64 oracle, as above
                return std::vector<Tensor>{sum(x.to(DType::f64), {0}).to(DType::f32)};
            return std::vector<Tensor>{sum(x, {0})};
        },
        1e-6);
}

// ---------------------------------------------------------------- matmul

TEST(CudaMatmul, LayoutsBatchesBroadcast) {
    for (DType dt : {DType::f32, DType::f64, DType::bf16})
        expect_cuda_matches_cpu(
            "matmul",
            [&](Device d) {
                Tensor a = randn_on({3, 37, 64}, 1, d, dt), b = randn_on({3, 64, 29}, 2, d, dt);
                Tensor w = randn_on({64, 29}, 3, d, dt);
                Tensor bt = randn_on({3, 29, 64}, 4, d, dt).transpose(-2, -1); // column-major
                Tensor at = randn_on({64, 37}, 5, d, dt).t();
                Tensor v = randn_on({64}, 6, d, dt);
                Tensor a4 = randn_on({2, 1, 5, 64}, 7, d, dt), b4 = randn_on({4, 64, 3}, 8, d, dt);
                return std::vector<Tensor>{matmul(a, b),   matmul(a, w),  matmul(a, bt),
                                           matmul(at, w),  matmul(a, v),  matmul(v, w),
                                           matmul(a4, b4), matmul(at, bt.select(0, 1))};
            },
            tol_of(dt));
}

TEST(CudaMatmul, Tf32IsOptInAndClose) {
    Tensor a = randn_on({256, 512}, 1, Device::cpu()), b = randn_on({512, 128}, 2, Device::cpu());
    Tensor ref;
    {
        cpu::ReferenceKernelsScope scope(true);
        ref = matmul(a, b);
    }
    EXPECT_FALSE(cuda::allow_tf32());
    const double exact = norm_rel_diff(matmul(a.to(kCuda), b.to(kCuda)), ref);
    cuda::set_allow_tf32(true);
    const double tf32 = norm_rel_diff(matmul(a.to(kCuda), b.to(kCuda)), ref);
    cuda::set_allow_tf32(false);
    EXPECT_LE(exact, 1e-6);
    EXPECT_LE(tf32, 1e-3);
    EXPECT_GT(tf32, exact); // TF32 really ran (it drops 13 mantissa bits)
}

// bf16 autocast: operands rounded to bf16 (8 mantissa bits), f32 accumulation. PrecisionScope
// sets and restores the switches.
TEST(CudaMatmul, Bf16AutocastIsScopedAndClose) {
    Tensor a = randn_on({256, 512}, 1, Device::cpu()), b = randn_on({512, 128}, 2, Device::cpu());
    Tensor ref;
    {
        cpu::ReferenceKernelsScope scope(true);
        ref = matmul(a, b);
    }
    double bf16 = 0, tf32 = 0;
    {
        const cuda::PrecisionScope p("bf16");
        EXPECT_TRUE(cuda::autocast_bf16());
        EXPECT_FALSE(cuda::allow_tf32());
        bf16 = norm_rel_diff(matmul(a.to(kCuda), b.to(kCuda)), ref);
        {
            const cuda::PrecisionScope inner("tf32");
            tf32 = norm_rel_diff(matmul(a.to(kCuda), b.to(kCuda)), ref);
        }
        EXPECT_TRUE(cuda::autocast_bf16()); // restored
    }
    EXPECT_FALSE(cuda::autocast_bf16());
    EXPECT_LE(bf16, 1e-2);
    EXPECT_GT(bf16, tf32); // bf16 really ran: 3 fewer mantissa bits than TF32
    EXPECT_THROW(cuda::PrecisionScope("fp8"), InvalidArgument);
}

// f16 autocast: operands rounded to f16 (11 significant bits, as TF32), f32 accumulation, so
// closer than bf16; past f16's 65504 an operand becomes inf (what loss scaling watches for).
// Attention runs the tensor-core kernel under it too (bf16 inside, as under bf16 autocast: no
// f16 kernel is built), so its result equals the bf16 run's and is within bf16's bound.
TEST(CudaMatmul, F16AutocastIsScopedAndClose) {
    Tensor a = randn_on({256, 512}, 1, Device::cpu()), b = randn_on({512, 128}, 2, Device::cpu());
    Tensor ref;
    {
        cpu::ReferenceKernelsScope scope(true);
        ref = matmul(a, b);
    }
    double f16 = 0, bf16 = 0;
    Tensor att_f32, att_f16, att_bf16;
    Tensor q = randn_on({1, 2, 64, 64}, 3, kCuda), k = randn_on({1, 2, 64, 64}, 4, kCuda),
           v = randn_on({1, 2, 64, 64}, 5, kCuda);
    att_f32 = attention(q, k, v);
    {
        const cuda::PrecisionScope p("f16");
        EXPECT_TRUE(cuda::autocast_f16());
        EXPECT_FALSE(cuda::autocast_bf16());
        EXPECT_FALSE(cuda::allow_tf32());
        f16 = norm_rel_diff(matmul(a.to(kCuda), b.to(kCuda)), ref);
        {
            const cuda::PrecisionScope inner("bf16");
            EXPECT_FALSE(cuda::autocast_f16());
            bf16 = norm_rel_diff(matmul(a.to(kCuda), b.to(kCuda)), ref);
        }
        EXPECT_TRUE(cuda::autocast_f16()); // restored
        att_f16 = attention(q, k, v);
        {
            const cuda::PrecisionScope inner("bf16");
            att_bf16 = attention(q, k, v);
        }
        Tensor big = mul_scalar(a, 1e5).to(kCuda); // every |x| >= 0.66 is past 65504
        auto out = matmul(big, b.to(kCuda)).to_vector<float>();
        EXPECT_TRUE(std::any_of(out.begin(), out.end(), [](float x) { return !std::isfinite(x); }));
    }
    EXPECT_FALSE(cuda::autocast_f16());
    EXPECT_GT(f16, 0.0); // f16 really ran
    EXPECT_LE(f16, 2e-3);
    EXPECT_LT(f16, bf16); // 3 more mantissa bits than bf16
    EXPECT_EQ(att_f16.to_vector<float>(), att_bf16.to_vector<float>());
    EXPECT_GT(max_rel_diff(att_f16, att_f32), 0.0);
    EXPECT_LE(max_rel_diff(att_f16, att_f32), tol_of(DType::bf16));
}

// ---------------------------------------------------------------- nn kernels

TEST(CudaNN, SoftmaxNormsCrossEntropy) {
    for (DType dt : {DType::f32, DType::f64, DType::bf16})
        expect_cuda_matches_cpu(
            "softmax/norms/ce",
            [&](Device d) {
                Tensor x = randn_on({12, 1000}, 1, d, dt, 3.0);
                Tensor w = randn_on({1000}, 2, d, dt), b = randn_on({1000}, 3, d, dt);
                std::vector<int64_t> t(12);
                for (int i = 0; i < 12; ++i)
                    t[size_t(i)] = i % 4 == 3 ? -100 : (i * 97) % 1000;
                Tensor tg = Tensor::from_vector(t, {12}).to(d);
                return std::vector<Tensor>{softmax(x),
                                           log_softmax(x),
                                           softmax(x, 0),
                                           layer_norm(x, w, b),
                                           layer_norm(x, w, Tensor()),
                                           rms_norm(x, w),
                                           cross_entropy(x, tg)};
            },
            tol_of(dt));
}

TEST(CudaNN, EmbeddingRope) {
    for (DType dt : {DType::f32, DType::bf16})
        expect_cuda_matches_cpu(
            "embedding/rope",
            [&](Device d) {
                Tensor w = randn_on({50, 24}, 1, d, dt);
                Tensor ids = Tensor::from_vector(std::vector<int64_t>{3, 7, 3, 49, 0, 3}, {2, 3})
                                 .to(d);
                Tensor x = randn_on({2, 3, 11, 16}, 2, d, dt);
                RopeOptions inter{.theta = 500.0f, .pos_offset = 5,
                                  .layout = RopeLayout::interleaved};
                RopeOptions part{.rotary_dim = 8, .inverse = true};
                return std::vector<Tensor>{embedding(w, ids), embedding(w, ids.to(DType::i32)),
                                           rope(x), rope(x, inter), rope(x, part)};
            },
            tol_of(dt));
}

// Host ids and targets for device tensors are validated on the host and copied (no wait for the
// device): the same results as device ids, the same errors.
TEST(CudaNN, HostIdsAndTargetsForDeviceTensors) {
    Tensor w = leaf_on({50, 24}, 61, kCuda), x = leaf_on({6, 24}, 62, kCuda);
    Tensor ids = Tensor::from_vector(std::vector<int64_t>{3, 7, 3, 49, 0, 3}, {6});
    Tensor tg = Tensor::from_vector(std::vector<int64_t>{1, -100, 49, 0, 7, 7}, {6});
    Tensor y_host = embedding(w, ids), y_dev = embedding(w, ids.to(kCuda));
    EXPECT_EQ(max_rel_diff(y_host, y_dev), 0.0);
    sum(y_host).backward();
    const Tensor gw_host = w.grad().detach().clone();
    w.zero_grad();
    sum(y_dev).backward();
    EXPECT_EQ(max_rel_diff(gw_host, w.grad()), 0.0);
    EXPECT_EQ(linear_cross_entropy(x, w, tg).item(),
              linear_cross_entropy(x, w, tg.to(kCuda)).item());
    try {
        embedding(w, Tensor::from_vector(std::vector<int64_t>{3, 50}, {2}));
        ADD_FAILURE() << "no error for an id out of range";
    } catch (const InvalidArgument& e) {
        EXPECT_NE(std::string(e.what()).find("id 50 (position 1"), std::string::npos) << e.what();
    }
    EXPECT_THROW(linear_cross_entropy(x, w, Tensor::from_vector(std::vector<int64_t>{0, 0, 0, 0,
                                                                                     0, 60},
                                                                {6})),
                 InvalidArgument);
}

// Gradients of the fused ops, through autograd on each device.
TEST(CudaNN, FusedBackwards) {
    expect_cuda_matches_cpu(
        "norm/ce/embedding/rope backward",
        [](Device d) {
            Tensor x = leaf_on({16, 200}, 1, d), w = leaf_on({200}, 2, d), b = leaf_on({200}, 3, d);
            Tensor e = leaf_on({30, 200}, 4, d);
            std::vector<int64_t> t(16), idv(16);
            for (int i = 0; i < 16; ++i) {
                t[size_t(i)] = i == 5 ? -100 : (i * 31) % 200;
                idv[size_t(i)] = (i * 7) % 30;
            }
            Tensor tg = Tensor::from_vector(t, {16}).to(d);
            Tensor ids = Tensor::from_vector(idv, {16}).to(d);
            Tensor h = add(x, embedding(e, ids));
            Tensor y = rms_norm(layer_norm(h, w, b), w);
            Tensor r = rope(y.reshape({2, 2, 4, 200})).reshape({16, 200});
            Tensor loss = add(cross_entropy(r, tg), mean(mul(log_softmax(y), y)));
            loss.backward();
            return std::vector<Tensor>{loss, x.grad(), w.grad(), b.grad(), e.grad()};
        },
        1e-5);
}

// ---------------------------------------------------------------- attention

struct AttnCase {
    int64_t B, Hq, Hkv, Tq, Tk, D;
    bool causal;
};

TEST(CudaAttention, ForwardBackwardMatchReference) {
    const AttnCase cases[] = {
        {2, 4, 4, 37, 37, 64, true},   {1, 8, 2, 70, 70, 128, true}, // GQA 4:1
        {2, 2, 1, 33, 33, 64, false},  {1, 4, 2, 5, 40, 64, true},   // decode-like Tq < Tk
        {1, 2, 2, 17, 17, 16, true},   {1, 2, 1, 9, 23, 200, false}, // small and wide heads
    };
    for (const AttnCase& c : cases) {
        const std::string what = "attention B" + std::to_string(c.B) + " Hq" +
                                 std::to_string(c.Hq) + " Hkv" + std::to_string(c.Hkv) + " Tq" +
                                 std::to_string(c.Tq) + " Tk" + std::to_string(c.Tk) + " D" +
                                 std::to_string(c.D) + (c.causal ? " causal" : "");
        expect_cuda_matches_cpu(
            what,
            [&](Device d) {
                Tensor q = leaf_on({c.B, c.Hq, c.Tq, c.D}, 1, d);
                Tensor k = leaf_on({c.B, c.Hkv, c.Tk, c.D}, 2, d);
                Tensor v = leaf_on({c.B, c.Hkv, c.Tk, c.D}, 3, d);
                Tensor o = attention(q, k, v, {.causal = c.causal});
                Tensor g = randn_on(o.shape(), 4, d);
                sum(mul(o, g)).backward();
                return std::vector<Tensor>{o, q.grad(), k.grad(), v.grad()};
            },
            1e-5);
    }
    // bf16 inputs (widened to f32 by the op).
    expect_cuda_matches_cpu(
        "attention bf16",
        [](Device d) {
            Tensor q = randn_on({1, 4, 50, 64}, 1, d, DType::bf16);
            Tensor k = randn_on({1, 2, 50, 64}, 2, d, DType::bf16);
            Tensor v = randn_on({1, 2, 50, 64}, 3, d, DType::bf16);
            return std::vector<Tensor>{attention(q, k, v)};
        },
        1e-2);
}

// The bf16 tensor-core kernel (allow_reduced_precision_attention): inputs rounded to bf16, f32
// accumulation. Documented bound: 1e-2 relative (norm) against the f32 CPU reference for the
// output and every gradient; tails (T not a multiple of 64), GQA, Tq < Tk, head dims 64/128.
// The backward streams 64-query tiles of every head of a group through a key block, so a GQA
// case with several tiles per head crosses heads in that stream, and dq sums the atomic adds of
// many key blocks at T = 512.
TEST(CudaAttention, TensorCoreKernelWithinBf16Tolerance) {
    struct Flag {
        Flag() { cuda::set_allow_reduced_precision_attention(true); }
        ~Flag() { cuda::set_allow_reduced_precision_attention(false); }
    };
    const AttnCase cases[] = {
        {2, 4, 4, 100, 100, 64, true},   {1, 8, 2, 130, 130, 128, true},  // tails, GQA 4:1
        {2, 2, 1, 70, 70, 64, false},    {1, 4, 2, 37, 150, 64, true},    // full; Tq < Tk
        {1, 2, 2, 128, 128, 128, false}, {1, 2, 1, 1, 200, 128, true},    // whole tiles; decode
        {1, 2, 2, 256, 256, 64, true},   {1, 4, 1, 300, 300, 64, true},   // GQA 4:1, 5 tiles/head
        {2, 2, 2, 200, 333, 128, false}, {1, 3, 1, 190, 450, 128, true},  // Tq != Tk, tails
        {1, 2, 2, 512, 512, 64, true},   {1, 2, 2, 512, 512, 128, false}, // many key blocks
    };
    for (const AttnCase& c : cases) {
        const std::string what = "tc attention B" + std::to_string(c.B) + " Hq" +
                                 std::to_string(c.Hq) + " Hkv" + std::to_string(c.Hkv) + " Tq" +
                                 std::to_string(c.Tq) + " Tk" + std::to_string(c.Tk) + " D" +
                                 std::to_string(c.D) + (c.causal ? " causal" : "");
        auto run = [&](Device d) {
            Tensor q = leaf_on({c.B, c.Hq, c.Tq, c.D}, 1, d);
            Tensor k = leaf_on({c.B, c.Hkv, c.Tk, c.D}, 2, d);
            Tensor v = leaf_on({c.B, c.Hkv, c.Tk, c.D}, 3, d);
            Tensor o = attention(q, k, v, {.causal = c.causal});
            Tensor g = randn_on(o.shape(), 4, d);
            sum(mul(o, g)).backward();
            return std::vector<Tensor>{o, q.grad(), k.grad(), v.grad()};
        };
        std::vector<Tensor> ref;
        {
            cpu::ReferenceKernelsScope scope(true);
            ref = run(Device::cpu());
        }
        const std::vector<Tensor> exact = run(kCuda);
        for (int warps : {8, 4}) { // both block shapes of the kernels
            cuda::set_attention_tc_warps(warps);
            std::vector<Tensor> fast;
            {
                Flag on;
                fast = run(kCuda);
            }
            const std::string w = what + " (" + std::to_string(warps) + " warps) ";
            const char* names[] = {"out", "dq", "dk", "dv"};
            for (size_t i = 0; i < ref.size(); ++i) {
                EXPECT_LE(norm_rel_diff(fast[i], ref[i]), 1e-2) << w << names[i];
                EXPECT_LE(max_rel_diff(fast[i], ref[i]), 5e-2) << w << names[i];
                // bf16 rounding shows: the tensor-core kernel ran, not the exact fallback.
                EXPECT_GT(max_rel_diff(fast[i], exact[i]), 1e-6) << w << names[i];
            }
        }
        cuda::set_attention_tc_warps(0); // the default again
    }
}

// bf16 q, k, v as stored (Backend::attention_takes_half, under bf16 autocast): out, dq, dk, dv
// in bf16, the upstream gradient read in bf16 (or f32) as it comes; against the CPU reference in
// f64 on the same bf16 values, within the kernel's bound (1e-2 relative, norm), for every
// forward kernel and block shape (set_attention_tc_fwd_config 1..4) and every backward kernel
// and block shape. Tails, GQA 4:1, Tq != Tk (decode-like and longer), causal and full.
TEST(CudaAttention, Bf16TensorsWithinBf16Tolerance) {
    const AttnCase cases[] = {
        {2, 4, 4, 100, 100, 64, true},   {1, 8, 2, 130, 130, 128, true},  // tails, GQA 4:1
        {2, 2, 1, 70, 70, 64, false},    {1, 4, 2, 37, 150, 64, true},    // full; Tq < Tk
        {1, 2, 2, 128, 128, 128, false}, {1, 2, 1, 1, 200, 128, true},    // whole tiles; decode
        {1, 4, 1, 300, 300, 64, true},   {2, 2, 2, 200, 333, 128, false}, // GQA; Tq != Tk
        {1, 3, 1, 190, 450, 128, true},  {1, 2, 2, 512, 512, 64, true},   // tails; many blocks
        {1, 2, 2, 512, 512, 128, true},  {1, 2, 2, 333, 333, 64, false},
    };
    for (const AttnCase& c : cases) {
        const std::string what = "bf16 attention B" + std::to_string(c.B) + " Hq" +
                                 std::to_string(c.Hq) + " Hkv" + std::to_string(c.Hkv) + " Tq" +
                                 std::to_string(c.Tq) + " Tk" + std::to_string(c.Tk) + " D" +
                                 std::to_string(c.D) + (c.causal ? " causal" : "");
        const Shape qs{c.B, c.Hq, c.Tq, c.D}, ks{c.B, c.Hkv, c.Tk, c.D};
        const Tensor q16 = Tensor::randn(qs, 1, DType::bf16);
        const Tensor k16 = Tensor::randn(ks, 2, DType::bf16), v16 = Tensor::randn(ks, 3, DType::bf16);
        const Tensor g16 = Tensor::randn(qs, 4, DType::bf16);
        // out, dq, dk, dv of attention on (q16, k16, v16) in dtype dt on d, upstream gradient g.
        auto run = [&](Device d, DType dt, const Tensor& g) {
            auto leaf = [&](const Tensor& t) {
                Tensor x = t.to(dt).to(d).detach();
                x.set_requires_grad(true);
                return x;
            };
            Tensor q = leaf(q16), k = leaf(k16), v = leaf(v16);
            Tensor o = attention(q, k, v, {.causal = c.causal});
            o.backward(g.to(d));
            return std::vector<Tensor>{o, q.grad(), k.grad(), v.grad()};
        };
        std::vector<Tensor> ref;
        {
            cpu::ReferenceKernelsScope scope(true);
            ref = run(Device::cpu(), DType::f64, g16.to(DType::f64));
        }
        const cuda::PrecisionScope bf16("bf16");
        auto check = [&](const std::string& how, DType g_dt) {
            const std::vector<Tensor> got = run(kCuda, DType::bf16, g16.to(g_dt));
            const char* names[] = {"out", "dq", "dk", "dv"};
            for (size_t i = 0; i < ref.size(); ++i) {
                EXPECT_EQ(dtype_name(got[i].dtype()), "bf16") << what << how << names[i];
                EXPECT_LE(norm_rel_diff(got[i], ref[i]), 1e-2) << what << how << names[i];
                EXPECT_LE(max_rel_diff(got[i], ref[i]), 5e-2) << what << how << names[i];
            }
        };
        for (int config = 1; config <= 4; ++config) { // forward kernels and block shapes
            cuda::set_attention_tc_fwd_config(config);
            check(" (fwd config " + std::to_string(config) + ") ", DType::bf16);
        }
        cuda::set_attention_tc_fwd_config(0);
        for (int config = 1; config <= 3; ++config) { // backward kernels
            cuda::set_attention_tc_bwd_config(config);
            for (int warps : {4, 8}) { // the mma.sync kernel's block shapes
                if (config != 1 && warps == 8) continue;
                cuda::set_attention_tc_warps(warps);
                check(" (bwd config " + std::to_string(config) + ", " + std::to_string(warps) +
                          " warps) ",
                      DType::bf16);
            }
        }
        cuda::set_attention_tc_bwd_config(0);
        cuda::set_attention_tc_warps(0);
        check(" (f32 upstream gradient) ", DType::f32);
    }
}

// Autocast GEMMs go through cuBLASLt with a timed algorithm per problem: batched, broadcast
// (batch stride 0) and transposed operands, each checked against the CPU's product of the
// bf16-rounded operands in f64; a second call (the cached algorithm) gives the same bits.
TEST(CudaMatmul, AutocastBatchedBroadcastTransposedOperands) {
    struct Case {
        Shape a, b;
        bool ta, tb;
    };
    const Case cases[] = {{{4, 33, 40}, {4, 40, 24}, false, false},
                          {{1, 33, 40}, {4, 40, 24}, false, false},
                          {{4, 40, 33}, {4, 24, 40}, true, true},
                          {{4, 33, 40}, {40, 24}, false, false}};
    uint64_t seed = 10;
    for (const Case& c : cases) {
        Tensor a = randn_on(c.a, seed++, Device::cpu()), b = randn_on(c.b, seed++, Device::cpu());
        auto op = [](const Tensor& t, bool tr) { return tr ? t.transpose(-2, -1) : t; };
        Tensor got, again;
        {
            const cuda::PrecisionScope p("bf16");
            got = matmul(op(a.to(kCuda), c.ta), op(b.to(kCuda), c.tb));
            again = matmul(op(a.to(kCuda), c.ta), op(b.to(kCuda), c.tb));
        }
        cpu::ReferenceKernelsScope scope(true);
        const Tensor ref = matmul(op(a.to(DType::bf16).to(DType::f64), c.ta),
                                  op(b.to(DType::bf16).to(DType::f64), c.tb));
        EXPECT_LE(norm_rel_diff(got, ref), 1e-5) << shape_str(c.a) << " x " << shape_str(c.b);
        EXPECT_EQ(max_rel_diff(again, got), 0.0) << shape_str(c.a) << " x " << shape_str(c.b);
    }
}

// linear() under CUDA autocast rounds x and w once for the forward and dZ once for both dX and
// dW. Oracle: the same products in f64 on the CPU over operands rounded to the half type by
// hand (the bias unrounded, but with GELU, below). The gap to the unrounded dZ shows the
// rounding ran.
TEST(CudaMatmul, AutocastLinearRoundsEachOperandOnce) {
    for (const char* precision : {"bf16", "f16"}) {
        const DType hd = std::string(precision) == "bf16" ? DType::bf16 : DType::f16;
        for (const bool act : {false, true}) {
            const std::string what = std::string(precision) + (act ? " gelu" : " plain");
            const Shape xs{3, 37, 96}; // 111 rows, K = 96, N = 72
            Tensor x = leaf_on(xs, 1, kCuda), w = leaf_on({96, 72}, 2, kCuda, DType::f32, 0.1);
            Tensor b = leaf_on({72}, 3, kCuda), gy = randn_on({3, 37, 72}, 4, Device::cpu());
            Tensor y;
            {
                const cuda::PrecisionScope p(precision);
                y = linear(x, w, b, act);
                sum(mul(y, gy.to(kCuda))).backward();
            }
            cpu::ReferenceKernelsScope scope(true);
            auto rounded = [&](const Tensor& t) {
                return t.detach().to(Device::cpu()).to(hd).to(DType::f64);
            };
            const Tensor xr = rounded(x), wr = rounded(w);
            // With GELU the GEMM's epilogue adds the bias rounded to the half type, applies the
            // GELU, and keeps its input rounded to the half type, where the backward takes the
            // slope (PyTorch's autocast keeps addmm's bf16 output for F.gelu too).
            const Tensor prod = matmul(xr, wr), bias = b.detach().to(Device::cpu());
            Tensor z, y_ref;
            if (act) {
                const Tensor pre = add(prod, rounded(bias));
                z = pre.to(DType::f32).to(hd).to(DType::f64).detach();
                y_ref = gelu(pre, GeluApprox::tanh);
            } else {
                z = add(prod, bias.to(DType::f64)).detach();
                y_ref = z;
            }
            z.set_requires_grad(true);
            sum(mul(act ? gelu(z, GeluApprox::tanh) : mul_scalar(z, 1.0), gy.to(DType::f64)))
                .backward();
            const Tensor dz = z.grad().reshape({111, 72});
            const Tensor dzr = dz.to(DType::f32).to(hd).to(DType::f64);
            // The output is stored in the half type (the next GEMM's operand).
            EXPECT_EQ(dtype_name(y.dtype()), dtype_name(hd)) << what;
            EXPECT_LE(norm_rel_diff(y, y_ref), tol_of(hd)) << what;
            const Tensor gx = matmul(dzr, wr.t()).reshape(xs);
            const Tensor gw = matmul(xr.reshape({111, 96}).t(), dzr);
            // With GELU a few products round the other way (f32 vs f64 sums), moving dZ's
            // elements there by an ulp of the half type.
            const double gtol = act ? 1e-3 : 1e-5;
            EXPECT_LE(norm_rel_diff(x.grad(), gx), gtol) << what;
            EXPECT_LE(norm_rel_diff(w.grad(), gw), gtol) << what;
            EXPECT_LE(norm_rel_diff(b.grad(), sum(dz, {0})), gtol) << what;
            // dZ really was rounded: the unrounded product is farther off.
            EXPECT_GT(norm_rel_diff(x.grad(), matmul(dz, wr.t()).reshape(xs)), 5e-5) << what;
        }
    }
}

// A half gradient into linear() under autocast (attention's kernels write dqkv in bf16) is dZ
// itself: dX, dW and db from its values exactly, no rounding of its own.
TEST(CudaMatmul, AutocastLinearTakesHalfGradientAsIs) {
    for (const char* precision : {"bf16", "f16"}) {
        const DType hd = std::string(precision) == "bf16" ? DType::bf16 : DType::f16;
        Tensor x = leaf_on({2, 45, 64}, 31, kCuda), w = leaf_on({64, 40}, 32, kCuda);
        Tensor b = leaf_on({40}, 33, kCuda);
        Tensor gy = randn_on({2, 45, 40}, 34, Device::cpu()).to(hd);
        {
            const cuda::PrecisionScope p(precision);
            Tensor y = linear(x, w, b);
            y.backward(gy.to(kCuda));
        }
        cpu::ReferenceKernelsScope scope(true);
        const Tensor g = gy.to(DType::f64).reshape({90, 40});
        const Tensor xr = x.detach().to(Device::cpu()).to(hd).to(DType::f64).reshape({90, 64});
        const Tensor wr = w.detach().to(Device::cpu()).to(hd).to(DType::f64);
        EXPECT_LE(norm_rel_diff(x.grad(), matmul(g, wr.t()).reshape({2, 45, 64})), 1e-5);
        EXPECT_LE(norm_rel_diff(w.grad(), matmul(xr.t(), g)), 1e-5);
        EXPECT_LE(norm_rel_diff(b.grad(), sum(g, {0})), 1e-6);
    }
}

// Two linears under autocast, the first with GELU (GPT-2's MLP): the second's input is the
// first's half output, so its dX leaves in the half type (as PyTorch's autocast gradients) and
// the GELU backward reads it as it is. Oracle: the same products in f64 on the CPU over operands,
// the GELU's input (as above) and that gradient rounded to the half type by hand; one without the
// gradient's rounding is farther off.
TEST(CudaMatmul, AutocastLinearGradientLeavesInItsInputsHalfType) {
    for (const char* precision : {"bf16", "f16"}) {
        const DType hd = std::string(precision) == "bf16" ? DType::bf16 : DType::f16;
        Tensor x = leaf_on({3, 37, 96}, 41, kCuda);
        Tensor w1 = leaf_on({96, 72}, 42, kCuda, DType::f32, 0.1);
        Tensor b1 = leaf_on({72}, 43, kCuda), w2 = leaf_on({72, 40}, 44, kCuda, DType::f32, 0.1);
        Tensor b2 = leaf_on({40}, 45, kCuda);
        const Tensor gy = randn_on({3, 37, 40}, 46, Device::cpu()).to(hd);
        // A half leaf into a linear (weights of its own): its gradient is in the half type.
        Tensor xh = leaf_on({3, 37, 96}, 47, kCuda, hd), w3 = leaf_on({96, 72}, 48, kCuda);
        {
            const cuda::PrecisionScope p(precision);
            Tensor h = linear(x, w1, b1, /*gelu=*/true);
            EXPECT_EQ(dtype_name(h.dtype()), dtype_name(hd));
            linear(h, w2, b2).backward(gy.to(kCuda));
            sum(linear(xh, w3, b1.detach())).backward();
        }
        EXPECT_EQ(dtype_name(x.grad().dtype()), "f32") << precision;
        EXPECT_EQ(dtype_name(xh.grad().dtype()), dtype_name(hd)) << precision;

        cpu::ReferenceKernelsScope scope(true);
        auto rounded = [&](const Tensor& t) {
            return t.detach().to(Device::cpu()).to(DType::f32).to(hd).to(DType::f64);
        };
        const Tensor xr = rounded(x).reshape({111, 96}), w1r = rounded(w1), w2r = rounded(w2);
        const Tensor g = gy.to(DType::f64).reshape({111, 40});
        // The GELU's input as the fused epilogue keeps it: product + rounded bias, rounded.
        const Tensor pre = add(matmul(xr, w1r), rounded(b1));
        const Tensor z = rounded(pre).detach();
        auto grads_with = [&](const Tensor& dh) { // dx, dw1, db1 from h's gradient
            Tensor zz = z.detach();
            zz.set_requires_grad(true);
            gelu(zz, GeluApprox::tanh).backward(dh);
            const Tensor dz = zz.grad(), dzr = rounded(dz);
            return std::vector<Tensor>{matmul(dzr, w1r.t()).reshape({3, 37, 96}),
                                       matmul(xr.t(), dzr), sum(dz, {0})};
        };
        const Tensor dh = matmul(g, w2r.t());
        const std::vector<Tensor> want = grads_with(rounded(dh)), unrounded = grads_with(dh);
        const Tensor hr = rounded(gelu(pre, GeluApprox::tanh));
        // A few GELU slopes (f32 against f64) round dZ the other way: an ulp of the half type.
        const char* names[] = {"dx", "dw1", "db1"};
        const Tensor got[] = {x.grad(), w1.grad(), b1.grad()};
        for (int i = 0; i < 3; ++i) {
            const double d = norm_rel_diff(got[i], want[i]);
            EXPECT_LE(d, 1e-3) << precision << " " << names[i];
            EXPECT_LT(d, 0.5 * norm_rel_diff(got[i], unrounded[i]))
                << precision << " " << names[i] << ": h's gradient was not rounded";
        }
        EXPECT_LE(norm_rel_diff(w2.grad(), matmul(hr.t(), g)), 1e-3) << precision;
        // xh's gradient: ones (111, 72) x w3^T, rounded once.
        const Tensor ones = Tensor::ones({111, 72}, DType::f64);
        const Tensor want_xh = rounded(matmul(ones, rounded(w3).t())).reshape({3, 37, 96});
        // An ulp apart where the f32 and f64 sums round to different neighbours.
        EXPECT_LE(max_rel_diff(xh.grad(), want_xh), hd == DType::bf16 ? 1.6e-2 : 2e-3)
            << precision;
    }
}

// The fused LM head + loss on the GPU. Exact f32 (the default chunked path) within 1e-5 of the
// CPU. Under bf16 / f16 autocast (padded vocabulary, logits in the half type, the gradient
// written over them) against an f64 oracle of the same arithmetic: x and w rounded to the half
// type, logits rounded to it, softmax - onehot rounded to it (at the op's scale 2^10, so f16's
// range is the op's), then the two products in f64. Chunks of 32 rows over 100 (the last one 4),
// V = 1000 padded to 1024, every third row ignored; with gradients and without (eval).
TEST(CudaNN, LinearCrossEntropyMatchesDefinition) {
    struct ChunkScope {
        ChunkScope() { Backend::set_linear_ce_chunk_elements(8 * 1000); }
        ~ChunkScope() { Backend::set_linear_ce_chunk_elements(0); }
    } chunks;
    const int64_t N = 100, C = 64, V = 1000;
    std::vector<int64_t> tv(N);
    int64_t count = 0;
    for (int64_t i = 0; i < N; ++i) {
        tv[size_t(i)] = i % 3 == 2 ? -100 : (i * 7919 + 3) % V;
        count += tv[size_t(i)] != -100;
    }
    const Tensor t = Tensor::from_vector(tv, {N});
    // x (N, C) with unit rows' scale, w (V, C) at 1 / sqrt(C): logits of order 1, as a trained
    // head's; 2 * loss is differentiated, so a gradient other than 1 flows in.
    const Tensor x0 = randn_on({N, C}, 1, Device::cpu()),
                 w0 = mul_scalar(randn_on({V, C}, 2, Device::cpu()), 1.0 / 8);
    auto on_gpu = [&](const char* precision, bool grads) {
        Tensor x = x0.to(kCuda).detach(), w = w0.to(kCuda).detach();
        x.set_requires_grad(true);
        w.set_requires_grad(true);
        const cuda::PrecisionScope p(precision);
        if (!grads) {
            NoGradGuard ng;
            return std::vector<Tensor>{linear_cross_entropy(x, w, t.to(kCuda))};
        }
        Tensor loss = linear_cross_entropy(x, w, t.to(kCuda));
        mul_scalar(loss, 2.0).backward();
        return std::vector<Tensor>{loss, x.grad(), w.grad()};
    };
    const char* names[] = {"loss", "dx", "dw"};
    {
        Tensor x = x0.detach(), w = w0.detach();
        x.set_requires_grad(true);
        w.set_requires_grad(true);
        Tensor loss = cross_entropy(matmul(x, w.t()), t);
        mul_scalar(loss, 2.0).backward();
        const std::vector<Tensor> want{loss, x.grad(), w.grad()};
        const auto got = on_gpu("f32", true);
        for (size_t i = 0; i < 3; ++i)
            EXPECT_LE(max_rel_diff(got[i], want[i]), 1e-5) << "f32 " << names[i];
        EXPECT_LE(max_rel_diff(on_gpu("f32", false)[0], loss), 1e-5) << "f32 eval";
    }
    for (const auto& [precision, hd] : {std::pair{"bf16", DType::bf16}, {"f16", DType::f16}}) {
        auto round = [hd = hd](const Tensor& a) { return a.to(hd).to(DType::f64); };
        const Tensor xr = round(x0), wr = round(w0);
        Tensor logits = round(matmul(xr, wr.t())).detach();
        logits.set_requires_grad(true);
        Tensor loss = cross_entropy(logits, t);
        mul_scalar(loss, 2.0).backward();
        // logits.grad() = 2 (softmax - onehot) / count; the op rounds (softmax - onehot) 2^10.
        const double s = 1024.0 * double(count) / 2.0;
        const Tensor dl = mul_scalar(round(mul_scalar(logits.grad(), s)), 1.0 / s);
        const std::vector<Tensor> want{loss, matmul(dl, wr), matmul(dl.t(), xr)};
        const auto got = on_gpu(precision, true);
        // The GPU's logits are rounded from f32 sums, the oracle's from f64: a few differ by
        // one unit of the half type.
        EXPECT_LE(norm_rel_diff(got[0], want[0]), 1e-4) << precision << " loss";
        EXPECT_LE(norm_rel_diff(on_gpu(precision, false)[0], want[0]), 1e-4)
            << precision << " eval loss";
        for (size_t i = 1; i < 3; ++i)
            EXPECT_LE(norm_rel_diff(got[i], want[i]), tol_of(hd)) << precision << " " << names[i];
        // The half logits really are the op's: the unrounded logits' loss is farther off for
        // bf16 (f16's rounding is below the bound).
        if (hd == DType::bf16) {
            EXPECT_GT(norm_rel_diff(got[0], cross_entropy(matmul(xr, wr.t()), t)), 1e-6)
                << precision;
        }
    }
}

// Every row ignored under bf16 autocast: loss 0 and zero gradients, as cross_entropy.
TEST(CudaNN, LinearCrossEntropyAllIgnored) {
    const cuda::PrecisionScope p("bf16");
    Tensor x = randn_on({24, 64}, 3, kCuda).detach(), w = randn_on({100, 64}, 4, kCuda).detach();
    x.set_requires_grad(true);
    w.set_requires_grad(true);
    Tensor loss = linear_cross_entropy(x, w, Tensor::full({24}, -100.0, DType::i64, kCuda));
    EXPECT_EQ(loss.item(), 0.0);
    loss.backward();
    for (double g : x.grad().to_vector<double>()) EXPECT_EQ(g, 0.0);
    for (double g : w.grad().to_vector<double>()) EXPECT_EQ(g, 0.0);
}

// ---------------------------------------------------------------- autograd, memory, optimizer

TEST(CudaAutograd, MlpGradientsMatchCpu) {
    expect_cuda_matches_cpu(
        "mlp",
        [](Device d) {
            Tensor x = leaf_on({8, 32}, 1, d), w1 = leaf_on({32, 64}, 2, d, DType::f32, 0.2);
            Tensor b1 = leaf_on({64}, 3, d), w2 = leaf_on({64, 10}, 4, d, DType::f32, 0.2);
            Tensor h = gelu(add(matmul(x, w1), b1));
            Tensor y = matmul(silu(h), w2);
            Tensor loss = mean(mul(y, y));
            loss.backward();
            return std::vector<Tensor>{loss, x.grad(), w1.grad(), b1.grad(), w2.grad()};
        },
        1e-5);
    // The gradient crosses devices through to().
    Tensor a = leaf_on({4, 4}, 5, Device::cpu());
    sum(mul_scalar(a.to(kCuda), 3.0)).backward();
    ASSERT_TRUE(a.grad().defined());
    EXPECT_EQ(a.grad().device(), Device::cpu());
    EXPECT_EQ(max_rel_diff(a.grad(), Tensor::full({4, 4}, 3.0)), 0.0);
}

TEST(CudaMemory, ServerGaugesReadTheAllocatorAtScrape) {
    serve::Metrics reg;
    serve::add_gpu_memory_metrics(reg, 0);
    const serve::Metrics::Labels dev0 = {{"device", "0"}};
    reg.render();
    const double before = reg.value("forge_gpu_memory_allocated_bytes", dev0);
    Tensor t = Tensor::empty({1 << 22}, DType::f32, kCuda); // 16 MiB
    const std::string text = reg.render();
    EXPECT_NE(text.find("forge_gpu_memory_allocated_bytes{device=\"0\"}"), std::string::npos) << text;
    const double allocated = reg.value("forge_gpu_memory_allocated_bytes", dev0);
    EXPECT_GE(allocated, before + double(size_t(16) << 20));
    EXPECT_GE(reg.value("forge_gpu_memory_reserved_bytes", dev0), allocated);
    EXPECT_GE(reg.value("forge_gpu_memory_peak_bytes", dev0), allocated);
}

TEST(CudaMemory, CachingStatsAndOutOfMemoryMessage) {
    cuda::synchronize();
    cuda::empty_cache(); // earlier tests may have left a free 4 MiB block in the cache
    const cuda::MemoryStats s0 = cuda::memory_stats();
    {
        Tensor t = Tensor::empty({1 << 20}, DType::f32, kCuda); // 4 MiB
        const cuda::MemoryStats s1 = cuda::memory_stats();
        EXPECT_GE(s1.allocated, s0.allocated + (size_t(4) << 20));
        EXPECT_GE(s1.reserved, s1.allocated);
        EXPECT_GE(s1.peak, s1.allocated);
    }
    const cuda::MemoryStats s2 = cuda::memory_stats();
    EXPECT_EQ(s2.allocated, s0.allocated);
    EXPECT_GE(s2.reserved, s0.reserved + (size_t(4) << 20)); // cached, not freed
    {
        Tensor t = Tensor::empty({1 << 20}, DType::f32, kCuda); // reuses the cached block
        EXPECT_EQ(cuda::memory_stats().reserved, s2.reserved);
    }
    cuda::empty_cache();
    EXPECT_LT(cuda::memory_stats().reserved, s2.reserved);
    try {
        Tensor huge = Tensor::empty({int64_t(1) << 48}, DType::f32, kCuda); // 1 PiB
        FAIL() << "a 1 PiB allocation succeeded";
    } catch (const DeviceError& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("out of memory"), std::string::npos) << msg;
        EXPECT_NE(msg.find("asked for 1125899906842624 bytes"), std::string::npos) << msg;
        EXPECT_NE(msg.find("held by tensors"), std::string::npos) << msg;
    }
}

TEST(CudaOptimizer, FusedAdamWMatchesCpu) {
    auto run = [](Device d) {
        std::vector<ParamRef> ps;
        std::vector<Tensor> ts;
        for (int i = 0; i < 5; ++i) {
            Tensor p = randn_on({int64_t(100 + 5000 * i)}, uint64_t(i + 1), d).detach();
            p.set_requires_grad(true);
            ts.push_back(p);
            ps.push_back({"p" + std::to_string(i), p, i % 2 == 0});
        }
        AdamW opt(ps, {.weight_decay = 0.1});
        for (int step = 0; step < 3; ++step) {
            for (size_t i = 0; i < ts.size(); ++i)
                ts[i].set_grad(randn_on(ts[i].shape(), uint64_t(100 + 10 * step + i), d));
            opt.step(1e-2);
        }
        return ts;
    };
    expect_cuda_matches_cpu("adamw", run, 1e-6);
}

} // namespace
} // namespace forge::test
