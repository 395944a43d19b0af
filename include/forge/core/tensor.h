// Tensor: a strided view (shape, strides, offset, dtype) into refcounted device storage, plus
// the autograd fields. Copying a Tensor copies a handle, not data; views share storage.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include <forge/core/device.h>
#include <forge/core/dtype.h>
#include <forge/core/error.h>

namespace forge {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);
/// Row-major strides (in elements) for a shape.
Shape contiguous_strides(const Shape& s);

/// A block of device memory. The CPU allocator aligns to 64 bytes.
struct Storage {
    void* data = nullptr;
    size_t nbytes = 0;
    Device device;
    std::function<void(void*)> deleter;

    Storage(void* d, size_t n, Device dev, std::function<void(void*)> del)
        : data(d), nbytes(n), device(dev), deleter(std::move(del)) {}
    Storage(const Storage&) = delete;
    Storage& operator=(const Storage&) = delete;
    ~Storage() {
        if (deleter) deleter(data);
    }
};

namespace autograd {
struct Node;
}

struct TensorImpl;

class Tensor {
  public:
    Tensor() = default;

    // ---- construction (allocate on `device`) ----
    static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = {});
    static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = {});
    static Tensor ones(const Shape& shape, DType dtype = DType::f32, Device device = {});
    static Tensor full(const Shape& shape, double value, DType dtype = DType::f32,
                       Device device = {});
    static Tensor scalar(double value, DType dtype = DType::f32, Device device = {});
    /// 0, 1, ..., n-1
    static Tensor arange(int64_t n, DType dtype = DType::i64, Device device = {});
    /// Values from a host vector (converted to dtype), row-major.
    static Tensor from_vector(const std::vector<float>& v, const Shape& shape,
                              DType dtype = DType::f32);
    static Tensor from_vector(const std::vector<double>& v, const Shape& shape,
                              DType dtype = DType::f64);
    static Tensor from_vector(const std::vector<int64_t>& v, const Shape& shape,
                              DType dtype = DType::i64);
    /// N(mean, std) or U[lo, hi) from a counter-based generator: same seed, same values.
    static Tensor randn(const Shape& shape, uint64_t seed, DType dtype = DType::f32,
                        double mean = 0.0, double std = 1.0, Device device = {});
    static Tensor rand(const Shape& shape, uint64_t seed, DType dtype = DType::f32,
                       double lo = 0.0, double hi = 1.0, Device device = {});
    /// Wraps existing memory without copying; `keep_alive` owns it.
    static Tensor from_blob(void* data, const Shape& shape, DType dtype,
                            std::shared_ptr<void> keep_alive);

    // ---- metadata ----
    bool defined() const { return impl_ != nullptr; }
    const Shape& shape() const;
    const Shape& strides() const;
    int64_t offset() const;
    int64_t dim() const { return int64_t(shape().size()); }
    /// Size of dimension d (negative counts from the end).
    int64_t size(int64_t d) const;
    int64_t numel() const;
    DType dtype() const;
    Device device() const;
    size_t nbytes() const { return size_t(numel()) * dtype_size(dtype()); }
    bool is_contiguous() const;
    const std::shared_ptr<Storage>& storage() const;
    /// Pointer to element [0,...,0] (storage + offset).
    void* data_ptr() const;
    template <typename T> T* data() const { return static_cast<T*>(data_ptr()); }
    /// True if the two tensors view the same storage.
    bool shares_storage(const Tensor& other) const;
    std::string str() const; // "Tensor(shape=[2,3], dtype=f32)"

    // ---- views (share storage; differentiable) ----
    Tensor view(const Shape& shape) const;    // needs compatible strides
    Tensor reshape(const Shape& shape) const; // a view when possible, else a copy
    Tensor transpose(int64_t d0, int64_t d1) const;
    Tensor permute(const std::vector<int64_t>& dims) const;
    Tensor narrow(int64_t d, int64_t start, int64_t length) const;
    Tensor select(int64_t d, int64_t index) const; // drops dimension d
    Tensor expand(const Shape& shape) const;       // broadcast with stride 0
    Tensor squeeze(int64_t d) const;
    Tensor unsqueeze(int64_t d) const;
    Tensor flatten() const { return reshape({numel()}); }
    Tensor t() const { return transpose(-2, -1); }

    // ---- copies ----
    Tensor contiguous() const; // self if already contiguous
    Tensor clone() const;
    Tensor to(DType dtype) const; // self if same dtype
    Tensor to(Device device) const;
    /// Copies src into this tensor's elements (broadcasting src); not recorded by autograd.
    void copy_(const Tensor& src);
    void fill_(double value);
    void zero_() { fill_(0.0); }

    // ---- element access (tests, printing) ----
    /// Element at a multi-index, converted to double.
    double at(const std::vector<int64_t>& index) const;
    double item() const;
    template <typename T> std::vector<T> to_vector() const;
    /// Multi-line printout with values (truncated beyond `max_elems`).
    std::string to_string(int64_t max_elems = 64) const;

    // ---- autograd ----
    bool requires_grad() const;
    /// Marks a leaf as needing a gradient. Returns *this.
    Tensor& set_requires_grad(bool on = true);
    /// The accumulated gradient of a leaf (undefined until backward() reaches it).
    Tensor grad() const;
    void set_grad(const Tensor& g) const;
    void zero_grad() const;
    bool is_leaf() const;
    const std::shared_ptr<autograd::Node>& grad_fn() const;
    void set_grad_fn(std::shared_ptr<autograd::Node> fn) const;
    /// Backpropagates from this tensor (a scalar unless `grad_output` is given). The graph is
    /// freed afterwards unless retain_graph; a second backward over a freed graph throws.
    void backward(const Tensor& grad_output = {}, bool retain_graph = false) const;
    /// Same data, cut off from the graph.
    Tensor detach() const;

    // ---- operators (forge::add etc.) ----
    Tensor operator-() const;

    const std::shared_ptr<TensorImpl>& impl() const { return impl_; }
    explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  private:
    std::shared_ptr<TensorImpl> impl_;
};

Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator+(const Tensor& a, double b);
Tensor operator-(const Tensor& a, double b);
Tensor operator*(const Tensor& a, double b);
Tensor operator/(const Tensor& a, double b);
Tensor operator*(double a, const Tensor& b);

/// The shared state behind a Tensor handle.
struct TensorImpl {
    std::shared_ptr<Storage> storage;
    Shape shape, strides;
    int64_t offset = 0; // in elements
    DType dtype = DType::f32;
    // autograd
    bool requires_grad = false;
    std::shared_ptr<TensorImpl> grad;
    std::shared_ptr<autograd::Node> grad_fn;
};

} // namespace forge
