// bf16 GEMM figures: gemm_bf16 against OpenBLAS sgemm on the GPT training shapes (4 layers,
// C = 128, 768 tokens a step, vocab 65: forward, dX and dW products), at 1 and 2 threads, with
// the ceilings measured here: a vdpbf16ps loop, an FMA loop and, where present, an AMX loop.
// A plain program (its own main): one line per shape with medians side by side, and the GEMM
// milliseconds of one training step. Usage: [FORGE_BENCH_CPU_TIME=1] gemm_bf16_bench
// [--samples N] [--threads 1|2]; on Xeon guests whose CPUID OpenBLAS doesn't know,
// OPENBLAS_CORETYPE=SkylakeX (docs/PERF.md, ## Matmul).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <cblas.h>
// GCC 12 warns inside avx512fintrin.h about the _mm512_undefined_*() of its own intrinsics
// (GCC bug 105593); the state that counts is the one at the header's lines.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#include <omp.h>

#include "backends/cpu/kernels/gemm_bf16.h"

extern "C" void openblas_set_num_threads(int);

namespace {

using forge::cpu::Bf16Gemm;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

int g_samples = 11;
bool g_cpu_time = false; // FORGE_BENCH_CPU_TIME=1: 1-thread rows timed by the thread's CPU time

double thread_cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// Median GFLOP/s of each of fns, sampled alternately (A/B/A/B...) so that load from other
// tenants falls on all of them alike; each sample repeats a call for >= 10 ms.
std::vector<double> median_gflops(double flop, int threads,
                                  const std::vector<std::function<void()>>& fns) {
    const bool cpu = g_cpu_time && threads == 1;
    auto now = [cpu] {
        return cpu ? thread_cpu_seconds()
                   : std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
    };
    std::vector<int64_t> per;
    for (const auto& f : fns) { // warm caches, scratch buffers and the thread team; size samples
        f();
        const double t0 = now();
        f();
        per.push_back(std::max<int64_t>(1, int64_t(0.01 / std::max(now() - t0, 1e-9))));
    }
    std::vector<std::vector<double>> rates(fns.size());
    for (int s = 0; s < g_samples; ++s)
        for (size_t i = 0; i < fns.size(); ++i) {
            const double t0 = now();
            for (int64_t r = 0; r < per[i]; ++r)
                fns[i]();
            rates[i].push_back(flop * double(per[i]) / (now() - t0) / 1e9);
        }
    std::vector<double> med;
    for (auto& r : rates) {
        std::sort(r.begin(), r.end());
        med.push_back(r[r.size() / 2]);
    }
    return med;
}

// ---------------------------------------------------------------- ceilings
// 16 independent accumulators hide the instruction latency, so each loop runs at its unit's
// throughput. vdpbf16ps: 16 lanes x 2 products = 64 FLOP; FMA: 32 FLOP per zmm instruction.
__attribute__((target("avx512f,avx512bf16"))) float dpbf16_loop(int64_t iters) {
    __m512 acc[16];
    for (int j = 0; j < 16; ++j)
        acc[j] = _mm512_setzero_ps();
    const __m512bh x = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(1e-3f));
    for (int64_t i = 0; i < iters; ++i)
        for (int j = 0; j < 16; ++j)
            acc[j] = _mm512_dpbf16_ps(acc[j], x, x);
    for (int j = 1; j < 16; ++j)
        acc[0] = _mm512_add_ps(acc[0], acc[j]);
    return _mm512_reduce_add_ps(acc[0]);
}

__attribute__((target("avx512f"))) float fma_loop(int64_t iters) {
    __m512 acc[16];
    for (int j = 0; j < 16; ++j)
        acc[j] = _mm512_set1_ps(float(j));
    const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (int64_t i = 0; i < iters; ++i)
        for (int j = 0; j < 16; ++j)
            acc[j] = _mm512_fmadd_ps(acc[j], m, c);
    for (int j = 1; j < 16; ++j)
        acc[0] = _mm512_add_ps(acc[0], acc[j]);
    return _mm512_reduce_add_ps(acc[0]);
}

// AMX: 4 independent 16 x 16 accumulator tiles, each tdpbf16ps 16 x 16 x 32 MACs.
struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};
__attribute__((target("amx-tile,amx-bf16"))) float amx_loop(int64_t iters) {
    TileConfig cfg;
    for (int t = 0; t < 8; ++t)
        cfg.colsb[t] = 64, cfg.rows[t] = 16;
    _tile_loadconfig(&cfg);
    alignas(64) static thread_local uint16_t src[16 * 32];
    std::fill(src, src + 16 * 32, uint16_t(0x3a83)); // bf16 1e-3
    _tile_loadd(4, src, 64);
    _tile_loadd(5, src, 64);
    _tile_loadd(6, src, 64);
    _tile_loadd(7, src, 64);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t i = 0; i < iters; ++i) {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    alignas(64) static thread_local float out[16 * 16];
    _tile_stored(0, out, 64);
    _tile_release();
    return out[0];
}

// GFLOP/s of `threads` threads each running loop(iters) at once, each timing itself (by its
// CPU time under FORGE_BENCH_CPU_TIME=1), the rates summed; best of a few rounds.
double peak(int threads, float (*loop)(int64_t), int64_t iters, double flop_per_iter) {
    double best = 0;
    volatile float sink = 0;
    for (int round = 0; round < 5; ++round) {
        double rate = 0;
        float s = 0;
#pragma omp parallel num_threads(threads) reduction(+ : s, rate)
        {
            const auto w0 = Clock::now();
            const double c0 = thread_cpu_seconds();
            s += loop(iters);
            const double dt = g_cpu_time ? thread_cpu_seconds() - c0 : since(w0);
            rate += double(iters) * flop_per_iter / dt / 1e9;
        }
        best = std::max(best, rate);
        sink = sink + s;
    }
    return best;
}

// ---------------------------------------------------------------- products
// One training-step product: c (M x N) = a (M x K) b (K x N), a or b possibly a transposed
// view (as Forge's matmul passes W^T and X^T), done `per_step` times a step.
struct Shape {
    const char* name;
    int64_t M, N, K;
    bool a_t, b_t; // a stored (K x M) / b stored (N x K), row-major
    int per_step;
};

// GPT-2 layout: Linear weights stored (in, out), y = x W; the LM head is tied to wte (65 x C).
const Shape kShapes[] = {
    {"fwd qkv   x W", 768, 384, 128, false, false, 4},
    {"fwd proj  x W", 768, 128, 128, false, false, 4},
    {"fwd fc    x W", 768, 512, 128, false, false, 4},
    {"fwd fc2   x W", 768, 128, 512, false, false, 4},
    {"fwd head  x E^T", 768, 65, 128, false, true, 1},
    {"dX  qkv   dY W^T", 768, 128, 384, false, true, 4},
    {"dX  proj  dY W^T", 768, 128, 128, false, true, 4},
    {"dX  fc    dY W^T", 768, 128, 512, false, true, 4},
    {"dX  fc2   dY W^T", 768, 512, 128, false, true, 4},
    {"dX  head  dY E", 768, 128, 65, false, false, 1},
    {"dW  qkv   X^T dY", 128, 384, 768, true, false, 4},
    {"dW  proj  X^T dY", 128, 128, 768, true, false, 4},
    {"dW  fc    X^T dY", 128, 512, 768, true, false, 4},
    {"dW  fc2   X^T dY", 512, 128, 768, true, false, 4},
    {"dE  head  dY^T X", 65, 128, 768, true, false, 1},
};

struct Operands {
    std::vector<float> a, b, c;
    int64_t a_rs, a_cs, b_rs, b_cs;
    explicit Operands(const Shape& s)
        : a(size_t(s.M * s.K)), b(size_t(s.K * s.N)), c(size_t(s.M * s.N)) {
        std::mt19937 rng(42);
        std::normal_distribution<float> nd(0.0f, 1.0f);
        for (float& x : a)
            x = nd(rng);
        for (float& x : b)
            x = nd(rng);
        a_rs = s.a_t ? 1 : s.K, a_cs = s.a_t ? s.M : 1;
        b_rs = s.b_t ? 1 : s.N, b_cs = s.b_t ? s.K : 1;
    }
};

// sgemm split as CpuBackend::matmul splits it: rows in multiples of 16 over the threads,
// OpenBLAS itself single-threaded.
void sgemm(const Shape& s, Operands& o, int threads) {
    const int64_t chunk = std::max<int64_t>(16, (s.M / 16 + threads - 1) / threads * 16);
    const int lda = int(s.a_t ? s.M : s.K), ldb = int(s.b_t ? s.K : s.N);
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (int64_t r0 = 0; r0 < s.M; r0 += chunk) {
        const int64_t rows = std::min(chunk, s.M - r0);
        const float* a0 = o.a.data() + (s.a_t ? r0 : r0 * s.K);
        cblas_sgemm(CblasRowMajor, s.a_t ? CblasTrans : CblasNoTrans,
                    s.b_t ? CblasTrans : CblasNoTrans, int(rows), int(s.N), int(s.K), 1.0f, a0, lda,
                    o.b.data(), ldb, 0.0f, o.c.data() + r0 * s.N, int(s.N));
    }
}

const char* path_name(Bf16Gemm k) {
    return k == Bf16Gemm::amx ? "amx" : k == Bf16Gemm::avx512_bf16 ? "avx512_bf16" : "none";
}

} // namespace

int main(int argc, char** argv) {
    std::vector<int> thread_counts = {1, 2};
    for (int i = 1; i + 1 < argc; ++i) {
        if (!std::strcmp(argv[i], "--samples"))
            g_samples = std::max(1, std::atoi(argv[++i]));
        if (!std::strcmp(argv[i], "--threads"))
            thread_counts = {std::clamp(std::atoi(argv[++i]), 1, 2)};
    }
    const char* cpu_env = std::getenv("FORGE_BENCH_CPU_TIME");
    g_cpu_time = cpu_env && std::string(cpu_env) == "1";
    openblas_set_num_threads(1);
    if (!__builtin_cpu_supports("avx512f")) {
        std::printf("no AVX-512 here: the ceilings and bf16 paths this bench compares need it\n");
        return 0;
    }
    const Bf16Gemm best = forge::cpu::bf16_gemm_kind();
    std::printf("bf16 path: %s; medians of %d samples; 1-thread rows timed by %s\n\n",
                path_name(best), g_samples, g_cpu_time ? "thread CPU time" : "the wall clock");

    // Ceilings at 1 and 2 threads (the training box has 2 cores).
    double peak_fma[3] = {}, peak_dp[3] = {}, peak_amx[3] = {};
    for (int t : {1, 2}) {
        peak_fma[t] = peak(t, fma_loop, 1 << 20, 32.0 * 16);
        if (best != Bf16Gemm::none)
            peak_dp[t] = peak(t, dpbf16_loop, 1 << 20, 64.0 * 16);
        if (best == Bf16Gemm::amx)
            peak_amx[t] = peak(t, amx_loop, 1 << 18, 4 * 16.0 * 16 * 32 * 2);
        std::printf("peak GFLOP/s, %d thread(s): FMA f32 %.0f  vdpbf16ps %.0f  AMX %.0f\n", t,
                    peak_fma[t], peak_dp[t], peak_amx[t]);
    }

    // Paths timed: sgemm, the detected bf16 path, and AVX512_BF16 too on AMX machines.
    std::vector<Bf16Gemm> paths = {best};
    if (best == Bf16Gemm::amx)
        paths.push_back(Bf16Gemm::avx512_bf16);
    for (int threads : thread_counts) {
        std::printf("\n%d thread(s)          M    N    K |  sgemm (%%FMA)", threads);
        for (Bf16Gemm p : paths)
            std::printf(" | %11s (%%pk)  x", path_name(p));
        std::printf("\n");
        double ms_sgemm = 0, ms_bf16[2] = {};
        for (const Shape& s : kShapes) {
            Operands o(s);
            const double flop = 2.0 * double(s.M) * double(s.N) * double(s.K);
            std::vector<std::function<void()>> fns = {[&] { sgemm(s, o, threads); }};
            for (Bf16Gemm p : paths)
                fns.push_back([&, p] {
                    forge::cpu::gemm_bf16_on(p, s.M, s.N, s.K, o.a.data(), o.a_rs, o.a_cs,
                                             o.b.data(), o.b_rs, o.b_cs, o.c.data(), s.N, threads);
                });
            const std::vector<double> g = median_gflops(flop, threads, fns);
            ms_sgemm += s.per_step * flop / g[0] / 1e6;
            std::printf("%-18s %4lld %4lld %4lld | %6.1f (%3.0f%%)", s.name, (long long)s.M,
                        (long long)s.N, (long long)s.K, g[0], 100 * g[0] / peak_fma[threads]);
            for (size_t i = 0; i < paths.size(); ++i) {
                const double pk = paths[i] == Bf16Gemm::amx ? peak_amx[threads] : peak_dp[threads];
                ms_bf16[i] += s.per_step * flop / g[i + 1] / 1e6;
                std::printf(" | %11.1f (%3.0f%%) %4.2f", g[i + 1],
                            pk > 0 ? 100 * g[i + 1] / pk : 0.0, g[i + 1] / g[0]);
            }
            std::printf("\n");
        }
        std::printf("GEMM ms per training step (these shapes): sgemm %.2f", ms_sgemm);
        for (size_t i = 0; i < paths.size(); ++i)
            std::printf(", %s %.2f", path_name(paths[i]), ms_bf16[i]);
        std::printf("\n");
    }
    return 0;
}
