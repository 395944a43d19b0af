// The batch-1 decode GEMVs (src/backends/cuda/decode_kernels.h) over bf16 and GGUF Q8_0 / Q4_0
// matrices, as the file's blocks and split into values | scales ("q8_0s", what CudaLM uses),
// each with f32 and int8 (dp4a) dot products: time per call and GB/s of the matrix bytes it reads,
// against a device-to-device copy measured in the same run (the ceiling). Copies of each matrix
// cycle so the working set
// (>= 1 GiB) stays out of L2: DRAM figures. 100 calls are captured in a CUDA graph and replayed,
// so host launch cost does not count (each call still pays its kernel's ramp-up and tail).
// Usage: cuda_gemv_bench (run by bench/cuda/decode_quant.sh).
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/decode_kernels.h"
#include <forge/core/device.h>
#include <forge/core/tensor.h>

using namespace forge;
namespace dk = forge::cuda::decode;

namespace {

const Device kCuda = Device::cuda(0);

#define CHECK(call)                                                                                \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            std::fprintf(stderr, "%s: %s\n", #call, cudaGetErrorString(e_));                       \
            std::exit(1);                                                                          \
        }                                                                                          \
    } while (0)

// Mean ms per call of `calls` enqueued by `body` on `stream`, as a graph replayed `reps` times.
template <class F> double graph_ms(cudaStream_t stream, int calls, int reps, F&& body) {
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
    for (int i = 0; i < calls; ++i)
        body(i);
    CHECK(cudaStreamEndCapture(stream, &g));
    CHECK(cudaGraphInstantiate(&ge, g, 0));
    CHECK(cudaGraphLaunch(ge, stream)); // warm-up
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    CHECK(cudaEventRecord(a, stream));
    for (int r = 0; r < reps; ++r)
        CHECK(cudaGraphLaunch(ge, stream));
    CHECK(cudaEventRecord(b, stream));
    CHECK(cudaEventSynchronize(b));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    cudaEventDestroy(a), cudaEventDestroy(b);
    cudaGraphExecDestroy(ge), cudaGraphDestroy(g);
    return double(ms) / (calls * reps);
}

struct Variant {
    const char* name;
    dk::WeightFormat format;
    bool int8_dot;
};

} // namespace

int main() {
    if (!cuda::is_available()) {
        std::printf("no CUDA device\n");
        return 1;
    }
    auto stream = cudaStream_t(cuda::context(0).stream);
    // Ceiling: 1 GiB copied device to device (bytes read per second; the copy also writes them).
    const int64_t copy_bytes = int64_t(1) << 30;
    Tensor src = Tensor::zeros({copy_bytes}, DType::u8, kCuda);
    Tensor dst = Tensor::zeros({copy_bytes}, DType::u8, kCuda);
    const double copy_ms = graph_ms(stream, 4, 5, [&](int) {
        CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), size_t(copy_bytes),
                              cudaMemcpyDeviceToDevice, stream));
    });
    const double ceiling = double(copy_bytes) / copy_ms / 1e6; // bytes read per second
    std::printf("device copy 1 GiB: %.3f ms, %.0f GB/s read + write (%.0f GB/s read); GEMV "
                "percentages below are of the read + write rate\n",
                copy_ms, 2 * ceiling, ceiling);
    src = Tensor(), dst = Tensor();

    struct Shape {
        const char* name;
        int n, k;
    };
    const Shape shapes[] = {
        {"gpt2 qkv", 2304, 768},     {"gpt2 proj", 768, 768},       {"gpt2 fc", 3072, 768},
        {"gpt2 fc2", 768, 3072},     {"gpt2 head", 50257, 768},     {"4096x4096", 4096, 4096},
        {"llama8b up", 14336, 4096}, {"llama8b down", 4096, 14336}, {"llama8b head", 128256, 4096}};
    const Variant variants[] = {{"bf16", dk::WeightFormat::bf16, false},
                                {"q8_0 f32", dk::WeightFormat::q8_0, false},
                                {"q8_0 dp4a", dk::WeightFormat::q8_0, true},
                                {"q4_0 f32", dk::WeightFormat::q4_0, false},
                                {"q4_0 dp4a", dk::WeightFormat::q4_0, true},
                                {"q8_0s f32", dk::WeightFormat::q8_0_split, false},
                                {"q8_0s dp4a", dk::WeightFormat::q8_0_split, true},
                                {"q4_0s f32", dk::WeightFormat::q4_0_split, false},
                                {"q4_0s dp4a", dk::WeightFormat::q4_0_split, true}};
    for (const Shape& s : shapes) {
        Tensor x = Tensor::randn({s.k}, 1, DType::f32).to(kCuda);
        Tensor y = Tensor::zeros({s.n}, DType::f32, kCuda);
        for (const Variant& v : variants) {
            const int64_t bytes = dk::weight_bytes(v.format, s.n, s.k);
            const int64_t copies = std::max<int64_t>(1, (int64_t(1) << 30) / bytes);
            // Zero bits: the kernels' speed does not depend on the values.
            Tensor w = Tensor::zeros({copies * bytes}, DType::u8, kCuda);
            const auto* base = static_cast<const uint8_t*>(w.data_ptr());
            const double ms = graph_ms(stream, 100, 5, [&](int i) {
                dk::gemv({.w = base + (i % copies) * bytes,
                          .n = s.n,
                          .k = s.k,
                          .format = v.format,
                          .int8_dot = v.int8_dot,
                          .x = x.data<float>(),
                          .out = y.data<float>()},
                         stream);
            });
            const double gbs = double(bytes) / ms / 1e6;
            std::printf("gemv %-13s %6d x %-6d %-10s %8.2f us %7.0f GB/s (%3.0f%% of copy), %.2f "
                        "MB\n",
                        s.name, s.n, s.k, v.name, ms * 1e3, gbs, 100 * gbs / (2 * ceiling),
                        double(bytes) / 1e6);
            std::fflush(stdout);
        }
    }
    return 0;
}
