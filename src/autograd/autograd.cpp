// The tape: recording nodes, running backward in reverse topological order, and gradcheck.
#include <forge/autograd/autograd.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "core/op_helpers.h"
#include <forge/core/ops.h>

namespace forge {

namespace {
thread_local bool t_grad_enabled = true;
}

bool grad_enabled() { return t_grad_enabled; }
void set_grad_enabled(bool on) { t_grad_enabled = on; }

namespace autograd {

bool needs_grad(std::initializer_list<Tensor> inputs) {
    if (!t_grad_enabled) return false;
    for (const auto& t : inputs)
        if (t.requires_grad()) return true;
    return false;
}
bool needs_grad(const std::vector<Tensor>& inputs) {
    if (!t_grad_enabled) return false;
    for (const auto& t : inputs)
        if (t.requires_grad()) return true;
    return false;
}

namespace {

// What a node keeps of one input: its autograd identity, not its data. A leaf that requires grad
// (a parameter, a marked input) stays itself, since backward sets .grad() on that tensor; any
// other input becomes a handle with its shape, dtype and grad_fn but no storage, or nothing when
// it needs no gradient. So an activation's memory goes back as soon as no backward function
// saved it, instead of living in the tape until backward() (PyTorch's nodes keep edges, not
// tensors, for the same reason).
Tensor graph_handle(const Tensor& t) {
    if (!t.requires_grad()) return Tensor();
    if (t.is_leaf()) return t;
    auto impl = std::make_shared<TensorImpl>();
    impl->shape = t.shape();
    impl->dtype = t.dtype();
    impl->requires_grad = true;
    impl->grad_fn = t.grad_fn();
    return Tensor(std::move(impl));
}

} // namespace

namespace {
std::shared_ptr<Node> make_node(const char* name, const Tensor& output,
                                std::vector<Tensor> inputs) {
    auto node = std::make_shared<Node>();
    node->name = name;
    for (Tensor& in : inputs) in = graph_handle(in);
    node->inputs = std::move(inputs);
    node->output_shape = output.shape();
    node->output_dtype = output.dtype();
    return node;
}
} // namespace

void record(const char* name, const Tensor& output, std::vector<Tensor> inputs,
            BackwardFn backward) {
    if (!needs_grad(inputs)) return;
    auto node = make_node(name, output, std::move(inputs));
    node->backward = std::move(backward);
    output.set_grad_fn(std::move(node));
}

void record_folding(const char* name, const Tensor& output, std::vector<Tensor> inputs,
                    FoldingBackwardFn backward) {
    if (!needs_grad(inputs)) return;
    auto node = make_node(name, output, std::move(inputs));
    node->folding_backward = std::move(backward);
    output.set_grad_fn(std::move(node));
}

namespace {

// Nodes reachable from root, children before parents (reverse of the order we run them).
std::vector<Node*> topo_order(Node* root) {
    std::vector<Node*> order;
    std::unordered_set<Node*> seen;
    std::vector<std::pair<Node*, size_t>> stack{{root, 0}};
    seen.insert(root);
    while (!stack.empty()) {
        auto& [node, i] = stack.back();
        if (i < node->inputs.size()) {
            const Tensor& in = node->inputs[i++];
            Node* child = in.defined() && in.grad_fn() ? in.grad_fn().get() : nullptr;
            if (child && seen.insert(child).second) stack.push_back({child, 0});
        } else {
            order.push_back(node);
            stack.pop_back();
        }
    }
    std::reverse(order.begin(), order.end());
    return order;
}

// `g` is moved in: when this handle is the only one to its storage, the leaf takes it as is;
// otherwise (the same gradient also flows elsewhere) it gets its own copy, so an in-place change
// to one .grad() (clipping, scaling) never shows in another.
void accumulate_leaf(const Tensor& leaf, Tensor g) {
    FORGE_ASSERT(g.shape() == leaf.shape());
    g = g.to(leaf.dtype());
    Tensor old = leaf.grad();
    if (old.defined()) {
        leaf.set_grad(add(old, g));
        return;
    }
    const bool sole_owner = g.is_contiguous() && g.impl().use_count() == 1 &&
                            g.storage().use_count() == 1 && g.numel() * int64_t(dtype_size(g.dtype())) ==
                                                                 int64_t(g.storage()->nbytes);
    leaf.set_grad(sole_owner ? g : g.contiguous().clone());
}

} // namespace

void run_backward(const Tensor& root, const Tensor& grad_output, bool retain_graph) {
    FORGE_CHECK(root.defined(), "[backward] tensor is undefined");
    FORGE_CHECK(root.requires_grad(), "[backward] ", root.str(),
                " does not require grad: no input was marked with set_requires_grad(), or it "
                "was computed under NoGradGuard");
    Tensor g0 = grad_output;
    if (!g0.defined()) {
        FORGE_CHECK(root.numel() == 1, "[backward] implicit gradient needs a scalar, got ",
                    root.str(), "; pass grad_output");
        g0 = Tensor::ones(root.shape(), compute_dtype(root.dtype()), root.device());
    }
    FORGE_CHECK(g0.shape() == root.shape(), "[backward] grad_output shape ",
                shape_str(g0.shape()), " differs from the tensor's ", shape_str(root.shape()));
    NoGradGuard no_grad;
    if (root.is_leaf()) {
        accumulate_leaf(root, g0);
        return;
    }
    std::vector<Node*> order = topo_order(root.grad_fn().get());
    std::unordered_map<Node*, Tensor> pending;
    pending[root.grad_fn().get()] = g0;
    for (Node* node : order) {
        auto it = pending.find(node);
        if (it == pending.end()) continue;
        Tensor g = std::move(it->second);
        pending.erase(it);
        FORGE_CHECK(node->backward != nullptr || node->folding_backward != nullptr,
                    "[backward] the graph through '", node->name,
                    "' was already freed by an earlier backward(); pass retain_graph=true to "
                    "backward through it twice");
        // A folding backward is handed the gradients pending for its non-leaf inputs (each
        // input's node once) and returns them included.
        std::vector<bool> folded(node->inputs.size(), false);
        std::vector<Tensor> grads;
        if (node->folding_backward) {
            std::vector<Tensor> offer(node->inputs.size());
            std::unordered_set<Node*> offered;
            for (size_t i = 0; i < node->inputs.size(); ++i) {
                const Tensor& in = node->inputs[i];
                if (!in.defined() || !in.requires_grad() || in.is_leaf()) continue;
                Node* child = in.grad_fn().get();
                auto p = pending.find(child);
                if (p != pending.end() && offered.insert(child).second) {
                    offer[i] = p->second;
                    folded[i] = true;
                }
            }
            grads = node->folding_backward(g, offer);
        } else {
            grads = node->backward(g);
        }
        FORGE_ASSERT(grads.size() == node->inputs.size());
        for (size_t i = 0; i < grads.size(); ++i) {
            const Tensor& in = node->inputs[i];
            if (!grads[i].defined() || !in.requires_grad()) continue;
            FORGE_ASSERT(grads[i].shape() == in.shape());
            if (in.is_leaf()) {
                accumulate_leaf(in, std::move(grads[i]));
            } else {
                Node* child = in.grad_fn().get();
                auto p = pending.find(child);
                if (p == pending.end() || folded[i])
                    pending[child] = grads[i];
                else
                    p->second = add(p->second, grads[i]);
            }
        }
    }
    if (!retain_graph)
        for (Node* node : order) {
            node->backward = nullptr;
            node->folding_backward = nullptr;
        }
}

} // namespace autograd

// ------------------------------------------------------------------ gradcheck

GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                          const std::vector<Tensor>& inputs, const GradcheckOptions& opts) {
    GradcheckResult result;
    std::ostringstream report;
    // Analytic: d/dx sum(f(x) * r) for a fixed random r (exercises every output element).
    for (const auto& x : inputs)
        if (x.requires_grad()) x.zero_grad();
    Tensor out = f(inputs);
    FORGE_CHECK(out.requires_grad(), "[gradcheck] the output does not require grad");
    Tensor r = Tensor::randn(out.shape(), 12345, out.dtype());
    Tensor loss = sum(mul(out, r));
    loss.backward();

    auto eval = [&]() {
        NoGradGuard ng;
        return sum(mul(f(inputs), r)).item();
    };
    for (size_t k = 0; k < inputs.size(); ++k) {
        const Tensor& x = inputs[k];
        if (!x.requires_grad()) continue;
        Tensor analytic = x.grad();
        std::vector<double> a = analytic.defined() ? analytic.to_vector<double>()
                                                   : std::vector<double>(size_t(x.numel()), 0.0);
        // Perturb x element by element through its own strides (x may be a view).
        std::vector<double> numeric(static_cast<size_t>(x.numel()));
        Shape idx(size_t(x.dim()), 0);
        for (int64_t e = 0; e < x.numel(); ++e) {
            int64_t rem = e;
            for (int64_t d = x.dim() - 1; d >= 0; --d) {
                idx[d] = rem % x.shape()[d];
                rem /= x.shape()[d];
            }
            Tensor elem = x.detach();
            for (int64_t d = 0; d < x.dim(); ++d)
                elem = elem.narrow(d, idx[d], 1);
            double v0 = elem.item();
            elem.fill_(v0 + opts.eps);
            double fp = eval();
            elem.fill_(v0 - opts.eps);
            double fm = eval();
            elem.fill_(v0);
            numeric[size_t(e)] = (fp - fm) / (2 * opts.eps);
        }
        double diff = 0, norm = 0;
        for (size_t i = 0; i < numeric.size(); ++i) {
            diff += (a[i] - numeric[i]) * (a[i] - numeric[i]);
            norm += numeric[i] * numeric[i];
        }
        double rel = std::sqrt(diff) / std::max(std::sqrt(norm), 1e-12);
        if (norm == 0 && diff == 0) rel = 0;
        result.max_rel_error = std::max(result.max_rel_error, rel);
        report << "input " << k << " " << shape_str(x.shape()) << ": rel error " << rel << "\n";
    }
    result.ok = result.max_rel_error <= opts.tolerance;
    result.report = report.str();
    return result;
}

} // namespace forge
