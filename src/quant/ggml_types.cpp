// The ggml type table and the portable reference quantize/dequantize routines. These follow
// the rounding of llama.cpp's *_ref functions so files Forge quantizes hold the same bytes as
// llama-quantize writes (without an importance matrix); the SIMD kernels are tested against them.
#include <forge/quant/ggml_types.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include <forge/core/dtype.h>
#include <forge/core/error.h>

#include "quant/blocks.h"

namespace forge::quant {

namespace {

constexpr std::array<GgmlTypeInfo, 9> kTypes{{
    {GgmlType::f32, "F32", 1, 4},
    {GgmlType::f16, "F16", 1, 2},
    {GgmlType::q4_0, "Q4_0", kQK, sizeof(BlockQ4_0)},
    {GgmlType::q4_1, "Q4_1", kQK, sizeof(BlockQ4_1)},
    {GgmlType::q8_0, "Q8_0", kQK, sizeof(BlockQ8_0)},
    {GgmlType::q4_k, "Q4_K", kQKK, sizeof(BlockQ4K)},
    {GgmlType::q5_k, "Q5_K", kQKK, sizeof(BlockQ5K)},
    {GgmlType::q6_k, "Q6_K", kQKK, sizeof(BlockQ6K)},
    {GgmlType::bf16, "BF16", 1, 2},
}};

const GgmlTypeInfo* find_type(uint32_t raw) {
    for (const auto& t : kTypes)
        if (uint32_t(t.type) == raw) return &t;
    return nullptr;
}

inline float h2f(uint16_t h) { return f16_to_f32(h); }
inline uint16_t f2h(float f) { return f32_to_f16(f); }

// ---- dequantize ------------------------------------------------------------------------------

void dequant_q8_0(const BlockQ8_0* b, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const float d = h2f(b[i].d);
        for (int j = 0; j < kQK; ++j) y[i * kQK + j] = d * float(b[i].qs[j]);
    }
}

void dequant_q4_0(const BlockQ4_0* b, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const float d = h2f(b[i].d);
        for (int j = 0; j < kQK / 2; ++j) {
            y[i * kQK + j] = d * float((b[i].qs[j] & 0xF) - 8);
            y[i * kQK + j + kQK / 2] = d * float((b[i].qs[j] >> 4) - 8);
        }
    }
}

void dequant_q4_1(const BlockQ4_1* b, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const float d = h2f(b[i].d), m = h2f(b[i].m);
        for (int j = 0; j < kQK / 2; ++j) {
            y[i * kQK + j] = d * float(b[i].qs[j] & 0xF) + m;
            y[i * kQK + j + kQK / 2] = d * float(b[i].qs[j] >> 4) + m;
        }
    }
}

// Q4_K: 8 sub-blocks of 32; each 64-value stretch takes the low nibbles of 32 bytes for its
// first sub-block and the high nibbles for its second.
void dequant_q4_k(const BlockQ4K* b, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
        const uint8_t* q = b[i].qs;
        for (int j = 0; j < kQKK; j += 64, q += 32) {
            uint8_t sc0, m0, sc1, m1;
            k_scale_min(j / 32, b[i].scales, sc0, m0);
            k_scale_min(j / 32 + 1, b[i].scales, sc1, m1);
            const float d0 = d * sc0, mm0 = dmin * m0, d1 = d * sc1, mm1 = dmin * m1;
            for (int l = 0; l < 32; ++l) {
                *y++ = d0 * float(q[l] & 0xF) - mm0;
            }
            for (int l = 0; l < 32; ++l) {
                *y++ = d1 * float(q[l] >> 4) - mm1;
            }
        }
    }
}

// Q5_K: as Q4_K plus a fifth bit per value from qh; sub-block s takes bit s of qh[l].
void dequant_q5_k(const BlockQ5K* b, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
        const uint8_t* ql = b[i].qs;
        const uint8_t* qh = b[i].qh;
        unsigned u0 = 1, u1 = 2;
        for (int j = 0; j < kQKK; j += 64, ql += 32, u0 <<= 2, u1 <<= 2) {
            uint8_t sc0, m0, sc1, m1;
            k_scale_min(j / 32, b[i].scales, sc0, m0);
            k_scale_min(j / 32 + 1, b[i].scales, sc1, m1);
            const float d0 = d * sc0, mm0 = dmin * m0, d1 = d * sc1, mm1 = dmin * m1;
            for (int l = 0; l < 32; ++l)
                *y++ = d0 * float((ql[l] & 0xF) + ((qh[l] & u0) ? 16 : 0)) - mm0;
            for (int l = 0; l < 32; ++l)
                *y++ = d1 * float((ql[l] >> 4) + ((qh[l] & u1) ? 16 : 0)) - mm1;
        }
    }
}

// Q6_K: 6-bit values (4 low bits in ql, 2 high bits in qh) minus 32, 16 int8 scales of 16.
void dequant_q6_k(const BlockQ6K* b, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const float d = h2f(b[i].d);
        const uint8_t* ql = b[i].ql;
        const uint8_t* qh = b[i].qh;
        const int8_t* sc = b[i].scales;
        for (int n = 0; n < kQKK; n += 128, ql += 64, qh += 32, sc += 8, y += 128) {
            for (int l = 0; l < 32; ++l) {
                const int is = l / 16;
                const int q1 = int((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = int((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * float(sc[is + 0]) * float(q1);
                y[l + 32] = d * float(sc[is + 2]) * float(q2);
                y[l + 64] = d * float(sc[is + 4]) * float(q3);
                y[l + 96] = d * float(sc[is + 6]) * float(q4);
            }
        }
    }
}

// ---- quantize --------------------------------------------------------------------------------

// Q8_0: d = amax / 127, q = round(x / d) (half away from zero).
void quant_q8_0(const float* x, BlockQ8_0* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, x += kQK) {
        float amax = 0;
        for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 127.f, id = d != 0 ? 1.f / d : 0.f;
        y[i].d = f2h(d);
        for (int j = 0; j < kQK; ++j) y[i].qs[j] = int8_t(std::roundf(x[j] * id));
    }
}

// Q4_0: the value of largest magnitude maps to -8: d = max / -8, q = min(15, trunc(x/d + 8.5)).
void quant_q4_0(const float* x, BlockQ4_0* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, x += kQK) {
        float amax = 0, max = 0;
        for (int j = 0; j < kQK; ++j) {
            if (std::fabs(x[j]) > amax) {
                amax = std::fabs(x[j]);
                max = x[j];
            }
        }
        const float d = max / -8.f, id = d != 0 ? 1.f / d : 0.f;
        y[i].d = f2h(d);
        for (int j = 0; j < kQK / 2; ++j) {
            const int q0 = std::min(15, int(int8_t(x[j] * id + 8.5f)));
            const int q1 = std::min(15, int(int8_t(x[j + kQK / 2] * id + 8.5f)));
            y[i].qs[j] = uint8_t(q0 | (q1 << 4));
        }
    }
}

// Q4_1: d = (max - min) / 15, m = min, q = min(15, trunc((x - min)/d + 0.5)).
void quant_q4_1(const float* x, BlockQ4_1* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, x += kQK) {
        float mn = std::numeric_limits<float>::max(), mx = -std::numeric_limits<float>::max();
        for (int j = 0; j < kQK; ++j) {
            mn = std::min(mn, x[j]);
            mx = std::max(mx, x[j]);
        }
        const float d = (mx - mn) / 15.f, id = d != 0 ? 1.f / d : 0.f;
        y[i].d = f2h(d);
        y[i].m = f2h(mn);
        for (int j = 0; j < kQK / 2; ++j) {
            const int q0 = std::min(15, int(int8_t((x[j] - mn) * id + 0.5f)));
            const int q1 = std::min(15, int(int8_t((x[j + kQK / 2] - mn) * id + 0.5f)));
            y[i].qs[j] = uint8_t(q0 | (q1 << 4));
        }
    }
}

// Weighted least-squares fit of x ~ scale * L + min with L in [0, nmax] (llama.cpp's
// make_qkx2_quants): start from the min/max grid, then try nstep + 1 nearby grids
// (iscale = (rmin + rdelta*is + nmax) / (max - min)), solve the 2x2 normal equations for each
// and keep the one with the smallest weighted squared error. Returns scale; *neg_min = -min.
float fit_scale_min(int n, int nmax, const float* x, const float* w, uint8_t* L, float* neg_min,
                    uint8_t* Laux, float rmin, float rdelta, int nstep) {
    float mn = x[0], mx = x[0];
    float sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        mn = std::min(mn, x[i]);
        mx = std::max(mx, x[i]);
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (mn > 0) mn = 0;
    if (mx == mn) {
        std::memset(L, 0, size_t(n));
        *neg_min = -mn;
        return 0.f;
    }
    float iscale = float(nmax) / (mx - mn);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; ++i) {
        const int l = std::clamp(nearest_int(iscale * (x[i] - mn)), 0, nmax);
        L[i] = uint8_t(l);
        const float diff = scale * float(l) + mn - x[i];
        best_error += w[i] * diff * diff;
    }
    if (nstep < 1) {
        *neg_min = -mn;
        return scale;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * float(is) + float(nmax)) / (mx - mn);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            const int l = std::clamp(nearest_int(iscale * (x[i] - mn)), 0, nmax);
            Laux[i] = uint8_t(l);
            sum_l += w[i] * float(l);
            sum_l2 += w[i] * float(l) * float(l);
            sum_xl += w[i] * float(l) * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; ++i) {
                const float diff = this_scale * float(Laux[i]) + this_min - x[i];
                cur_error += w[i] * diff * diff;
            }
            if (cur_error < best_error) {
                std::memcpy(L, Laux, size_t(n));
                best_error = cur_error;
                scale = this_scale;
                mn = this_min;
            }
        }
    }
    *neg_min = -mn;
    return scale;
}

// Q4_K: fit a (scale, min) per sub-block of 32 (weights |x| + rms), quantize those 8 scales and
// 8 mins to 6 bits against the super-block's d = max_scale/63 and dmin = max_min/63, then
// requantize the values with the rounded scales.
void quant_q4_k(const float* x, BlockQ4K* y, int64_t nb) {
    uint8_t L[kQKK], Laux[32];
    float weights[32], mins[8], scales[8];
    for (int64_t i = 0; i < nb; ++i, x += kQKK) {
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < 8; ++j) {
            const float* xs = x + 32 * j;
            float sum_x2 = 0;
            for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
            const float av_x = std::sqrt(sum_x2 / 32);
            for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(xs[l]);
            scales[j] =
                fit_scale_min(32, 15, xs, weights, L + 32 * j, &mins[j], Laux, -1.f, 0.1f, 20);
            max_scale = std::max(max_scale, scales[j]);
            max_min = std::max(max_min, mins[j]);
        }
        const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
        const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
        uint8_t* s = y[i].scales;
        for (int j = 0; j < 8; ++j) {
            const int ls = std::min(63, nearest_int(inv_scale * scales[j]));
            const int lm = std::min(63, nearest_int(inv_min * mins[j]));
            if (j < 4) {
                s[j] = uint8_t(ls);
                s[j + 4] = uint8_t(lm);
            } else {
                s[j + 4] = uint8_t((ls & 0xF) | ((lm & 0xF) << 4));
                s[j - 4] |= uint8_t((ls >> 4) << 6);
                s[j] |= uint8_t((lm >> 4) << 6);
            }
        }
        y[i].d = f2h(max_scale / 63.f);
        y[i].dmin = f2h(max_min / 63.f);
        for (int j = 0; j < 8; ++j) {
            uint8_t sc, m;
            k_scale_min(j, s, sc, m);
            const float d = h2f(y[i].d) * float(sc);
            if (d == 0) continue;
            const float dm = h2f(y[i].dmin) * float(m);
            for (int l = 0; l < 32; ++l)
                L[32 * j + l] = uint8_t(std::clamp(nearest_int((x[32 * j + l] + dm) / d), 0, 15));
        }
        uint8_t* q = y[i].qs;
        for (int j = 0; j < kQKK; j += 64, q += 32)
            for (int l = 0; l < 32; ++l) q[l] = uint8_t(L[j + l] | (L[j + l + 32] << 4));
    }
}

std::string lower(std::string_view s) {
    std::string out(s);
    for (auto& c : out) c = char(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

} // namespace

void quantize_row_q8_k_ref(const float* x, BlockQ8K* y, int64_t n) {
    for (int64_t i = 0; i < n / kQKK; ++i, x += kQKK) {
        float amax = 0, max = 0;
        for (int j = 0; j < kQKK; ++j) {
            if (std::fabs(x[j]) > amax) {
                amax = std::fabs(x[j]);
                max = x[j];
            }
        }
        if (amax == 0) {
            std::memset(&y[i], 0, sizeof(BlockQ8K));
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < kQKK; ++j) y[i].qs[j] = int8_t(std::min(127, nearest_int(iscale * x[j])));
        for (int j = 0; j < kQKK / 16; ++j) {
            int sum = 0;
            for (int l = 0; l < 16; ++l) sum += y[i].qs[16 * j + l];
            y[i].bsums[j] = int16_t(sum);
        }
        y[i].d = 1 / iscale;
    }
}

const GgmlTypeInfo& type_info(GgmlType type) {
    const GgmlTypeInfo* t = find_type(uint32_t(type));
    FORGE_CHECK(t != nullptr, "[ggml] unsupported tensor type ", uint32_t(type),
                " (Forge reads F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)");
    return *t;
}

bool is_known_type(uint32_t raw) { return find_type(raw) != nullptr; }

GgmlType parse_type(std::string_view name) {
    const std::string want = lower(name);
    std::string names;
    for (const auto& t : kTypes) {
        if (lower(t.name) == want) return t.type;
        names += (names.empty() ? "" : ", ") + lower(t.name);
    }
    throw InvalidArgument(detail::str_cat("[ggml] unknown tensor type '", name,
                                          "'; expected one of: ", names));
}

int64_t row_bytes(GgmlType type, int64_t n) {
    const GgmlTypeInfo& t = type_info(type);
    FORGE_CHECK(n >= 0 && n % t.block_size == 0, "[ggml] a ", t.name, " row of ", n,
                " values: the length must be a multiple of ", t.block_size);
    const int64_t blocks = n / t.block_size;
    FORGE_CHECK(blocks <= std::numeric_limits<int64_t>::max() / t.block_bytes, "[ggml] a ",
                t.name, " row of ", n, " values overflows 64-bit byte counts");
    return blocks * t.block_bytes;
}

void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n) {
    const int64_t nb = n / type_info(type).block_size;
    row_bytes(type, n); // validates n
    switch (type) {
    case GgmlType::f32: std::memcpy(dst, src, size_t(n) * 4); return;
    case GgmlType::f16: {
        const auto* h = static_cast<const uint16_t*>(src);
        for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(h[i]);
        return;
    }
    case GgmlType::bf16: {
        const auto* h = static_cast<const uint16_t*>(src);
        for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(h[i]);
        return;
    }
    case GgmlType::q8_0: dequant_q8_0(static_cast<const BlockQ8_0*>(src), dst, nb); return;
    case GgmlType::q4_0: dequant_q4_0(static_cast<const BlockQ4_0*>(src), dst, nb); return;
    case GgmlType::q4_1: dequant_q4_1(static_cast<const BlockQ4_1*>(src), dst, nb); return;
    case GgmlType::q4_k: dequant_q4_k(static_cast<const BlockQ4K*>(src), dst, nb); return;
    case GgmlType::q5_k: dequant_q5_k(static_cast<const BlockQ5K*>(src), dst, nb); return;
    case GgmlType::q6_k: dequant_q6_k(static_cast<const BlockQ6K*>(src), dst, nb); return;
    }
    FORGE_ASSERT(false);
}

void quantize_row(GgmlType type, const float* src, void* dst, int64_t n) {
    const int64_t nb = n / type_info(type).block_size;
    row_bytes(type, n);
    switch (type) {
    case GgmlType::f32: std::memcpy(dst, src, size_t(n) * 4); return;
    case GgmlType::f16: {
        auto* h = static_cast<uint16_t*>(dst);
        for (int64_t i = 0; i < n; ++i) h[i] = f32_to_f16(src[i]);
        return;
    }
    case GgmlType::bf16: {
        auto* h = static_cast<uint16_t*>(dst);
        for (int64_t i = 0; i < n; ++i) h[i] = f32_to_bf16(src[i]);
        return;
    }
    case GgmlType::q8_0: quant_q8_0(src, static_cast<BlockQ8_0*>(dst), nb); return;
    case GgmlType::q4_0: quant_q4_0(src, static_cast<BlockQ4_0*>(dst), nb); return;
    case GgmlType::q4_1: quant_q4_1(src, static_cast<BlockQ4_1*>(dst), nb); return;
    case GgmlType::q4_k: quant_q4_k(src, static_cast<BlockQ4K*>(dst), nb); return;
    case GgmlType::q5_k:
    case GgmlType::q6_k: break;
    }
    throw InvalidArgument(detail::str_cat("[ggml] quantizing to ", type_info(type).name,
                                          " is not supported (Forge writes f32, f16, bf16, "
                                          "q8_0, q4_0, q4_1, q4_k)"));
}

} // namespace forge::quant
