// matmul: fast (OpenBLAS) kernel against the reference loops over strided, transposed and
// broadcast inputs in every float dtype; values of small cases by hand; gradients by finite
// differences; the error messages.
#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "backends/cpu/kernels/sgemm.h"
#include "backends/cpu/simd/nn_kernels.h"
#include "core/op_test_util.h"

namespace forge::test {
namespace {

// The matrix a[..., i, k] as stored, whatever its strides: used to check results independently
// of both kernels.
Tensor naive_matmul(const Tensor& a, const Tensor& b) {
    const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
    std::vector<double> out(size_t(M * N), 0.0);
    for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j)
            for (int64_t k = 0; k < K; ++k)
                out[size_t(i * N + j)] += a.at({i, k}) * b.at({k, j});
    return Tensor::from_vector(out, {M, N});
}

struct Case {
    std::string name;
    std::function<Tensor(DType)> a, b;
};

// Inputs are N(0, 0.5): products of K <= 80 terms stay O(1), so f32 rounding of the BLAS
// accumulation stays well inside the f32 tolerance.
Tensor rn(const Shape& s, uint64_t seed, DType dt) {
    return Tensor::randn(s, seed, DType::f32, 0.0, 0.5).to(dt);
}

std::vector<Case> cases() {
    return {
        {"square",
         [](DType t) {
             return rn({16, 16}, 1, t);
         },
         [](DType t) {
             return rn({16, 16}, 2, t);
         }},
        {"rect",
         [](DType t) {
             return rn({7, 33}, 3, t);
         },
         [](DType t) {
             return rn({33, 5}, 4, t);
         }},
        {"a_transposed",
         [](DType t) {
             return rn({33, 7}, 5, t).t();
         },
         [](DType t) {
             return rn({33, 9}, 6, t);
         }},
        {"b_transposed",
         [](DType t) {
             return rn({7, 33}, 7, t);
         },
         [](DType t) {
             return rn({9, 33}, 8, t).t();
         }},
        {"both_transposed",
         [](DType t) {
             return rn({20, 6}, 9, t).t();
         },
         [](DType t) {
             return rn({11, 20}, 10, t).t();
         }},
        // row stride 80 > K = 40: a narrowed view is still a BLAS operand (lda = 80)
        {"narrowed",
         [](DType t) {
             return rn({6, 80}, 11, t).narrow(1, 10, 40);
         },
         [](DType t) {
             return rn({40, 30}, 12, t).narrow(1, 3, 8);
         }},
        // no unit stride in either matrix dim: the op copies it to contiguous first
        {"strided_both_dims", // (6, 10) with strides (40, 2)
         [](DType t) {
             return rn({12, 20}, 13, t).view({6, 2, 10, 2}).select(1, 0).select(2, 1);
         },
         [](DType t) {
             return rn({10, 4}, 14, t);
         }},
        {"batched",
         [](DType t) {
             return rn({3, 5, 8}, 15, t);
         },
         [](DType t) {
             return rn({3, 8, 4}, 16, t);
         }},
        {"broadcast_batch",
         [](DType t) {
             return rn({2, 1, 5, 8}, 17, t);
         },
         [](DType t) {
             return rn({3, 8, 4}, 18, t);
         }},
        {"shared_weight",
         [](DType t) {
             return rn({2, 3, 5, 8}, 19, t);
         },
         [](DType t) {
             return rn({8, 6}, 20, t);
         }},
        {"expanded_batch",
         [](DType t) {
             return rn({4, 5, 8}, 21, t);
         },
         [](DType t) {
             return rn({8, 6}, 22, t).expand({4, 8, 6});
         }},
        // batch dims (3, 2) with strides that don't merge into one: looped by the op
        {"unmergeable_batch",
         [](DType t) {
             return rn({2, 3, 5, 8}, 23, t).transpose(0, 1);
         },
         [](DType t) {
             return rn({3, 2, 8, 4}, 24, t);
         }},
        // column-major a batch against a shared weight: not folded into one GEMM
        {"transposed_batch_shared_weight",
         [](DType t) {
             return rn({3, 8, 5}, 41, t).transpose(-2, -1);
         },
         [](DType t) {
             return rn({8, 6}, 42, t);
         }},
        {"batch_transposed_rhs",
         [](DType t) {
             return rn({4, 6, 9}, 25, t);
         },
         [](DType t) {
             return rn({4, 7, 9}, 26, t).transpose(-2, -1);
         }},
        {"vector_rhs",
         [](DType t) {
             return rn({3, 5, 8}, 27, t);
         },
         [](DType t) { return rn({8}, 28, t); }},
        {"vector_lhs", [](DType t) { return rn({8}, 29, t); },
         [](DType t) {
             return rn({3, 8, 4}, 30, t);
         }},
        {"dot", [](DType t) { return rn({40}, 31, t); }, [](DType t) { return rn({40}, 32, t); }},
        {"outer_k1",
         [](DType t) {
             return rn({6, 1}, 33, t);
         },
         [](DType t) {
             return rn({1, 5}, 34, t);
         }},
        {"row_times_matrix",
         [](DType t) {
             return rn({1, 64}, 35, t);
         },
         [](DType t) {
             return rn({64, 80}, 36, t);
         }},
        // a batch of small GEMMs (the OpenMP-over-batch path)
        {"many_small",
         [](DType t) {
             return rn({24, 8, 16}, 37, t);
         },
         [](DType t) {
             return rn({24, 16, 8}, 38, t);
         }},
        // one GEMM above OpenBLAS's threading threshold
        {"large",
         [](DType t) {
             return rn({96, 80}, 39, t);
         },
         [](DType t) {
             return rn({80, 72}, 40, t);
         }},
    };
}

TEST(Matmul, FastMatchesReference) {
    for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16}) {
        for (const auto& c : cases()) {
            Tensor a = c.a(dt), b = c.b(dt);
            const std::string what = "Matmul(" + c.name + ", a=" + shape_str(a.shape()) +
                                     ", b=" + shape_str(b.shape()) +
                                     ", dtype=" + std::string(dtype_name(dt)) + ")";
            expect_fast_matches_ref(
                what, [&] { return matmul(a, b); }, dtype_tolerance(dt));
            EXPECT_EQ(matmul(a, b).dtype(), dt) << what;
        }
    }
}

TEST(Matmul, SmallValuesByHand) {
    // [[1,2,3],[4,5,6]] @ [[7,8],[9,10],[11,12]] = [[58,64],[139,154]]
    for (bool ref : {false, true}) {
        cpu::ReferenceKernelsScope scope(ref);
        Tensor a = Tensor::from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3});
        Tensor b = Tensor::from_vector(std::vector<float>{7, 8, 9, 10, 11, 12}, {3, 2});
        Tensor c = matmul(a, b);
        ASSERT_EQ(shape_str(c.shape()), "[2,2]");
        EXPECT_EQ(c.to_vector<float>(), (std::vector<float>{58, 64, 139, 154}));
        // transposed views give the transposed product: (b^T a^T) = (a b)^T
        Tensor ct = matmul(b.t(), a.t());
        EXPECT_EQ(ct.contiguous().to_vector<float>(), (std::vector<float>{58, 139, 64, 154}));
    }
}

TEST(Matmul, StridedInputsMatchNaive) {
    Tensor a =
        Tensor::randn({9, 14}, 41, DType::f64).narrow(1, 2, 7).t();    // (7, 9), strides (1, 14)
    Tensor b = Tensor::randn({9, 10}, 42, DType::f64).narrow(1, 1, 8); // (9, 8), row stride 10
    EXPECT_LE(max_rel_diff(matmul(a, b), naive_matmul(a, b)), 1e-12);
    Tensor s = Tensor::randn({7, 3, 9}, 43, DType::f64).select(1, 2); // (7, 9), strides (27, 1)
    EXPECT_LE(max_rel_diff(matmul(s, b), naive_matmul(s, b)), 1e-12);
}

TEST(Matmul, OneDimensionalShapes) {
    Tensor m = Tensor::randn({3, 4, 5}, 44, DType::f64);
    Tensor v5 = Tensor::randn({5}, 45, DType::f64), v4 = Tensor::randn({4}, 46, DType::f64);
    EXPECT_EQ(shape_str(matmul(m, v5).shape()), "[3,4]");
    EXPECT_EQ(shape_str(matmul(v4, m).shape()), "[3,5]");
    EXPECT_EQ(shape_str(matmul(v5, v5).shape()), "[]");
    double dot = 0;
    for (int64_t i = 0; i < 5; ++i)
        dot += v5.at({i}) * v5.at({i});
    EXPECT_NEAR(matmul(v5, v5).item(), dot, 1e-12);
    Tensor mv = matmul(m, v5);
    for (int64_t b = 0; b < 3; ++b)
        for (int64_t i = 0; i < 4; ++i) {
            double e = 0;
            for (int64_t k = 0; k < 5; ++k)
                e += m.at({b, i, k}) * v5.at({k});
            EXPECT_NEAR(mv.at({b, i}), e, 1e-12);
        }
}

TEST(Matmul, EmptyAndZeroInnerDim) {
    Tensor a = Tensor::zeros({3, 0}), b = Tensor::zeros({0, 4});
    Tensor c = matmul(a, b);
    ASSERT_EQ(shape_str(c.shape()), "[3,4]");
    for (float v : c.to_vector<float>())
        EXPECT_EQ(v, 0.0f);
    EXPECT_EQ(shape_str(matmul(Tensor::zeros({2, 0, 3}), Tensor::zeros({3, 5})).shape()),
              "[2,0,5]");
}

TEST(Matmul, Gradcheck) {
    auto mm = [](const std::vector<Tensor>& x) { return matmul(x[0], x[1]); };
    expect_gradcheck("Matmul(2-D)", mm, {rand_leaf({3, 4}, 50), rand_leaf({4, 5}, 51)});
    expect_gradcheck("Matmul(batched)", mm, {rand_leaf({2, 3, 4}, 52), rand_leaf({2, 4, 2}, 53)});
    expect_gradcheck("Matmul(broadcast batch)", mm,
                     {rand_leaf({2, 1, 3, 4}, 54), rand_leaf({3, 4, 2}, 55)});
    expect_gradcheck("Matmul(shared weight)", mm,
                     {rand_leaf({2, 3, 4}, 56), rand_leaf({4, 3}, 57)});
    expect_gradcheck("Matmul(shared lhs)", mm, {rand_leaf({3, 4}, 58), rand_leaf({2, 4, 3}, 59)});
    expect_gradcheck("Matmul(vector rhs)", mm, {rand_leaf({2, 3, 4}, 60), rand_leaf({4}, 61)});
    expect_gradcheck("Matmul(vector lhs)", mm, {rand_leaf({4}, 62), rand_leaf({2, 4, 3}, 63)});
    expect_gradcheck("Matmul(dot)", mm, {rand_leaf({5}, 64), rand_leaf({5}, 65)});

    // Non-contiguous leaves: a transposed view and a narrowed view with a row stride.
    Tensor at = Tensor::randn({4, 3}, 66, DType::f64).t();
    at.set_requires_grad(true);
    Tensor bn = Tensor::randn({4, 9}, 67, DType::f64).narrow(1, 2, 5);
    bn.set_requires_grad(true);
    expect_gradcheck("Matmul(non-contiguous)", mm, {at, bn});
    // Only one side requiring grad.
    expect_gradcheck("Matmul(lhs only)", mm,
                     {rand_leaf({3, 4}, 68), Tensor::randn({4, 2}, 69, DType::f64)});
}

TEST(Matmul, GradientAccumulatesAndMatchesClosedForm) {
    // d/dA sum(A B) = 1 B^T: every row of dA is the row sums of B.
    Tensor a = rand_leaf({2, 3}, 70), b = rand_leaf({3, 4}, 71);
    sum(matmul(a, b)).backward();
    for (int64_t i = 0; i < 2; ++i)
        for (int64_t k = 0; k < 3; ++k) {
            double rs = 0;
            for (int64_t j = 0; j < 4; ++j)
                rs += b.at({k, j});
            EXPECT_NEAR(a.grad().at({i, k}), rs, 1e-12);
        }
}

TEST(Matmul, HalfInputsAccumulateInF32) {
    // 256 terms of 1 + 2^-8: an f16 accumulator would round, f32 accumulation is exact here and
    // the single rounding at the end gives 257 (representable in f16).
    Tensor a = Tensor::full({1, 256}, 1.0 + 1.0 / 256, DType::f16);
    Tensor b = Tensor::ones({256, 1}, DType::f16);
    Tensor c = matmul(a, b);
    EXPECT_EQ(c.dtype(), DType::f16);
    EXPECT_EQ(c.item(), 257.0);
}

TEST(Matmul, HalfGradientsMatchF32) {
    // The backward of a half matmul runs the same ops in the half dtype: its gradients are the
    // f32 ones up to half rounding (inputs are exactly representable in both).
    for (DType dt : {DType::f16, DType::bf16}) {
        auto grads = [&](DType t) {
            Tensor a = rn({2, 5, 8}, 80, DType::bf16).to(t), b = rn({8, 6}, 81, DType::bf16).to(t);
            a.set_requires_grad(true);
            b.set_requires_grad(true);
            Tensor g = rn({2, 5, 6}, 82, DType::bf16).to(t);
            matmul(a, b).backward(g);
            EXPECT_EQ(a.grad().dtype(), t);
            return std::pair{a.grad(), b.grad()};
        };
        auto [ga, gb] = grads(dt);
        auto [fa, fb] = grads(DType::f32);
        EXPECT_LE(max_rel_diff(ga, fa), dtype_tolerance(dt)) << dtype_name(dt);
        EXPECT_LE(max_rel_diff(gb, fb), dtype_tolerance(dt)) << dtype_name(dt);
    }
}

TEST(Matmul, Errors) {
    Tensor a = Tensor::zeros({2, 3}), b = Tensor::zeros({4, 5});
    expect_error([&] { matmul(a, b); },
                 "[matmul] shapes [2,3] and [4,5]: inner dims 3 and 4 differ");
    expect_error(
        [&] {
            matmul(Tensor::zeros({2, 3, 4}), Tensor::zeros({5, 4, 2}));
        },
        "[matmul] shapes [2,3,4] and [5,4,2]: batch dims [2] and [5] do not broadcast");
    expect_error([&] { matmul(Tensor::zeros({3}), Tensor::zeros({4})); },
                 "[matmul] shapes [3] and [4]: inner dims 3 and 4 differ");
    expect_error([&] { matmul(Tensor::scalar(1.0), Tensor::zeros({4})); }, "[matmul] shapes []");
    expect_error(
        [&] {
            matmul(Tensor::zeros({2, 2}, DType::i64), Tensor::zeros({2, 2}));
        },
        "[matmul] expects a float tensor, got i64 [2,2]");
    expect_error(
        [&] {
            matmul(Tensor::zeros({2, 2}), Tensor::zeros({2, 2}, DType::f64));
        },
        "[matmul] dtypes differ: f32 [2,2] and f64 [2,2]");
    expect_error([&] { matmul(Tensor(), Tensor::zeros({2, 2})); }, "[matmul]");
}

// Products of 1..16 rows take the CPU's own few-row kernels (AVX2 / AVX-512, 4 rows per weight
// load): every layout against the reference loops, with tails in N and K, under both ISAs.
TEST(Matmul, FewRowKernelsMatchReference) {
    for (cpu::nn::Isa isa : {cpu::nn::Isa::avx512, cpu::nn::Isa::avx2}) {
        if (cpu::nn::best_isa() < isa) continue;
        cpu::nn::IsaCapScope cap(isa);
        for (int64_t M : {1, 2, 3, 4, 5, 7, 8, 13, 16})
            for (auto [K, N] : {std::pair<int64_t, int64_t>{29, 37}, {130, 200}, {64, 48}})
                for (bool at : {false, true})
                    for (bool bt : {false, true}) {
                        const std::string what = "M " + std::to_string(M) + " K " + std::to_string(K) +
                                                 " N " + std::to_string(N) + (at ? " a^T" : "") +
                                                 (bt ? " b^T" : "");
                        expect_fast_matches_ref(what, [&] {
                            Tensor a = at ? rn({2, K, M}, 1, DType::f32).transpose(1, 2)
                                          : rn({2, M, K}, 1, DType::f32);
                            Tensor b = bt ? rn({2, N, K}, 2, DType::f32).transpose(1, 2)
                                          : rn({2, K, N}, 2, DType::f32);
                            return matmul(a, b);
                        }, 1e-5);
                    }
    }
}

// Our AVX-512 sgemm directly, against f64 loops: row tails (M % 12), column tails (N % 32),
// several depth blocks (K > 256, split evenly), both layouts of each operand, and an output
// with rows wider than N.
TEST(Matmul, OwnSgemmMatchesF64) {
    if (cpu::nn::best_isa() < cpu::nn::Isa::avx512) GTEST_SKIP() << "no AVX-512 here";
    for (int64_t M : {1, 5, 12, 25, 97, 130})
        for (auto [K, N] : {std::pair<int64_t, int64_t>{1, 1}, {7, 33}, {64, 16}, {129, 70},
                            {300, 32}, {600, 65}})
            for (bool at : {false, true})
                for (bool bt : {false, true}) {
                    std::vector<float> a(size_t(M * K)), b(size_t(K * N));
                    for (size_t i = 0; i < a.size(); ++i) a[i] = float(std::sin(0.37 * double(i)));
                    for (size_t i = 0; i < b.size(); ++i) b[i] = float(std::cos(0.11 * double(i)));
                    // a(i, k), b(k, j) as stored in the chosen layout.
                    const int64_t rsa = at ? 1 : K, csa = at ? M : 1;
                    const int64_t rsb = bt ? 1 : N, csb = bt ? K : 1;
                    const int64_t ldc = N + 3;
                    std::vector<float> c(size_t(M * ldc), -7.0f);
                    cpu::sgemm_avx512(M, N, K, a.data(), rsa, csa, b.data(), rsb, csb, c.data(),
                                      ldc);
                    double worst = 0;
                    for (int64_t i = 0; i < M; ++i)
                        for (int64_t j = 0; j < N; ++j) {
                            double want = 0, scale = 0;
                            for (int64_t k = 0; k < K; ++k) {
                                const double p = double(a[size_t(i * rsa + k * csa)]) *
                                                 double(b[size_t(k * rsb + j * csb)]);
                                want += p;
                                scale += std::fabs(p);
                            }
                            worst = std::max(worst, std::fabs(c[size_t(i * ldc + j)] - want) /
                                                        std::max(scale, 1e-30));
                        }
                    EXPECT_LE(worst, 1e-6) << "M " << M << " K " << K << " N " << N
                                           << (at ? " a^T" : "") << (bt ? " b^T" : "");
                    for (int64_t i = 0; i < M; ++i) // the padding past N is not written
                        for (int64_t j = N; j < ldc; ++j)
                            ASSERT_EQ(c[size_t(i * ldc + j)], -7.0f);
                }
}

// The anchor's shapes go through matmul to our sgemm (every layout the training step uses).
TEST(Matmul, SmallModelShapesMatchReference) {
    for (auto [M, K, N] : {std::tuple<int64_t, int64_t, int64_t>{384, 128, 512}, {384, 512, 128},
                           {128, 384, 384}})
        for (bool at : {false, true})
            for (bool bt : {false, true})
                expect_fast_matches_ref("M " + std::to_string(M) + (at ? " a^T" : "") +
                                            (bt ? " b^T" : ""),
                                        [&] {
                                            Tensor a = at ? rn({K, M}, 3, DType::f32).t()
                                                          : rn({M, K}, 3, DType::f32);
                                            Tensor b = bt ? rn({N, K}, 4, DType::f32).t()
                                                          : rn({K, N}, 4, DType::f32);
                                            return matmul(a, b);
                                        },
                                        1e-5);
}

} // namespace
} // namespace forge::test

namespace forge {
namespace {
// One-row products (decoding) take the GEMV path: every layout of a and b against the
// reference kernel, f32 and f64.
TEST(Matmul, SingleRowEveryLayout) {
    for (DType dt : {DType::f32, DType::f64}) {
        Tensor w = Tensor::randn({33, 19}, 52, dt);      // b row-major
        Tensor wt = Tensor::randn({19, 33}, 53, dt).t(); // b column-major
        Tensor row = Tensor::randn({1, 33}, 54, dt);     // a row-major
        Tensor col_row =
            Tensor::randn({33, 4}, 56, dt).narrow(1, 2, 1).t(); // (1, 33), stride 4 apart
        for (const Tensor& a : {row, col_row, Tensor::randn({3, 1, 33}, 55, dt)})
            for (const Tensor& b : {w, wt})
                test::expect_fast_matches_ref(
                    "gemv", [&] { return matmul(a, b); }, test::dtype_tolerance(dt));
    }
}
} // namespace
} // namespace forge
