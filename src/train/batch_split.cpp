// Data parallelism over CPU threads for small models (see batch_split.h).
#include "train/batch_split.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <exception>
#include <string>

#include <omp.h>

#include "backends/backend.h"
#include <forge/autograd/autograd.h>
#include <forge/core/ops.h>

namespace forge {

int BatchSplit::slices_for(const Transformer& model, int64_t batch, int threads) {
    if (model.device().type != DeviceType::cpu) return 1;
    const int64_t slices = std::min<int64_t>(threads, batch);
    if (slices < 2) return 1;
    int64_t grad_bytes = 0;
    for (const Tensor& p : model.parameters()) grad_bytes += int64_t(p.nbytes());
    return slices * grad_bytes <= kMaxGradBytes ? int(slices) : 1;
}

BatchSplit::BatchSplit(Transformer& model, const std::vector<ParamRef>& params, int slices)
    : model_(model), params_(params) {
    FORGE_CHECK(slices >= 2, "[train] a batch split needs at least 2 slices, got ", slices);
    for (int s = 0; s < slices; ++s) {
        copies_.push_back(model.share_weights());
        std::map<std::string, Tensor> by_name;
        for (auto& [name, t] : copies_.back()->named_parameters()) by_name.emplace(name, t);
        std::vector<Tensor> mine;
        for (const ParamRef& p : params_) {
            auto it = by_name.find(p.name);
            FORGE_CHECK(it != by_name.end(), "[train] batch split: no parameter '", p.name, "'");
            mine.push_back(it->second);
        }
        copy_params_.push_back(std::move(mine));
    }
}

namespace {
// a += b over n floats.
void add_into(float* a, const float* b, int64_t n) {
    for (int64_t i = 0; i < n; ++i) a[i] += b[i];
}

// Restores a thread-local setting on leaving a scope (OpenMP's threads outlive the region).
struct GradModeScope {
    bool prev = grad_enabled();
    explicit GradModeScope(bool on) { set_grad_enabled(on); }
    ~GradModeScope() { set_grad_enabled(prev); }
};
} // namespace

bool BatchSplit::shares_weights_with(const Tensor& param) const {
    for (const Tensor& t : copy_params_[0])
        if (t.shares_storage(param)) return true;
    return false;
}

template <typename F> void BatchSplit::run(const Tensor& x, const Tensor& y, F f) {
    const int S = slices();
    const int64_t B = x.size(0);
    FORGE_CHECK(B >= S, "[train] a batch of ", B, " rows cannot be cut into ", S, " slices");
    // Thread-local settings of the calling thread, passed on to each slice's thread.
    const bool reference = cpu::reference_kernels(), grad = grad_enabled();
    const bool training = model_.is_training();
    std::vector<std::exception_ptr> errors(static_cast<size_t>(S));
#pragma omp parallel num_threads(S)
    {
        omp_set_num_threads(1); // the ops inside run on this thread alone
        const cpu::ReferenceKernelsScope kernels(reference);
        const GradModeScope grad_mode(grad);
        // Normally one slice per thread; fewer threads (a nested call) take several each.
        for (int s = omp_get_thread_num(); s < S; s += omp_get_num_threads()) {
            const int64_t r0 = B * s / S, r1 = B * (s + 1) / S;
            try {
                copies_[size_t(s)]->train(training);
                f(s, x.narrow(0, r0, r1 - r0), y.narrow(0, r0, r1 - r0),
                  double(r1 - r0) / double(B));
            } catch (...) {
                errors[size_t(s)] = std::current_exception();
            }
        }
    }
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

double BatchSplit::loss_backward(const Tensor& x, const Tensor& y, double grad_factor,
                                 double loss_scale) {
    // Slice 0 continues the model's dropout stream; the others draw from streams far from it.
    const uint64_t stream = model_.dropout_state();
    for (int s = 0; s < slices(); ++s)
        copies_[size_t(s)]->set_dropout_state(stream + uint64_t(s) * 0x9e3779b97f4a7c15ull);
    std::vector<double> parts(static_cast<size_t>(slices()));
    run(x, y, [&](int s, const Tensor& xs, const Tensor& ys, double share) {
        Tensor loss = copies_[size_t(s)]->loss(xs, ys);
        const double l = loss.item();
        parts[size_t(s)] = l * share;
        // A non-finite slice fails the whole step (the caller throws and clears gradients).
        if (!std::isfinite(l)) return;
        loss = mul_scalar(loss, share * grad_factor);
        if (loss_scale != 1.0) loss = mul_scalar(loss, loss_scale);
        loss.backward();
    });
    model_.set_dropout_state(copies_[0]->dropout_state());
    double mean = 0;
    for (double p : parts) mean += p;
    return mean;
}

double BatchSplit::loss(const Tensor& x, const Tensor& y) {
    std::vector<double> parts(static_cast<size_t>(slices()));
    run(x, y, [&](int s, const Tensor& xs, const Tensor& ys, double share) {
        parts[size_t(s)] = copies_[size_t(s)]->loss(xs, ys).item() * share;
    });
    double mean = 0;
    for (double p : parts) mean += p;
    return mean;
}

void BatchSplit::reduce_grads() {
    const int64_t n = int64_t(params_.size());
    std::vector<std::exception_ptr> errors(static_cast<size_t>(n));
    // One parameter per thread at a time, its slices added in slice order: the same bits for
    // any thread count.
#pragma omp parallel for schedule(dynamic)
    for (int64_t i = 0; i < n; ++i) {
        omp_set_num_threads(1);
        try {
            Tensor sum;
            for (auto& mine : copy_params_) {
                Tensor g = mine[size_t(i)].grad();
                mine[size_t(i)].zero_grad();
                if (!g.defined()) continue;
                if (!sum.defined())
                    sum = g;
                else if (sum.dtype() == DType::f32 && g.dtype() == DType::f32 &&
                         sum.is_contiguous() && g.is_contiguous())
                    // sum is the first slice's gradient, which nothing else holds any more.
                    add_into(sum.data<float>(), g.data<float>(), sum.numel());
                else
                    sum = add(sum, g);
            }
            if (sum.defined()) {
                Tensor old = params_[size_t(i)].tensor.grad();
                params_[size_t(i)].tensor.set_grad(old.defined() ? add(old, sum) : sum);
            }
        } catch (...) {
            errors[size_t(i)] = std::current_exception();
        }
    }
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

void BatchSplit::zero_grads() {
    for (auto& mine : copy_params_)
        for (const Tensor& t : mine) t.zero_grad();
}

} // namespace forge
