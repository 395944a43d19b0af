// Row addressing shared by the attention kernels (attention.cu, attention_tc.cu): q, k, v, out,
// dout, dq, dk, dv are (B, H, T, D) views whose last dim is contiguous, at any B, H, T strides,
// so a packed qkv (B, T, 3C) or an output in (B, T, H, D) order is read and written in place.
#pragma once

#include "backends/cuda/common.cuh"

namespace forge::cuda {

/// Element strides of a (B, H, T, D) view with unit stride in D.
struct HeadRows {
    int64_t b, h, t;
    /// Offset (elements) of row t of head h of batch b.
    __host__ __device__ __forceinline__ int64_t at(int64_t bi, int64_t hi, int64_t ti) const {
        return bi * b + hi * h + ti * t;
    }
};

/// t's strides; t must be 4-d with a unit stride in its last dim (or a last dim of 1).
inline HeadRows head_rows(const Tensor& t) {
    FORGE_ASSERT(t.dim() == 4 && (t.strides()[3] == 1 || t.size(3) == 1));
    return {t.strides()[0], t.strides()[1], t.strides()[2]};
}

} // namespace forge::cuda
