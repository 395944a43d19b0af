// Device memory: a caching allocator, its stats, and host <-> device transfers.
// Blocks are rounded to size classes (512 B steps below 1 MiB, then 8 classes per power of
// two, so at most 12.5% is wasted) and a freed block goes to a per-device free list instead of
// cudaFree. Every kernel of a device runs on its one stream, so a block freed on the host can
// be handed to the next tensor at once: its old readers are queued before its new writers
// (stream-ordered reuse). cudaMalloc failing frees the cache and retries once, then throws an
// out-of-memory error with what was asked and what is in use.
#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>

#include <cuda_runtime.h>

#include "backends/cuda/cuda_backend.h"

namespace forge::cuda {

namespace {

constexpr int kMaxDevices = 16;
constexpr size_t kSmall = size_t(1) << 20;

size_t size_class(size_t n) {
    n = std::max<size_t>(n, 1);
    if (n < kSmall) return (n + 511) / 512 * 512;
    const int top = 63 - __builtin_clzll(n);
    const size_t step = size_t(1) << (top - 3);
    return (n + step - 1) / step * step;
}

struct Pool {
    std::mutex mu;
    std::multimap<size_t, void*> free_blocks; // size class -> block
    size_t allocated = 0, reserved = 0, peak = 0;

    // Called with mu held.
    void release_cached() {
        for (auto& [n, p] : free_blocks) {
            cudaFree(p);
            reserved -= n;
        }
        free_blocks.clear();
    }
};

Pool& pool(int device) {
    // Leaked on purpose: storages freed during static destruction still return here.
    static Pool* pools = new Pool[kMaxDevices];
    return pools[device];
}

std::string mib(size_t n) { return std::to_string(double(n) / double(1 << 20)) + " MiB"; }

} // namespace

std::shared_ptr<Storage> CudaBackend::allocate(size_t nbytes, Device device) {
    const int dev = device.index;
    context(dev); // validates the index and makes the device current
    const size_t cls = size_class(nbytes);
    Pool& p = pool(dev);
    void* ptr = nullptr;
    {
        std::lock_guard lock(p.mu);
        auto it = p.free_blocks.find(cls);
        if (it != p.free_blocks.end()) {
            ptr = it->second;
            p.free_blocks.erase(it);
        } else {
            if (cudaMalloc(&ptr, cls) != cudaSuccess) {
                cudaGetLastError();
                // Give the cached blocks back (waiting for their last users) and retry.
                cudaStreamSynchronize(cudaStream_t(context(dev).stream));
                p.release_cached();
                if (cudaMalloc(&ptr, cls) != cudaSuccess) {
                    cudaGetLastError();
                    size_t free_b = 0, total_b = 0;
                    cudaMemGetInfo(&free_b, &total_b);
                    throw DeviceError(
                        "[cuda] out of memory on " + device.str() + ": asked for " +
                            std::to_string(nbytes) + " bytes (" + mib(cls) + " block); " +
                            mib(p.allocated) + " held by tensors, " + mib(p.reserved) +
                            " reserved by Forge, " + mib(free_b) + " free of " + mib(total_b) +
                            " on the device",
                        "use a smaller batch or sequence length, or free tensors you keep");
                }
            }
            p.reserved += cls;
        }
        p.allocated += cls;
        p.peak = std::max(p.peak, p.allocated);
    }
    return std::make_shared<Storage>(ptr, nbytes, device, [dev, cls](void* q) {
        Pool& pl = pool(dev);
        std::lock_guard lock(pl.mu);
        pl.allocated -= cls;
        pl.free_blocks.emplace(cls, q);
    });
}

MemoryStats memory_stats(int device) {
    if (device < 0 || device >= kMaxDevices) return {};
    Pool& p = pool(device);
    std::lock_guard lock(p.mu);
    return {p.allocated, p.reserved, p.peak};
}

void reset_peak_memory(int device) {
    if (device < 0 || device >= kMaxDevices) return;
    Pool& p = pool(device);
    std::lock_guard lock(p.mu);
    p.peak = p.allocated;
}

void empty_cache(int device) {
    if (device < 0 || device >= kMaxDevices || !is_available()) return;
    Context& c = context(device);
    FORGE_CUDA_CHECK(cudaStreamSynchronize(cudaStream_t(c.stream)));
    Pool& p = pool(device);
    std::lock_guard lock(p.mu);
    p.release_cached();
}

// ---------------------------------------------------------------- host <-> device

namespace {

// Two pinned buffers per device: large transfers go through them in chunks, so the DMA runs at
// full speed (pageable copies are staged by the driver at a fraction of it) and the host memcpy
// of one chunk overlaps the DMA of the other.
constexpr size_t kChunk = size_t(8) << 20;
constexpr size_t kPinnedMin = size_t(1) << 20;

struct Staging {
    std::mutex mu;
    void* buf[2] = {nullptr, nullptr};
    cudaEvent_t done[2];
    bool ready = false;
};

Staging& staging(int device) {
    static Staging* s = new Staging[kMaxDevices];
    return s[device];
}

// Called with st.mu held.
void init_staging(Staging& st) {
    if (!st.ready) {
        for (int i = 0; i < 2; ++i) {
            FORGE_CUDA_CHECK(cudaMallocHost(&st.buf[i], kChunk));
            FORGE_CUDA_CHECK(cudaEventCreateWithFlags(&st.done[i], cudaEventDisableTiming));
        }
        st.ready = true;
    }
}

} // namespace

// src or dst on the host; both contiguous, one dtype.
void copy_host_device(const Tensor& src, const Tensor& dst) {
    const bool to_device = dst.device().type == DeviceType::cuda;
    const Tensor& dev_t = to_device ? dst : src;
    Context& c = context(dev_t);
    cudaStream_t s = cudaStream_t(c.stream);
    const size_t n = dst.nbytes();
    if (n == 0) return;
    char* d = static_cast<char*>(dst.data_ptr());
    const char* h = static_cast<const char*>(src.data_ptr());
    if (n < kPinnedMin) {
        FORGE_CUDA_CHECK(cudaMemcpyAsync(d, h, n, to_device ? cudaMemcpyHostToDevice
                                                            : cudaMemcpyDeviceToHost, s));
        // A pageable copy returns once the host buffer may be reused; the sync makes the device
        // -> host data visible.
        if (!to_device) FORGE_CUDA_CHECK(cudaStreamSynchronize(s));
        return;
    }
    Staging& st = staging(c.device);
    std::lock_guard lock(st.mu);
    init_staging(st);
    const size_t n_chunks = (n + kChunk - 1) / kChunk;
    if (to_device) {
        for (size_t i = 0; i < n_chunks; ++i) {
            const int b = int(i & 1);
            const size_t off = i * kChunk, len = std::min(kChunk, n - off);
            FORGE_CUDA_CHECK(cudaEventSynchronize(st.done[b])); // buffer b's last DMA is done
            std::memcpy(st.buf[b], h + off, len);
            FORGE_CUDA_CHECK(cudaMemcpyAsync(d + off, st.buf[b], len, cudaMemcpyHostToDevice, s));
            FORGE_CUDA_CHECK(cudaEventRecord(st.done[b], s));
        }
        // Asynchronous from here: the staging buffers guard themselves with their events.
        return;
    }
    // Device -> host: queue chunk i+1's DMA before copying chunk i out of its buffer.
    auto issue = [&](size_t i) {
        const int b = int(i & 1);
        const size_t off = i * kChunk, len = std::min(kChunk, n - off);
        FORGE_CUDA_CHECK(cudaMemcpyAsync(st.buf[b], h + off, len, cudaMemcpyDeviceToHost, s));
        FORGE_CUDA_CHECK(cudaEventRecord(st.done[b], s));
    };
    issue(0);
    for (size_t i = 0; i < n_chunks; ++i) {
        if (i + 1 < n_chunks) issue(i + 1);
        const int b = int(i & 1);
        const size_t off = i * kChunk, len = std::min(kChunk, n - off);
        FORGE_CUDA_CHECK(cudaEventSynchronize(st.done[b]));
        std::memcpy(d + off, st.buf[b], len);
    }
}

} // namespace forge::cuda
