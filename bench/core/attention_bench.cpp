// Causal attention, forward + backward, B = 1, 12 heads of 64, at T = 256, 1024, 4096:
// forge::attention (flash kernels) against forge::attention_reference (the plain decomposition
// into matmul / masked_fill / softmax), time and peak extra memory. Memory is the peak of the
// tensor allocator (forge::cpu::memory_stats(), which also holds the flash kernels' scratch)
// above what was live before the call: inputs, output gradient and .grad buffers excluded.
// Figures go to docs/PERF.md ("Attention").
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <string>

#include <benchmark/benchmark.h>

#include "backends/cpu/cpu_backend.h"
#include <forge/autograd/autograd.h>
#include <forge/core/ops.h>
#include <forge/core/tensor.h>

namespace {

constexpr int64_t kHeads = 12, kHeadDim = 64;

using AttnFn = forge::Tensor (*)(const forge::Tensor&, const forge::Tensor&, const forge::Tensor&,
                                 const forge::AttentionOptions&);

// FLOP of one causal forward: q k^T and p v, 2 * T^2 * D each per head, half of it under the
// mask. The backward is counted as 2.5 forwards (5 matmuls against 2, the FlashAttention-2
// convention), so a step is 3.5 forwards.
double step_flop(int64_t T) {
    return 3.5 * 2.0 * 2.0 * double(T) * double(T) * kHeadDim * kHeads / 2;
}

// Wall clock, or with FORGE_BENCH_CPU_TIME=1 (run with OMP_NUM_THREADS=1) this thread's CPU
// time, which other tenants of a shared machine don't inflate. Feeds the GFLOP/s counter.
double now_seconds() {
    static const bool cpu_time = [] {
        const char* e = std::getenv("FORGE_BENCH_CPU_TIME");
        return e && std::string(e) == "1";
    }();
    if (cpu_time) {
        timespec ts{};
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
        return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

void run(benchmark::State& state, AttnFn fn, bool backward) {
    const int64_t T = state.range(0);
    const forge::Shape shape{1, kHeads, T, kHeadDim};
    forge::Tensor q = forge::Tensor::randn(shape, 1), k = forge::Tensor::randn(shape, 2),
                  v = forge::Tensor::randn(shape, 3), g = forge::Tensor::randn(shape, 4);
    for (forge::Tensor* t : {&q, &k, &v})
        t->set_requires_grad(backward);
    size_t peak_extra = 0;
    const double t0 = now_seconds();
    for (auto _ : state) {
        for (forge::Tensor* t : {&q, &k, &v})
            t->zero_grad();
        const size_t base = forge::cpu::memory_stats().current;
        forge::cpu::reset_peak_memory();
        {
            forge::Tensor out = fn(q, k, v, forge::AttentionOptions{});
            if (backward)
                out.backward(g);
            benchmark::DoNotOptimize(out.data_ptr());
        }
        peak_extra = std::max(peak_extra, forge::cpu::memory_stats().peak - base);
    }
    const double secs = now_seconds() - t0;
    const double flop = backward ? step_flop(T) : step_flop(T) / 3.5;
    state.counters["GFLOP/s"] = flop * double(state.iterations()) / secs / 1e9;
    state.counters["peak_extra_MiB"] = double(peak_extra) / (1024.0 * 1024.0);
}

void BM_FlashFwdBwd(benchmark::State& s) {
    run(s, forge::attention, true);
}
void BM_NaiveFwdBwd(benchmark::State& s) {
    run(s, forge::attention_reference, true);
}
void BM_FlashFwd(benchmark::State& s) {
    run(s, forge::attention, false);
}
void BM_NaiveFwd(benchmark::State& s) {
    run(s, forge::attention_reference, false);
}

} // namespace

BENCHMARK(BM_FlashFwdBwd)
    ->Arg(256)
    ->Arg(1024)
    ->Arg(4096)
    ->ArgName("T")
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
// The decomposition at T = 4096 holds several (12, 4096, 4096) f32 tensors (768 MiB each):
// one iteration is enough.
BENCHMARK(BM_NaiveFwdBwd)
    ->Arg(256)
    ->Arg(1024)
    ->ArgName("T")
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_NaiveFwdBwd)
    ->Arg(4096)
    ->ArgName("T")
    ->Iterations(1)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_FlashFwd)
    ->Arg(256)
    ->Arg(1024)
    ->Arg(4096)
    ->ArgName("T")
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_NaiveFwd)
    ->Arg(256)
    ->Arg(1024)
    ->ArgName("T")
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_NaiveFwd)
    ->Arg(4096)
    ->ArgName("T")
    ->Iterations(1)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
