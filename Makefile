# The two commands a new user runs (see README.md):
#   make quickstart   set up, build, and run Forge's main job
#   make test         set up, build, and run every test but the CUDA ones (plus ASan/UBSan unit tests)
BUILD ?= build
ASAN_BUILD ?= build-asan
JOBS ?= $(shell nproc)

.PHONY: setup build quickstart test test-fast test-asan bench clean

setup:
	./scripts/setup.sh

build: setup
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j $(JOBS)

quickstart: build
	./scripts/quickstart.sh $(BUILD)

test-fast: build
	ctest --test-dir $(BUILD) -LE cuda --output-on-failure -j $(JOBS)

test-asan: setup
	cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFORGE_SANITIZE=ON \
	    -DFORGE_BUILD_BENCH=OFF
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	    ctest --test-dir $(ASAN_BUILD) -L unit --output-on-failure -j $(JOBS)

test: test-fast test-asan

bench: build
	./scripts/bench.sh $(BUILD)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)

# The CUDA build (FORGE_CUDA=ON, sm_90a): compiles libforge with src/backends/cuda, the CUDA
# tests and bench/cuda's binary. Needs nvcc (CUDA 13), not a GPU, so CI can run it; the tests
# themselves (ctest -L cuda) skip without a GPU. bench/cuda/*.sh run them on a GPU machine.
CUDA_BUILD ?= build-cuda
NVCC ?= $(shell command -v nvcc || echo /usr/local/cuda/bin/nvcc)
.PHONY: build-cuda
build-cuda: setup
	cmake -S . -B $(CUDA_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DFORGE_CUDA=ON \
	    -DCMAKE_CUDA_COMPILER=$(NVCC)
	cmake --build $(CUDA_BUILD) -j $(JOBS) --target forge forge_cli cuda_test cuda_bench cuda_gemv_bench
