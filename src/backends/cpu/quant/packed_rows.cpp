// The x16 repacking of Q8_0 / Q4_0 weight rows, its scalar reference product, and the run-time
// choice of kernel (layout in packed_rows.h).
#include "backends/cpu/quant/packed_rows.h"

#include <cstring>

#include <forge/core/dtype.h>
#include <forge/core/error.h>

#include "quant/blocks.h"

namespace forge::cpu::quant {

namespace fq = forge::quant;

namespace {

// Bytes of one block of 16 rows, and where row r's qs byte j and scale lie in it.
int64_t group_block_bytes(GgmlType t) {
    return t == GgmlType::q8_0 ? 544 : 288;
}
int64_t qs_pos(int r, int j) {
    return (j / 4) * 64 + 4 * r + j % 4;
}
int64_t d_pos(GgmlType t, int r) {
    return (t == GgmlType::q8_0 ? 512 : 256) + 2 * r;
}

} // namespace

bool packable(GgmlType t) {
    return t == GgmlType::q8_0 || t == GgmlType::q4_0 || t == GgmlType::f32 || t == GgmlType::f16;
}

ActLayout act_layout_x16(GgmlType t, int64_t K) {
    return t == GgmlType::f32 || t == GgmlType::f16 ? act_layout(t, K) : act_layout_s8(K);
}

void pack_x16(GgmlType t, const uint8_t* src, int64_t M, int64_t K, uint8_t* dst) {
    FORGE_CHECK(packable(t), "[quant] no x16 form for ", fq::type_info(t).name, " weights");
    const int64_t rb = fq::row_bytes(t, K), nb = K / fq::kQK, gb = group_block_bytes(t);
    const int64_t groups = M / kPackRows, es = t == GgmlType::f32 ? 4 : 2;
    const bool fl = t == GgmlType::f32 || t == GgmlType::f16;
    for (int64_t g = 0; g < groups; ++g) {
        uint8_t* out = dst + g * kPackRows * rb;
        for (int64_t k = 0; fl && k < K; ++k) // column-major: value (r, k) at 16 k + r
            for (int r = 0; r < kPackRows; ++r)
                std::memcpy(out + (k * kPackRows + r) * es, src + (g * kPackRows + r) * rb + k * es,
                            size_t(es));
        for (int r = 0; !fl && r < kPackRows; ++r) {
            const uint8_t* row = src + (g * kPackRows + r) * rb;
            for (int64_t b = 0; b < nb; ++b) {
                uint8_t* blk = out + b * gb;
                if (t == GgmlType::q8_0) {
                    const auto& w = reinterpret_cast<const fq::BlockQ8_0*>(row)[b];
                    for (int j = 0; j < fq::kQK; ++j)
                        blk[qs_pos(r, j)] = uint8_t(w.qs[j]) ^ 0x80;
                    std::memcpy(blk + d_pos(t, r), &w.d, 2);
                } else {
                    const auto& w = reinterpret_cast<const fq::BlockQ4_0*>(row)[b];
                    for (int j = 0; j < fq::kQK / 2; ++j)
                        blk[qs_pos(r, j)] = w.qs[j];
                    std::memcpy(blk + d_pos(t, r), &w.d, 2);
                }
            }
        }
    }
    // rows past the last whole group keep their layout and offsets
    std::memcpy(dst + groups * kPackRows * rb, src + groups * kPackRows * rb,
                size_t((M - groups * kPackRows) * rb));
}

namespace ref {

void gemm_x16(GgmlType wt, const uint8_t* W, int64_t M, int64_t m0, int64_t m1, const ActLayout& L,
              const uint8_t* A, int64_t a_stride, int64_t N, float* Y, int64_t ldy) {
    const bool fl = wt == GgmlType::f32 || wt == GgmlType::f16;
    FORGE_ASSERT(packable(wt) && L.kind == (fl ? ActKind::f32 : ActKind::s8));
    const int64_t rb = fq::row_bytes(wt, L.K), nb = L.K / fq::kQK, gb = group_block_bytes(wt);
    const int64_t packed_rows = M / kPackRows * kPackRows;
    for (int64_t n = 0; n < N; ++n) {
        const uint8_t* a = A + n * a_stride;
        const auto* qs = reinterpret_cast<const int8_t*>(a);
        const auto* d = reinterpret_cast<const float*>(a + L.d_off);
        for (int64_t m = m0; m < m1; ++m) {
            if (m >= packed_rows) {
                Y[n * ldy + m] = dot(wt, W + m * rb, L, a);
                continue;
            }
            const uint8_t* grp = W + m / kPackRows * kPackRows * rb;
            const int r = int(m % kPackRows);
            if (fl) {
                const auto* x = reinterpret_cast<const float*>(a);
                float s = 0;
                for (int64_t k = 0; k < L.K; ++k) {
                    const int64_t at = k * kPackRows + r;
                    s += (wt == GgmlType::f32
                              ? reinterpret_cast<const float*>(grp)[at]
                              : f16_to_f32(reinterpret_cast<const uint16_t*>(grp)[at])) *
                         x[k];
                }
                Y[n * ldy + m] = s;
                continue;
            }
            float s = 0;
            for (int64_t b = 0; b < nb; ++b) {
                const uint8_t* blk = grp + b * gb;
                const int8_t* q = qs + b * fq::kQK;
                int32_t isum = 0;
                if (wt == GgmlType::q8_0) {
                    for (int j = 0; j < fq::kQK; ++j)
                        isum += int32_t(int8_t(blk[qs_pos(r, j)] ^ 0x80)) * q[j];
                } else {
                    for (int j = 0; j < fq::kQK / 2; ++j) {
                        const uint8_t v = blk[qs_pos(r, j)];
                        isum += (int32_t(v & 0xF) - 8) * q[j] + (int32_t(v >> 4) - 8) * q[16 + j];
                    }
                }
                uint16_t dw;
                std::memcpy(&dw, blk + d_pos(wt, r), 2);
                s += f16_to_f32(dw) * d[b] * float(isum);
            }
            Y[n * ldy + m] = s;
        }
    }
}

} // namespace ref

void gemm_x16(GgmlType wt, const uint8_t* W, int64_t M, int64_t m0, int64_t m1, const ActLayout& L,
              const uint8_t* A, int64_t a_stride, int64_t N, float* Y, int64_t ldy) {
    FORGE_ASSERT(m0 % kPackRows == 0 || m0 >= M / kPackRows * kPackRows);
    if (quant_isa() == QuantIsa::avx512)
        return avx512::gemm_x16(wt, W, M, m0, m1, L, A, a_stride, N, Y, ldy);
    ref::gemm_x16(wt, W, M, m0, m1, L, A, a_stride, N, Y, ldy);
}

} // namespace forge::cpu::quant
