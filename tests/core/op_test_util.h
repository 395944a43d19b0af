// Test helpers for ops: compare the fast CPU kernels against the reference kernels, check
// gradients by finite differences, and compare tensors with a dtype-aware tolerance.
#pragma once

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "backends/backend.h"
#include <forge/autograd/autograd.h>
#include <forge/core/ops.h>
#include <forge/core/tensor.h>

namespace forge::test {

/// Max |a - b| / max(1, |b|) over all elements (shapes must match).
inline double max_rel_diff(const Tensor& a, const Tensor& b) {
    EXPECT_EQ(shape_str(a.shape()), shape_str(b.shape()));
    auto va = a.to(DType::f64).contiguous().to_vector<double>();
    auto vb = b.to(DType::f64).contiguous().to_vector<double>();
    double m = 0;
    for (size_t i = 0; i < va.size() && i < vb.size(); ++i) {
        if (std::isnan(va[i]) != std::isnan(vb[i])) return INFINITY;
        if (std::isnan(va[i])) continue;
        if (std::isinf(va[i]) || std::isinf(vb[i])) {
            if (va[i] != vb[i]) return INFINITY;
            continue;
        }
        m = std::max(m, std::abs(va[i] - vb[i]) / std::max(1.0, std::abs(vb[i])));
    }
    return m;
}

/// Default tolerance of a fast kernel against the reference, by dtype.
inline double dtype_tolerance(DType t) {
    switch (t) {
    case DType::f64: return 1e-12;
    case DType::f32: return 1e-5;
    case DType::f16: return 2e-3;
    case DType::bf16: return 1.6e-2;
    default: return 0;
    }
}

/// Runs f with the reference kernels and with the fast kernels; expects the outputs within tol.
inline void expect_fast_matches_ref(const std::string& what,
                                    const std::function<Tensor()>& f, double tol) {
    Tensor ref;
    {
        cpu::ReferenceKernelsScope scope(true);
        ref = f();
    }
    Tensor fast = f();
    double d = max_rel_diff(fast, ref);
    EXPECT_LE(d, tol) << what << ": fast kernel differs from reference by " << d;
}

/// gradcheck with a readable failure.
inline void expect_gradcheck(const std::string& what,
                             const std::function<Tensor(const std::vector<Tensor>&)>& f,
                             const std::vector<Tensor>& inputs, double tol = 1e-6) {
    GradcheckOptions opts;
    opts.tolerance = tol;
    auto r = gradcheck(f, inputs, opts);
    EXPECT_TRUE(r.ok) << what << ": gradcheck failed, max rel error " << r.max_rel_error << "\n"
                      << r.report;
}

/// f64 leaf with values N(0,1) from seed, requiring grad.
inline Tensor rand_leaf(const Shape& s, uint64_t seed, double scale = 1.0) {
    Tensor t = Tensor::randn(s, seed, DType::f64, 0.0, scale);
    t.set_requires_grad(true);
    return t;
}

/// Expects `f` to throw forge::Error whose message contains `needle`.
template <typename F> void expect_error(F&& f, const std::string& needle) {
    try {
        f();
        ADD_FAILURE() << "expected forge::Error containing '" << needle << "'";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
            << "message was: " << e.what();
    }
}

} // namespace forge::test
