// FORGE_PROFILE=1: the CPU backend is wrapped in one that times every kernel call (wall time
// around the call, its parallel region included) and prints, when the process exits, a table of
// calls and milliseconds per kernel to stderr. The CUDA backend gets its own wrapper, which
// records a device event before and after each call on the stream: its times are the GPU's
// (from the start of the call's first kernel to the end of its last, idle gaps inside a call
// included), and the host keeps running ahead as it does unprofiled; allocation is timed on the
// host. What the table does not cover of a step's time is the op layer's own work: autograd
// bookkeeping, view arithmetic, and on CUDA the GPU's idle time between calls.
#pragma once

#include "backends/backend.h"

namespace forge::detail {

/// The profiling wrapper around `inner` when FORGE_PROFILE is set (one per process), else
/// `inner` itself.
Backend& maybe_profiled(Backend& inner);
/// Device events for timing on the GPU: record() marks the stream's current position;
/// elapsed_ms(a, b) waits for b and returns the time between the two marks.
struct DeviceTimer {
    void* (*create)();
    void (*record)(void* event);
    float (*elapsed_ms)(void* a, void* b);
};

/// The same for the CUDA backend, timed with device events.
Backend& maybe_profiled_cuda(Backend& inner, DeviceTimer timer);

} // namespace forge::detail
