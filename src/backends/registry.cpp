// Maps a device type to its backend. The CPU backends register themselves here; CUDA's
// registers when it is built in.
#include <atomic>

#include "backends/backend.h"
#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/kernels/gemm_bf16.h"
#include "backends/profiling_backend.h"
#ifdef FORGE_HAS_CUDA
#include "backends/cuda/cuda_backend.h"
#endif

namespace forge {

namespace {
Backend* g_backends[2] = {nullptr, nullptr};
thread_local bool t_reference_kernels = false;

cpu::CpuBackend& fast_cpu() {
    static cpu::CpuBackend b;
    return b;
}
cpu::CpuRefBackend& ref_cpu() {
    static cpu::CpuRefBackend b;
    return b;
}
} // namespace

void register_backend(DeviceType type, Backend* backend) { g_backends[int(type)] = backend; }

Backend& backend_for(Device device) {
    if (device.type == DeviceType::cpu)
        return t_reference_kernels ? static_cast<Backend&>(ref_cpu())
                                   : detail::maybe_profiled(fast_cpu());
    Backend* b = g_backends[int(device.type)];
#ifdef FORGE_HAS_CUDA
    if (!b && device.type == DeviceType::cuda)
        b = &detail::maybe_profiled_cuda(
            cuda::backend(), {cuda::timing_event_create, cuda::timing_event_record,
                              cuda::timing_event_ms});
#endif
    if (!b)
        throw DeviceError("no backend for device " + device.str() +
                              ": this build of Forge has no CUDA support",
                          "rebuild with -DFORGE_CUDA=ON on a machine with the CUDA toolkit");
    return *b;
}

namespace cpu {
void set_reference_kernels(bool on) { t_reference_kernels = on; }
bool reference_kernels() { return t_reference_kernels; }
} // namespace cpu

namespace cuda {
bool is_built() {
#ifdef FORGE_HAS_CUDA
    return true;
#else
    return false;
#endif
}

void check_device(Device device) {
    if (device.type == DeviceType::cpu) return;
    if (!is_built())
        throw DeviceError("device " + device.str() + ": this build of Forge has no CUDA support",
                          "rebuild with -DFORGE_CUDA=ON (make build-cuda) on a machine with "
                          "the CUDA toolkit, or use --device cpu");
    const int n = device_count();
    if (n == 0)
        throw DeviceError("device " + device.str() + ": no CUDA GPU is visible",
                          "check nvidia-smi and CUDA_VISIBLE_DEVICES, or use --device cpu");
    if (device.index >= n)
        throw DeviceError("device " + device.str() + " does not exist: " + std::to_string(n) +
                              " CUDA device" + (n == 1 ? "" : "s") + " visible (cuda:0" +
                              (n > 1 ? "..cuda:" + std::to_string(n - 1) : "") + ")");
}

PrecisionScope::PrecisionScope(const std::string& precision)
    : tf32_(allow_tf32()), bf16_(autocast_bf16()), f16_(autocast_f16()) {
    FORGE_CHECK(precision == "f32" || precision == "tf32" || precision == "bf16" ||
                    precision == "f16",
                "unknown precision '", precision, "' (expected f32, tf32, bf16 or f16)");
    set_allow_tf32(precision == "tf32");
    set_autocast_bf16(precision == "bf16");
    set_autocast_f16(precision == "f16");
}
PrecisionScope::~PrecisionScope() {
    set_allow_tf32(tf32_);
    set_autocast_bf16(bf16_);
    set_autocast_f16(f16_);
}
} // namespace cuda

// -------------------------------------------------------------------- CPU bf16 autocast

namespace {
std::atomic<bool> g_cpu_autocast_bf16{false};
}
void set_cpu_autocast_bf16(bool on) { g_cpu_autocast_bf16.store(on); }
bool cpu_autocast_bf16() { return g_cpu_autocast_bf16.load(); }
std::string cpu_bf16_matmul_path() {
    switch (cpu::bf16_gemm_kind()) {
    case cpu::Bf16Gemm::amx: return "amx";
    case cpu::Bf16Gemm::avx512_bf16: return "avx512_bf16";
    case cpu::Bf16Gemm::none: break;
    }
    return "";
}

DevicePrecisionScope::DevicePrecisionScope(const std::string& precision, Device device)
    : device_(device), cpu_bf16_(cpu_autocast_bf16()) {
    if (device.type == DeviceType::cuda) {
        cuda_.emplace(precision);
        return;
    }
    FORGE_CHECK(precision == "f32" || precision == "bf16", "precision '", precision,
                "' is not available on the CPU (expected f32 or bf16; tf32 and f16 are CUDA's)");
    set_cpu_autocast_bf16(precision == "bf16");
}
DevicePrecisionScope::~DevicePrecisionScope() {
    if (device_.type == DeviceType::cpu) set_cpu_autocast_bf16(cpu_bf16_);
}

#ifndef FORGE_HAS_CUDA
// This build has no CUDA backend: no devices, nothing allocated.
namespace cuda {
bool is_available() { return false; }
int device_count() { return 0; }
MemoryStats memory_stats(int) { return {}; }
void reset_peak_memory(int) {}
void empty_cache(int) {}
void synchronize(int) {}
void set_allow_tf32(bool) {}
bool allow_tf32() { return false; }
void set_autocast_bf16(bool) {}
bool autocast_bf16() { return false; }
void set_autocast_f16(bool) {}
bool autocast_f16() {
    return false;
}
void set_allow_reduced_precision_attention(bool) {}
bool allow_reduced_precision_attention() { return false; }
DeviceProperties device_properties(int) { return {}; }
} // namespace cuda
#endif

} // namespace forge
