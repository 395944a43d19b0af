// f32 matmul throughput: forge::matmul against cblas_sgemm called directly in the same binary,
// at square sizes and transformer shapes, with the machine's FMA peak measured here (not
// assumed) as the ceiling. Prints GFLOP/s and % of peak per line; figures go to docs/PERF.md.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>
#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <forge/core/ops.h>
#include <forge/core/tensor.h>

namespace {

// ---------------------------------------------------------------- peak FMA throughput
// 16 independent accumulator chains hide the FMA latency (4 cycles on current x86 cores) at
// up to 4 FMAs issued a cycle, so the loop runs at the FMA ports' throughput. Each iteration is
// 16 FMAs of `lanes` floats: 32 * lanes FLOP. m slightly below 1 and c small keep the values
// finite for any iteration count.
__attribute__((target("avx512f"))) float fma_loop_avx512(int64_t iters) {
    __m512 acc[16];
    for (int j = 0; j < 16; ++j)
        acc[j] = _mm512_set1_ps(float(j));
    const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (int64_t i = 0; i < iters; ++i)
        for (int j = 0; j < 16; ++j)
            acc[j] = _mm512_fmadd_ps(acc[j], m, c);
    __m512 s = acc[0];
    for (int j = 1; j < 16; ++j)
        s = _mm512_add_ps(s, acc[j]);
    float out[16];
    _mm512_storeu_ps(out, s);
    float t = 0;
    for (float v : out)
        t += v;
    return t;
}

__attribute__((target("avx2,fma"))) float fma_loop_avx2(int64_t iters) {
    __m256 acc[16];
    for (int j = 0; j < 16; ++j)
        acc[j] = _mm256_set1_ps(float(j));
    const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (int64_t i = 0; i < iters; ++i)
        for (int j = 0; j < 16; ++j)
            acc[j] = _mm256_fmadd_ps(acc[j], m, c);
    float out[8];
    __m256 s = acc[0];
    for (int j = 1; j < 16; ++j)
        s = _mm256_add_ps(s, acc[j]);
    _mm256_storeu_ps(out, s);
    float t = 0;
    for (float v : out)
        t += v;
    return t;
}

// CPU time of the calling thread: what a loop costs regardless of preemption by other tenants.
double thread_cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// FLOP/s of all OpenMP threads running the FMA loop at once: each thread times its own loop by
// its CPU time (so a thread that starts late or gets preempted doesn't count against the
// others) and the per-thread rates are summed; the best round over `seconds` wins.
double measure_fma_gflops(bool avx512, double seconds = 0.3) {
    const int64_t iters = 1 << 21;
    const int lanes = avx512 ? 16 : 8;
    double best = 0;
    float sink = 0;
    auto t_end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < t_end) {
        double rate = 0;
#pragma omp parallel reduction(+ : sink, rate)
        {
            const double t0 = thread_cpu_seconds();
            sink += avx512 ? fma_loop_avx512(iters) : fma_loop_avx2(iters);
            rate += double(iters) * 32.0 * lanes / (thread_cpu_seconds() - t0) / 1e9;
        }
        best = std::max(best, rate);
    }
    benchmark::DoNotOptimize(sink);
    return best;
}

double peak_gflops() {
    static const double peak = [] {
        double p = 0;
        if (__builtin_cpu_supports("avx512f"))
            p = std::max(p, measure_fma_gflops(true));
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
            p = std::max(p, measure_fma_gflops(false));
        return p;
    }();
    return peak;
}

void BM_PeakFma(benchmark::State& state) {
    const bool avx512 = state.range(0) == 512;
    if (avx512 ? !__builtin_cpu_supports("avx512f") : !__builtin_cpu_supports("avx2")) {
        state.SkipWithError("ISA not supported");
        return;
    }
    double g = 0;
    for (auto _ : state)
        g = measure_fma_gflops(avx512, 0.2);
    state.counters["GFLOP/s"] = g;
    state.counters["threads"] = omp_get_max_threads();
}

// ---------------------------------------------------------------- matmul
// Wall time of the timed loop, for the GFLOP/s and %-of-peak counters (plain numbers, so the
// table shows "GFLOP/s=123 peak%=78" rather than rates of rates).
struct LoopTimer {
    std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
    double seconds() const {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
};

void set_counters(benchmark::State& state, const LoopTimer& timer, int64_t M, int64_t K,
                  int64_t N) {
    const double flop = 2.0 * double(M) * double(K) * double(N);
    const double gflops = flop * double(state.iterations()) / timer.seconds() / 1e9;
    state.counters["GFLOP/s"] = gflops;
    state.counters["peak%"] = gflops / peak_gflops() * 100.0;
    state.SetBytesProcessed(int64_t(state.iterations()) * 4 * (M * K + K * N + M * N));
}

// C = A B, A (M, K), B (K, N), through forge::matmul (allocates C each call, as ops do).
void BM_ForgeMatmul(benchmark::State& state) {
    const int64_t M = state.range(0), K = state.range(1), N = state.range(2);
    forge::Tensor a = forge::Tensor::randn({M, K}, 1), b = forge::Tensor::randn({K, N}, 2);
    peak_gflops();
    LoopTimer timer;
    for (auto _ : state) {
        forge::Tensor c = forge::matmul(a, b);
        benchmark::DoNotOptimize(c.data_ptr());
    }
    set_counters(state, timer, M, K, N);
}

// The same product straight into OpenBLAS, C preallocated.
void BM_CblasSgemm(benchmark::State& state) {
    const int64_t M = state.range(0), K = state.range(1), N = state.range(2);
    forge::Tensor a = forge::Tensor::randn({M, K}, 1), b = forge::Tensor::randn({K, N}, 2);
    forge::Tensor c = forge::Tensor::empty({M, N});
    peak_gflops();
    LoopTimer timer;
    for (auto _ : state) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(M), int(N), int(K), 1.0f,
                    a.data<float>(), int(K), b.data<float>(), int(N), 0.0f, c.data<float>(),
                    int(N));
        benchmark::ClobberMemory();
    }
    set_counters(state, timer, M, K, N);
}

// A Linear layer's product x W^T with W stored (N, K): forge passes the transposed view to
// BLAS as a trans flag (no copy); compared with sgemm(NoTrans, Trans).
void BM_ForgeMatmulWt(benchmark::State& state) {
    const int64_t M = state.range(0), K = state.range(1), N = state.range(2);
    forge::Tensor x = forge::Tensor::randn({M, K}, 1), w = forge::Tensor::randn({N, K}, 2);
    peak_gflops();
    LoopTimer timer;
    for (auto _ : state) {
        forge::Tensor c = forge::matmul(x, w.t());
        benchmark::DoNotOptimize(c.data_ptr());
    }
    set_counters(state, timer, M, K, N);
}

void BM_CblasSgemmWt(benchmark::State& state) {
    const int64_t M = state.range(0), K = state.range(1), N = state.range(2);
    forge::Tensor x = forge::Tensor::randn({M, K}, 1), w = forge::Tensor::randn({N, K}, 2);
    forge::Tensor c = forge::Tensor::empty({M, N});
    peak_gflops();
    LoopTimer timer;
    for (auto _ : state) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(N), int(K), 1.0f,
                    x.data<float>(), int(K), w.data<float>(), int(K), 0.0f, c.data<float>(),
                    int(N));
        benchmark::ClobberMemory();
    }
    set_counters(state, timer, M, K, N);
}

// A batch of small products (attention-sized heads): forge spreads the batch over OpenMP
// threads; the direct baseline is the same sgemm calls in a serial loop.
void BM_ForgeBatchedSmall(benchmark::State& state) {
    const int64_t Bt = state.range(0), n = state.range(1);
    forge::Tensor a = forge::Tensor::randn({Bt, n, n}, 1), b = forge::Tensor::randn({Bt, n, n}, 2);
    peak_gflops();
    LoopTimer timer;
    for (auto _ : state) {
        forge::Tensor c = forge::matmul(a, b);
        benchmark::DoNotOptimize(c.data_ptr());
    }
    set_counters(state, timer, Bt * n, n, n);
}

void BM_CblasBatchedSmall(benchmark::State& state) {
    const int64_t Bt = state.range(0), n = state.range(1);
    forge::Tensor a = forge::Tensor::randn({Bt, n, n}, 1), b = forge::Tensor::randn({Bt, n, n}, 2);
    forge::Tensor c = forge::Tensor::empty({Bt, n, n});
    peak_gflops();
    LoopTimer timer;
    for (auto _ : state) {
        for (int64_t i = 0; i < Bt; ++i)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), int(n), int(n), 1.0f,
                        a.data<float>() + i * n * n, int(n), b.data<float>() + i * n * n, int(n),
                        0.0f, c.data<float>() + i * n * n, int(n));
        benchmark::ClobberMemory();
    }
    set_counters(state, timer, Bt * n, n, n);
}

// A/B in one loop: forge::matmul and cblas_sgemm called alternately, `rounds` times each, each
// call timed alone. On a shared or virtualised machine, load and clock changes hit both sides
// alike; interference only ever adds time, so the best call of each side is the cleanest
// figure and the median shows the typical one. Counters: GFLOP/s of each side (best and
// median) and forge/BLAS throughput ratios. FORGE_BENCH_CPU_TIME=1 (with OMP_NUM_THREADS=1
// OPENBLAS_NUM_THREADS=1) times each call by the thread's CPU time instead of the wall clock,
// for a machine whose other tenants keep preempting us.
void BM_MatmulAB(benchmark::State& state) {
    const int64_t M = state.range(0), K = state.range(1), N = state.range(2);
    forge::Tensor a = forge::Tensor::randn({M, K}, 1), b = forge::Tensor::randn({K, N}, 2);
    forge::Tensor c = forge::Tensor::empty({M, N});
    const double flop = 2.0 * double(M) * double(K) * double(N);
    const int rounds = int(std::clamp(2e11 / flop, 5.0, 50.0)); // about 0.5-2 s a side
    std::vector<double> tf, tb;
    const char* cpu_env = std::getenv("FORGE_BENCH_CPU_TIME");
    const bool cpu_time = cpu_env && std::string(cpu_env) == "1";
    auto seconds_of = [cpu_time](auto&& fn) {
        if (cpu_time) {
            const double t0 = thread_cpu_seconds();
            fn();
            return thread_cpu_seconds() - t0;
        }
        auto t0 = std::chrono::steady_clock::now();
        fn();
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    for (auto _ : state) {
        for (int r = 0; r < rounds; ++r) {
            tf.push_back(seconds_of([&] {
                forge::Tensor out = forge::matmul(a, b);
                benchmark::DoNotOptimize(out.data_ptr());
            }));
            tb.push_back(seconds_of([&] {
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(M), int(N), int(K), 1.0f,
                            a.data<float>(), int(K), b.data<float>(), int(N), 0.0f, c.data<float>(),
                            int(N));
                benchmark::ClobberMemory();
            }));
        }
    }
    auto best = [](std::vector<double> v) { return *std::min_element(v.begin(), v.end()); };
    auto median = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
    };
    const double g = flop / 1e9;
    state.counters["forge_best"] = g / best(tf);
    state.counters["blas_best"] = g / best(tb);
    state.counters["ratio_best"] = best(tb) / best(tf);
    state.counters["forge_med"] = g / median(tf);
    state.counters["blas_med"] = g / median(tb);
    state.counters["ratio_med"] = median(tb) / median(tf);
    state.counters["peak"] = peak_gflops();
}

void shapes(benchmark::internal::Benchmark* b) {
    for (int64_t n : {512, 1024, 2048})
        b->Args({n, n, n});
    // GPT-2 small, 1024 tokens: MLP up (768 -> 3072), MLP down (3072 -> 768), fused QKV (768 ->
    // 2304)
    b->Args({1024, 768, 3072});
    b->Args({1024, 3072, 768});
    b->Args({1024, 768, 2304});
    b->ArgNames({"M", "K", "N"});
    b->UseRealTime();
    b->Unit(benchmark::kMillisecond);
}

} // namespace

BENCHMARK(BM_PeakFma)->Arg(512)->Arg(256)->Iterations(1)->UseRealTime();
BENCHMARK(BM_ForgeMatmul)->Apply(shapes);
BENCHMARK(BM_CblasSgemm)->Apply(shapes);
BENCHMARK(BM_MatmulAB)->Apply(shapes)->Iterations(1);
BENCHMARK(BM_ForgeMatmulWt)
    ->Args({1024, 768, 3072})
    ->ArgNames({"M", "K", "N"})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CblasSgemmWt)
    ->Args({1024, 768, 3072})
    ->ArgNames({"M", "K", "N"})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ForgeBatchedSmall)
    ->Args({96, 32})
    ->Args({96, 48})
    ->ArgNames({"batch", "n"})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CblasBatchedSmall)
    ->Args({96, 32})
    ->Args({96, 48})
    ->ArgNames({"batch", "n"})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
