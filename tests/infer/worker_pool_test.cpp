// The engine's worker pool: every index once per job, chunk boundaries on grain multiples,
// thousands of back-to-back jobs (the decode pattern), and more threads than cores.
#include "infer/worker_pool.h"

#include <atomic>
#include <vector>

#include <gtest/gtest.h>

using forge::infer::WorkerPool;

TEST(WorkerPool, EveryIndexOnceAlignedChunks) {
    for (int threads : {1, 2, 5}) {
        WorkerPool pool(threads);
        EXPECT_EQ(pool.size(), threads);
        for (int64_t n : {1, 15, 16, 17, 1000}) {
            std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
            std::atomic<bool> aligned{true};
            pool.parallel_for(n, 16, [&](int64_t b, int64_t e) {
                if (b % 16 != 0 || (e != n && e % 16 != 0)) aligned = false;
                for (int64_t i = b; i < e; ++i) hits[size_t(i)].fetch_add(1);
            });
            for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[size_t(i)].load(), 1) << n << " " << i;
            EXPECT_TRUE(aligned.load());
        }
    }
}

TEST(WorkerPool, ManyBackToBackJobs) {
    WorkerPool pool(3);
    std::atomic<int64_t> sum{0};
    for (int job = 0; job < 5000; ++job)
        pool.parallel_for(64, 4, [&](int64_t b, int64_t e) {
            for (int64_t i = b; i < e; ++i) sum.fetch_add(i);
        });
    EXPECT_EQ(sum.load(), 5000 * (63 * 64 / 2));
    pool.parallel_for(0, 4, [&](int64_t, int64_t) { sum = -1; }); // empty range: no call
    EXPECT_NE(sum.load(), -1);
}
