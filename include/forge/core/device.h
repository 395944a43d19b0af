// Where a tensor lives: the CPU or a CUDA device (the second backend, src/backends/cuda).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
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
/// Lets attention on f32 tensors run the bf16 tensor-core flash kernel (inputs rounded to
/// bf16 inside the kernel, f32 accumulation and softmax: about 1e-2 relative error) for head
/// dims 64 and 128. Off by default: f32 attention is exact f32 on CUDA cores.
void set_allow_reduced_precision_attention(bool on);
bool allow_reduced_precision_attention();
/// bf16 autocast for f32 tensors on CUDA (mixed-precision training): matmuls round their
/// operands to bf16 and run on bf16 tensor cores with f32 accumulation; linear() and
/// layer_norm() store their outputs in bf16 (they only feed GEMMs), attention runs the bf16
/// tensor-core kernel. Norm statistics, softmax, cross-entropy, the residual stream and the
/// optimizer stay f32, and so do the weights (the f32 master copy), gradients and optimizer
/// state. Off by default.
void set_autocast_bf16(bool on);
bool autocast_bf16();
/// f16 autocast for f32 tensors on CUDA, as bf16's above (operands rounded to f16; f16 tensor
/// cores with f32 accumulation). Attention runs the same tensor-core kernel as under bf16,
/// which rounds its inputs to bf16 (no f16 attention kernel is built). f16's range ends at
/// 65504, so training needs loss scaling (TrainOptions::loss_scale). Off by default.
void set_autocast_f16(bool on);
bool autocast_f16();
/// The numerics of f32 work on CUDA, by name: "f32" (exact), "tf32" (TF32 matmuls), "bf16" or
/// "f16" (autocasts above). RAII: applies one for a scope and restores the previous switches.
class PrecisionScope {
  public:
    explicit PrecisionScope(const std::string& precision);
    ~PrecisionScope();
    PrecisionScope(const PrecisionScope&) = delete;
    PrecisionScope& operator=(const PrecisionScope&) = delete;

  private:
    bool tf32_, bf16_, f16_;
};
} // namespace cuda

/// bf16 autocast for f32 matmuls on the CPU (mixed-precision training, as
/// torch.autocast("cpu", torch.bfloat16) does for matmuls): operands rounded to bf16, products
/// summed in f32, f32 output, on AMX-BF16 tiles or AVX512_BF16 dot products. Matmuls of at most
/// 16 rows (decode steps) stay f32, and so do attention, norms, softmax, cross-entropy,
/// element-wise ops, weights, gradients and optimizer state. Off by default.
void set_cpu_autocast_bf16(bool on);
bool cpu_autocast_bf16();
/// This CPU's bf16 matmul path: "amx", "avx512_bf16", or "" when it has neither (autocast
/// would then run plain loops, slower than f32, so training refuses --dtype bf16 there).
std::string cpu_bf16_matmul_path();

/// The numerics of f32 work, by name, on the device that does it: on CUDA "f32" (exact),
/// "tf32" (TF32 matmuls), "bf16" (cuda::set_autocast_bf16) or "f16" (cuda::set_autocast_f16);
/// on the CPU "f32" or "bf16"
/// (set_cpu_autocast_bf16). RAII: applies one for a scope and restores the previous switches.
class DevicePrecisionScope {
  public:
    DevicePrecisionScope(const std::string& precision, Device device);
    ~DevicePrecisionScope();
    DevicePrecisionScope(const DevicePrecisionScope&) = delete;
    DevicePrecisionScope& operator=(const DevicePrecisionScope&) = delete;

  private:
    Device device_;
    bool cpu_bf16_;
    std::optional<cuda::PrecisionScope> cuda_;
};

namespace cuda {
/// The GPU as the driver reports it (all zero / empty in a build without CUDA).
struct DeviceProperties {
    std::string name;
    int major = 0, minor = 0; ///< compute capability
    int sm_count = 0;
    size_t total_memory = 0, free_memory = 0;
};
DeviceProperties device_properties(int device = 0);
/// True when this build of Forge has the CUDA backend compiled in (a GPU may still be absent).
bool is_built();
/// Throws DeviceError saying why `device` cannot run kernels here (no CUDA build, no GPU, index
/// out of range); does nothing for the CPU or a usable GPU.
void check_device(Device device);
} // namespace cuda

} // namespace forge
