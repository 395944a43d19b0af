// nn::Module: a tree of named parameters, buffers and child modules, with state_dict and
// train/eval. Parameter names join the path with dots ("model.layers.0.self_attn.q_proj.weight")
// so a module tree laid out like HF's gives HF's tensor names.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <forge/core/tensor.h>

namespace forge::nn {

class Module {
  public:
    virtual ~Module() = default;
    Module() = default;
    Module(const Module&) = delete;
    Module& operator=(const Module&) = delete;

    /// Every parameter in registration order, with its dotted name.
    std::vector<std::pair<std::string, Tensor>> named_parameters() const;
    std::vector<Tensor> parameters() const;
    std::vector<std::pair<std::string, Tensor>> named_buffers() const;
    /// Parameters and buffers by name. Tied parameters appear under each name they have.
    std::map<std::string, Tensor> state_dict() const;
    /// Copies each tensor into the parameter/buffer of that name (handles stay valid; dtype is
    /// converted). strict: every name must match both ways, with equal shapes.
    void load_state_dict(const std::map<std::string, Tensor>& sd, bool strict = true);
    /// Number of distinct parameter elements (tied parameters count once).
    int64_t num_parameters() const;

    void train(bool on = true);
    void eval() { train(false); }
    bool is_training() const { return training_; }
    /// Sets requires_grad on every parameter.
    void requires_grad(bool on);
    /// Clears every parameter's gradient.
    void zero_grad() const;
    /// Moves every parameter and buffer (and any gradient) to `device` in place: the tensor
    /// handles stay the same objects, so optimizers, tied weights and requires_grad survive.
    /// Tensors that share a storage (tied weights, views) still share it afterwards. Throws
    /// DeviceError when the device has no backend (no CUDA build, no GPU).
    Module& to(Device device);
    /// The device of the first parameter (CPU for a module without parameters).
    Device device() const;

  protected:
    Tensor& register_parameter(const std::string& name, Tensor t);
    Tensor& register_buffer(const std::string& name, Tensor t);
    template <typename M> std::shared_ptr<M> register_module(const std::string& name,
                                                             std::shared_ptr<M> m) {
        children_.emplace_back(name, m);
        return m;
    }

  private:
    void collect(const std::string& prefix, bool buffers,
                 std::vector<std::pair<std::string, Tensor>>& out) const;
    std::vector<std::pair<std::string, Tensor>> params_, buffers_;
    std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
    bool training_ = true;
};

} // namespace forge::nn
