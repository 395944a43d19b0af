// Memory-bound kernels: the NN ops (softmax, layer_norm, rms_norm, rope, cross_entropy,
// embedding; forward and backward) and the element-wise ops (add, mul, gelu, silu), in GB/s of
// the bytes each op must move at least, against this machine's memory bandwidth measured in the
// same binary (STREAM-like copy and triad over buffers far beyond L3, 1 and 2 threads). Each
// line's `of_bw` counter is its GB/s as a percentage of the 2-thread triad. Figures go to
// docs/PERF.md ("Element-wise and norm kernels"). Shapes are transformer-sized: 8 x 1024 rows of
// 768 or 4096, vocab 50304, 12 heads of 64.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <vector>

#include <benchmark/benchmark.h>
#include <omp.h>

#include "backends/backend.h"
#include "backends/cpu/simd/nn_kernels.h"
#include <forge/autograd/autograd.h>
#include <forge/core/ops.h>
#include <forge/core/ops_backward.h>
#include <forge/core/tensor.h>

namespace {

using forge::DType;
using forge::Tensor;

// ---------------------------------------------------------------- timing mode

// FORGE_BENCH_CPU_TIME=1 (run with OMP_NUM_THREADS=1): time by the thread's CPU time instead of
// the wall clock, for a shared machine where other processes take the cores. Every figure and
// the ceiling are then single-threaded and blind to time spent preempted.
bool cpu_time_mode() {
    static const bool on = [] {
        const char* e = std::getenv("FORGE_BENCH_CPU_TIME");
        return e && *e && *e != '0';
    }();
    return on;
}

double now_s() {
    if (cpu_time_mode()) {
        timespec ts;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
        return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// Registrations: wall-clock time unless in CPU-time mode.
void timing(benchmark::internal::Benchmark* b) {
    b->Unit(benchmark::kMillisecond);
    if (!cpu_time_mode())
        b->UseRealTime();
}

// ---------------------------------------------------------------- memory bandwidth ceiling

// 3 x 128 MiB: four times the 32 MiB L3, so every pass streams from DRAM.
constexpr int64_t kStreamN = int64_t(32) << 20;

struct StreamBuffers {
    std::vector<float> a, b, c;
    StreamBuffers() {
        a.resize(size_t(kStreamN));
        b.resize(size_t(kStreamN));
        c.resize(size_t(kStreamN));
        // Touch every page before timing (first-touch page faults are not bandwidth).
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < kStreamN; ++i) {
            a[size_t(i)] = 1.0f;
            b[size_t(i)] = 2.0f;
            c[size_t(i)] = 0.5f;
        }
    }
};

StreamBuffers& stream_buffers() {
    static StreamBuffers s;
    return s;
}

// b = a (read 1, write 1).
void stream_copy(StreamBuffers& s, int threads) {
    float* __restrict b = s.b.data();
    const float* __restrict a = s.a.data();
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < kStreamN; ++i)
        b[i] = a[i];
}

// a = b + 3 c (read 2, write 1).
void stream_triad(StreamBuffers& s, int threads) {
    float* __restrict a = s.a.data();
    const float* __restrict b = s.b.data();
    const float* __restrict c = s.c.data();
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < kStreamN; ++i)
        a[i] = b[i] + 3.0f * c[i];
}

// The ceiling for every `of_bw` counter: the best triad GB/s of a few runs with all threads
// (one in CPU-time mode). STREAM's convention: bytes the loop reads and writes, not
// write-allocate traffic.
double ceiling_gbs() {
    static const double gbs = [] {
        StreamBuffers& s = stream_buffers();
        const int threads = cpu_time_mode() ? 1 : std::max(2, omp_get_max_threads());
        double best = 0;
        for (int rep = 0; rep < 5; ++rep) {
            const double t0 = now_s();
            stream_triad(s, threads);
            best = std::max(best, 3.0 * 4.0 * double(kStreamN) / (now_s() - t0) / 1e9);
        }
        return best;
    }();
    return gbs;
}

// GB/s (SetBytesProcessed) for `bytes` moved per iteration, and `of_bw`: that rate as a
// percentage of the ceiling, from the wall time since t0 (taken just before the timed loop).
void report(benchmark::State& st, double bytes, double t0) {
    const double secs = now_s() - t0;
    const double total = double(st.iterations()) * bytes;
    st.SetBytesProcessed(int64_t(total));
    st.counters["of_bw"] = total / secs / 1e9 / ceiling_gbs() * 100.0;
}

void BM_StreamCopy(benchmark::State& st) {
    StreamBuffers& s = stream_buffers();
    const int threads = int(st.range(0));
    for (auto _ : st) {
        stream_copy(s, threads);
        benchmark::ClobberMemory();
    }
    st.SetBytesProcessed(st.iterations() * 2 * 4 * kStreamN);
}

void BM_StreamTriad(benchmark::State& st) {
    StreamBuffers& s = stream_buffers();
    const int threads = int(st.range(0));
    for (auto _ : st) {
        stream_triad(s, threads);
        benchmark::ClobberMemory();
    }
    st.SetBytesProcessed(st.iterations() * 3 * 4 * kStreamN);
}

// ---------------------------------------------------------------- helpers

const char* isa_name(int64_t isa) {
    return isa == 2 ? "avx512" : isa == 1 ? "avx2" : isa == 0 ? "generic" : "reference";
}

// Arg `isa`: 0/1/2 caps the fast kernels at generic/AVX2/AVX-512; 3 runs the reference
// kernels (the oracle, for the speed-up). Skips ISAs this CPU lacks.
struct KernelChoice {
    forge::cpu::nn::IsaCapScope cap;
    forge::cpu::ReferenceKernelsScope ref;
    explicit KernelChoice(int64_t isa)
        : cap(isa >= 3 ? forge::cpu::nn::Isa::avx512 : forge::cpu::nn::Isa(isa)), ref(isa == 3) {}
};

bool skip_isa(benchmark::State& st, int64_t isa) {
    if (isa < 3 && isa > int64_t(forge::cpu::nn::best_isa())) {
        st.SkipWithError("this CPU lacks the instruction set");
        return true;
    }
    st.SetLabel(isa_name(isa));
    return false;
}

constexpr double kF = 4.0; // bytes per f32

// ---------------------------------------------------------------- softmax

// Args: rows, cols, isa. Forward: read x, write y.
void BM_Softmax(benchmark::State& st) {
    const int64_t rows = st.range(0), cols = st.range(1), isa = st.range(2);
    if (skip_isa(st, isa))
        return;
    KernelChoice kc(isa);
    Tensor x = Tensor::randn({rows, cols}, 1);
    const double t0 = now_s();
    for (auto _ : st)
        benchmark::DoNotOptimize(forge::softmax(x));
    report(st, 2 * kF * double(rows * cols), t0);
}

// Forward + backward through autograd (the backward is public ops: y * (g - sum(g * y))).
// Bytes: the minimum of a fused pair: forward 2 (x, y), backward 3 (g, y, dx).
void BM_SoftmaxFwdBwd(benchmark::State& st) {
    const int64_t rows = st.range(0), cols = st.range(1);
    Tensor x = Tensor::randn({rows, cols}, 1);
    x.set_requires_grad(true);
    Tensor g = Tensor::randn({rows, cols}, 2);
    const double t0 = now_s();
    for (auto _ : st) {
        Tensor y = forge::softmax(x);
        y.backward(g);
        x.zero_grad();
    }
    report(st, 5 * kF * double(rows * cols), t0);
}

// ---------------------------------------------------------------- norms

// Args: rows, cols, isa. Forward: read x, write y (weights are cache-resident).
void BM_LayerNorm(benchmark::State& st) {
    const int64_t rows = st.range(0), cols = st.range(1), isa = st.range(2);
    if (skip_isa(st, isa))
        return;
    KernelChoice kc(isa);
    Tensor x = Tensor::randn({rows, cols}, 1), w = Tensor::randn({cols}, 2),
           b = Tensor::randn({cols}, 3);
    const double t0 = now_s();
    for (auto _ : st)
        benchmark::DoNotOptimize(forge::layer_norm(x, w, b));
    report(st, 2 * kF * double(rows * cols), t0);
}

void BM_RmsNorm(benchmark::State& st) {
    const int64_t rows = st.range(0), cols = st.range(1), isa = st.range(2);
    if (skip_isa(st, isa))
        return;
    KernelChoice kc(isa);
    Tensor x = Tensor::randn({rows, cols}, 1), w = Tensor::randn({cols}, 2);
    const double t0 = now_s();
    for (auto _ : st)
        benchmark::DoNotOptimize(forge::rms_norm(x, w));
    report(st, 2 * kF * double(rows * cols), t0);
}

// Backward kernels alone (public ops of ops_backward.h): read dy and x, write dx.
void BM_LayerNormBackward(benchmark::State& st) {
    const int64_t rows = st.range(0), cols = st.range(1);
    forge::NoGradGuard ng;
    Tensor x = Tensor::randn({rows, cols}, 1), w = Tensor::randn({cols}, 2);
    Tensor dy = Tensor::randn({rows, cols}, 3);
    Tensor mu = forge::mean(x, {-1});
    Tensor xc = forge::sub(x, mu.unsqueeze(1));
    Tensor rstd = forge::rsqrt(forge::add_scalar(forge::mean(forge::mul(xc, xc), {-1}), 1e-5));
    const double t0 = now_s();
    for (auto _ : st)
        benchmark::DoNotOptimize(forge::layer_norm_backward(dy, x, w, mu, rstd, true));
    report(st, 3 * kF * double(rows * cols), t0);
}

void BM_RmsNormBackward(benchmark::State& st) {
    const int64_t rows = st.range(0), cols = st.range(1);
    forge::NoGradGuard ng;
    Tensor x = Tensor::randn({rows, cols}, 1), w = Tensor::randn({cols}, 2);
    Tensor dy = Tensor::randn({rows, cols}, 3);
    Tensor rstd = forge::rsqrt(forge::add_scalar(forge::mean(forge::mul(x, x), {-1}), 1e-6));
    const double t0 = now_s();
    for (auto _ : st)
        benchmark::DoNotOptimize(forge::rms_norm_backward(dy, x, w, rstd));
    report(st, 3 * kF * double(rows * cols), t0);
}

// ---------------------------------------------------------------- RoPE

// Args: B, T, isa; H = 12, D = 64. Read x, write y (the cos/sin table is cached).
void BM_Rope(benchmark::State& st) {
    const int64_t b = st.range(0), t = st.range(1), isa = st.range(2), h = 12, d = 64;
    if (skip_isa(st, isa))
        return;
    KernelChoice kc(isa);
    Tensor x = Tensor::randn({b, h, t, d}, 1);
    forge::RopeOptions o;
    const double t0 = now_s();
    for (auto _ : st)
        benchmark::DoNotOptimize(forge::rope(x, o));
    report(st, 2 * kF * double(b * h * t * d), t0);
}

// ---------------------------------------------------------------- cross-entropy

Tensor ce_targets(int64_t n, int64_t v) {
    std::vector<int64_t> t(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i)
        t[size_t(i)] = (i * 7919) % v;
    return Tensor::from_vector(t, {n});
}

// Args: N, V, isa. Forward: read the logits once (the softmax is never written).
void BM_CrossEntropy(benchmark::State& st) {
    const int64_t n = st.range(0), v = st.range(1), isa = st.range(2);
    if (skip_isa(st, isa))
        return;
    KernelChoice kc(isa);
    Tensor logits = Tensor::randn({n, v}, 1), t = ce_targets(n, v);
    const double t0 = now_s();
    for (auto _ : st)
        benchmark::DoNotOptimize(forge::cross_entropy(logits, t));
    report(st, kF * double(n * v), t0);
}

// Forward + backward through autograd: forward reads the logits, backward reads them and
// writes dlogits: 3 passes of N x V.
void BM_CrossEntropyFwdBwd(benchmark::State& st) {
    const int64_t n = st.range(0), v = st.range(1), isa = st.range(2);
    if (skip_isa(st, isa))
        return;
    KernelChoice kc(isa);
    Tensor logits = Tensor::randn({n, v}, 1), t = ce_targets(n, v);
    logits.set_requires_grad(true);
    const double t0 = now_s();
    for (auto _ : st) {
        Tensor loss = forge::cross_entropy(logits, t);
        loss.backward();
        logits.zero_grad();
    }
    report(st, 3 * kF * double(n * v), t0);
}

// The backward kernel alone (public op of ops_backward.h): read the logits, write dlogits.
void BM_CrossEntropyBackward(benchmark::State& st) {
    const int64_t n = st.range(0), v = st.range(1), isa = st.range(2);
    if (skip_isa(st, isa))
        return;
    KernelChoice kc(isa);
    forge::NoGradGuard ng;
    Tensor logits = Tensor::randn({n, v}, 1), t = ce_targets(n, v);
    // lse = m + log(sum(exp(x - m))), as the forward saves it.
    Tensor m = forge::max(logits, {-1}, true);
    Tensor lse =
        forge::add(forge::log(forge::sum(forge::exp(forge::sub(logits, m)), {-1}, true)), m)
            .reshape({n});
    Tensor dloss = Tensor::scalar(1.0);
    const double t0 = now_s();
    for (auto _ : st)
        benchmark::DoNotOptimize(
            forge::cross_entropy_backward(logits, t, lse, dloss, -100, 1.0 / double(n)));
    report(st, 2 * kF * double(n * v), t0);
}

// ---------------------------------------------------------------- embedding

// Args: N ids, C; vocab 50304. Forward: read N rows, write N rows. Backward: read dout, add
// into the (zeroed) table rows: counted as dout + table (zeroing included).
void BM_Embedding(benchmark::State& st) {
    const int64_t n = st.range(0), c = st.range(1), v = 50304;
    Tensor w = Tensor::randn({v, c}, 1), ids = ce_targets(n, v);
    const double t0 = now_s();
    for (auto _ : st)
        benchmark::DoNotOptimize(forge::embedding(w, ids));
    report(st, 2 * kF * double(n * c), t0);
}

void BM_EmbeddingBackward(benchmark::State& st) {
    const int64_t n = st.range(0), c = st.range(1), v = 50304;
    forge::NoGradGuard ng;
    Tensor dout = Tensor::randn({n, c}, 1), ids = ce_targets(n, v);
    const double t0 = now_s();
    for (auto _ : st)
        benchmark::DoNotOptimize(forge::embedding_backward(dout, ids, v));
    report(st, kF * double(n * c + v * c), t0);
}

// ---------------------------------------------------------------- kernels alone

// The backend kernels with preallocated outputs: what the kernels themselves reach, without
// the op's output allocation (above 32 MiB glibc maps fresh pages for every output, and their
// first-touch page faults can cost more than the kernel). Args: op, rows, cols.
enum KernelOp : int64_t { kSoftmax, kLayerNorm, kRmsNorm, kRmsNormBwd, kCe, kCeBwd, kRope };

void BM_Kernel(benchmark::State& st) {
    const int64_t op = st.range(0), rows = st.range(1), cols = st.range(2);
    forge::Backend& be = forge::backend_for(forge::Device::cpu());
    forge::NoGradGuard ng;
    Tensor x = Tensor::randn({rows, cols}, 1), y = Tensor::zeros({rows, cols});
    Tensor w = Tensor::randn({cols}, 2), b = Tensor::randn({cols}, 3);
    Tensor r1 = Tensor::zeros({rows}), r2 = Tensor::ones({rows}), dw = Tensor::zeros({cols});
    Tensor t = ce_targets(rows, cols), dloss = Tensor::scalar(1.0);
    // rope reads (rows, cols) as (B=8, H=12, T=rows/96, D=cols).
    Tensor x4 = op == kRope ? x.view({8, 12, rows / 96, cols}) : x;
    Tensor y4 = op == kRope ? y.view({8, 12, rows / 96, cols}) : y;
    const char* names[] = {"softmax",       "layer_norm",  "rms_norm", "rms_norm_backward",
                           "cross_entropy", "ce_backward", "rope"};
    st.SetLabel(names[op]);
    // Bytes: x read and y written, except the cross-entropy forward (x read only) and the
    // norm backward (dy and x read, dx written).
    const double bytes = kF * double(rows * cols) * (op == kCe ? 1 : op == kRmsNormBwd ? 3 : 2);
    if (op == kCe || op == kCeBwd)
        be.cross_entropy(x, t, -100, r1, r2); // lse for the backward
    const double t0 = now_s();
    for (auto _ : st) {
        switch (op) {
        case kSoftmax:
            be.softmax(x, y, false);
            break;
        case kLayerNorm:
            be.layer_norm(x, w, b, 1e-5f, y, r1, r2);
            break;
        case kRmsNorm:
            be.rms_norm(x, w, 1e-6f, y, r2);
            break;
        case kRmsNormBwd:
            be.rms_norm_backward(x, x, w, r2, y, dw);
            break;
        case kCe:
            be.cross_entropy(x, t, -100, r1, r2);
            break;
        case kCeBwd:
            be.cross_entropy_backward(x, t, r2, -100, dloss, 1.0 / double(rows), y);
            break;
        case kRope:
            be.rope(x4, forge::RopeOptions{}, y4);
            break;
        }
        benchmark::ClobberMemory();
    }
    report(st, bytes, t0);
}

// ---------------------------------------------------------------- element-wise (the lead's)

// Arg: elements. Binary: read 2, write 1; unary: read 1, write 1.
void BM_Add(benchmark::State& st) {
    const int64_t n = st.range(0);
    Tensor a = Tensor::randn({n}, 1), b = Tensor::randn({n}, 2);
    const double t0 = now_s();
    for (auto _ : st)
        benchmark::DoNotOptimize(forge::add(a, b));
    report(st, 3 * kF * double(n), t0);
}

void BM_Mul(benchmark::State& st) {
    const int64_t n = st.range(0);
    Tensor a = Tensor::randn({n}, 1), b = Tensor::randn({n}, 2);
    const double t0 = now_s();
    for (auto _ : st)
        benchmark::DoNotOptimize(forge::mul(a, b));
    report(st, 3 * kF * double(n), t0);
}

// (rows, C) + (C): the bias add of every Linear layer; reads a once (b stays in cache).
void BM_AddBroadcast(benchmark::State& st) {
    const int64_t rows = st.range(0), cols = st.range(1);
    Tensor a = Tensor::randn({rows, cols}, 1), b = Tensor::randn({cols}, 2);
    const double t0 = now_s();
    for (auto _ : st)
        benchmark::DoNotOptimize(forge::add(a, b));
    report(st, 2 * kF * double(rows * cols), t0);
}

void BM_Gelu(benchmark::State& st) {
    const int64_t n = st.range(0);
    Tensor x = Tensor::randn({n}, 1);
    const double t0 = now_s();
    for (auto _ : st)
        benchmark::DoNotOptimize(forge::gelu(x));
    report(st, 2 * kF * double(n), t0);
}

void BM_Silu(benchmark::State& st) {
    const int64_t n = st.range(0);
    Tensor x = Tensor::randn({n}, 1);
    const double t0 = now_s();
    for (auto _ : st)
        benchmark::DoNotOptimize(forge::silu(x));
    report(st, 2 * kF * double(n), t0);
}

// ---------------------------------------------------------------- registrations

constexpr int64_t kRows = 8 * 1024;

void rows_cols_isa(benchmark::internal::Benchmark* b) {
    b->ArgNames({"rows", "cols", "isa"});
    for (int64_t cols : {768, 4096})
        b->Args({kRows, cols, 2});
    // Instruction-set A/B (and the reference kernel) at 8K x 768.
    for (int64_t isa : {1, 0, 3})
        b->Args({kRows, 768, isa});
    b->Apply(timing);
}

void rows_cols(benchmark::internal::Benchmark* b) {
    b->ArgNames({"rows", "cols"});
    for (int64_t cols : {768, 4096})
        b->Args({kRows, cols});
    b->Apply(timing);
}

} // namespace

BENCHMARK(BM_StreamCopy)->Arg(1)->Arg(2)->ArgName("threads")->Apply(timing);
BENCHMARK(BM_StreamTriad)->Arg(1)->Arg(2)->ArgName("threads")->Apply(timing);

BENCHMARK(BM_Softmax)->Apply(rows_cols_isa);
BENCHMARK(BM_SoftmaxFwdBwd)->Apply(rows_cols);
BENCHMARK(BM_LayerNorm)->Apply(rows_cols_isa);
BENCHMARK(BM_LayerNormBackward)->Apply(rows_cols);
BENCHMARK(BM_RmsNorm)->Apply(rows_cols_isa);
BENCHMARK(BM_RmsNormBackward)->Apply(rows_cols);
BENCHMARK(BM_Rope)
    ->ArgNames({"B", "T", "isa"})
    ->Args({8, 1024, 2})
    ->Args({8, 1024, 1})
    ->Args({8, 1024, 0})
    ->Args({1, 1024, 3})
    ->Apply(timing);
BENCHMARK(BM_CrossEntropy)
    ->ArgNames({"N", "V", "isa"})
    ->Args({2048, 50304, 2})
    ->Args({2048, 50304, 1})
    ->Args({2048, 50304, 0})
    ->Args({256, 50304, 3})
    ->Apply(timing);
BENCHMARK(BM_CrossEntropyFwdBwd)
    ->ArgNames({"N", "V", "isa"})
    ->Args({2048, 50304, 2})
    ->Args({2048, 50304, 1})
    ->Apply(timing);
BENCHMARK(BM_CrossEntropyBackward)
    ->ArgNames({"N", "V", "isa"})
    ->Args({2048, 50304, 2})
    ->Args({2048, 50304, 1})
    ->Apply(timing);
BENCHMARK(BM_Embedding)->ArgNames({"N", "C"})->Args({kRows, 768})->Apply(timing);
BENCHMARK(BM_EmbeddingBackward)->ArgNames({"N", "C"})->Args({kRows, 768})->Apply(timing);

BENCHMARK(BM_Kernel)
    ->ArgNames({"op", "rows", "cols"})
    ->Args({kSoftmax, kRows, 768})
    ->Args({kSoftmax, kRows, 4096})
    ->Args({kLayerNorm, kRows, 4096})
    ->Args({kRmsNorm, kRows, 4096})
    ->Args({kRmsNormBwd, kRows, 4096})
    ->Args({kRope, kRows * 12, 64})
    ->Args({kCe, 2048, 50304})
    ->Args({kCeBwd, 2048, 50304})
    ->Apply(timing);

// 8 x 1024 x 768 (a GPT-2 small activation) and 4x that (an MLP hidden activation).
BENCHMARK(BM_Add)->Arg(kRows * 768)->Arg(kRows * 3072)->Apply(timing);
BENCHMARK(BM_Mul)->Arg(kRows * 768)->Arg(kRows * 3072)->Apply(timing);
BENCHMARK(BM_AddBroadcast)->Args({kRows, 768})->Apply(timing);
BENCHMARK(BM_Gelu)->Arg(kRows * 768)->Arg(kRows * 3072)->Apply(timing);
BENCHMARK(BM_Silu)->Arg(kRows * 768)->Arg(kRows * 3072)->Apply(timing);

// The core bench binary is several files (matmul, NN ops); this main is weak so that a file
// defining its own BENCHMARK_MAIN() wins at link time, and the binary has exactly one main.
__attribute__((weak)) int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv))
        return 1;
    std::printf("memory-bandwidth ceiling (%s triad): %.1f GB/s\n",
                cpu_time_mode() ? "1-thread, CPU time" : "all threads, wall time", ceiling_gbs());
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
