// Activation layouts, the scalar reference kernels (the oracle) and the run-time choice of
// instruction set for the quantized matrix products.
#include "backends/cpu/quant/qkernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>

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
    } else {
        L.kind = ActKind::q8_0;
        L.d_off = round64(K);
        L.s_off = round64(L.d_off + K / fq::kQK * 8 * 4);
        L.row_bytes = round64(L.s_off + K / fq::kQK * 8 * 4);
    }
    return L;
}

QuantIsa quant_isa() {
    static const bool vnni = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512vnni") != 0;
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
        if (L.kind == ActKind::q8_0) {
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
                    qs[b * fq::kQK + j] = int8_t(q);
                    s += q;
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
    case GgmlType::q8_0:
    case GgmlType::q4_0: {
        const auto* dexp = reinterpret_cast<const float*>(a + L.d_off);
        const auto* sums = reinterpret_cast<const int32_t*>(a + L.s_off);
        float s = 0;
        for (int64_t b = 0; b < K / fq::kQK; ++b) {
            int32_t isum = 0;
            float dw;
            if (wt == GgmlType::q8_0) {
                const auto& wb = reinterpret_cast<const fq::BlockQ8_0*>(w)[b];
                dw = f16_to_f32(wb.d);
                for (int j = 0; j < fq::kQK; ++j) isum += int32_t(wb.qs[j]) * qs[b * fq::kQK + j];
            } else {
                const auto& wb = reinterpret_cast<const fq::BlockQ4_0*>(w)[b];
                dw = f16_to_f32(wb.d);
                for (int j = 0; j < fq::kQK / 2; ++j) {
                    isum += int32_t(wb.qs[j] & 0xF) * qs[b * fq::kQK + j];
                    isum += int32_t(wb.qs[j] >> 4) * qs[b * fq::kQK + j + 16];
                }
                isum += sums[b * 8]; // -8 * sum(a): Q4_0's offset
            }
            s += dw * dexp[b * 8] * float(isum);
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
