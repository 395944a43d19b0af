// FORGE_PROFILE=1: the CPU backend is wrapped in one that times every kernel call (wall time
// around the call, its parallel region included) and prints, when the process exits, a table of
// calls and milliseconds per kernel to stderr. The CUDA backend gets its own wrapper, which waits
// for the device before and after each call, so its times are the kernels' (and the waits make
// the profiled step slower than an unprofiled one: launches no longer overlap the GPU's work). What the table does not cover of a step's time
// is the op layer's own work: autograd bookkeeping, allocation, view arithmetic.
#pragma once

#include "backends/backend.h"

namespace forge::detail {

/// The profiling wrapper around `inner` when FORGE_PROFILE is set (one per process), else
/// `inner` itself.
Backend& maybe_profiled(Backend& inner);
/// The same for the CUDA backend: `synchronize` waits for the device (all of its work).
Backend& maybe_profiled_cuda(Backend& inner, void (*synchronize)());

} // namespace forge::detail
