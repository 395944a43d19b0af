// <immintrin.h> for the gemm_bf16 ISA files. GCC 12 warns inside avx512fintrin.h about the
// _mm512_undefined_*() of its own intrinsics (GCC bug 105593); the state that counts is the one
// at the header's lines.
#pragma once

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
