// CPU attention kernels, f32, causal: CpuBackend::attention and attention_backward called
// directly (no autograd) at the GPT-2 anchor shape and two longer ones, ms per call and GFLOP/s
// against an AVX-512 FMA loop measured here with the same thread count. Not a test: figures
// only. A plain program (its own main). Usage: [OMP_NUM_THREADS=N] [FORGE_BENCH_CPU_TIME=1]
// attention_kernels_bench [--samples N] [--shapes N] [--isa avx2|generic]; each sample times
// enough calls to last ~20 ms, and the median is printed. FORGE_BENCH_CPU_TIME=1 with one thread
// times by the thread's CPU time, which other tenants of a shared machine don't inflate.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <vector>

// GCC 12 warns inside avx512fintrin.h about its own _mm512_undefined_*() (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#include <omp.h>

#include "backends/backend.h"
#include "backends/cpu/simd/nn_kernels.h"
#include <forge/core/tensor.h>

namespace {

bool g_cpu_time = false;

// Wall clock, or this thread's CPU time under FORGE_BENCH_CPU_TIME=1 with one thread.
double now() {
    if (g_cpu_time) {
        timespec ts{};
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
        return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}
double since(double t0) {
    return now() - t0;
}

// 16 independent FMA chains: the f32 throughput ceiling of one core (Zen 4: 32 FLOP/cycle).
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

// Summed GFLOP/s of every OpenMP thread running the FMA loop at once; best of 5 rounds.
double fma_peak() {
    double best = 0;
    volatile float sink = 0;
    for (int round = 0; round < 5; ++round) {
        double rate = 0;
        float s = 0;
#pragma omp parallel reduction(+ : s, rate)
        {
            const double t0 = now();
            s += fma_loop(1 << 20);
            rate += double(1 << 20) * 32.0 * 16 / since(t0) / 1e9;
        }
        best = std::max(best, rate);
        sink = sink + s;
    }
    return best;
}

// Median seconds per call of fn over `samples` samples.
double median_call(const std::function<void()>& fn, int samples) {
    fn(); // warm-up: scratch allocation, caches
    const double t0 = now();
    int reps = 0;
    while (since(t0) < 0.02 || reps < 3) {
        fn();
        ++reps;
    }
    std::vector<double> per_call;
    for (int s = 0; s < samples; ++s) {
        const double t1 = now();
        for (int r = 0; r < reps; ++r)
            fn();
        per_call.push_back(since(t1) / reps);
    }
    std::nth_element(per_call.begin(), per_call.begin() + samples / 2, per_call.end());
    return per_call[samples / 2];
}

struct Shape {
    int64_t B, H, T, D;
};

} // namespace

int main(int argc, char** argv) {
    int samples = 15, n_shapes = 99;
    forge::cpu::nn::Isa isa = forge::cpu::nn::best_isa();
    for (int i = 1; i + 1 < argc; ++i) {
        if (std::strcmp(argv[i], "--samples") == 0)
            samples = std::max(1, std::atoi(argv[i + 1]));
        if (std::strcmp(argv[i], "--shapes") == 0) // only the first N shapes
            n_shapes = std::atoi(argv[i + 1]);
        if (std::strcmp(argv[i], "--isa") == 0) // cap the kernels' instruction set
            isa = std::strcmp(argv[i + 1], "avx2") == 0      ? forge::cpu::nn::Isa::avx2
                  : std::strcmp(argv[i + 1], "generic") == 0 ? forge::cpu::nn::Isa::generic
                                                             : isa;
    }
    forge::cpu::nn::IsaCapScope cap(isa);
    const char* cpu_env = std::getenv("FORGE_BENCH_CPU_TIME");
    g_cpu_time = cpu_env && std::strcmp(cpu_env, "1") == 0 && omp_get_max_threads() == 1;
    using forge::Tensor;
    const double peak = fma_peak();
    std::printf("threads %d (%s time), ISA %d, FMA f32 peak %.0f GFLOP/s\n", omp_get_max_threads(),
                g_cpu_time ? "CPU" : "wall", int(isa), peak);
    std::printf("%-22s %10s %9s %6s %10s %9s %6s\n", "(B, H, T, D) causal", "fwd ms", "GFLOP/s",
                "%peak", "bwd ms", "GFLOP/s", "%peak");
    forge::Backend& be = forge::backend_for(forge::Device{});
    const std::vector<Shape> shapes{{12, 4, 64, 32},  {12, 4, 64, 64},  {12, 4, 64, 128},
                                    {8, 12, 128, 64}, {4, 12, 256, 64}, {1, 12, 1024, 64}};
    for (int si = 0; si < std::min<int>(n_shapes, int(shapes.size())); ++si) {
        const Shape s = shapes[size_t(si)];
        const forge::Shape qs{s.B, s.H, s.T, s.D};
        Tensor q = Tensor::randn(qs, 1), k = Tensor::randn(qs, 2), v = Tensor::randn(qs, 3);
        Tensor dout = Tensor::randn(qs, 4), out = Tensor::empty(qs);
        Tensor lse = Tensor::empty({s.B, s.H, s.T});
        Tensor dq = Tensor::empty(qs), dk = Tensor::empty(qs), dv = Tensor::empty(qs);
        const float scale = float(1.0 / std::sqrt(double(s.D)));
        const double fwd =
            median_call([&] { be.attention(q, k, v, scale, true, out, lse); }, samples);
        const double bwd = median_call(
            [&] { be.attention_backward(q, k, v, out, lse, dout, scale, true, dq, dk, dv); },
            samples);
        // Causal forward: q k^T and p v over the T (T + 1) / 2 visible pairs; backward: 5
        // products of that size (the FlashAttention-2 count: 2.5 forwards).
        const double fwd_flop = 4.0 * double(s.B * s.H * s.D) * double(s.T * (s.T + 1) / 2);
        const double gf = fwd_flop / fwd / 1e9, gb = 2.5 * fwd_flop / bwd / 1e9;
        char name[64];
        std::snprintf(name, sizeof name, "(%lld, %lld, %lld, %lld)", (long long)s.B, (long long)s.H,
                      (long long)s.T, (long long)s.D);
        std::printf("%-22s %10.3f %9.1f %5.0f%% %10.3f %9.1f %5.0f%%\n", name, fwd * 1e3, gf,
                    100 * gf / peak, bwd * 1e3, gb, 100 * gb / peak);
    }
    if (n_shapes > int(shapes.size())) {
        // One decode step of GPT-2 small at position 150: a query against the kv-cache.
        const int64_t H = 12, Tk = 150, D = 64;
        Tensor q = Tensor::randn({1, H, 1, D}, 5), k = Tensor::randn({1, H, Tk, D}, 6);
        Tensor v = Tensor::randn({1, H, Tk, D}, 7), out = Tensor::empty({1, H, 1, D});
        Tensor lse = Tensor::empty({1, H, 1});
        const double t =
            median_call([&] { be.attention(q, k, v, 0.125f, true, out, lse); }, samples);
        std::printf("decode (1, 12, 1 of 150, 64) fwd %.4f ms\n", t * 1e3);
    }
    return 0;
}
