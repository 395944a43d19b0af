// Where a tensor lives: the CPU or a CUDA device (the second backend, src/backends/cuda).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace forge {

enum class DeviceType : uint8_t { cpu, cuda };

struct Device {
    DeviceType type = DeviceType::cpu;
    int index = 0;

    static Device cpu() { return {DeviceType::cpu, 0}; }
    static Device cuda(int i = 0) { return {DeviceType::cuda, i}; }
    /// Parses "cpu", "cuda", "cuda:1".
    static Device parse(const std::string& s);
    std::string str() const;
    bool operator==(const Device&) const = default;
};

/// The CUDA devices (backend in src/backends/cuda; built with -DFORGE_CUDA=ON). In a build
/// without CUDA, is_available() is false, device_count() 0 and the stats are zero.
namespace cuda {
/// True when this build has the CUDA backend and at least one GPU is visible.
bool is_available();
int device_count();
/// Bytes of device memory: held by live tensors (allocated), taken from the driver by the
/// caching allocator (reserved = allocated + cached free blocks), and the most allocated since
/// the last reset (peak).
struct MemoryStats {
    size_t allocated = 0;
    size_t reserved = 0;
    size_t peak = 0;
};
MemoryStats memory_stats(int device = 0);
void reset_peak_memory(int device = 0);
/// Returns the allocator's cached free blocks to the driver.
void empty_cache(int device = 0);
/// Blocks until all work queued on the device's stream has finished.
void synchronize(int device = 0);
/// Lets f32 matmuls use TF32 tensor cores (about 1e-3 relative error). Off by default.
void set_allow_tf32(bool on);
bool allow_tf32();
} // namespace cuda

} // namespace forge
