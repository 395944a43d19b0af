// gemm_bf16's run-time choice of path (cpuid, XCR0, the Linux AMX permission) and the plain
// C++ path for CPUs with neither AVX512_BF16 nor AMX. The fast paths live in
// gemm_bf16_avx512bf16.cpp and gemm_bf16_amx.cpp, compiled for their instruction sets only.
#include "backends/cpu/kernels/gemm_bf16.h"

#include <algorithm>
#include <bit>
#include <vector>

#include <cpuid.h>
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <forge/core/error.h>

#include "backends/cpu/simd/nn_kernels.h"

namespace forge::cpu {

namespace {

// XCR0: the register states the OS saves on a context switch (needs CPUID.1:ECX.OSXSAVE).
uint64_t xcr0() {
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & (1u << 27)))
        return 0;
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return uint64_t(hi) << 32 | lo;
}

bool has_avx512_bf16() {
    if (nn::best_isa() != nn::Isa::avx512)
        return false; // F, BW, VL, DQ with OS support
    unsigned eax, ebx, ecx, edx;
    return __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && (eax & (1u << 5));
}

// AMX-TILE and AMX-BF16 in CPUID.7.0:EDX (bits 24, 22), tile config and data in XCR0 (17, 18),
// then Linux's per-process permission for the 8 KiB of tile data per thread (kernel >= 5.16).
bool amx_usable() {
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx))
        return false;
    if (!(edx & (1u << 24)) || !(edx & (1u << 22)))
        return false;
    if ((xcr0() & (3ull << 17)) != (3ull << 17))
        return false;
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

} // namespace

Bf16Gemm bf16_gemm_kind() {
    static const Bf16Gemm kind = [] {
        if (!has_avx512_bf16())
            return Bf16Gemm::none; // AMX paths pack with AVX512_BF16 too
        return amx_usable() ? Bf16Gemm::amx : Bf16Gemm::avx512_bf16;
    }();
    return kind;
}

void gemm_bf16_on(Bf16Gemm kind, int64_t M, int64_t N, int64_t K, const float* a, int64_t a_rs,
                  int64_t a_cs, const float* b, int64_t b_rs, int64_t b_cs, float* c, int64_t ldc,
                  int threads) {
    FORGE_ASSERT(int(kind) <= int(bf16_gemm_kind()));
    FORGE_ASSERT(M >= 1 && N >= 1 && K >= 1 && ldc >= N);
    threads = std::max(1, threads);
    switch (kind) {
    case Bf16Gemm::amx:
        return bf16::gemm_amx(M, N, K, a, a_rs, a_cs, b, b_rs, b_cs, c, ldc, threads);
    case Bf16Gemm::avx512_bf16:
        return bf16::gemm_avx512bf16(M, N, K, a, a_rs, a_cs, b, b_rs, b_cs, c, ldc, threads);
    case Bf16Gemm::none:
        return bf16::gemm_generic(M, N, K, a, a_rs, a_cs, b, b_rs, b_cs, c, ldc, threads);
    }
}

void gemm_bf16(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_rs, int64_t a_cs,
               const float* b, int64_t b_rs, int64_t b_cs, float* c, int64_t ldc, int threads) {
    gemm_bf16_on(bf16_gemm_kind(), M, N, K, a, a_rs, a_cs, b, b_rs, b_cs, c, ldc, threads);
}

namespace bf16 {

namespace {
inline float round_bf16(float x) {
    return std::bit_cast<float>(uint32_t(f32_to_bf16_daz(x)) << 16);
}
} // namespace

// Operands rounded to bf16 but held as f32 (exactly), then row m of c accumulates
// a(m, k) * b(k, :) over k in order: f32 sums of exact bf16 products, as the SIMD paths.
void gemm_generic(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_rs, int64_t a_cs,
                  const float* b, int64_t b_rs, int64_t b_cs, float* c, int64_t ldc, int threads) {
    std::vector<float> br(size_t(K * N));
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
#pragma omp for schedule(static)
        for (int64_t k = 0; k < K; ++k)
            for (int64_t n = 0; n < N; ++n)
                br[size_t(k * N + n)] = round_bf16(b[k * b_rs + n * b_cs]);
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; ++m) {
            float* cm = c + m * ldc;
            std::fill(cm, cm + N, 0.0f);
            for (int64_t k = 0; k < K; ++k) {
                const float av = round_bf16(a[m * a_rs + k * a_cs]);
                const float* bk = br.data() + k * N;
                for (int64_t n = 0; n < N; ++n)
                    cm[n] += av * bk[n];
            }
        }
    }
}

} // namespace bf16

} // namespace forge::cpu
