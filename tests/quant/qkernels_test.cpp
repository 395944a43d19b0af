// The quantized matrix-product kernels of every instruction set against the scalar reference:
// activation quantization bit-identical, block integer sums exact (unit scales make every float
// an exact integer, so the SIMD result must equal the reference exactly), and float results
// within rounding of the reference on random data.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include <forge/core/dtype.h>
#include <forge/quant/ggml_types.h>

#include "backends/cpu/quant/qkernels.h"
#include "backends/cpu/simd/nn_kernels.h"
#include "quant/blocks.h"
#include "quant_test_util.h"

using namespace forge;
using namespace forge::cpu::quant;
namespace fq = forge::quant;
namespace nn = forge::cpu::nn;
using forge::test::AlignedBuf;
using forge::test::gaussian;

namespace {

std::vector<nn::Isa> isas() {
    std::vector<nn::Isa> out{nn::Isa::generic};
    if (nn::best_isa() >= nn::Isa::avx2) out.push_back(nn::Isa::avx2);
    if (nn::best_isa() >= nn::Isa::avx512) out.push_back(nn::Isa::avx512);
    return out;
}

const GgmlType kTypes[] = {GgmlType::f32, GgmlType::f16, GgmlType::q8_0, GgmlType::q4_0,
                           GgmlType::q4_k};

} // namespace

TEST(QuantKernels, ActivationQuantizationMatchesReference) {
    for (GgmlType t : kTypes) {
        for (int64_t K : {256, 768}) {
            const ActLayout L = act_layout(t, K);
            const int64_t N = 3;
            auto x = gaussian(N * K, 7);
            x[5] = 0.5f; // a tie after scaling is likely somewhere; zeros block below
            for (int64_t k = 0; k < 32; ++k) x[size_t(K + k)] = 0.f;
            AlignedBuf want(size_t(N * L.row_bytes));
            ref::quantize_act(L, x.data(), K, N, want.p);
            for (nn::Isa isa : isas()) {
                nn::IsaCapScope cap(isa);
                AlignedBuf got(size_t(N * L.row_bytes));
                quantize_act(L, x.data(), K, N, got.p);
                EXPECT_EQ(std::memcmp(got.p, want.p, size_t(N * L.row_bytes)), 0)
                    << fq::type_info(t).name << " K=" << K << " isa=" << int(isa);
            }
        }
    }
}

TEST(QuantKernels, RandomDataWithinRoundingOfReference) {
    for (GgmlType t : kTypes) {
        for (int64_t K : {512, 800}) {
            if (K % fq::type_info(t).block_size) continue;
            const int64_t M = 37, wrow = fq::row_bytes(t, K);
            const auto wf = gaussian(M * K, 11);
            std::vector<uint8_t> W(size_t(M * wrow));
            for (int64_t m = 0; m < M; ++m)
                fq::quantize_row(t, wf.data() + m * K, W.data() + m * wrow, K);
            const ActLayout L = act_layout(t, K);
            for (int64_t N : {1, 3, 6, 17}) { // 17: prefill tiles, F16 widened per band
                const auto x = gaussian(N * K, 13);
                AlignedBuf A(size_t(N * L.row_bytes));
                ref::quantize_act(L, x.data(), K, N, A.p);
                for (nn::Isa isa : isas()) {
                    nn::IsaCapScope cap(isa);
                    std::vector<float> Y(size_t(N * M), -1.f);
                    gemm(t, W.data(), wrow, 2, M, L, A.p, L.row_bytes, N, Y.data(), M);
                    for (int64_t n = 0; n < N; ++n) {
                        EXPECT_EQ(Y[size_t(n * M)], -1.f); // rows before m0 untouched
                        for (int64_t m = 2; m < M; ++m) {
                            const float want = ref::dot(t, W.data() + m * wrow, L, A.p + n * L.row_bytes);
                            // float sums in another order: |error| ~ K eps * sum |terms| ~ 1e-4 * sqrt(K)
                            EXPECT_NEAR(Y[size_t(n * M + m)], want, 2e-4 * std::sqrt(double(K)) * 4)
                                << fq::type_info(t).name << " K=" << K << " N=" << N << " m=" << m
                                << " isa=" << int(isa);
                        }
                    }
                }
            }
        }
    }
}

// Unit scales everywhere: every partial sum is an integer below 2^24, so any difference between
// a SIMD kernel and the reference is an error in the integer part.
TEST(QuantKernels, IntegerPartExact) {
    std::mt19937 rng(5);
    const uint16_t one = f32_to_f16(1.f);
    for (GgmlType t : {GgmlType::q8_0, GgmlType::q4_0, GgmlType::q4_k}) {
        for (int64_t K : {512, 800}) {
            if (K % fq::type_info(t).block_size) continue;
            const int64_t M = 21, wrow = fq::row_bytes(t, K), N = 5; // N = 5: tiles of 4 and 1
            std::vector<uint8_t> W(size_t(M * wrow));
            for (auto& b : W) b = uint8_t(rng());
            for (int64_t m = 0; m < M; ++m) {
                uint8_t* row = W.data() + m * wrow;
                for (int64_t b = 0; b < K / fq::type_info(t).block_size; ++b) {
                    if (t == GgmlType::q8_0) {
                        auto* blk = reinterpret_cast<fq::BlockQ8_0*>(row) + b;
                        blk->d = one;
                        for (auto& q : blk->qs) q = int8_t(std::max<int>(-127, q)); // ggml range
                    } else if (t == GgmlType::q4_0) {
                        reinterpret_cast<fq::BlockQ4_0*>(row)[b].d = one;
                    } else {
                        reinterpret_cast<fq::BlockQ4K*>(row)[b].d = one;
                        reinterpret_cast<fq::BlockQ4K*>(row)[b].dmin = one;
                    }
                }
            }
            const ActLayout L = act_layout(t, K);
            // Q4_0's activations are the q8_0 blocks rearranged: build those, then arrange.
            const ActLayout LB = t == GgmlType::q4_0 ? act_layout(GgmlType::q8_0, K) : L;
            AlignedBuf A(size_t(N * LB.row_bytes));
            std::uniform_int_distribution<int> q8(t == GgmlType::q4_k ? -20 : -127, t == GgmlType::q4_k ? 20 : 127);
            for (int64_t n = 0; n < N; ++n) {
                uint8_t* a = A.p + n * LB.row_bytes;
                auto* qs = reinterpret_cast<int8_t*>(a);
                for (int64_t k = 0; k < K; ++k) qs[k] = int8_t(q8(rng));
                if (LB.kind == ActKind::q8_0) {
                    for (int64_t b = 0; b < K / 32; ++b) {
                        int s = 0;
                        for (int j = 0; j < 32; ++j) s += qs[b * 32 + j];
                        reinterpret_cast<int32_t*>(a + LB.s_off)[b * 8] = -8 * s;
                        for (int j = 0; j < 8; ++j) reinterpret_cast<float*>(a + LB.d_off)[b * 8 + j] = 1.f;
                    }
                    for (int64_t k = 0; k < K; ++k) qs[k] = int8_t(uint8_t(qs[k] + 128)); // stored + 128
                } else {
                    for (int64_t g = 0; g < K / 16; ++g) {
                        int s = 0;
                        for (int j = 0; j < 16; ++j) s += qs[g * 16 + j];
                        reinterpret_cast<int16_t*>(a + L.s_off)[g] = int16_t(s);
                    }
                    for (int64_t b = 0; b < K / 256; ++b) reinterpret_cast<float*>(a + L.d_off)[b] = 1.f;
                }
            }
            if (t == GgmlType::q4_0) {
                AlignedBuf B(size_t(N * L.row_bytes));
                for (int64_t n = 0; n < N; ++n)
                    q4_0_from_q8_0(L, LB, A.p + n * LB.row_bytes, B.p + n * L.row_bytes);
                A = B;
            }
            for (nn::Isa isa : isas()) {
                nn::IsaCapScope cap(isa);
                std::vector<float> Y(size_t(N * M));
                gemm(t, W.data(), wrow, 0, M, L, A.p, L.row_bytes, N, Y.data(), M);
                for (int64_t n = 0; n < N; ++n)
                    for (int64_t m = 0; m < M; ++m)
                        ASSERT_EQ(Y[size_t(n * M + m)],
                                  ref::dot(t, W.data() + m * wrow, L, A.p + n * L.row_bytes))
                            << fq::type_info(t).name << " K=" << K << " isa=" << int(isa);
                // one activation row: the GEMV path (rows reduced 16 at a time)
                std::vector<float> y(static_cast<size_t>(M));
                gemm(t, W.data(), wrow, 0, M, L, A.p, L.row_bytes, 1, y.data(), M);
                for (int64_t m = 0; m < M; ++m)
                    ASSERT_EQ(y[size_t(m)], ref::dot(t, W.data() + m * wrow, L, A.p))
                        << fq::type_info(t).name << " GEMV K=" << K << " isa=" << int(isa);
            }
        }
    }
}

TEST(QuantKernels, ReferenceDotMatchesDequantizedProduct) {
    // The oracle itself against plain f32 math on dequantized weights and activations.
    for (GgmlType t : kTypes) {
        const int64_t K = 512, wrow = fq::row_bytes(t, K);
        const auto wf = gaussian(K, 21), x = gaussian(K, 22);
        std::vector<uint8_t> w(static_cast<size_t>(wrow));
        fq::quantize_row(t, wf.data(), w.data(), K);
        std::vector<float> wd(static_cast<size_t>(K));
        fq::dequantize_row(t, w.data(), wd.data(), K);
        const ActLayout L = act_layout(t, K);
        AlignedBuf a(size_t(L.row_bytes));
        ref::quantize_act(L, x.data(), K, 1, a.p);
        double exact = 0, mag = 0;
        for (int64_t k = 0; k < K; ++k) {
            exact += double(wd[size_t(k)]) * x[size_t(k)];
            mag += std::fabs(double(wd[size_t(k)]) * x[size_t(k)]);
        }
        // int8 activations: relative error per term <= 1/254 of the block's max, ~1% of sum|terms|
        const double tol = L.kind == ActKind::f32 ? 1e-5 * mag : 0.01 * mag;
        EXPECT_NEAR(ref::dot(t, w.data(), L, a.p), exact, tol) << fq::type_info(t).name;
    }
}
