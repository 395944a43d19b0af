// The ggml type table and the reference quantize/dequantize routines: hand-built blocks decode
// to the values of the spec formulas, round trips stay within each type's error bound.
#include <forge/quant/ggml_types.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include <forge/core/dtype.h>
#include <forge/core/error.h>

#include "quant/blocks.h"

using namespace forge;
using namespace forge::quant;

namespace {

std::vector<float> gaussian(int64_t n, uint32_t seed, float scale = 1.f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.f, scale);
    std::vector<float> x(static_cast<size_t>(n));
    for (auto& v : x) v = dist(rng);
    return x;
}

std::vector<float> round_trip(GgmlType t, const std::vector<float>& x) {
    const int64_t n = int64_t(x.size());
    std::vector<uint8_t> buf(size_t(row_bytes(t, n)));
    quantize_row(t, x.data(), buf.data(), n);
    std::vector<float> y(x.size());
    dequantize_row(t, buf.data(), y.data(), n);
    return y;
}

} // namespace

TEST(GgmlTypes, TableAndRowBytes) {
    EXPECT_EQ(type_info(GgmlType::q8_0).block_bytes, 34);
    EXPECT_EQ(type_info(GgmlType::q4_0).block_bytes, 18);
    EXPECT_EQ(type_info(GgmlType::q4_1).block_bytes, 20);
    EXPECT_EQ(type_info(GgmlType::q4_k).block_bytes, 144);
    EXPECT_EQ(type_info(GgmlType::q5_k).block_bytes, 176);
    EXPECT_EQ(type_info(GgmlType::q6_k).block_bytes, 210);
    EXPECT_EQ(type_info(GgmlType::q6_k).name, "Q6_K");
    EXPECT_EQ(row_bytes(GgmlType::f32, 7), 28);
    EXPECT_EQ(row_bytes(GgmlType::bf16, 7), 14);
    EXPECT_EQ(row_bytes(GgmlType::q8_0, 4096), 128 * 34);
    EXPECT_EQ(row_bytes(GgmlType::q4_k, 4096), 16 * 144);
    EXPECT_THROW(row_bytes(GgmlType::q4_0, 33), InvalidArgument);
    EXPECT_THROW(row_bytes(GgmlType::q4_k, 128), InvalidArgument);
    EXPECT_THROW(row_bytes(GgmlType::f32, int64_t(1) << 62), InvalidArgument);
    EXPECT_TRUE(is_known_type(30));
    EXPECT_FALSE(is_known_type(10)); // Q2_K
    EXPECT_THROW(type_info(GgmlType(10)), InvalidArgument);
    EXPECT_EQ(parse_type("q4_k"), GgmlType::q4_k);
    EXPECT_EQ(parse_type("BF16"), GgmlType::bf16);
    EXPECT_EQ(parse_type("Q8_0"), GgmlType::q8_0);
    try {
        parse_type("q3_k");
        FAIL();
    } catch (const InvalidArgument& e) {
        EXPECT_NE(std::string(e.what()).find("q4_0"), std::string::npos);
    }
    std::vector<float> x(256);
    std::vector<uint8_t> buf(210);
    EXPECT_THROW(quantize_row(GgmlType::q6_k, x.data(), buf.data(), 256), InvalidArgument);
}

TEST(GgmlTypes, HandBuiltQ8_0Q4_0Q4_1) {
    BlockQ8_0 b8{};
    b8.d = f32_to_f16(0.5f);
    for (int j = 0; j < 32; ++j) b8.qs[j] = int8_t(j * 8 - 128);
    float y[32];
    dequantize_row(GgmlType::q8_0, &b8, y, 32);
    for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], 0.5f * float(j * 8 - 128));

    BlockQ4_0 b4{};
    b4.d = f32_to_f16(-0.25f);
    for (int j = 0; j < 16; ++j) b4.qs[j] = uint8_t(j | ((15 - j) << 4));
    dequantize_row(GgmlType::q4_0, &b4, y, 32);
    for (int j = 0; j < 16; ++j) {
        EXPECT_EQ(y[j], -0.25f * float(j - 8));           // low nibble: first half
        EXPECT_EQ(y[16 + j], -0.25f * float(15 - j - 8)); // high nibble: second half
    }

    BlockQ4_1 b41{};
    b41.d = f32_to_f16(2.f);
    b41.m = f32_to_f16(-3.f);
    for (int j = 0; j < 16; ++j) b41.qs[j] = uint8_t((j % 16) | (3 << 4));
    dequantize_row(GgmlType::q4_1, &b41, y, 32);
    for (int j = 0; j < 16; ++j) {
        EXPECT_EQ(y[j], 2.f * float(j) - 3.f);
        EXPECT_EQ(y[16 + j], 2.f * 3.f - 3.f);
    }
}

namespace {
// Packs 8 six-bit scales and mins the way the K-quant spec lays them out in 12 bytes.
void pack_k_scales(const int sc[8], const int mn[8], uint8_t out[12]) {
    std::memset(out, 0, 12);
    for (int j = 0; j < 4; ++j) {
        out[j] = uint8_t((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        out[j + 4] = uint8_t((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
        out[j + 8] = uint8_t((sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4));
    }
}
} // namespace

TEST(GgmlTypes, HandBuiltQ4KQ5K) {
    const int sc[8] = {1, 7, 13, 63, 17, 33, 50, 62};
    const int mn[8] = {0, 5, 63, 2, 48, 16, 31, 9};
    BlockQ4K b{};
    b.d = f32_to_f16(0.125f);
    b.dmin = f32_to_f16(0.0625f);
    pack_k_scales(sc, mn, b.scales);
    // value i: sub-block s = i / 32 sits in byte group s / 2 (32 bytes each), low nibble for
    // even s, high nibble for odd s; choose q(i) = (i * 7) % 16.
    for (int i = 0; i < 256; ++i) {
        const int s = i / 32, l = i % 32, q = (i * 7) % 16;
        b.qs[32 * (s / 2) + l] |= uint8_t(s % 2 ? q << 4 : q);
    }
    std::vector<float> y(256);
    dequantize_row(GgmlType::q4_k, &b, y.data(), 256);
    for (int i = 0; i < 256; ++i) {
        const int s = i / 32;
        const float want = 0.125f * float(sc[s]) * float((i * 7) % 16) - 0.0625f * float(mn[s]);
        ASSERT_FLOAT_EQ(y[size_t(i)], want) << i;
    }

    BlockQ5K b5{};
    b5.d = f32_to_f16(0.25f);
    b5.dmin = f32_to_f16(0.5f);
    pack_k_scales(sc, mn, b5.scales);
    // fifth bit of value i (sub-block s, lane l) is bit s of qh[l]; q(i) = (i * 11) % 32.
    for (int i = 0; i < 256; ++i) {
        const int s = i / 32, l = i % 32, q = (i * 11) % 32;
        b5.qs[32 * (s / 2) + l] |= uint8_t(s % 2 ? (q & 15) << 4 : (q & 15));
        if (q & 16) b5.qh[l] |= uint8_t(1 << s);
    }
    dequantize_row(GgmlType::q5_k, &b5, y.data(), 256);
    for (int i = 0; i < 256; ++i) {
        const int s = i / 32;
        const float want = 0.25f * float(sc[s]) * float((i * 11) % 32) - 0.5f * float(mn[s]);
        ASSERT_FLOAT_EQ(y[size_t(i)], want) << i;
    }
}

TEST(GgmlTypes, HandBuiltQ6K) {
    BlockQ6K b{};
    b.d = f32_to_f16(0.5f);
    for (int g = 0; g < 16; ++g) b.scales[g] = int8_t(g * 9 - 70);
    // value i: half h = i / 128, r = i % 128, quarter k = r / 32, lane l = r % 32. Low 4 bits:
    // ql[64h + l + 32 (k odd)], low nibble for k < 2, high for k >= 2. High 2 bits: qh[32h + l]
    // bits 2k..2k+1. Scale group 16 values: i / 16. Choose q(i) = (i * 5) % 64.
    for (int i = 0; i < 256; ++i) {
        const int h = i / 128, r = i % 128, k = r / 32, l = r % 32, q = (i * 5) % 64;
        uint8_t& lo = b.ql[64 * h + l + (k % 2) * 32];
        lo |= uint8_t(k < 2 ? (q & 15) : (q & 15) << 4);
        b.qh[32 * h + l] |= uint8_t((q >> 4) << (2 * k));
    }
    std::vector<float> y(256);
    dequantize_row(GgmlType::q6_k, &b, y.data(), 256);
    for (int i = 0; i < 256; ++i) {
        const float want = 0.5f * float(b.scales[i / 16]) * float((i * 5) % 64 - 32);
        ASSERT_FLOAT_EQ(y[size_t(i)], want) << i;
    }
}

TEST(GgmlTypes, FloatRoundTrips) {
    // Every finite f16 and bf16 bit pattern survives dequantize -> quantize unchanged.
    std::vector<uint16_t> all(65536);
    for (int i = 0; i < 65536; ++i) all[size_t(i)] = uint16_t(i);
    std::vector<float> f(65536);
    std::vector<uint16_t> back(65536);
    for (GgmlType t : {GgmlType::f16, GgmlType::bf16}) {
        dequantize_row(t, all.data(), f.data(), 65536);
        quantize_row(t, f.data(), back.data(), 65536);
        for (int i = 0; i < 65536; ++i) {
            if (std::isnan(f[size_t(i)])) continue;
            ASSERT_EQ(back[size_t(i)], all[size_t(i)]) << type_info(t).name << " " << i;
        }
    }
    const auto x = gaussian(1024, 1);
    EXPECT_EQ(round_trip(GgmlType::f32, x), x);
    const auto h = round_trip(GgmlType::f16, x);
    const auto b = round_trip(GgmlType::bf16, x);
    for (size_t i = 0; i < x.size(); ++i) {
        EXPECT_LE(std::fabs(h[i] - x[i]), std::fabs(x[i]) * 0x1p-11f + 1e-7f);
        EXPECT_LE(std::fabs(b[i] - x[i]), std::fabs(x[i]) * 0x1p-8f);
    }
}

TEST(GgmlTypes, Q8_0AndQ4_0Bounds) {
    const auto x = gaussian(32 * 64, 2, 3.f);
    const auto y8 = round_trip(GgmlType::q8_0, x);
    const auto y4 = round_trip(GgmlType::q4_0, x);
    const auto y41 = round_trip(GgmlType::q4_1, x);
    for (size_t b = 0; b < x.size() / 32; ++b) {
        float amax = 0, mn = x[b * 32], mx = x[b * 32];
        for (size_t j = b * 32; j < b * 32 + 32; ++j) {
            amax = std::max(amax, std::fabs(x[j]));
            mn = std::min(mn, x[j]);
            mx = std::max(mx, x[j]);
        }
        const float d8 = amax / 127, d4 = amax / 8, d41 = (mx - mn) / 15;
        for (size_t j = b * 32; j < b * 32 + 32; ++j) {
            // half a step, plus the f16 rounding of d times the largest code
            EXPECT_LE(std::fabs(y8[j] - x[j]), d8 * 0.5f + amax * 0x1p-10f) << j;
            // the extreme value maps to -8 exactly; the other side may clamp at +7: one step
            EXPECT_LE(std::fabs(y4[j] - x[j]), d4 * 1.0f + amax * 0x1p-10f) << j;
            EXPECT_LE(std::fabs(y41[j] - x[j]), d41 * 0.5f + (amax + 15 * d41) * 0x1p-10f) << j;
        }
    }
}

TEST(GgmlTypes, Q4KBounds) {
    const auto x = gaussian(256 * 16, 3, 2.f);
    const auto y = round_trip(GgmlType::q4_k, x);
    double se = 0, sx = 0;
    for (size_t b = 0; b < x.size() / 32; ++b) {
        float mn = x[b * 32], mx = x[b * 32];
        for (size_t j = b * 32; j < b * 32 + 32; ++j) {
            mn = std::min(mn, x[j]);
            mx = std::max(mx, x[j]);
        }
        for (size_t j = b * 32; j < b * 32 + 32; ++j) {
            // per value: within about one 4-bit step of its sub-block's range (the fit, the
            // 6-bit rounding of scale and min and the final clamp each cost a fraction of one)
            EXPECT_LE(std::fabs(y[j] - x[j]), (mx - mn) / 15 * 1.25f) << j;
            se += double(y[j] - x[j]) * (y[j] - x[j]);
            sx += double(x[j]) * x[j];
        }
    }
    // 4-bit with a fitted min: relative RMS error about 1/(15 * sqrt(12)) of the range, ~0.09
    EXPECT_LT(std::sqrt(se / sx), 0.12);
    // zeros stay zeros, constant blocks stay close
    std::vector<float> z(256, 0.f);
    EXPECT_EQ(round_trip(GgmlType::q4_k, z), z);
    std::vector<float> c(256, 1.5f);
    for (float v : round_trip(GgmlType::q4_k, c)) EXPECT_NEAR(v, 1.5f, 1.5f / 30);
}

TEST(GgmlTypes, Q8KReference) {
    const auto x = gaussian(512, 4);
    std::vector<BlockQ8K> q(2);
    quantize_row_q8_k_ref(x.data(), q.data(), 512);
    for (int b = 0; b < 2; ++b) {
        for (int g = 0; g < 16; ++g) {
            int s = 0;
            for (int l = 0; l < 16; ++l) s += q[size_t(b)].qs[16 * g + l];
            EXPECT_EQ(q[size_t(b)].bsums[g], s);
        }
        for (int j = 0; j < 256; ++j)
            EXPECT_NEAR(q[size_t(b)].d * q[size_t(b)].qs[j], x[size_t(256 * b + j)],
                        std::fabs(q[size_t(b)].d) * 0.5001f);
    }
}
