// Activation layouts, the scalar reference kernels (the oracle) and the run-time choice of
// instruction set for the quantized matrix products.
#include "backends/cpu/quant/qkernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include <forge/core/dtype.h>
#include <forge/core/error.h>

#include "backends/cpu/simd/nn_kernels.h"
#include "quant/blocks.h"

namespace forge::cpu::quant {

namespace fq = forge::quant;

namespace {
constexpr int64_t round64(int64_t x) { return (x + 63) / 64 * 64; }
} // namespace

bool kernel_type(GgmlType t) {
    return t == GgmlType::f32 || t == GgmlType::f16 || t == GgmlType::q8_0 ||
           t == GgmlType::q4_0 || t == GgmlType::q4_k;
}

ActLayout act_layout(GgmlType w, int64_t K) {
    FORGE_CHECK(kernel_type(w), "[quant] no kernel for ", fq::type_info(w).name, " weights");
    fq::row_bytes(w, K); // K a multiple of the block size
    ActLayout L;
    L.K = K;
    if (w == GgmlType::f32 || w == GgmlType::f16) {
        L.kind = ActKind::f32;
        L.row_bytes = round64(K * 4);
    } else if (w == GgmlType::q4_k) {
        L.kind = ActKind::q8_k;
        L.d_off = round64(K);
        L.s_off = round64(L.d_off + K / fq::kQKK * 4);
        L.row_bytes = round64(L.s_off + K / 16 * 2);
    } else if (w == GgmlType::q4_0) {
        const int64_t nb = K / fq::kQK, chunks = (nb + 15) / 16;
        L.kind = ActKind::q4_0;
        L.d_off = round64((nb + 3) / 4 * 128);
        L.s_off = round64(L.d_off + chunks * 16 * 4);
        L.row_bytes = round64(L.s_off + chunks * 16 * 4);
    } else {
        L.kind = ActKind::q8_0;
        L.d_off = round64(K);
        L.s_off = round64(L.d_off + K / fq::kQK * 8 * 4);
        L.row_bytes = round64(L.s_off + K / fq::kQK * 8 * 4);
    }
    return L;
}

ActLayout act_layout_s8(int64_t K) {
    FORGE_CHECK(K > 0 && K % fq::kQK == 0, "[quant] s8 activations need K a multiple of 32, got ", K);
    ActLayout L;
    L.kind = ActKind::s8;
    L.K = K;
    L.d_off = round64(K);
    L.s_off = round64(L.d_off + K / fq::kQK * 4);
    L.row_bytes = round64(L.s_off + K / fq::kQK * 4);
    return L;
}

void q4_0_from_q8_0(const ActLayout& L, const ActLayout& N8, const uint8_t* nat, uint8_t* out) {
    const auto* dexp = reinterpret_cast<const float*>(nat + N8.d_off);
    const auto* nsum = reinterpret_cast<const int32_t*>(nat + N8.s_off);
    const int64_t nb = L.K / fq::kQK;
    thread_local std::vector<float> d;
    thread_local std::vector<int32_t> sums;
    thread_local std::vector<int8_t> qs;
    d.resize(size_t(nb));
    sums.resize(size_t(nb));
    qs.resize(size_t(L.K));
    for (int64_t b = 0; b < nb; ++b) d[size_t(b)] = dexp[b * 8], sums[size_t(b)] = -nsum[b * 8] / 8;
    for (int64_t k = 0; k < L.K; ++k) qs[size_t(k)] = int8_t(int(nat[k]) - 128);
    arrange_q4_0(L, qs.data(), d.data(), sums.data(), out);
}

void arrange_q4_0(const ActLayout& L, const int8_t* qs, const float* d, const int32_t* sums,
                  uint8_t* out) {
    const int64_t nb = L.K / fq::kQK;
    std::memset(out, 0, size_t(L.row_bytes));
    auto* dd = reinterpret_cast<float*>(out + L.d_off);
    auto* ss = reinterpret_cast<int32_t*>(out + L.s_off);
    for (int64_t b = 0; b < nb; ++b) {
        std::memcpy(out + q4_lo_offset(b), qs + b * fq::kQK, 16);
        std::memcpy(out + q4_lo_offset(b) + 64, qs + b * fq::kQK + 16, 16);
        dd[q4_lane(b)] = d[b];
        ss[q4_lane(b)] = -8 * sums[b];
    }
}

QuantIsa quant_isa() {
    static const bool vnni = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi") &&
               __builtin_cpu_supports("gfni");
    }();
    switch (nn::active_isa()) {
    case nn::Isa::avx512: return vnni ? QuantIsa::avx512 : QuantIsa::avx2;
    case nn::Isa::avx2: return QuantIsa::avx2;
    default: return QuantIsa::generic;
    }
}

void quantize_act(const ActLayout& L, const float* x, int64_t ldx, int64_t N, uint8_t* out) {
    switch (quant_isa()) {
    case QuantIsa::avx512: return avx512::quantize_act(L, x, ldx, N, out);
    case QuantIsa::avx2: return avx2::quantize_act(L, x, ldx, N, out);
    default: return ref::quantize_act(L, x, ldx, N, out);
    }
}

void gemm(GgmlType wt, const uint8_t* W, int64_t w_stride, int64_t m0, int64_t m1,
          const ActLayout& L, const uint8_t* A, int64_t a_stride, int64_t N, float* Y,
          int64_t ldy) {
    switch (quant_isa()) {
    case QuantIsa::avx512: return avx512::gemm(wt, W, w_stride, m0, m1, L, A, a_stride, N, Y, ldy);
    case QuantIsa::avx2: return avx2::gemm(wt, W, w_stride, m0, m1, L, A, a_stride, N, Y, ldy);
    default: return ref::gemm(wt, W, w_stride, m0, m1, L, A, a_stride, N, Y, ldy);
    }
}

// ---- scalar reference -------------------------------------------------------------------------

namespace ref {

void quantize_act(const ActLayout& L, const float* x, int64_t ldx, int64_t N, uint8_t* out) {
    const int64_t K = L.K;
    for (int64_t n = 0; n < N; ++n, x += ldx, out += L.row_bytes) {
        if (L.kind == ActKind::f32) {
            std::memcpy(out, x, size_t(K) * 4);
            continue;
        }
        auto* qs = reinterpret_cast<int8_t*>(out);
        if (L.kind == ActKind::q4_0) {
            // natural blocks first (the q8_0 rounding), then the Q4_0 arrangement
            const ActLayout N8 = act_layout(GgmlType::q8_0, K);
            std::vector<uint8_t> tmp(size_t(N8.row_bytes));
            ref::quantize_act(N8, x, ldx, 1, tmp.data());
            q4_0_from_q8_0(L, N8, tmp.data(), out);
        } else if (L.kind == ActKind::q8_0 || L.kind == ActKind::s8) {
            const bool s8 = L.kind == ActKind::s8;
            auto* dexp = reinterpret_cast<float*>(out + L.d_off);
            auto* sums = reinterpret_cast<int32_t*>(out + L.s_off);
            for (int64_t b = 0; b < K / fq::kQK; ++b) {
                const float* xb = x + b * fq::kQK;
                float amax = 0;
                for (int j = 0; j < fq::kQK; ++j) amax = std::max(amax, std::fabs(xb[j]));
                const float d = amax / 127.f, id = amax != 0 ? 127.f / amax : 0.f;
                int32_t s = 0;
                for (int j = 0; j < fq::kQK; ++j) {
                    const int q = int(std::nearbyint(xb[j] * id));
                    qs[b * fq::kQK + j] = s8 ? int8_t(q) : int8_t(uint8_t(q + 128)); // q8_0: + 128
                    s += q;
                }
                if (s8) {
                    dexp[b] = d;
                    sums[b] = s;
                    continue;
                }
                for (int j = 0; j < 8; ++j) {
                    dexp[b * 8 + j] = d;
                    sums[b * 8 + j] = j == 0 ? -8 * s : 0;
                }
            }
        } else {
            auto* d = reinterpret_cast<float*>(out + L.d_off);
            auto* bs = reinterpret_cast<int16_t*>(out + L.s_off);
            for (int64_t b = 0; b < K / fq::kQKK; ++b) {
                const float* xb = x + b * fq::kQKK;
                float amax = 0, max = 0;
                for (int j = 0; j < fq::kQKK; ++j)
                    if (std::fabs(xb[j]) > amax) {
                        amax = std::fabs(xb[j]);
                        max = xb[j];
                    }
                const float iscale = amax != 0 ? -127.f / max : 0.f;
                for (int j = 0; j < fq::kQKK; ++j)
                    qs[b * fq::kQKK + j] =
                        int8_t(std::min(127, int(std::nearbyint(iscale * xb[j]))));
                for (int g = 0; g < 16; ++g) {
                    int s = 0;
                    for (int j = 0; j < 16; ++j) s += qs[b * fq::kQKK + g * 16 + j];
                    bs[b * 16 + g] = int16_t(s);
                }
                d[b] = amax != 0 ? 1.f / iscale : 0.f;
            }
        }
    }
}

float dot(GgmlType wt, const uint8_t* w, const ActLayout& L, const uint8_t* a) {
    const int64_t K = L.K;
    const auto* qs = reinterpret_cast<const int8_t*>(a);
    if (L.kind == ActKind::s8) { // Q8_0 / Q4_0 weights in GGUF layout, signed int8 activations
        FORGE_ASSERT(wt == GgmlType::q8_0 || wt == GgmlType::q4_0);
        const auto* d = reinterpret_cast<const float*>(a + L.d_off);
        float s = 0;
        for (int64_t b = 0; b < K / fq::kQK; ++b) {
            const int8_t* q = qs + b * fq::kQK;
            int32_t isum = 0;
            uint16_t dw;
            if (wt == GgmlType::q8_0) {
                const auto& wb = reinterpret_cast<const fq::BlockQ8_0*>(w)[b];
                for (int j = 0; j < fq::kQK; ++j) isum += int32_t(wb.qs[j]) * q[j];
                dw = wb.d;
            } else {
                const auto& wb = reinterpret_cast<const fq::BlockQ4_0*>(w)[b];
                for (int j = 0; j < fq::kQK / 2; ++j)
                    isum += (int32_t(wb.qs[j] & 0xF) - 8) * q[j] + (int32_t(wb.qs[j] >> 4) - 8) * q[16 + j];
                dw = wb.d;
            }
            s += f16_to_f32(dw) * d[b] * float(isum);
        }
        return s;
    }
    switch (wt) {
    case GgmlType::f32:
    case GgmlType::f16: {
        const auto* x = reinterpret_cast<const float*>(a);
        float s = 0;
        for (int64_t k = 0; k < K; ++k) {
            const float wk = wt == GgmlType::f32 ? reinterpret_cast<const float*>(w)[k]
                                                 : f16_to_f32(reinterpret_cast<const uint16_t*>(w)[k]);
            s += wk * x[k];
        }
        return s;
    }
    case GgmlType::q8_0: {
        const auto* dexp = reinterpret_cast<const float*>(a + L.d_off);
        float s = 0;
        for (int64_t b = 0; b < K / fq::kQK; ++b) {
            const auto& wb = reinterpret_cast<const fq::BlockQ8_0*>(w)[b];
            int32_t isum = 0;
            const auto* u = reinterpret_cast<const uint8_t*>(qs) + b * fq::kQK;
            for (int j = 0; j < fq::kQK; ++j) isum += int32_t(wb.qs[j]) * (int32_t(u[j]) - 128);
            s += f16_to_f32(wb.d) * dexp[b * 8] * float(isum);
        }
        return s;
    }
    case GgmlType::q4_0: {
        const auto* d = reinterpret_cast<const float*>(a + L.d_off);
        const auto* off = reinterpret_cast<const int32_t*>(a + L.s_off);
        float s = 0;
        for (int64_t b = 0; b < K / fq::kQK; ++b) {
            const auto& wb = reinterpret_cast<const fq::BlockQ4_0*>(w)[b];
            const int8_t* lo = qs + q4_lo_offset(b);
            int32_t isum = off[q4_lane(b)]; // -8 * sum(a): Q4_0's offset
            for (int j = 0; j < fq::kQK / 2; ++j)
                isum += int32_t(wb.qs[j] & 0xF) * lo[j] + int32_t(wb.qs[j] >> 4) * lo[64 + j];
            s += f16_to_f32(wb.d) * d[q4_lane(b)] * float(isum);
        }
        return s;
    }
    case GgmlType::q4_k: {
        const auto* ad = reinterpret_cast<const float*>(a + L.d_off);
        const auto* bs = reinterpret_cast<const int16_t*>(a + L.s_off);
        float s = 0;
        for (int64_t b = 0; b < K / fq::kQKK; ++b) {
            const auto& wb = reinterpret_cast<const fq::BlockQ4K*>(w)[b];
            const int8_t* q8 = qs + b * fq::kQKK;
            int32_t isc = 0, imin = 0;
            for (int j = 0; j < 8; ++j) {
                uint8_t sc, m;
                fq::k_scale_min(j, wb.scales, sc, m);
                const uint8_t* q4 = wb.qs + 32 * (j / 2);
                int32_t dj = 0;
                for (int l = 0; l < 32; ++l)
                    dj += int32_t(j % 2 ? q4[l] >> 4 : q4[l] & 0xF) * q8[32 * j + l];
                isc += int32_t(sc) * dj;
                imin += int32_t(m) * (bs[b * 16 + 2 * j] + bs[b * 16 + 2 * j + 1]);
            }
            s += ad[b] * (f16_to_f32(wb.d) * float(isc) - f16_to_f32(wb.dmin) * float(imin));
        }
        return s;
    }
    default: break;
    }
    FORGE_ASSERT(false);
}

void gemm(GgmlType wt, const uint8_t* W, int64_t w_stride, int64_t m0, int64_t m1,
          const ActLayout& L, const uint8_t* A, int64_t a_stride, int64_t N, float* Y,
          int64_t ldy) {
    for (int64_t n = 0; n < N; ++n)
        for (int64_t m = m0; m < m1; ++m)
            Y[n * ldy + m] = dot(wt, W + m * w_stride, L, A + n * a_stride);
}

} // namespace ref

} // namespace forge::cpu::quant
