// Autograd's public face: the no-grad scope and gradcheck. Ops record nodes themselves
// (src/core/op_helpers.h); Tensor::backward() runs the tape.
//
// Semantics (as in PyTorch):
// - A tensor requires grad if it is a leaf marked with set_requires_grad(), or the output of an
//   op recorded while grad mode is on with at least one input that requires grad.
// - backward() accumulates into .grad() of the leaves it reaches (add, not overwrite); call
//   zero_grad() between steps.
// - The graph is freed by backward() unless retain_graph = true; a second backward through a
//   freed node throws forge::Error. Ops never modify inputs in place, so saved tensors stay valid.
// - Gradients of gradients (create_graph) are not supported: backward runs with grad mode off.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <forge/core/tensor.h>

namespace forge {

bool grad_enabled();
void set_grad_enabled(bool on);

/// Disables recording within a scope (evaluation, optimizer steps).
class NoGradGuard {
  public:
    NoGradGuard() : prev_(grad_enabled()) { set_grad_enabled(false); }
    ~NoGradGuard() { set_grad_enabled(prev_); }
    NoGradGuard(const NoGradGuard&) = delete;
    NoGradGuard& operator=(const NoGradGuard&) = delete;

  private:
    bool prev_;
};

struct GradcheckOptions {
    double eps = 1e-6;      // central-difference step
    double tolerance = 1e-6; // max relative error ||analytic - numeric|| / ||numeric||
};

struct GradcheckResult {
    bool ok = true;
    double max_rel_error = 0.0;
    std::string report; // one line per input: its shape and relative error
};

/// Compares the gradient autograd computes for sum(f(inputs) * r), r a fixed random tensor,
/// against central finite differences, for every input that requires grad. Inputs should be
/// f64 (they may be non-contiguous views). The output may have any shape.
GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                          const std::vector<Tensor>& inputs, const GradcheckOptions& opts = {});

} // namespace forge
