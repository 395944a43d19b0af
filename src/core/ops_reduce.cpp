// Reductions (sum, mean, max over dims) and sum_to, the adjoint of broadcasting.
#include "core/op_helpers.h"

#include <algorithm>

namespace forge {

namespace {

std::vector<int64_t> normalise_dims(const char* op, const Tensor& x, std::vector<int64_t> dims) {
    if (dims.empty()) {
        for (int64_t d = 0; d < x.dim(); ++d)
            dims.push_back(d);
        return dims;
    }
    for (auto& d : dims)
        d = detail::wrap_dim(op, d, x.dim());
    std::sort(dims.begin(), dims.end());
    FORGE_CHECK(std::adjacent_find(dims.begin(), dims.end()) == dims.end(), "[", op,
                "] repeated dim in reduction over ", shape_str(x.shape()));
    return dims;
}

Shape kept_shape(const Tensor& x, const std::vector<int64_t>& dims) {
    Shape s = x.shape();
    for (auto d : dims)
        s[d] = 1;
    return s;
}

Shape dropped_shape(const Tensor& x, const std::vector<int64_t>& dims) {
    Shape s;
    for (int64_t d = 0; d < x.dim(); ++d)
        if (!std::binary_search(dims.begin(), dims.end(), d)) s.push_back(x.shape()[d]);
    return s;
}

// Runs the kernel in the compute dtype; result has the reduced dims kept (size 1).
Tensor run_reduce(ReduceOp op, const char* name, const Tensor& x,
                  const std::vector<int64_t>& dims) {
    DType cdt = compute_dtype(x.dtype());
    FORGE_CHECK(op != ReduceOp::max || x.numel() > 0, "[", name, "] empty tensor ",
                shape_str(x.shape()));
    Tensor xc = x.detach().to(cdt).contiguous();
    Tensor out = detail::empty_on(xc, kept_shape(x, dims), cdt);
    detail::backend_of(out).reduce(op, xc, dims, out);
    return out;
}

} // namespace

Tensor sum(const Tensor& x, std::vector<int64_t> dims_in, bool keepdim) {
    detail::check_defined("sum", x);
    auto dims = normalise_dims("sum", x, std::move(dims_in));
    Tensor kept = run_reduce(ReduceOp::sum, "sum", x, dims);
    DType out_dt = is_floating(x.dtype()) ? x.dtype() : compute_dtype(x.dtype());
    Tensor out = (keepdim ? kept : kept.view(dropped_shape(x, dims))).to(out_dt);
    autograd::record("sum", out, {x}, [in = x.shape(), dims](const Tensor& g) {
        Shape k = in;
        for (auto d : dims)
            k[d] = 1;
        return std::vector<Tensor>{g.reshape(k).expand(in).contiguous()};
    });
    return out;
}

Tensor mean(const Tensor& x, std::vector<int64_t> dims_in, bool keepdim) {
    detail::check_float("mean", x);
    auto dims = normalise_dims("mean", x, std::move(dims_in));
    int64_t n = 1;
    for (auto d : dims)
        n *= x.shape()[d];
    FORGE_CHECK(n > 0, "[mean] reducing over zero elements of ", shape_str(x.shape()));
    return mul_scalar(sum(x, dims, keepdim), 1.0 / double(n));
}

Tensor max(const Tensor& x, std::vector<int64_t> dims_in, bool keepdim) {
    detail::check_defined("max", x);
    auto dims = normalise_dims("max", x, std::move(dims_in));
    Tensor kept = run_reduce(ReduceOp::max, "max", x, dims);
    Tensor out = (keepdim ? kept : kept.view(dropped_shape(x, dims))).to(x.dtype());
    autograd::record("max", out, {x},
                     [xd = x.detach(), m = kept.detach(), dims](const Tensor& g) {
                         // Split the gradient evenly among the elements equal to the max.
                         Tensor hit = eq(xd, m).to(g.dtype());
                         Tensor count = sum(hit, dims, true);
                         Tensor gk = g.reshape(m.shape());
                         return std::vector<Tensor>{div(mul(hit, gk), count)};
                     });
    return out;
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
    detail::check_defined("sum_to", x);
    if (x.shape() == shape) return x;
    const int64_t lead = x.dim() - int64_t(shape.size());
    FORGE_CHECK(lead >= 0, "[sum_to] cannot reduce ", shape_str(x.shape()), " to ",
                shape_str(shape));
    std::vector<int64_t> dims;
    for (int64_t d = 0; d < x.dim(); ++d) {
        if (d < lead) {
            dims.push_back(d);
            continue;
        }
        int64_t want = shape[d - lead];
        FORGE_CHECK(want == x.shape()[d] || want == 1, "[sum_to] cannot reduce ",
                    shape_str(x.shape()), " to ", shape_str(shape));
        if (want == 1 && x.shape()[d] != 1) dims.push_back(d);
    }
    Tensor s = dims.empty() ? x : sum(x, dims, true);
    return s.reshape(shape);
}

} // namespace forge
