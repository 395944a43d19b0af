// Input checks shared by all ops.
#include "core/op_helpers.h"

#include <forge/core/device.h>

namespace forge::detail {

Backend& backend_of(const Tensor& x) { return backend_for(x.device()); }

void check_defined(const char* op, const Tensor& x, const char* what) {
    FORGE_CHECK(x.defined(), "[", op, "] ", what, " is undefined");
}

void check_same_device(const char* op, std::initializer_list<Tensor> xs) {
    const Tensor* first = nullptr;
    for (const auto& t : xs) {
        if (!t.defined()) continue;
        if (!first) {
            first = &t;
            continue;
        }
        FORGE_CHECK(t.device() == first->device(), "[", op, "] tensors on different devices: ",
                    first->device().str(), " ", shape_str(first->shape()), " and ",
                    t.device().str(), " ", shape_str(t.shape()));
    }
}

void check_float(const char* op, const Tensor& x) {
    check_defined(op, x);
    FORGE_CHECK(is_floating(x.dtype()), "[", op, "] expects a float tensor, got ",
                dtype_name(x.dtype()), " ", shape_str(x.shape()));
}

int64_t wrap_dim(const char* op, int64_t dim, int64_t rank) {
    int64_t r = std::max<int64_t>(rank, 1);
    FORGE_CHECK(dim >= -r && dim < r, "[", op, "] dim ", dim, " out of range for a tensor of rank ",
                rank);
    return dim < 0 ? dim + r : dim;
}

Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b) {
    size_t n = std::max(a.size(), b.size());
    Shape out(n);
    for (size_t i = 0; i < n; ++i) {
        int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
        int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
        FORGE_CHECK(da == db || da == 1 || db == 1, "[", op, "] shapes ", shape_str(a), " and ",
                    shape_str(b), " do not broadcast");
        out[i] = da == 1 ? db : da;
    }
    return out;
}

Tensor empty_on(const Tensor& like, const Shape& shape, DType dtype) {
    return Tensor::empty(shape, dtype, like.device());
}

DType cuda_autocast_half(const Tensor& x) {
    if (x.device().type != DeviceType::cuda) return DType::f32;
    const DType hd = cuda::autocast_bf16() ? DType::bf16
                     : cuda::autocast_f16() ? DType::f16
                                            : DType::f32;
    return x.dtype() == DType::f32 || x.dtype() == hd ? hd : DType::f32;
}

} // namespace forge::detail
