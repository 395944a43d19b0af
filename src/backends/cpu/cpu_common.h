// Shared plumbing of the CPU kernels: dtype dispatch to C++ types and strided iteration.
#pragma once

#include <array>
#include <cstdint>
#include <type_traits>

#include <forge/core/dtype.h>
#include <forge/core/error.h>
#include <forge/core/tensor.h>

namespace forge::cpu {

// Storage types of the half dtypes (conversions go through float).
struct f16_t {
    uint16_t bits;
};
struct bf16_t {
    uint16_t bits;
};

template <typename T> inline double load_as_double(T v) {
    if constexpr (std::is_same_v<T, f16_t>)
        return f16_to_f32(v.bits);
    else if constexpr (std::is_same_v<T, bf16_t>)
        return bf16_to_f32(v.bits);
    else
        return double(v);
}
template <typename T> inline T store_from_double(double v) {
    if constexpr (std::is_same_v<T, f16_t>)
        return f16_t{f32_to_f16(float(v))};
    else if constexpr (std::is_same_v<T, bf16_t>)
        return bf16_t{f32_to_bf16(float(v))};
    else
        return T(v);
}

/// Calls f.template operator()<T>() with T the C++ type of dtype.
template <typename F> decltype(auto) visit_dtype(DType t, F&& f) {
    switch (t) {
    case DType::f32: return f.template operator()<float>();
    case DType::f64: return f.template operator()<double>();
    case DType::f16: return f.template operator()<f16_t>();
    case DType::bf16: return f.template operator()<bf16_t>();
    case DType::i32: return f.template operator()<int32_t>();
    case DType::i64: return f.template operator()<int64_t>();
    case DType::u8: return f.template operator()<uint8_t>();
    }
    FORGE_ASSERT(false);
}

/// Like visit_dtype but only for f32 / f64 (the compute dtypes of float kernels).
template <typename F> decltype(auto) visit_float(DType t, F&& f) {
    if (t == DType::f32) return f.template operator()<float>();
    FORGE_ASSERT(t == DType::f64);
    return f.template operator()<double>();
}

/// Walks every element of `shape` for N operands with their own strides (in elements).
/// Calls row(offsets, n, inner_strides) once per innermost row: offsets are the element
/// offsets of the row's first element in each operand.
template <size_t N, typename Row>
void for_each_row(const Shape& shape, const std::array<const Shape*, N>& strides, Row&& row) {
    const int64_t rank = int64_t(shape.size());
    std::array<int64_t, N> inner{};
    if (rank == 0) {
        std::array<int64_t, N> off{};
        row(off, int64_t(1), inner);
        return;
    }
    for (size_t k = 0; k < N; ++k)
        inner[k] = (*strides[k])[rank - 1];
    const int64_t n_inner = shape[rank - 1];
    for (int64_t d = 0; d < rank; ++d)
        if (shape[d] == 0) return;
    std::vector<int64_t> idx(rank - 1, 0);
    std::array<int64_t, N> off{};
    while (true) {
        row(off, n_inner, inner);
        // advance the outer multi-index like an odometer
        int64_t d = rank - 2;
        for (; d >= 0; --d) {
            ++idx[d];
            for (size_t k = 0; k < N; ++k)
                off[k] += (*strides[k])[d];
            if (idx[d] < shape[d]) break;
            for (size_t k = 0; k < N; ++k)
                off[k] -= (*strides[k])[d] * shape[d];
            idx[d] = 0;
        }
        if (d < 0) break;
    }
}

} // namespace forge::cpu
