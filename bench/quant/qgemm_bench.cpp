// Quantized GEMV (decode: one activation row) and GEMM (prefill) per weight type and instruction
// set, single-threaded, timed by the thread's CPU time (this box is shared). Counters: weight
// GB/s read (the ceiling for GEMV is the memory bandwidth) and GMAC/s.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include <forge/quant/ggml_types.h>

#include "backends/cpu/quant/packed_rows.h"
#include "backends/cpu/quant/qkernels.h"
#include "backends/cpu/simd/nn_kernels.h"

using namespace forge;
using forge::quant::GgmlType;
namespace cq = forge::cpu::quant;
namespace nn = forge::cpu::nn;

namespace {

// M x K weights of `type` (K = 768: a 120M Llama's width, 2048 its MLP's; M x K = 4.7M weights,
// 5 MB of Q8_0, past L2 so GEMV streams from L3/memory), N activation rows; x16: Q8_0 / Q4_0
// repacked as the engine holds them (packed_rows.h), else read in GGUF layout.
void BM_QGemm(benchmark::State& state) {
    const auto type = GgmlType(state.range(0));
    const int64_t N = state.range(1), isa = state.range(2), K = state.range(3), M = 6144 * 768 / K;
    const bool x16 = state.range(4) != 0;
    nn::IsaCapScope cap{static_cast<nn::Isa>(isa)};
    const int64_t rb = quant::row_bytes(type, K);
    std::vector<uint8_t> W(size_t(M * rb));
    std::mt19937 rng(1);
    std::normal_distribution<float> d(0.f, 1.f);
    std::vector<float> row(static_cast<size_t>(K));
    for (int64_t m = 0; m < M; ++m) {
        for (auto& v : row) v = d(rng);
        quant::quantize_row(type, row.data(), W.data() + m * rb, K);
    }
    if (x16) {
        std::vector<uint8_t> P(W.size());
        cq::pack_x16(type, W.data(), M, K, P.data());
        W = std::move(P);
    }
    const cq::ActLayout L = x16 ? cq::act_layout_s8(K) : cq::act_layout(type, K);
    std::vector<float> x(size_t(N * K));
    for (auto& v : x) v = d(rng);
    std::vector<uint8_t> A(size_t(N * L.row_bytes + 64));
    uint8_t* a = A.data() + (64 - reinterpret_cast<uintptr_t>(A.data()) % 64) % 64;
    std::vector<float> Y(size_t(N * M));
    for (auto _ : state) {
        cq::quantize_act(L, x.data(), K, N, a);
        if (x16) cq::gemm_x16(type, W.data(), M, 0, M, L, a, L.row_bytes, N, Y.data(), M);
        else cq::gemm(type, W.data(), rb, 0, M, L, a, L.row_bytes, N, Y.data(), M);
        benchmark::DoNotOptimize(Y.data());
    }
    state.counters["weight_GB/s"] =
        benchmark::Counter(double(M * rb) * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
    state.counters["GMAC/s"] = benchmark::Counter(double(M * K * N) * double(state.iterations()) / 1e9,
                                                  benchmark::Counter::kIsRate);
    state.SetLabel(std::string(quant::type_info(type).name) + (isa == 2 ? " avx512vnni" : isa == 1 ? " avx2" : " scalar") +
                   (x16 ? " x16" : ""));
}

void args(benchmark::internal::Benchmark* b) {
    for (GgmlType t : {GgmlType::f32, GgmlType::f16, GgmlType::q8_0, GgmlType::q4_0, GgmlType::q4_k})
        for (int64_t n : {1, 64})
            for (int64_t isa : {1, 2})
                for (int64_t k : {768, 2048}) {
                    b->Args({int64_t(t), n, isa, k, 0});
                    if (isa == 2 && cq::packable(t)) b->Args({int64_t(t), n, isa, k, 1});
                }
}

} // namespace

BENCHMARK(BM_QGemm)->Apply(args)->MeasureProcessCPUTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_MAIN();
