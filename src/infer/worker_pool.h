// A persistent pool of worker threads for the inference engine (no OpenMP anywhere in it).
// parallel_for hands out chunks of an index range through one atomic counter, so a thread that
// the OS preempts (this box's other core is often busy with other work) only delays the chunk it
// holds, while the others take the rest. Idle workers spin briefly (a decode step follows the
// previous one within microseconds), then sleep on an atomic wait, so a pool never burns a core
// between requests.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

namespace forge::infer {

class WorkerPool {
  public:
    /// n_threads counts the calling thread; <= 0: std::thread::hardware_concurrency().
    explicit WorkerPool(int n_threads);
    ~WorkerPool();
    WorkerPool(const WorkerPool&) = delete;
    WorkerPool& operator=(const WorkerPool&) = delete;

    int size() const { return n_threads_; }

    /// Calls fn(begin, end) over [0, n) in chunks of `grain` (the last may be shorter); chunk
    /// boundaries are multiples of grain, so with grain a multiple of 16 floats no two threads
    /// write one cache line of a row-major output. Returns when every chunk is done. Not
    /// reentrant: one parallel_for at a time per pool (callers serialize).
    void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

  private:
    void worker_loop();
    void run_chunks(uint64_t gen);

    int n_threads_;
    std::vector<std::thread> threads_;
    // The current job. Its fields change only once every chunk of the previous job is done, and
    // a worker reads them only after claiming a chunk, so a worker that wakes late (preempted)
    // never sees a half-published job: it finds the claim word of a newer generation and waits
    // again. The caller never waits for workers that claimed nothing.
    const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
    int64_t n_ = 0, grain_ = 1;
    // generation (24 bits) | chunk count (20 bits) | next chunk to hand out (20 bits)
    alignas(64) std::atomic<uint64_t> claim_{0};
    alignas(64) std::atomic<int64_t> done_chunks_{0};
    alignas(64) std::atomic<uint64_t> generation_{0};
    std::atomic<bool> stop_{false};
};

} // namespace forge::infer
