// The fused bias + GELU kernels of linear() (src/backends/cuda/bias_act.cu) against the CPU's:
// the reference kernels (add, then GELU-tanh, then a reduce for db) and the fast CPU kernels,
// f32 within 1e-5, on shapes that take the float4 path (N % 4 == 0, 16-byte aligned) and the
// scalar one (N % 4 != 0, or a misaligned view), odd row counts, in place; db must come out
// bit-identical run after run (no float atomics).
#include <string>

#include "backends/cuda/cuda_backend.h"
#include "cuda/cuda_test_util.h"

namespace forge::test {
namespace {

struct BiasCase {
    int64_t R, N;
};
const BiasCase kBiasCases[] = {{1, 1}, {7, 13},    {33, 64},     {129, 768},
                               {5, 6}, {999, 770}, {1001, 3072}, {300, 1027}};

std::string case_name(const char* what, const BiasCase& c, bool gelu) {
    return std::string(what) + " " + std::to_string(c.R) + "x" + std::to_string(c.N) +
           (gelu ? " gelu" : "");
}

// x (R, N) whose data starts 4 bytes past a 16-byte boundary when `misaligned` (a contiguous
// view one float into a larger buffer), so the kernels take their scalar path.
Tensor rows_on(int64_t R, int64_t N, uint64_t seed, Device d, bool misaligned, double scale = 1) {
    if (!misaligned)
        return randn_on({R, N}, seed, d, DType::f32, scale);
    return randn_on({R * N + 1}, seed, d, DType::f32, scale).narrow(0, 1, R * N).view({R, N});
}

// The column sums of x (R, N) in f64 on the host, as f64 (N): db's oracle. (The CPU reference's
// db is an f32 running sum over the rows, itself off by more than 1e-5 once R is ~1000.)
Tensor column_sums_f64(const Tensor& x) {
    const int64_t R = x.size(0), N = x.size(1);
    const std::vector<double> v = x.to(Device::cpu()).to(DType::f64).to_vector<double>();
    std::vector<double> s(size_t(N), 0.0);
    for (int64_t r = 0; r < R; ++r)
        for (int64_t n = 0; n < N; ++n)
            s[size_t(n)] += v[size_t(r * N + n)];
    return Tensor::from_vector(s, {N});
}

// out and dx against the CPU reference kernels (element-wise, 1e-5). db: the reduction against
// the f64 column sums of CUDA's own dx (1e-5 element-wise), and against the reference dx's sums
// in norm (1e-5): element-wise, a column whose sum cancels to near 0 carries the 1e-7 relative
// differences of its ~1000 GELU slopes (the CPU's tanh form against the sigmoid form) as a
// larger relative error of the sum, whichever side is the more accurate.
void check_bias_act(const BiasCase& c, bool gelu, bool misaligned) {
    const std::string what = case_name("bias_act", c, gelu) + (misaligned ? " misaligned" : "");
    auto run = [&](Device d) {
        Tensor x = rows_on(c.R, c.N, 1, d, misaligned, 2.0), b = randn_on({c.N}, 2, d);
        Tensor dy = rows_on(c.R, c.N, 3, d, misaligned);
        Tensor out = Tensor::empty({c.R, c.N}, DType::f32, d);
        Tensor dx = Tensor::empty({c.R, c.N}, DType::f32, d);
        Tensor db = Tensor::full({c.N}, 123.0, DType::f32, d); // overwritten
        Backend& be = backend_for(d);
        be.bias_act(x, b, gelu, out);
        be.bias_act_backward(dy, x, b, gelu, dx, db);
        return std::vector<Tensor>{out, dx, db};
    };
    std::vector<Tensor> ref;
    {
        cpu::ReferenceKernelsScope scope(true);
        ref = run(Device::cpu());
    }
    const std::vector<Tensor> got = run(kCuda);
    EXPECT_LE(max_rel_diff(got[0], ref[0]), 1e-5) << what << " out";
    EXPECT_LE(max_rel_diff(got[1], ref[1]), 1e-5) << what << " dx";
    EXPECT_LE(max_rel_diff(got[2], column_sums_f64(got[1])), 1e-5) << what << " db (sum)";
    EXPECT_LE(norm_rel_diff(got[2], column_sums_f64(ref[1])), 1e-5) << what << " db";
}

TEST(CudaBiasAct, ForwardBackwardMatchCpuReference) {
    for (const BiasCase& c : kBiasCases)
        for (bool gelu : {true, false})
            check_bias_act(c, gelu, false);
    check_bias_act({37, 64}, true, true);
    check_bias_act({37, 64}, false, true);
}

// The fast CPU kernels (the sigmoid form of GELU-tanh, blockwise db) agree too.
TEST(CudaBiasAct, MatchFastCpuKernels) {
    for (const BiasCase& c : {BiasCase{257, 3072}, BiasCase{64, 770}})
        for (bool gelu : {true, false}) {
            std::vector<Tensor> got[2];
            for (int i = 0; i < 2; ++i) {
                const Device d = i ? kCuda : Device::cpu();
                Tensor x = randn_on({c.R, c.N}, 1, d, DType::f32, 3.0), b = randn_on({c.N}, 2, d);
                Tensor dy = randn_on({c.R, c.N}, 3, d);
                Tensor out = Tensor::empty({c.R, c.N}, DType::f32, d);
                Tensor dx = Tensor::empty({c.R, c.N}, DType::f32, d);
                Tensor db = Tensor::empty({c.N}, DType::f32, d);
                backend_for(d).bias_act(x, b, gelu, out);
                backend_for(d).bias_act_backward(dy, x, b, gelu, dx, db);
                got[i] = {out, dx, db};
            }
            for (size_t k = 0; k < 3; ++k)
                EXPECT_LE(max_rel_diff(got[1][k], got[0][k]), 1e-5)
                    << case_name("fast cpu", c, gelu) << " output " << k;
        }
}

// linear()'s in-place uses: out = x (the bias on a product), dx = dy (no activation).
TEST(CudaBiasAct, InPlace) {
    const BiasCase c{65, 768};
    expect_cuda_matches_cpu(
        "bias_act in place",
        [&](Device d) {
            Tensor x = randn_on({c.R, c.N}, 1, d), b = randn_on({c.N}, 2, d);
            Tensor dy = randn_on({c.R, c.N}, 3, d), db = Tensor::empty({c.N}, DType::f32, d);
            Backend& be = backend_for(d);
            be.bias_act(x, b, false, x);
            be.bias_act_backward(dy, dy, b, false, dy, db);
            Tensor z = randn_on({c.R, c.N}, 4, d);
            be.bias_act(z, b, true, z);
            return std::vector<Tensor>{x, dy, db, z};
        },
        1e-5);
}

// The GELU backward without b (x is the GELU's input itself: the fused GEMM epilogue's aux),
// against the CPU reference kernels given x + b and b: the same slopes.
TEST(CudaBiasAct, GeluBackwardWithoutBias) {
    for (const BiasCase& c : {BiasCase{129, 768}, BiasCase{5, 6}}) {
        auto run = [&](Device d, bool with_b) {
            Tensor z = randn_on({c.R, c.N}, 1, d, DType::f32, 2.0), b = randn_on({c.N}, 2, d);
            Tensor dy = randn_on({c.R, c.N}, 3, d);
            Tensor dx = Tensor::empty({c.R, c.N}, DType::f32, d);
            Tensor db = Tensor::empty({c.N}, DType::f32, d);
            if (with_b) // x = z - b, so x + b is z again (to within f32 rounding)
                backend_for(d).bias_act_backward(dy, sub(z, b), b, true, dx, db);
            else
                backend_for(d).bias_act_backward(dy, z, Tensor(), true, dx, db);
            return std::vector<Tensor>{dx, db};
        };
        std::vector<Tensor> ref;
        {
            cpu::ReferenceKernelsScope scope(true);
            ref = run(Device::cpu(), true);
        }
        const std::vector<Tensor> got = run(kCuda, false);
        EXPECT_LE(max_rel_diff(got[0], ref[0]), 1e-5) << case_name("no bias", c, true) << " dx";
        EXPECT_LE(norm_rel_diff(got[1], ref[1]), 1e-5) << case_name("no bias", c, true) << " db";
    }
}

// db is a fixed-order two-stage sum: the same bits every run, at the GPT-2 MLP's width.
TEST(CudaBiasAct, BackwardIsDeterministic) {
    const int64_t R = 4099, N = 3072;
    Tensor x = randn_on({R, N}, 1, kCuda), b = randn_on({N}, 2, kCuda);
    Tensor dy = randn_on({R, N}, 3, kCuda);
    std::vector<float> first;
    for (int run = 0; run < 3; ++run) {
        Tensor dx = Tensor::empty({R, N}, DType::f32, kCuda);
        Tensor db = Tensor::empty({N}, DType::f32, kCuda);
        cuda::backend().bias_act_backward(dy, x, b, true, dx, db);
        const std::vector<float> v = db.to(Device::cpu()).to_vector<float>();
        if (run == 0)
            first = v;
        else
            EXPECT_EQ(v, first) << "run " << run;
    }
}

// Through linear() with autograd: f32 CUDA (no autocast) calls both kernels.
TEST(CudaBiasAct, LinearGeluGradients) {
    expect_cuda_matches_cpu(
        "linear gelu",
        [](Device d) {
            Tensor x = leaf_on({3, 41, 96}, 1, d), w = leaf_on({96, 130}, 2, d, DType::f32, 0.1);
            Tensor b = leaf_on({130}, 3, d);
            Tensor y = linear(x, w, b, /*gelu=*/true);
            sum(mul(y, randn_on(y.shape(), 4, d))).backward();
            return std::vector<Tensor>{y, x.grad(), w.grad(), b.grad()};
        },
        1e-5);
}

} // namespace
} // namespace forge::test
