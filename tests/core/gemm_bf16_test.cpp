// gemm_bf16 on each path this CPU runs (plain loops, AVX512_BF16, AMX) against a scalar oracle
// that rounds the operands to bf16 itself and sums in double; plus the f32 product as a loose
// sanity check, bit-exact f32 -> bf16 conversion (NaN, infinities, denormals, ties), and the
// same bits for any thread count. Paths the CPU lacks are skipped with the reason.
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "backends/cpu/kernels/gemm_bf16.h"

namespace forge::cpu {

// The path's name in gtest's messages (found by argument-dependent lookup, hence outside the
// anonymous namespace).
void PrintTo(Bf16Gemm k, std::ostream* os) {
    *os << (k == Bf16Gemm::amx ? "amx" : k == Bf16Gemm::avx512_bf16 ? "avx512_bf16" : "none");
}

namespace {

// The oracle's rounding, written from the bf16 definition rather than shared with the kernel:
// keep f32's top 16 bits and round the low 16 half-to-even; NaN stays NaN; f32 denormals
// become a signed zero, as vcvtne2ps2bf16 (and so every path) does.
double oracle_bf16(float x) {
    const uint32_t u = std::bit_cast<uint32_t>(x);
    const uint32_t exponent = (u >> 23) & 0xff, low = u & 0xffff;
    if (exponent == 0xff && (u & 0x7fffff))
        return std::numeric_limits<double>::quiet_NaN();
    if (exponent == 0)
        return std::signbit(x) ? -0.0 : 0.0;
    uint32_t high = u & 0xffff0000u;
    if (low > 0x8000 || (low == 0x8000 && (high & 0x10000)))
        high += 0x10000; // may carry to inf
    return double(std::bit_cast<float>(high));
}

struct Layout {
    bool a_col_major, b_col_major;
};

// One product: operands stored with padding between rows (or columns), so strides matter.
struct Problem {
    int64_t M, N, K, a_rs, a_cs, b_rs, b_cs, ldc;
    std::vector<float> a, b;

    Problem(int64_t m, int64_t n, int64_t k, Layout lay, uint64_t seed) : M(m), N(n), K(k) {
        // a: (M, K), row-major with row stride K + 3, or column-major with column stride M + 2.
        a_rs = lay.a_col_major ? 1 : K + 3, a_cs = lay.a_col_major ? M + 2 : 1;
        b_rs = lay.b_col_major ? 1 : N + 1, b_cs = lay.b_col_major ? K + 5 : 1;
        ldc = N + 7;
        std::mt19937_64 rng(seed);
        // Magnitudes spread over several binades, so rounding sees varied exponents.
        std::uniform_real_distribution<float> mant(-1.0f, 1.0f);
        std::uniform_int_distribution<int> expo(-4, 4);
        auto fill = [&](std::vector<float>& v, size_t n_elems) {
            v.assign(n_elems, std::numeric_limits<float>::quiet_NaN()); // padding: never read
            return [&v, &mant, &expo, &rng](size_t i) { v[i] = std::ldexp(mant(rng), expo(rng)); };
        };
        auto set_a = fill(a, size_t(lay.a_col_major ? K * a_cs : M * a_rs));
        for (int64_t i = 0; i < M; ++i)
            for (int64_t j = 0; j < K; ++j)
                set_a(size_t(i * a_rs + j * a_cs));
        auto set_b = fill(b, size_t(lay.b_col_major ? N * b_cs : K * b_rs));
        for (int64_t i = 0; i < K; ++i)
            for (int64_t j = 0; j < N; ++j)
                set_b(size_t(i * b_rs + j * b_cs));
    }
    float av(int64_t m, int64_t k) const { return a[size_t(m * a_rs + k * a_cs)]; }
    float bv(int64_t k, int64_t n) const { return b[size_t(k * b_rs + n * b_cs)]; }

    // c = op(a) op(b) in double, with sum |op(a)| |op(b)| per element for the tolerance.
    void exact(bool round, std::vector<double>& c, std::vector<double>& mag) const {
        c.assign(size_t(M * N), 0.0), mag.assign(size_t(M * N), 0.0);
        for (int64_t m = 0; m < M; ++m)
            for (int64_t k = 0; k < K; ++k) {
                const double x = round ? oracle_bf16(av(m, k)) : double(av(m, k));
                for (int64_t n = 0; n < N; ++n) {
                    const double y = round ? oracle_bf16(bv(k, n)) : double(bv(k, n));
                    c[size_t(m * N + n)] += x * y;
                    mag[size_t(m * N + n)] += std::abs(x * y);
                }
            }
    }

    std::vector<float> run(Bf16Gemm kind, int threads) const {
        std::vector<float> c(size_t(M * ldc), -7.0f); // sentinel between rows
        gemm_bf16_on(kind, M, N, K, a.data(), a_rs, a_cs, b.data(), b_rs, b_cs, c.data(), ldc,
                     threads);
        return c;
    }
};

std::string name(Bf16Gemm k) {
    return k == Bf16Gemm::amx ? "amx" : k == Bf16Gemm::avx512_bf16 ? "avx512_bf16" : "none";
}

class Bf16GemmPath : public ::testing::TestWithParam<Bf16Gemm> {
  protected:
    void SetUp() override {
        if (int(GetParam()) > int(bf16_gemm_kind()))
            GTEST_SKIP() << "this CPU runs bf16 path '" << name(bf16_gemm_kind()) << "', not '"
                         << name(GetParam()) << "'";
    }
};

// Shapes: degenerate, odd K, every row tail of the 12-row micro-tile and column tails of the
// 32-wide panels (AMX: 32 x 32 blocks, K in steps of 32), and the training shapes; then 12
// drawn at random (sides 1-100, fixed seed).
struct Shape3 {
    int64_t M, N, K;
};
std::vector<Shape3> shapes() {
    std::vector<Shape3> s = {{1, 1, 1},      {1, 1, 2},      {2, 3, 1},     {3, 5, 7},
                             {12, 32, 2},    {13, 33, 3},    {11, 17, 31},  {24, 64, 33},
                             {25, 49, 65},   {31, 47, 95},   {33, 31, 64},  {7, 100, 129},
                             {100, 7, 40},   {1, 70, 45},    {70, 1, 45},   {768, 65, 128},
                             {64, 384, 128}, {128, 96, 768}, {65, 128, 300}};
    std::mt19937 rng(2024);
    std::uniform_int_distribution<int64_t> side(1, 100);
    for (int i = 0; i < 12; ++i)
        s.push_back({side(rng), side(rng), side(rng)});
    return s;
}

TEST_P(Bf16GemmPath, MatchesBf16OracleAndF32Product) {
    const Layout layouts[] = {{false, false}, {false, true}, {true, false}, {true, true}};
    uint64_t seed = 1;
    for (const Shape3& s : shapes())
        for (const Layout& lay : layouts) {
            const Problem p(s.M, s.N, s.K, lay, seed++);
            std::vector<double> want, mag, want32, mag32;
            p.exact(true, want, mag);
            p.exact(false, want32, mag32);
            const std::vector<float> c1 = p.run(GetParam(), 1);
            for (int threads : {1, 2, 3}) {
                const std::vector<float> c = threads == 1 ? c1 : p.run(GetParam(), threads);
                const std::string where =
                    "shape " + std::to_string(s.M) + "x" + std::to_string(s.N) + "x" +
                    std::to_string(s.K) + (lay.a_col_major ? " a^T" : "") +
                    (lay.b_col_major ? " b^T" : "") + " threads " + std::to_string(threads);
                int bad = 0;
                for (int64_t m = 0; m < s.M && bad < 5; ++m) {
                    for (int64_t n = 0; n < s.N; ++n) {
                        const size_t o = size_t(m * s.N + n);
                        const double got = c[size_t(m * p.ldc + n)];
                        // f32 accumulation order only: products of bf16 are exact in f32.
                        if (std::abs(got - want[o]) > 1e-5 * mag[o] + 1e-30 ||
                            std::abs(got - want32[o]) > 1e-2 * mag32[o] + 1e-30) {
                            ADD_FAILURE() << where << " c(" << m << "," << n << ") = " << got
                                          << ", bf16 oracle " << want[o] << ", f32 product "
                                          << want32[o] << ", sum|ab| " << mag[o];
                            ++bad;
                        }
                        // Each c element's sums don't depend on how the work was split.
                        if (threads > 1 && c[size_t(m * p.ldc + n)] != c1[size_t(m * p.ldc + n)] &&
                            bad++ < 5)
                            ADD_FAILURE()
                                << where << " c(" << m << "," << n << ") differs from threads=1";
                    }
                    for (int64_t n = s.N; n < p.ldc; ++n)
                        if (c[size_t(m * p.ldc + n)] != -7.0f && bad++ < 5)
                            ADD_FAILURE() << where << " wrote past column N at row " << m;
                }
                if (bad)
                    return;
            }
        }
}

// vcvtne2ps2bf16's rounding, bit for bit, on both operands and both layouts of each: with the
// other operand all ones and K = 1, c holds bf16(x) exactly (1 * x is exact, the padding pairs
// add 0). Values: random bit patterns (NaN, infinities, denormals included) and ties.
TEST_P(Bf16GemmPath, RoundsLikeVcvtne2ps2bf16) {
    std::vector<float> x = {0.0f,
                            -0.0f,
                            1.0f,
                            -1.5f,
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(),
                            std::bit_cast<float>(0x7f800001u), // signalling NaN
                            std::bit_cast<float>(0x00000001u), // denormals
                            std::bit_cast<float>(0x807fffffu),
                            std::bit_cast<float>(0x00800000u),  // smallest normal
                            std::bit_cast<float>(0x3f808000u),  // tie, even below: down
                            std::bit_cast<float>(0x3f818000u),  // tie, odd below: up
                            std::bit_cast<float>(0x3f808001u),  // above the tie: up
                            std::bit_cast<float>(0x7f7fffffu)}; // FLT_MAX rounds to inf
    std::mt19937 rng(7);
    for (int i = 0; i < 2000; ++i)
        x.push_back(std::bit_cast<float>(uint32_t(rng())));
    const int64_t n = int64_t(x.size());
    const std::vector<float> ones(size_t(n), 1.0f);
    std::vector<float> c(x.size());
    // Products give +0 for -0 (0 + -0 * 1), so the GEMMs compare zeros by value, the
    // conversion itself by bits.
    auto check = [&](const char* what, bool bits = false) {
        for (int64_t i = 0; i < n; ++i) {
            const double want = oracle_bf16(x[size_t(i)]);
            const float got = c[size_t(i)];
            const bool same =
                std::isnan(want) ? std::isnan(got)
                : bits ? std::bit_cast<uint32_t>(got) == std::bit_cast<uint32_t>(float(want))
                       : got == float(want);
            ASSERT_TRUE(same) << what << ": bf16(" << std::hex
                              << std::bit_cast<uint32_t>(x[size_t(i)]) << ") gave "
                              << std::bit_cast<uint32_t>(c[size_t(i)]) << ", want "
                              << std::bit_cast<uint32_t>(float(want));
        }
    };
    const Bf16Gemm k = GetParam();
    // a (n x 1) * ones (1 x 1), a as a column (row stride 1) or with row stride 1 and k stride n.
    gemm_bf16_on(k, n, 1, 1, x.data(), 1, n, ones.data(), 1, 1, c.data(), 1, 1);
    check("a, rows contiguous");
    gemm_bf16_on(k, n, 1, 1, x.data(), 1, 1, ones.data(), 1, 1, c.data(), 1, 1);
    check("a, k contiguous");
    // ones (1 x 1) * b (1 x n), b row-major or column-major.
    gemm_bf16_on(k, 1, n, 1, ones.data(), 1, 1, x.data(), n, 1, c.data(), n, 1);
    check("b, columns contiguous");
    gemm_bf16_on(k, 1, n, 1, ones.data(), 1, 1, x.data(), 1, 1, c.data(), n, 1);
    check("b, k contiguous");
    // The scalar conversion the kernels use for odd strides agrees too.
    for (int64_t i = 0; i < n; ++i)
        c[size_t(i)] = std::bit_cast<float>(uint32_t(f32_to_bf16_daz(x[size_t(i)])) << 16);
    check("f32_to_bf16_daz", true);
}

INSTANTIATE_TEST_SUITE_P(Bf16Gemm, Bf16GemmPath,
                         ::testing::Values(Bf16Gemm::none, Bf16Gemm::avx512_bf16, Bf16Gemm::amx),
                         [](const auto& info) { return name(info.param); });

// The packing routines of the SIMD paths, element by element: pair panels (vdpbf16ps's and
// AMX's B operand, and the AVX512_BF16 path's A) and the rows panels of AMX's A operand, each
// from lanes-contiguous, k-contiguous and other strides, with zero padding past K and lanes.
// These run on any AVX512_BF16 CPU, so AMX's packing is checked without AMX.
TEST(Bf16GemmPack, MatchesScalarRounding) {
    if (bf16_gemm_kind() == Bf16Gemm::none)
        GTEST_SKIP() << "no AVX512_BF16 on this CPU: the packing routines need it";
    std::mt19937 rng(3);
    std::normal_distribution<float> nd(0.0f, 3.0f);
    auto want = [](float v) {
        return uint32_t(std::bit_cast<uint32_t>(float(oracle_bf16(v))) >> 16);
    };
    for (int64_t K : {1, 2, 5, 31, 32, 33, 70})
        for (int64_t lanes : {1, 7, 12, 16, 17, 32})
            for (int layout = 0; layout < 3; ++layout) {
                // x(k, l): lanes contiguous, k contiguous, or neither (strides 3 and 2 K + 1).
                const int64_t ks = layout == 0 ? lanes + 2 : layout == 1 ? 1 : 3;
                const int64_t ls = layout == 0 ? 1 : layout == 1 ? K + 2 : 2 * K + 1;
                std::vector<float> x(size_t(K * ks + lanes * ls + 1));
                for (float& v : x)
                    v = nd(rng);
                auto at = [&](int64_t k, int64_t l) { return x[size_t(k * ks + l * ls)]; };
                const std::string where = "K " + std::to_string(K) + " lanes " +
                                          std::to_string(lanes) + " layout " +
                                          std::to_string(layout);
                for (int width : {12, 32}) {
                    if (lanes > width)
                        continue;
                    const int64_t n_pairs = (K + 1) / 2 + 1; // one pair of padding beyond
                    std::vector<uint32_t> pairs(size_t(n_pairs * width), 0xdeadbeef);
                    bf16::pack_pairs(x.data(), ks, ls, lanes, K, n_pairs, width, pairs.data());
                    for (int64_t p = 0; p < n_pairs; ++p)
                        for (int64_t l = 0; l < width; ++l) {
                            const bool in = l < lanes;
                            const uint32_t lo = in && 2 * p < K ? want(at(2 * p, l)) : 0;
                            const uint32_t hi = in && 2 * p + 1 < K ? want(at(2 * p + 1, l)) : 0;
                            ASSERT_EQ(pairs[size_t(p * width + l)], lo | hi << 16)
                                << "pack_pairs width " << width << ", " << where << ", pair " << p
                                << " lane " << l;
                        }
                }
                // Rows panel: row r = lane r, padded to a multiple of 32 (AMX's k step).
                const int64_t k_pad = (K + 31) / 32 * 32;
                std::vector<uint16_t> rows(size_t(lanes * k_pad), 0xbeef);
                bf16::pack_rows(x.data(), ls, ks, lanes, K, k_pad, rows.data());
                for (int64_t r = 0; r < lanes; ++r)
                    for (int64_t k = 0; k < k_pad; ++k)
                        ASSERT_EQ(rows[size_t(r * k_pad + k)], k < K ? want(at(k, r)) : 0)
                            << "pack_rows, " << where << ", row " << r << " k " << k;
            }
}

// The path gemm_bf16 takes is the detected one, and gives its bits.
TEST(Bf16Gemm, DefaultPathIsTheDetectedOne) {
    const Problem p(37, 45, 29, {false, true}, 99);
    std::vector<float> c(size_t(p.M * p.ldc), -7.0f);
    gemm_bf16(p.M, p.N, p.K, p.a.data(), p.a_rs, p.a_cs, p.b.data(), p.b_rs, p.b_cs, c.data(),
              p.ldc, 2);
    EXPECT_EQ(c, p.run(bf16_gemm_kind(), 1)) << "detected path: " << name(bf16_gemm_kind());
    std::printf("bf16 GEMM path on this CPU: %s\n", name(bf16_gemm_kind()).c_str());
}

} // namespace
} // namespace forge::cpu
