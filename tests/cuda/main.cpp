// The CUDA tests' main: exits with 77 (ctest's SKIP_RETURN_CODE) and a message when this
// machine has no CUDA device, so CPU-only machines report them skipped, not failed.
#include <cstdio>

#include <gtest/gtest.h>

#include <forge/core/device.h>

int main(int argc, char** argv) {
    ::testing::InitGoogleTest(&argc, argv);
    if (!forge::cuda::is_available()) {
        std::printf("SKIPPED: no CUDA device visible (forge::cuda::device_count() == 0); the CUDA "
                    "tests need a GPU\n");
        return 77;
    }
    return RUN_ALL_TESTS();
}
