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
