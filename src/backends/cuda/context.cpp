// Per-device contexts (stream, cuBLAS handle), CUDA error reporting and the public forge::cuda
// queries (availability, synchronize, TF32 switch). Memory is in allocator.cpp.
#include <atomic>
#include <cmath>
#include <memory>
#include <mutex>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "backends/cuda/cuda_backend.h"

namespace forge::cuda {

namespace {
constexpr int kMaxDevices = 16;
std::atomic<bool> g_allow_tf32{false};
std::atomic<bool> g_allow_rp_attention{false};
std::atomic<bool> g_autocast_bf16{false};
std::atomic<bool> g_autocast_f16{false};
thread_local int t_current = -1;
} // namespace

[[noreturn]] void throw_cuda_error(int code, const char* what, const char* file, int line) {
    throw DeviceError(std::string("[cuda] ") + what + " failed at " + file + ":" +
                      std::to_string(line) + ": " + cudaGetErrorName(cudaError_t(code)) + " (" +
                      cudaGetErrorString(cudaError_t(code)) + ")");
}

void check_launch(const char* op) {
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        throw DeviceError(std::string("[") + op + "] CUDA kernel launch failed: " +
                          cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); // clear the sticky "no device" error
        return 0;
    }
    return n;
}

bool is_available() { return device_count() > 0; }

Context& context(int device) {
    // Contexts live for the whole process (never destroyed: tensors freed during static
    // destruction may still need them).
    static std::mutex mu;
    static Context* contexts[kMaxDevices] = {};
    FORGE_CHECK(device >= 0 && device < kMaxDevices, "[cuda] device index ", device,
                " out of range");
    if (t_current != device) {
        const int n = device_count();
        FORGE_CHECK(device < n, "[cuda] device cuda:", device, " does not exist (", n,
                    " CUDA device", n == 1 ? "" : "s", " visible)");
        FORGE_CUDA_CHECK(cudaSetDevice(device));
        t_current = device;
    }
    std::lock_guard lock(mu);
    if (!contexts[device]) {
        auto* c = new Context;
        c->device = device;
        cudaStream_t s;
        FORGE_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
        c->stream = s;
        cublasHandle_t h;
        FORGE_CUDA_CHECK(cublasCreate(&h));
        FORGE_CUDA_CHECK(cublasSetStream(h, s));
        // cuBLAS's own workspace on our stream (Hopper wants 32 MiB), from cudaMalloc so it is
        // never handed to a tensor.
        c->workspace_bytes = size_t(32) << 20;
        FORGE_CUDA_CHECK(cudaMalloc(&c->workspace, c->workspace_bytes));
        FORGE_CUDA_CHECK(cublasSetWorkspace(h, c->workspace, c->workspace_bytes));
        c->cublas = h;
        cublasLtHandle_t lt;
        FORGE_CUDA_CHECK(cublasLtCreate(&lt));
        c->cublaslt = lt;
        contexts[device] = c;
    }
    return *contexts[device];
}

void* lt_handle(int device) { return context(device).cublaslt; }

void synchronize(int device) {
    if (!is_available()) return;
    FORGE_CUDA_CHECK(cudaStreamSynchronize(cudaStream_t(context(device).stream)));
}

void* timing_event_create() {
    cudaEvent_t e;
    FORGE_CUDA_CHECK(cudaEventCreate(&e));
    return e;
}

void timing_event_record(void* event) {
    FORGE_CUDA_CHECK(cudaEventRecord(cudaEvent_t(event), cudaStream_t(context(0).stream)));
}

float timing_event_ms(void* a, void* b) {
    float ms = 0;
    if (cudaEventSynchronize(cudaEvent_t(b)) != cudaSuccess ||
        cudaEventElapsedTime(&ms, cudaEvent_t(a), cudaEvent_t(b)) != cudaSuccess) {
        cudaGetLastError();
        return std::nanf("");
    }
    return ms;
}

void set_allow_tf32(bool on) { g_allow_tf32.store(on); }
bool allow_tf32() { return g_allow_tf32.load(); }
void set_allow_reduced_precision_attention(bool on) { g_allow_rp_attention.store(on); }
void set_autocast_bf16(bool on) { g_autocast_bf16.store(on); }
bool autocast_bf16() { return g_autocast_bf16.load(); }
void set_autocast_f16(bool on) {
    g_autocast_f16.store(on);
}
bool autocast_f16() {
    return g_autocast_f16.load();
}
bool allow_reduced_precision_attention() { return g_allow_rp_attention.load(); }

DeviceProperties device_properties(int device) {
    check_device(Device::cuda(device));
    cudaDeviceProp p{};
    FORGE_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
    DeviceProperties out;
    out.name = p.name;
    out.major = p.major;
    out.minor = p.minor;
    out.sm_count = p.multiProcessorCount;
    // cudaMemGetInfo reads the current device: switch for the call (no Forge context made).
    int prev = 0;
    FORGE_CUDA_CHECK(cudaGetDevice(&prev));
    FORGE_CUDA_CHECK(cudaSetDevice(device));
    const cudaError_t rc = cudaMemGetInfo(&out.free_memory, &out.total_memory);
    FORGE_CUDA_CHECK(cudaSetDevice(prev));
    FORGE_CUDA_CHECK(rc);
    return out;
}

CudaBackend& backend() {
    static CudaBackend b;
    return b;
}

} // namespace forge::cuda
