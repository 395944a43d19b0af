// Maps a device type to its backend. The CPU backends register themselves here; CUDA's
// registers when it is built in.
#include <atomic>

#include "backends/backend.h"
#include "backends/cpu/cpu_backend.h"
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
        return t_reference_kernels ? static_cast<Backend&>(ref_cpu()) : fast_cpu();
    Backend* b = g_backends[int(device.type)];
#ifdef FORGE_HAS_CUDA
    if (!b && device.type == DeviceType::cuda) b = &cuda::backend();
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
} // namespace cuda
#endif

} // namespace forge
