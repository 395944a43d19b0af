// The ceiling for decode: how fast N threads can read memory. Each thread sums its own slice of
// a 256 MiB buffer (on 2 MiB pages where the kernel grants them, as Forge's weight arena is)
// with 4 independent 64-byte accumulators; best of 10 passes, GB/s = bytes read / wall time.
//   read_bw [THREADS...]   (default: 1 and 2)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include <immintrin.h>
#include <sys/mman.h>

namespace {

__attribute__((target("avx2"))) float sum_slice(const float* p, size_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 32 <= n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0] + out[1] + out[2] + out[3] + out[4] + out[5] + out[6] + out[7];
}

double best_gbps(const float* buf, size_t n, int threads) {
    double best = 0;
    std::vector<float> sink(static_cast<size_t>(threads));
    for (int pass = 0; pass < 10; ++pass) {
        const auto t0 = std::chrono::steady_clock::now();
        std::vector<std::thread> ts;
        const size_t per = n / size_t(threads) / 32 * 32;
        for (int t = 0; t < threads; ++t)
            ts.emplace_back([&, t] { sink[size_t(t)] = sum_slice(buf + size_t(t) * per, per); });
        for (auto& th : ts) th.join();
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        best = std::max(best, double(per) * threads * sizeof(float) / s / 1e9);
    }
    if (sink[0] == 12345.f) std::puts(""); // keep the sums alive
    return best;
}

} // namespace

int main(int argc, char** argv) {
    const size_t bytes = size_t(256) << 20, n = bytes / sizeof(float);
    void* mem = nullptr;
    if (posix_memalign(&mem, size_t(2) << 20, bytes) != 0) return 1;
    madvise(mem, bytes, MADV_HUGEPAGE);
    float* buf = static_cast<float*>(mem);
    for (size_t i = 0; i < n; ++i) buf[i] = float(i & 1023);
    std::vector<int> threads;
    for (int i = 1; i < argc; ++i) threads.push_back(std::atoi(argv[i]));
    if (threads.empty()) threads = {1, 2};
    for (int t : threads) std::printf("read bandwidth, %d thread(s): %.1f GB/s\n", t, best_gbps(buf, n, std::max(1, t)));
    std::free(mem);
}
