// Helpers of the CUDA tests: move tensors and modules to the GPU, run a function on the CPU
// reference kernels and on CUDA, compare. Every check's oracle is the CPU backend.
#pragma once

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "backends/backend.h"
#include <forge/autograd/autograd.h>
#include <forge/core/device.h>
#include <forge/core/ops.h>
#include <forge/core/tensor.h>
#include <forge/nn/module.h>

namespace forge::test {

inline const Device kCuda = Device::cuda(0);

/// Max |a - b| / max(1, |b|) (a, b on any device; NaN/inf must agree).
inline double max_rel_diff(const Tensor& a, const Tensor& b) {
    EXPECT_EQ(shape_str(a.shape()), shape_str(b.shape()));
    auto va = a.detach().to(DType::f64).to_vector<double>();
    auto vb = b.detach().to(DType::f64).to_vector<double>();
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

/// ||a - b|| / ||b||.
inline double norm_rel_diff(const Tensor& a, const Tensor& b) {
    auto va = a.detach().to(DType::f64).to_vector<double>();
    auto vb = b.detach().to(DType::f64).to_vector<double>();
    EXPECT_EQ(va.size(), vb.size());
    double d = 0, n = 0;
    for (size_t i = 0; i < va.size() && i < vb.size(); ++i) {
        d += (va[i] - vb[i]) * (va[i] - vb[i]);
        n += vb[i] * vb[i];
    }
    return std::sqrt(d) / std::max(std::sqrt(n), 1e-30);
}

inline double tol_of(DType t) {
    switch (t) {
    case DType::f64: return 1e-12;
    case DType::f32: return 1e-5;
    case DType::f16: return 2e-3;
    case DType::bf16: return 1e-2;
    default: return 0;
    }
}

/// f(device) on the CPU reference kernels and on CUDA: the outputs must agree within tol.
/// f builds its inputs on the CPU (seeded) and moves them to the device it is given.
inline void expect_cuda_matches_cpu(const std::string& what,
                                    const std::function<std::vector<Tensor>(Device)>& f,
                                    double tol) {
    std::vector<Tensor> ref;
    {
        cpu::ReferenceKernelsScope scope(true);
        ref = f(Device::cpu());
    }
    std::vector<Tensor> got = f(kCuda);
    ASSERT_EQ(ref.size(), got.size()) << what;
    for (size_t i = 0; i < ref.size(); ++i) {
        if (!ref[i].defined()) {
            EXPECT_FALSE(got[i].defined()) << what << " output " << i;
            continue;
        }
        ASSERT_TRUE(got[i].defined()) << what << " output " << i;
        EXPECT_EQ(got[i].device(), kCuda) << what << " output " << i;
        EXPECT_EQ(dtype_name(got[i].dtype()), dtype_name(ref[i].dtype())) << what;
        const double d = max_rel_diff(got[i], ref[i]);
        EXPECT_LE(d, tol) << what << ": output " << i << " " << shape_str(ref[i].shape())
                          << " differs from the CPU reference by " << d;
    }
}

/// A seeded N(0, scale) tensor of dtype on device (made on the CPU, then copied).
inline Tensor randn_on(const Shape& s, uint64_t seed, Device d, DType dt = DType::f32,
                       double scale = 1.0) {
    return Tensor::randn(s, seed, dt, 0.0, scale).to(d);
}

/// A leaf requiring grad, made on the CPU and moved (so both devices see the same values).
inline Tensor leaf_on(const Shape& s, uint64_t seed, Device d, DType dt = DType::f32,
                      double scale = 1.0) {
    Tensor t = randn_on(s, seed, d, dt, scale).detach();
    t.set_requires_grad(true);
    return t;
}

/// Moves every parameter and buffer of m to `d` in place (tied parameters share one impl).
/// TODO(#7): replace with nn::Module::to(Device) once the nn layer has it.
inline void move_module(const nn::Module& m, Device d) {
    auto move = [&](const Tensor& t) {
        if (t.device() == d) return;
        Tensor c = t.detach().to(d);
        t.impl()->storage = c.storage();
        t.impl()->strides = c.strides();
        t.impl()->offset = c.offset();
    };
    for (auto& [name, t] : m.named_parameters())
        move(t);
    for (auto& [name, t] : m.named_buffers())
        move(t);
}

} // namespace forge::test
