// Forge's own f32 GEMM for AVX-512 (kernels/sgemm_avx512.cpp), used by CpuBackend::matmul in
// place of OpenBLAS's sgemm where it measured faster: the small and mid-sized products of
// training small models (docs/PERF.md, "Session 9").
#pragma once

#include <cstdint>

namespace forge::cpu {

/// c (M x N, rows ldc apart) = a (M x K) b (K x N), single-threaded. Element (i, k) of a is at
/// a[i * rsa + k * csa] and element (k, j) of b at b[k * rsb + j * csb], where for each operand
/// one of its two strides is 1 (row- or column-major). Each c element is summed over k in
/// order, so the result does not depend on how callers split rows or columns between
/// threads. Needs AVX-512F.
void sgemm_avx512(int64_t M, int64_t N, int64_t K, const float* a, int64_t rsa, int64_t csa,
                  const float* b, int64_t rsb, int64_t csb, float* c, int64_t ldc);

} // namespace forge::cpu
