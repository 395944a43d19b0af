// Tensor construction, views, copies, element access and the autograd accessors.
#include <forge/core/tensor.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <sstream>

#include "backends/backend.h"
#include "backends/cpu/cpu_common.h"
#include "core/op_helpers.h"
#include <forge/core/ops.h>

namespace forge {

namespace autograd {
void run_backward(const Tensor& root, const Tensor& grad_output, bool retain_graph);
}

std::string shape_str(const Shape& s) {
    std::string out = "[";
    for (size_t i = 0; i < s.size(); ++i)
        out += (i ? "," : "") + std::to_string(s[i]);
    return out + "]";
}

int64_t shape_numel(const Shape& s) {
    int64_t n = 1;
    for (auto d : s)
        n *= d;
    return n;
}

Shape contiguous_strides(const Shape& s) {
    Shape st(s.size());
    int64_t acc = 1;
    for (int64_t i = int64_t(s.size()) - 1; i >= 0; --i) {
        st[i] = acc;
        acc *= std::max<int64_t>(s[i], 1);
    }
    return st;
}

namespace {

void check_shape(const char* op, const Shape& shape) {
    for (auto d : shape)
        FORGE_CHECK(d >= 0, "[", op, "] negative dimension in shape ", shape_str(shape));
}

Tensor make_view(const Tensor& base, Shape shape, Shape strides, int64_t offset) {
    auto impl = std::make_shared<TensorImpl>();
    impl->storage = base.storage();
    impl->shape = std::move(shape);
    impl->strides = std::move(strides);
    impl->offset = offset;
    impl->dtype = base.dtype();
    return Tensor(impl);
}

// Strides for viewing `t` as `shape` without copying, if its layout allows (PyTorch's rule:
// each run of merged input dims must be contiguous within itself).
bool view_strides(const Tensor& t, const Shape& shape, Shape& out) {
    const Shape& old_shape = t.shape();
    const Shape& old_strides = t.strides();
    out.assign(shape.size(), 0);
    if (t.numel() <= 1) { // nothing to lay out
        out = contiguous_strides(shape);
        return true;
    }
    int64_t view_d = int64_t(shape.size()) - 1;
    int64_t chunk_base_stride = old_strides.empty() ? 1 : old_strides.back();
    int64_t tensor_numel = 1, view_numel = 1;
    for (int64_t d = int64_t(old_shape.size()) - 1; d >= 0; --d) {
        tensor_numel *= old_shape[d];
        if (d == 0 || (old_shape[d - 1] != 1 &&
                       old_strides[d - 1] != tensor_numel * chunk_base_stride)) {
            while (view_d >= 0 && (view_numel < tensor_numel || shape[view_d] == 1)) {
                out[view_d] = view_numel * chunk_base_stride;
                view_numel *= shape[view_d];
                --view_d;
            }
            if (view_numel != tensor_numel) return false;
            if (d > 0) {
                chunk_base_stride = old_strides[d - 1];
                tensor_numel = 1;
                view_numel = 1;
            }
        }
    }
    return view_d == -1;
}

Shape infer_shape(const char* op, const Shape& shape, int64_t numel, const Shape& from) {
    Shape s = shape;
    int64_t infer = -1, known = 1;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == -1) {
            FORGE_CHECK(infer < 0, "[", op, "] only one dimension can be -1 in ", shape_str(shape));
            infer = int64_t(i);
        } else {
            FORGE_CHECK(s[i] >= 0, "[", op, "] invalid shape ", shape_str(shape));
            known *= s[i];
        }
    }
    if (infer >= 0) {
        FORGE_CHECK(known > 0 && numel % known == 0, "[", op, "] cannot view ", shape_str(from),
                    " as ", shape_str(shape));
        s[infer] = numel / known;
    }
    FORGE_CHECK(shape_numel(s) == numel, "[", op, "] cannot view ", shape_str(from), " (",
                numel, " elements) as ", shape_str(shape));
    return s;
}

} // namespace

// ------------------------------------------------------------------ construction

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
    check_shape("empty", shape);
    auto impl = std::make_shared<TensorImpl>();
    size_t nbytes = size_t(shape_numel(shape)) * dtype_size(dtype);
    impl->storage = backend_for(device).allocate(nbytes, device);
    impl->shape = shape;
    impl->strides = contiguous_strides(shape);
    impl->dtype = dtype;
    return Tensor(impl);
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
    Tensor t = empty(shape, dtype, device);
    t.fill_(value);
    return t;
}
Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
    return full(shape, 0.0, dtype, device);
}
Tensor Tensor::ones(const Shape& shape, DType dtype, Device device) {
    return full(shape, 1.0, dtype, device);
}
Tensor Tensor::scalar(double value, DType dtype, Device device) {
    return full({}, value, dtype, device);
}

Tensor Tensor::arange(int64_t n, DType dtype, Device device) {
    FORGE_CHECK(n >= 0, "[arange] n must be >= 0, got ", n);
    std::vector<double> v(static_cast<size_t>(n));
    std::iota(v.begin(), v.end(), 0.0);
    return from_vector(v, {n}, dtype).to(device);
}

namespace {
template <typename Src> Tensor from_host(const std::vector<Src>& v, const Shape& shape, DType dt) {
    FORGE_CHECK(int64_t(v.size()) == shape_numel(shape), "[from_vector] ", v.size(),
                " values do not fill shape ", shape_str(shape));
    Tensor t = Tensor::empty(shape, dt);
    cpu::visit_dtype(dt, [&]<typename T>() {
        T* p = t.data<T>();
        for (size_t i = 0; i < v.size(); ++i)
            p[i] = cpu::store_from_double<T>(double(v[i]));
    });
    return t;
}
} // namespace

Tensor Tensor::from_vector(const std::vector<float>& v, const Shape& s, DType dt) {
    return from_host(v, s, dt);
}
Tensor Tensor::from_vector(const std::vector<double>& v, const Shape& s, DType dt) {
    return from_host(v, s, dt);
}
Tensor Tensor::from_vector(const std::vector<int64_t>& v, const Shape& s, DType dt) {
    return from_host(v, s, dt);
}

Tensor Tensor::randn(const Shape& shape, uint64_t seed, DType dtype, double mean, double std,
                     Device device) {
    FORGE_CHECK(is_floating(dtype), "[randn] needs a float dtype, got ", dtype_name(dtype));
    Tensor t = empty(shape, compute_dtype(dtype), device);
    backend_for(device).random(t, RandomKind::normal, seed, mean, std);
    return t.to(dtype);
}

Tensor Tensor::rand(const Shape& shape, uint64_t seed, DType dtype, double lo, double hi,
                    Device device) {
    FORGE_CHECK(is_floating(dtype), "[rand] needs a float dtype, got ", dtype_name(dtype));
    Tensor t = empty(shape, compute_dtype(dtype), device);
    backend_for(device).random(t, RandomKind::uniform, seed, lo, hi);
    return t.to(dtype);
}

Tensor Tensor::from_blob(void* data, const Shape& shape, DType dtype,
                         std::shared_ptr<void> keep_alive) {
    check_shape("from_blob", shape);
    auto impl = std::make_shared<TensorImpl>();
    impl->storage = std::make_shared<Storage>(
        data, size_t(shape_numel(shape)) * dtype_size(dtype), Device::cpu(),
        [keep = std::move(keep_alive)](void*) mutable { keep.reset(); });
    impl->shape = shape;
    impl->strides = contiguous_strides(shape);
    impl->dtype = dtype;
    return Tensor(impl);
}

// ------------------------------------------------------------------ metadata

#define FORGE_NEED_IMPL(what) FORGE_CHECK(impl_ != nullptr, "[", what, "] tensor is undefined")

const Shape& Tensor::shape() const {
    FORGE_NEED_IMPL("shape");
    return impl_->shape;
}
const Shape& Tensor::strides() const {
    FORGE_NEED_IMPL("strides");
    return impl_->strides;
}
int64_t Tensor::offset() const { return impl_->offset; }
int64_t Tensor::size(int64_t d) const {
    return shape()[detail::wrap_dim("size", d, dim())];
}
int64_t Tensor::numel() const { return shape_numel(shape()); }
DType Tensor::dtype() const {
    FORGE_NEED_IMPL("dtype");
    return impl_->dtype;
}
Device Tensor::device() const {
    FORGE_NEED_IMPL("device");
    return impl_->storage->device;
}
const std::shared_ptr<Storage>& Tensor::storage() const {
    FORGE_NEED_IMPL("storage");
    return impl_->storage;
}
void* Tensor::data_ptr() const {
    FORGE_NEED_IMPL("data");
    return static_cast<char*>(impl_->storage->data) + impl_->offset * dtype_size(impl_->dtype);
}
bool Tensor::shares_storage(const Tensor& o) const {
    return defined() && o.defined() && impl_->storage == o.impl_->storage;
}
bool Tensor::is_contiguous() const {
    const Shape& s = shape();
    int64_t expect = 1;
    for (int64_t i = int64_t(s.size()) - 1; i >= 0; --i) {
        if (s[i] == 1) continue;
        if (impl_->strides[i] != expect) return false;
        expect *= s[i];
    }
    return true;
}
std::string Tensor::str() const {
    if (!defined()) return "Tensor(undefined)";
    return "Tensor(shape=" + shape_str(shape()) + ", dtype=" + std::string(dtype_name(dtype())) +
           (device().type == DeviceType::cpu ? "" : ", device=" + device().str()) + ")";
}

// ------------------------------------------------------------------ views

Tensor Tensor::view(const Shape& shape_in) const {
    Shape s = infer_shape("view", shape_in, numel(), shape());
    Shape st;
    FORGE_CHECK(view_strides(*this, s, st), "[view] cannot view ", shape_str(shape()),
                " with strides ", shape_str(strides()), " as ", shape_str(s),
                " without a copy; use reshape()");
    Tensor out = make_view(*this, s, st, offset());
    Shape in_shape = shape();
    autograd::record("view", out, {*this},
                     [in_shape](const Tensor& g) { return std::vector<Tensor>{g.reshape(in_shape)}; });
    return out;
}

Tensor Tensor::reshape(const Shape& shape_in) const {
    Shape s = infer_shape("reshape", shape_in, numel(), shape());
    Shape st;
    if (view_strides(*this, s, st)) return view(s);
    return contiguous().view(s);
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
    std::vector<int64_t> perm(static_cast<size_t>(dim()));
    std::iota(perm.begin(), perm.end(), 0);
    d0 = detail::wrap_dim("transpose", d0, dim());
    d1 = detail::wrap_dim("transpose", d1, dim());
    std::swap(perm[d0], perm[d1]);
    return permute(perm);
}

Tensor Tensor::permute(const std::vector<int64_t>& dims) const {
    FORGE_CHECK(int64_t(dims.size()) == dim(), "[permute] ", dims.size(),
                " dims given for a tensor of shape ", shape_str(shape()));
    Shape s(dims.size()), st(dims.size());
    std::vector<int64_t> inverse(dims.size(), -1);
    for (size_t i = 0; i < dims.size(); ++i) {
        int64_t d = detail::wrap_dim("permute", dims[i], dim());
        FORGE_CHECK(inverse[d] < 0, "[permute] dim ", d, " repeated");
        inverse[d] = int64_t(i);
        s[i] = shape()[d];
        st[i] = strides()[d];
    }
    Tensor out = make_view(*this, s, st, offset());
    autograd::record("permute", out, {*this}, [inverse](const Tensor& g) {
        return std::vector<Tensor>{g.permute(inverse)};
    });
    return out;
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
    d = detail::wrap_dim("narrow", d, dim());
    FORGE_CHECK(start >= 0 && length >= 0 && start + length <= shape()[d], "[narrow] range [",
                start, ", ", start + length, ") out of bounds for dim ", d, " of shape ",
                shape_str(shape()));
    Shape s = shape();
    s[d] = length;
    Tensor out = make_view(*this, s, strides(), offset() + start * strides()[d]);
    Shape in_shape = shape();
    autograd::record("narrow", out, {*this}, [in_shape, d, start, length](const Tensor& g) {
        Tensor gi = Tensor::zeros(in_shape, g.dtype(), g.device());
        gi.narrow(d, start, length).copy_(g);
        return std::vector<Tensor>{gi};
    });
    return out;
}

Tensor Tensor::select(int64_t d, int64_t index) const {
    d = detail::wrap_dim("select", d, dim());
    FORGE_CHECK(index >= -shape()[d] && index < shape()[d], "[select] index ", index,
                " out of range for dim ", d, " of shape ", shape_str(shape()));
    if (index < 0) index += shape()[d];
    return narrow(d, index, 1).squeeze(d);
}

Tensor Tensor::expand(const Shape& shape_in) const {
    const int64_t n = int64_t(shape_in.size());
    FORGE_CHECK(n >= dim(), "[expand] cannot expand ", shape_str(shape()), " to fewer dims ",
                shape_str(shape_in));
    Shape s(n), st(n);
    for (int64_t i = n - 1, j = dim() - 1; i >= 0; --i, --j) {
        int64_t want = shape_in[i];
        if (j >= 0) {
            int64_t have = shape()[j];
            if (want == -1) want = have;
            FORGE_CHECK(have == want || have == 1, "[expand] cannot expand ", shape_str(shape()),
                        " to ", shape_str(shape_in));
            s[i] = want;
            st[i] = have == want ? strides()[j] : 0;
        } else {
            FORGE_CHECK(want >= 0, "[expand] invalid target shape ", shape_str(shape_in));
            s[i] = want;
            st[i] = 0;
        }
    }
    Tensor out = make_view(*this, s, st, offset());
    Shape in_shape = shape();
    autograd::record("expand", out, {*this},
                     [in_shape](const Tensor& g) { return std::vector<Tensor>{sum_to(g, in_shape)}; });
    return out;
}

Tensor Tensor::squeeze(int64_t d) const {
    d = detail::wrap_dim("squeeze", d, dim());
    if (shape()[d] != 1) return *this;
    Shape s = shape(), st = strides();
    s.erase(s.begin() + d);
    st.erase(st.begin() + d);
    Tensor out = make_view(*this, s, st, offset());
    Shape in_shape = shape();
    autograd::record("squeeze", out, {*this},
                     [in_shape](const Tensor& g) { return std::vector<Tensor>{g.reshape(in_shape)}; });
    return out;
}

Tensor Tensor::unsqueeze(int64_t d) const {
    d = detail::wrap_dim("unsqueeze", d, dim() + 1);
    Shape s = shape(), st = strides();
    int64_t stride = d < dim() ? strides()[d] * shape()[d] : 1;
    s.insert(s.begin() + d, 1);
    st.insert(st.begin() + d, stride);
    Tensor out = make_view(*this, s, st, offset());
    Shape in_shape = shape();
    autograd::record("unsqueeze", out, {*this},
                     [in_shape](const Tensor& g) { return std::vector<Tensor>{g.reshape(in_shape)}; });
    return out;
}

// ------------------------------------------------------------------ copies

Tensor Tensor::contiguous() const {
    if (is_contiguous()) return *this;
    return clone();
}

Tensor Tensor::clone() const {
    Tensor out = Tensor::empty(shape(), dtype(), device());
    detail::backend_of(*this).copy(*this, out);
    autograd::record("clone", out, {*this},
                     [](const Tensor& g) { return std::vector<Tensor>{g}; });
    return out;
}

Tensor Tensor::to(DType dt) const {
    if (dt == dtype()) return *this;
    Tensor out = Tensor::empty(shape(), dt, device());
    detail::backend_of(*this).copy(*this, out);
    if (is_floating(dt) && is_floating(dtype())) {
        DType in_dt = dtype();
        autograd::record("to", out, {*this},
                         [in_dt](const Tensor& g) { return std::vector<Tensor>{g.to(in_dt)}; });
    }
    return out;
}

// Across devices the accelerator's backend copies (its copy() takes a host side); between two
// accelerators the data goes through the host. Differentiable: the gradient goes back.
Tensor Tensor::to(Device d) const {
    if (d == device()) return *this;
    if (d.type == DeviceType::cuda && !cuda::is_available())
        throw DeviceError("[to] copying " + str() + " from " + device().str() + " to " + d.str() +
                          ": no backend for " + d.str() +
                          " (this build of Forge has no CUDA support, or no GPU is visible)");
    Tensor out = Tensor::empty(shape(), dtype(), d);
    Tensor src = detach().contiguous();
    if (device().type != DeviceType::cpu && d.type != DeviceType::cpu)
        src = src.to(Device::cpu());
    backend_for(d.type != DeviceType::cpu ? d : src.device()).copy(src, out);
    if (is_floating(dtype())) {
        Device from = device();
        autograd::record("to_device", out, {*this},
                         [from](const Tensor& g) { return std::vector<Tensor>{g.to(from)}; });
    }
    return out;
}

void Tensor::copy_(const Tensor& src) {
    FORGE_CHECK(src.defined(), "[copy_] source is undefined");
    detail::check_same_device("copy_", {*this, src});
    Tensor s = src.dim() == dim() && src.shape() == shape() ? src : src.expand(shape());
    detail::backend_of(*this).copy(s, *this);
}

void Tensor::fill_(double value) {
    if (is_contiguous()) {
        detail::backend_of(*this).fill(*this, value);
        return;
    }
    copy_(Tensor::scalar(value, dtype(), device()));
}

// ------------------------------------------------------------------ element access

double Tensor::at(const std::vector<int64_t>& index) const {
    FORGE_CHECK(int64_t(index.size()) == dim(), "[at] ", index.size(),
                " indices for a tensor of shape ", shape_str(shape()));
    if (device().type != DeviceType::cpu) // one element through the host (slow; tests, item())
        return to(Device::cpu()).at(index);
    int64_t off = 0;
    for (size_t i = 0; i < index.size(); ++i) {
        int64_t k = index[i] < 0 ? index[i] + shape()[i] : index[i];
        FORGE_CHECK(k >= 0 && k < shape()[i], "[at] index ", index[i], " out of range for dim ",
                    i, " of shape ", shape_str(shape()));
        off += k * strides()[i];
    }
    return cpu::visit_dtype(dtype(), [&]<typename T>() {
        return cpu::load_as_double(static_cast<const T*>(data_ptr())[off]);
    });
}

double Tensor::item() const {
    FORGE_CHECK(numel() == 1, "[item] tensor of shape ", shape_str(shape()),
                " has ", numel(), " elements, not 1");
    return reshape({}).at({});
}

template <typename T> std::vector<T> Tensor::to_vector() const {
    Tensor c = to(Device::cpu()).contiguous();
    std::vector<T> out(static_cast<size_t>(c.numel()));
    cpu::visit_dtype(c.dtype(), [&]<typename S>() {
        const S* p = c.data<S>();
        for (size_t i = 0; i < out.size(); ++i)
            out[i] = T(cpu::load_as_double(p[i]));
    });
    return out;
}
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<int64_t> Tensor::to_vector<int64_t>() const;
template std::vector<int32_t> Tensor::to_vector<int32_t>() const;
template std::vector<uint8_t> Tensor::to_vector<uint8_t>() const;

std::string Tensor::to_string(int64_t max_elems) const {
    if (!defined()) return "Tensor(undefined)";
    std::ostringstream os;
    os << str() << "\n";
    auto v = detach().to_vector<double>();
    int64_t n = std::min<int64_t>(int64_t(v.size()), max_elems);
    int64_t row = dim() ? std::max<int64_t>(shape().back(), 1) : 1;
    os << "[";
    for (int64_t i = 0; i < n; ++i) {
        if (i && i % row == 0) os << "\n ";
        else if (i) os << ", ";
        os << v[size_t(i)];
    }
    if (n < int64_t(v.size())) os << ", ... (" << v.size() - size_t(n) << " more)";
    os << "]";
    return os.str();
}

// ------------------------------------------------------------------ autograd accessors

bool Tensor::requires_grad() const { return defined() && impl_->requires_grad; }

Tensor& Tensor::set_requires_grad(bool on) {
    FORGE_NEED_IMPL("set_requires_grad");
    FORGE_CHECK(!on || is_floating(dtype()), "[set_requires_grad] only float tensors can require "
                                              "grad, got ", dtype_name(dtype()));
    FORGE_CHECK(!impl_->grad_fn, "[set_requires_grad] only leaf tensors can be marked; this one "
                                 "is the output of an op (use detach() first)");
    impl_->requires_grad = on;
    return *this;
}

Tensor Tensor::grad() const {
    FORGE_NEED_IMPL("grad");
    return impl_->grad ? Tensor(impl_->grad) : Tensor();
}
void Tensor::set_grad(const Tensor& g) const {
    FORGE_NEED_IMPL("set_grad");
    impl_->grad = g.impl();
}
void Tensor::zero_grad() const {
    FORGE_NEED_IMPL("zero_grad");
    impl_->grad.reset();
}
bool Tensor::is_leaf() const { return defined() && !impl_->grad_fn; }
const std::shared_ptr<autograd::Node>& Tensor::grad_fn() const {
    FORGE_NEED_IMPL("grad_fn");
    return impl_->grad_fn;
}
void Tensor::set_grad_fn(std::shared_ptr<autograd::Node> fn) const {
    impl_->grad_fn = std::move(fn);
    impl_->requires_grad = impl_->grad_fn != nullptr;
}

void Tensor::backward(const Tensor& grad_output, bool retain_graph) const {
    autograd::run_backward(*this, grad_output, retain_graph);
}

Tensor Tensor::detach() const {
    FORGE_NEED_IMPL("detach");
    return make_view(*this, shape(), strides(), offset());
}

Tensor Tensor::operator-() const { return neg(*this); }
Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator+(const Tensor& a, double b) { return add_scalar(a, b); }
Tensor operator-(const Tensor& a, double b) { return add_scalar(a, -b); }
Tensor operator*(const Tensor& a, double b) { return mul_scalar(a, b); }
Tensor operator/(const Tensor& a, double b) { return mul_scalar(a, 1.0 / b); }
Tensor operator*(double a, const Tensor& b) { return mul_scalar(b, a); }

} // namespace forge
