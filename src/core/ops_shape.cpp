// concat and split. split returns views; concat copies into one new tensor.
#include "core/op_helpers.h"

namespace forge {

Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
    FORGE_CHECK(!xs.empty(), "[concat] no tensors given");
    for (const auto& x : xs)
        detail::check_defined("concat", x);
    const Tensor& x0 = xs[0];
    dim = detail::wrap_dim("concat", dim, x0.dim());
    DType dt = x0.dtype();
    Shape shape = x0.shape();
    int64_t total = 0;
    for (size_t i = 0; i < xs.size(); ++i) {
        const Tensor& x = xs[i];
        FORGE_CHECK(x.dim() == x0.dim(), "[concat] tensor ", i, " has shape ",
                    shape_str(x.shape()), ", tensor 0 has ", shape_str(x0.shape()));
        for (int64_t d = 0; d < x.dim(); ++d)
            FORGE_CHECK(d == dim || x.shape()[d] == x0.shape()[d], "[concat] tensor ", i,
                        " has shape ", shape_str(x.shape()), ", tensor 0 has ",
                        shape_str(x0.shape()), " (they may differ only in dim ", dim, ")");
        FORGE_CHECK(x.device() == x0.device(), "[concat] tensor ", i, " is on ",
                    x.device().str(), ", tensor 0 on ", x0.device().str());
        dt = promote_types(dt, x.dtype());
        total += x.shape()[dim];
    }
    shape[dim] = total;
    Tensor out = detail::empty_on(x0, shape, dt);
    std::vector<int64_t> sizes;
    int64_t at = 0;
    for (const auto& x : xs) {
        out.narrow(dim, at, x.shape()[dim]).copy_(x.detach());
        at += x.shape()[dim];
        sizes.push_back(x.shape()[dim]);
    }
    std::vector<DType> dts;
    for (const auto& x : xs)
        dts.push_back(x.dtype());
    autograd::record("concat", out, xs, [sizes, dim, dts](const Tensor& g) {
        std::vector<Tensor> gs;
        int64_t at = 0;
        for (size_t i = 0; i < sizes.size(); ++i) {
            gs.push_back(g.narrow(dim, at, sizes[i]).to(dts[i]));
            at += sizes[i];
        }
        return gs;
    });
    return out;
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
    detail::check_defined("split", x);
    dim = detail::wrap_dim("split", dim, x.dim());
    int64_t total = 0;
    for (auto s : sizes) {
        FORGE_CHECK(s >= 0, "[split] negative size ", s);
        total += s;
    }
    FORGE_CHECK(total == x.shape()[dim], "[split] sizes sum to ", total, " but dim ", dim,
                " of ", shape_str(x.shape()), " has ", x.shape()[dim]);
    std::vector<Tensor> out;
    int64_t at = 0;
    for (auto s : sizes) {
        out.push_back(x.narrow(dim, at, s));
        at += s;
    }
    return out;
}

} // namespace forge
