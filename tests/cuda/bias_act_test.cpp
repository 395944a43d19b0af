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

// CPU reference kernels on the CPU side, the CUDA kernels on the other.
void check_bias_act(const BiasCase& c, bool gelu, bool misaligned) {
    const std::string what = case_name("bias_act", c, gelu) + (misaligned ? " misaligned" : "");
    expect_cuda_matches_cpu(
        what,
        [&](Device d) {
            Tensor x = rows_on(c.R, c.N, 1, d, misaligned, 2.0), b = randn_on({c.N}, 2, d);
            Tensor dy = rows_on(c.R, c.N, 3, d, misaligned);
            Tensor out = Tensor::empty({c.R, c.N}, DType::f32, d);
            Tensor dx = Tensor::empty({c.R, c.N}, DType::f32, d);
            Tensor db = Tensor::full({c.N}, 123.0, DType::f32, d); // overwritten
            Backend& be = backend_for(d);
            be.bias_act(x, b, gelu, out);
            be.bias_act_backward(dy, x, b, gelu, dx, db);
            return std::vector<Tensor>{out, dx, db};
        },
        1e-5);
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
