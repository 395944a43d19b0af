// nn::Module bookkeeping: registration, dotted names, state_dict load/save.
#include <forge/nn/module.h>

#include <map>
#include <set>

#include <forge/autograd/autograd.h>

namespace forge::nn {

Tensor& Module::register_parameter(const std::string& name, Tensor t) {
    FORGE_CHECK(t.defined(), "[Module] parameter '", name, "' is undefined");
    if (is_floating(t.dtype()) && t.is_leaf()) t.set_requires_grad(true);
    params_.emplace_back(name, std::move(t));
    return params_.back().second;
}

Tensor& Module::register_buffer(const std::string& name, Tensor t) {
    buffers_.emplace_back(name, std::move(t));
    return buffers_.back().second;
}

void Module::collect(const std::string& prefix, bool buffers,
                     std::vector<std::pair<std::string, Tensor>>& out) const {
    for (const auto& [name, t] : buffers ? buffers_ : params_)
        out.emplace_back(prefix + name, t);
    for (const auto& [name, child] : children_)
        child->collect(prefix + name + ".", buffers, out);
}

std::vector<std::pair<std::string, Tensor>> Module::named_parameters() const {
    std::vector<std::pair<std::string, Tensor>> out;
    collect("", false, out);
    return out;
}

std::vector<Tensor> Module::parameters() const {
    std::vector<Tensor> out;
    std::set<TensorImpl*> seen;
    for (auto& [name, t] : named_parameters())
        if (seen.insert(t.impl().get()).second) out.push_back(t);
    return out;
}

std::vector<std::pair<std::string, Tensor>> Module::named_buffers() const {
    std::vector<std::pair<std::string, Tensor>> out;
    collect("", true, out);
    return out;
}

std::map<std::string, Tensor> Module::state_dict() const {
    std::map<std::string, Tensor> sd;
    for (auto& [n, t] : named_parameters())
        sd[n] = t.detach();
    for (auto& [n, t] : named_buffers())
        sd[n] = t.detach();
    return sd;
}

void Module::load_state_dict(const std::map<std::string, Tensor>& sd, bool strict) {
    auto entries = named_parameters();
    auto bufs = named_buffers();
    entries.insert(entries.end(), bufs.begin(), bufs.end());
    std::set<std::string> used;
    std::string missing;
    for (auto& [name, t] : entries) {
        auto it = sd.find(name);
        if (it == sd.end()) {
            missing += (missing.empty() ? "" : ", ") + name;
            continue;
        }
        used.insert(name);
        FORGE_CHECK(it->second.shape() == t.shape(), "[load_state_dict] '", name, "' has shape ",
                    shape_str(it->second.shape()), " in the state dict but ",
                    shape_str(t.shape()), " in the model");
        NoGradGuard ng;
        Tensor dst = t.detach();
        dst.copy_(it->second.detach().to(dst.device()));
    }
    if (!strict) return;
    FORGE_CHECK(missing.empty(), "[load_state_dict] missing tensors: ", missing);
    std::string unexpected;
    for (auto& [name, t] : sd)
        if (!used.count(name)) unexpected += (unexpected.empty() ? "" : ", ") + name;
    FORGE_CHECK(unexpected.empty(), "[load_state_dict] unexpected tensors: ", unexpected);
}

int64_t Module::num_parameters() const {
    int64_t n = 0;
    for (auto& t : parameters())
        n += t.numel();
    return n;
}

void Module::train(bool on) {
    training_ = on;
    for (auto& [name, child] : children_)
        child->train(on);
}

void Module::requires_grad(bool on) {
    for (auto& t : parameters())
        t.impl()->requires_grad = on;
}

void Module::zero_grad() const {
    for (auto& t : parameters())
        t.zero_grad();
}

// Storages move whole, once each: tensors that share one (tied weights, views into a packed
// buffer) point into the one new copy with their old offsets and strides.
Module& Module::to(Device device) {
    std::vector<std::shared_ptr<TensorImpl>> impls;
    std::set<TensorImpl*> seen;
    auto add = [&](const std::shared_ptr<TensorImpl>& p) {
        if (p && p->storage && seen.insert(p.get()).second) impls.push_back(p);
    };
    for (auto& [name, t] : named_parameters()) {
        add(t.impl());
        add(t.impl()->grad);
    }
    for (auto& [name, t] : named_buffers())
        add(t.impl());
    std::map<Storage*, std::shared_ptr<Storage>> moved;
    NoGradGuard ng;
    for (auto& p : impls) {
        if (p->storage->device == device) continue;
        auto it = moved.find(p->storage.get());
        if (it == moved.end()) {
            // The whole storage as one flat tensor of this impl's dtype (bytes past the last
            // whole element cannot belong to a tensor of it).
            const size_t es = dtype_size(p->dtype);
            auto flat = std::make_shared<TensorImpl>();
            flat->storage = p->storage;
            flat->shape = {int64_t(p->storage->nbytes / es)};
            flat->strides = {1};
            flat->dtype = p->dtype;
            Tensor copy = Tensor(flat).to(device);
            it = moved.emplace(p->storage.get(), copy.storage()).first;
        }
        p->storage = it->second;
    }
    return *this;
}

Device Module::device() const {
    auto ps = named_parameters();
    return ps.empty() ? Device::cpu() : ps.front().second.device();
}

} // namespace forge::nn
