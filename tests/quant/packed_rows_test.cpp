// x16-packed weights (packed_rows.h) against the scalar oracle on the original GGUF rows:
// ref::dot over the unpacked rows with the same activations (s8 for Q8_0 / Q4_0, f32 for
// F32 / F16). Integer parts exact (unit scales), float results within rounding, whole groups,
// tail rows and every activation tile width (1..8 and a remainder).
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include <forge/core/dtype.h>
#include <forge/quant/ggml_types.h>

#include "backends/cpu/quant/packed_rows.h"
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
    if (nn::best_isa() >= nn::Isa::avx512)
        out.push_back(nn::Isa::avx512);
    return out;
}

const GgmlType kTypes[] = {GgmlType::q8_0, GgmlType::q4_0};

} // namespace

TEST(PackedRows, ActivationQuantizationMatchesReference) {
    const int64_t K = 800, N = 3;
    const ActLayout L = act_layout_s8(K);
    auto x = gaussian(N * K, 3);
    for (int64_t k = 0; k < 32; ++k)
        x[size_t(K + k)] = 0.f; // an all-zero block
    AlignedBuf want(size_t(N * L.row_bytes));
    ref::quantize_act(L, x.data(), K, N, want.p);
    for (nn::Isa isa : isas()) {
        nn::IsaCapScope cap(isa);
        AlignedBuf got(size_t(N * L.row_bytes));
        quantize_act(L, x.data(), K, N, got.p);
        EXPECT_EQ(std::memcmp(got.p, want.p, size_t(N * L.row_bytes)), 0) << "isa=" << int(isa);
    }
}

TEST(PackedRows, ReferenceDotMatchesDequantizedProduct) {
    for (GgmlType t : kTypes) {
        const int64_t K = 512, wrow = fq::row_bytes(t, K);
        const auto wf = gaussian(K, 21), x = gaussian(K, 22);
        std::vector<uint8_t> w(static_cast<size_t>(wrow));
        fq::quantize_row(t, wf.data(), w.data(), K);
        std::vector<float> wd(static_cast<size_t>(K));
        fq::dequantize_row(t, w.data(), wd.data(), K);
        const ActLayout L = act_layout_s8(K);
        AlignedBuf a(size_t(L.row_bytes));
        ref::quantize_act(L, x.data(), K, 1, a.p);
        double exact = 0, mag = 0;
        for (int64_t k = 0; k < K; ++k) {
            exact += double(wd[size_t(k)]) * x[size_t(k)];
            mag += std::fabs(double(wd[size_t(k)]) * x[size_t(k)]);
        }
        EXPECT_NEAR(ref::dot(t, w.data(), L, a.p), exact, 0.01 * mag) << fq::type_info(t).name;
    }
}

// Unit scales: every sum is an integer below 2^24, so the packed kernels must equal the oracle
// exactly. Q8_0 weights take the whole int8 range (-128 included), activations -127..127.
TEST(PackedRows, IntegerPartExact) {
    std::mt19937 rng(9);
    const uint16_t one = f32_to_f16(1.f);
    for (GgmlType t : kTypes) {
        for (int64_t K : {512, 800}) {
            const int64_t M = 37, wrow = fq::row_bytes(t, K), N = 11; // 2 groups + 5 tail rows
            std::vector<uint8_t> W(size_t(M * wrow)), P(W.size());
            for (auto& b : W)
                b = uint8_t(rng());
            for (int64_t m = 0; m < M; ++m)
                for (int64_t b = 0; b < K / 32; ++b) {
                    uint8_t* blk = W.data() + m * wrow + b * fq::type_info(t).block_bytes;
                    std::memcpy(blk, &one, 2); // d is each block's first field
                }
            pack_x16(t, W.data(), M, K, P.data());
            const ActLayout L = act_layout_s8(K);
            AlignedBuf A(size_t(N * L.row_bytes));
            std::uniform_int_distribution<int> q8(-127, 127);
            for (int64_t n = 0; n < N; ++n) {
                uint8_t* a = A.p + n * L.row_bytes;
                for (int64_t b = 0; b < K / 32; ++b) {
                    int s = 0;
                    for (int j = 0; j < 32; ++j) {
                        const int v = q8(rng);
                        reinterpret_cast<int8_t*>(a)[b * 32 + j] = int8_t(v);
                        s += v;
                    }
                    reinterpret_cast<float*>(a + L.d_off)[b] = 1.f;
                    reinterpret_cast<int32_t*>(a + L.s_off)[b] = s;
                }
            }
            for (nn::Isa isa : isas())
                for (int64_t n_act : {int64_t(1), N}) { // GEMV, then tiles of 8 and 3
                    nn::IsaCapScope cap(isa);
                    std::vector<float> Y(size_t(n_act * M));
                    gemm_x16(t, P.data(), M, 0, M, L, A.p, L.row_bytes, n_act, Y.data(), M);
                    for (int64_t n = 0; n < n_act; ++n)
                        for (int64_t m = 0; m < M; ++m)
                            ASSERT_EQ(Y[size_t(n * M + m)],
                                      ref::dot(t, W.data() + m * wrow, L, A.p + n * L.row_bytes))
                                << fq::type_info(t).name << " K=" << K << " N=" << n_act
                                << " n=" << n << " m=" << m << " isa=" << int(isa);
                }
        }
    }
}

TEST(PackedRows, RandomDataWithinRoundingOfReference) {
    for (GgmlType t : {GgmlType::q8_0, GgmlType::q4_0, GgmlType::f32, GgmlType::f16})
        for (int64_t K : {768, 101}) { // 101: float rows of any length
            if (K % fq::type_info(t).block_size)
                continue;
            const int64_t M = 53, wrow = fq::row_bytes(t, K);
            const auto wf = gaussian(M * K, 11);
            std::vector<uint8_t> W(size_t(M * wrow)), P(W.size());
            for (int64_t m = 0; m < M; ++m)
                fq::quantize_row(t, wf.data() + m * K, W.data() + m * wrow, K);
            pack_x16(t, W.data(), M, K, P.data());
            const ActLayout L = act_layout_x16(t, K);
            for (int64_t N : {1, 2, 5, 8, 13}) {
                const auto x = gaussian(N * K, 13);
                AlignedBuf A(size_t(N * L.row_bytes));
                quantize_act(L, x.data(), K, N, A.p);
                for (nn::Isa isa : isas()) {
                    nn::IsaCapScope cap(isa);
                    std::vector<float> Y(size_t(N * M), -1.f);
                    gemm_x16(t, P.data(), M, 16, M, L, A.p, L.row_bytes, N, Y.data(), M);
                    for (int64_t n = 0; n < N; ++n) {
                        for (int64_t m = 0; m < 16; ++m)
                            EXPECT_EQ(Y[size_t(n * M + m)], -1.f); // before m0
                        for (int64_t m = 16; m < M; ++m) {
                            const float want =
                                ref::dot(t, W.data() + m * wrow, L, A.p + n * L.row_bytes);
                            EXPECT_NEAR(Y[size_t(n * M + m)], want, 2e-4 * std::sqrt(double(K)) * 4)
                                << fq::type_info(t).name << " K=" << K << " N=" << N << " m=" << m
                                << " isa=" << int(isa);
                        }
                    }
                }
            }
        }
}
