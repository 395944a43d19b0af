// The SIMD level this CPU runs, decided once at run time. Kernels compiled for AVX2 or
// AVX-512 (files *_avx2.cpp / *_avx512.cpp) are called only when isa() allows it.
#pragma once

namespace forge::cpu {

enum class Isa { scalar, avx2, avx512 };

inline Isa isa() {
    static const Isa level = [] {
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
            return Isa::avx512;
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
            __builtin_cpu_supports("f16c"))
            return Isa::avx2;
        return Isa::scalar;
    }();
    return level;
}

} // namespace forge::cpu
