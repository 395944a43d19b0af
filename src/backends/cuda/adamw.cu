// Fused multi-tensor AdamW: every parameter of a step in one launch. The host packs one
// descriptor per tensor and one (tensor, chunk) entry per block into a device buffer, so a
// model of hundreds of small tensors costs one launch, not four op launches per tensor.
// The update is the CPU fast path's formula in src/train/optimizer.cpp, in f32.
#include "backends/cuda/common.cuh"

namespace forge::cuda {

namespace {

constexpr int64_t kChunk = 8192; // elements per block

struct BlockJob {
    int32_t tensor;
    int64_t start;
};

__global__ void adamw_kernel(const AdamWTensor* __restrict__ ts, const BlockJob* __restrict__ jobs,
                             float b1, float b2, float a1, float a2, float step_size,
                             float bc2_sqrt, float eps) {
    const BlockJob job = jobs[blockIdx.x];
    const AdamWTensor t = ts[job.tensor];
    const int64_t end = min64(t.n, job.start + kChunk);
    for (int64_t k = job.start + threadIdx.x; k < end; k += blockDim.x) {
        const float g = t.g[k];
        const float m = t.m[k] * b1 + g * a1;
        const float v = t.v[k] * b2 + g * g * a2;
        t.m[k] = m;
        t.v[k] = v;
        const float denom = sqrtf(v) / bc2_sqrt + eps;
        t.w[k] = t.w[k] * t.decay - step_size * (m / denom);
    }
}

} // namespace

void adamw_multi_tensor(int device, const std::vector<AdamWTensor>& ts, float b1, float b2,
                        float a1, float a2, float step_size, float bc2_sqrt, float eps) {
    if (ts.empty()) return;
    std::vector<BlockJob> jobs;
    for (size_t i = 0; i < ts.size(); ++i)
        for (int64_t s = 0; s < ts[i].n; s += kChunk)
            jobs.push_back({int32_t(i), s});
    if (jobs.empty()) return;
    FORGE_CHECK(jobs.size() < size_t(INT32_MAX), "[adamw] too many parameter chunks");
    Context& c = context(device);
    cudaStream_t s = cudaStream_t(c.stream);
    const size_t ts_bytes = ts.size() * sizeof(AdamWTensor);
    const size_t jobs_off = (ts_bytes + 15) / 16 * 16;
    const size_t bytes = jobs_off + jobs.size() * sizeof(BlockJob);
    // Pack both tables in one host buffer and one copy (a pageable copy returns once the host
    // buffer has been read).
    std::vector<unsigned char> host(bytes);
    std::memcpy(host.data(), ts.data(), ts_bytes);
    std::memcpy(host.data() + jobs_off, jobs.data(), jobs.size() * sizeof(BlockJob));
    auto buf = backend().allocate(bytes, Device::cuda(device));
    FORGE_CUDA_CHECK(cudaMemcpyAsync(buf->data, host.data(), bytes, cudaMemcpyHostToDevice, s));
    auto* d = static_cast<unsigned char*>(buf->data);
    adamw_kernel<<<unsigned(jobs.size()), 256, 0, s>>>(
        reinterpret_cast<const AdamWTensor*>(d), reinterpret_cast<const BlockJob*>(d + jobs_off),
        b1, b2, a1, a2, step_size, bc2_sqrt, eps);
    check_launch("adamw");
}

} // namespace forge::cuda
