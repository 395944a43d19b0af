// Internal helpers shared by the op files (src/core/ops_*.cpp): input checks that name the op,
// backend lookup, and autograd recording.
#pragma once

#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "backends/backend.h"
#include <forge/autograd/autograd.h>
#include <forge/core/ops.h>
#include <forge/core/tensor.h>

namespace forge::detail {

/// The backend of x's device.
Backend& backend_of(const Tensor& x);
/// Throws "[op] <what> is undefined".
void check_defined(const char* op, const Tensor& x, const char* what = "input");
/// Throws unless all tensors live on one device: "[op] tensors on cpu and cuda:0".
void check_same_device(const char* op, std::initializer_list<Tensor> xs);
/// Throws unless x is a float dtype: "[op] expects a float tensor, got i64 [2,3]".
void check_float(const char* op, const Tensor& x);
/// Normalises a possibly negative dim; throws "[op] dim 3 out of range for shape [2,3]".
int64_t wrap_dim(const char* op, int64_t dim, int64_t rank);
/// Broadcast shape of a and b; throws "[op] shapes [2,3] and [4] do not broadcast".
Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b);
/// A new contiguous tensor of shape/dtype on x's device.
Tensor empty_on(const Tensor& like, const Shape& shape, DType dtype);
/// The half type CUDA's autocast rounds matmul operands to (bf16 or f16) when x is a CUDA tensor
/// of f32 or of that half type; else f32 (no autocast).
DType cuda_autocast_half(const Tensor& x);

} // namespace forge::detail

namespace forge::autograd {

/// The vector-Jacobian product of one op: given dL/d(output), returns dL/d(input_i) for each
/// input, in input order (an undefined Tensor where none is needed). Runs with grad mode off.
/// Must be written with public ops so it runs on every backend. Capture outputs with
/// .detach(), never the output handle itself (that would make a reference cycle).
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_output)>;

/// A backward that may fold the gradient already pending for a non-leaf input into its own
/// result in the same pass (a norm's dx plus the residual stream's gradient): pending[i] is that
/// gradient or undefined; where both pending[i] and the returned grads[i] are defined, grads[i]
/// must include pending[i], and replaces it.
using FoldingBackwardFn =
    std::function<std::vector<Tensor>(const Tensor& grad_output, const std::vector<Tensor>& pending)>;

struct Node {
    std::string name;
    std::vector<Tensor> inputs; // per op input: the leaf, a storage-less handle, or undefined
    BackwardFn backward;        // null once released
    FoldingBackwardFn folding_backward; // set instead of backward by record_folding
    Shape output_shape;
    DType output_dtype = DType::f32;
};

/// True if grad mode is on and some input requires grad.
bool needs_grad(std::initializer_list<Tensor> inputs);
bool needs_grad(const std::vector<Tensor>& inputs);
/// Attaches a node to `output` when needs_grad(inputs); marks output as requiring grad.
void record(const char* name, const Tensor& output, std::vector<Tensor> inputs,
            BackwardFn backward);
/// The same with a backward that folds pending gradients in (FoldingBackwardFn).
void record_folding(const char* name, const Tensor& output, std::vector<Tensor> inputs,
                    FoldingBackwardFn backward);

} // namespace forge::autograd
