// The FORGE_PROFILE kernel timer (profiling_backend.h).
#include "backends/profiling_backend.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <forge/core/tensor.h>

namespace forge::detail {

namespace {

const char* unary_name(UnaryOp op) {
    static const char* names[] = {"neg",       "exp",           "log",           "sqrt",
                                  "rsqrt",     "tanh",          "sigmoid",       "relu",
                                  "abs",       "gelu_tanh",     "gelu_erf",      "silu",
                                  "gelu_tanh_grad", "gelu_erf_grad", "silu_grad", "add_scalar",
                                  "mul_scalar", "pow_scalar",   "rsub_scalar"};
    return names[int(op)];
}
const char* binary_name(BinaryOp op) {
    static const char* names[] = {"add", "sub", "mul", "div", "maximum", "eq", "gt", "lt"};
    return names[int(op)];
}

class ProfilingBackend final : public Backend {
    struct Stat {
        int64_t calls = 0;
        double ms = 0;
    };

    // Host wall time around f, or with a device timer the GPU time between two events.
    template <typename F> auto timed(const std::string& key, F&& f, bool host_only = false) {
        if (timer_ && !host_only) {
            void* e0 = mark();
            struct Record { // records on scope exit, also when f returns a value
                ProfilingBackend* self;
                const std::string& key;
                void* e0;
                ~Record() { self->pend(key, e0, self->mark()); }
            } record{this, key, e0};
            return f();
        }
        const auto t0 = std::chrono::steady_clock::now();
        struct Record {
            ProfilingBackend* self;
            const std::string& key;
            std::chrono::steady_clock::time_point t0;
            ~Record() {
                self->add(key, std::chrono::duration<double, std::milli>(
                                   std::chrono::steady_clock::now() - t0)
                                   .count());
            }
        } record{this, key, t0};
        return f();
    }

    void add(const std::string& key, double ms) {
        std::lock_guard<std::mutex> lock(mu_);
        Stat& s = stats_[key];
        ++s.calls;
        s.ms += ms;
    }

    // An event recorded now, from the free list when it has one.
    void* mark() {
        void* e = nullptr;
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (!free_events_.empty()) {
                e = free_events_.back();
                free_events_.pop_back();
            }
        }
        if (!e) e = timer_->create();
        timer_->record(e);
        return e;
    }

    // Pairs are read back in batches, so the host seldom waits for the device.
    void pend(const std::string& key, void* e0, void* e1) {
        bool full;
        {
            std::lock_guard<std::mutex> lock(mu_);
            pending_.push_back({key, e0, e1});
            full = pending_.size() >= 4096;
        }
        if (full) drain();
    }

    void drain() {
        std::vector<Pending> batch;
        {
            std::lock_guard<std::mutex> lock(mu_);
            batch.swap(pending_);
        }
        for (const Pending& p : batch) {
            const float ms = timer_->elapsed_ms(p.e0, p.e1);
            if (!std::isnan(ms)) add(p.key, ms);
            std::lock_guard<std::mutex> lock(mu_);
            free_events_.push_back(p.e0);
            free_events_.push_back(p.e1);
        }
    }

  public:
    explicit ProfilingBackend(Backend& inner, std::optional<DeviceTimer> timer = std::nullopt)
        : inner_(inner), timer_(timer) {}
    ~ProfilingBackend() override { report(); }

    const char* name() const override { return inner_.name(); }
    std::shared_ptr<Storage> allocate(size_t n, Device d) override {
        return timed("allocate", [&] { return inner_.allocate(n, d); }, /*host_only=*/true);
    }
    void copy(const Tensor& s, const Tensor& d) override {
        timed(s.is_contiguous() && d.is_contiguous() ? "copy (contiguous)" : "copy (strided)",
              [&] { inner_.copy(s, d); });
    }
    void fill(const Tensor& d, double v) override { timed("fill", [&] { inner_.fill(d, v); }); }
    void random(const Tensor& d, RandomKind k, uint64_t s, double a, double b) override {
        timed("random", [&] { inner_.random(d, k, s, a, b); });
    }
    void unary(UnaryOp op, const Tensor& x, const Tensor& o, double alpha) override {
        timed(std::string("unary ") + unary_name(op), [&] { inner_.unary(op, x, o, alpha); });
    }
    void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& o) override {
        timed(std::string("binary ") + binary_name(op), [&] { inner_.binary(op, a, b, o); });
    }
    void where(const Tensor& c, const Tensor& a, const Tensor& b, const Tensor& o) override {
        timed("where", [&] { inner_.where(c, a, b, o); });
    }
    void reduce(ReduceOp op, const Tensor& x, const std::vector<int64_t>& dims,
                const Tensor& o) override {
        timed(op == ReduceOp::sum ? "reduce sum" : "reduce max",
              [&] { inner_.reduce(op, x, dims, o); });
    }
    void matmul(const Tensor& a, const Tensor& b, const Tensor& o) override {
        // Keyed by shape: (batch x) M x K x N.
        std::string key = "matmul " + std::to_string(a.size(1)) + "x" + std::to_string(a.size(2)) +
                          "x" + std::to_string(b.size(2));
        if (a.size(0) > 1) key += " (batch " + std::to_string(a.size(0)) + ")";
        timed(key, [&] { inner_.matmul(a, b, o); });
    }
    void matmul_bias(const Tensor& a, const Tensor& b, const Tensor& bias,
                     const Tensor& o) override {
        timed("matmul_bias " + std::to_string(a.size(1)) + "x" + std::to_string(a.size(2)) + "x" +
                  std::to_string(b.size(2)),
              [&] { inner_.matmul_bias(a, b, bias, o); });
    }
    bool matmul_bias_gelu_aux(const Tensor& a, const Tensor& b, const Tensor& bias,
                              const Tensor& o, const Tensor& aux) override {
        return timed("matmul_bias_gelu " + std::to_string(a.size(1)) + "x" +
                         std::to_string(a.size(2)) + "x" + std::to_string(b.size(2)),
                     [&] { return inner_.matmul_bias_gelu_aux(a, b, bias, o, aux); });
    }
    void softmax(const Tensor& x, const Tensor& o, bool log) override {
        timed("softmax", [&] { inner_.softmax(x, o, log); });
    }
    void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps,
                    const Tensor& o, const Tensor& m, const Tensor& r) override {
        timed("layer_norm", [&] { inner_.layer_norm(x, w, b, eps, o, m, r); });
    }
    void layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                             const Tensor& m, const Tensor& r, const Tensor& dx,
                             const Tensor& dw, const Tensor& db) override {
        timed("layer_norm_backward",
              [&] { inner_.layer_norm_backward(dy, x, w, m, r, dx, dw, db); });
    }
    bool layer_norm_backward_add(const Tensor& dy, const Tensor& x, const Tensor& w,
                                 const Tensor& m, const Tensor& r, const Tensor& add,
                                 const Tensor& dx, const Tensor& dw, const Tensor& db) override {
        return timed("layer_norm_backward (+ residual)", [&] {
            return inner_.layer_norm_backward_add(dy, x, w, m, r, add, dx, dw, db);
        });
    }
    void rms_norm(const Tensor& x, const Tensor& w, float eps, const Tensor& o,
                  const Tensor& r) override {
        timed("rms_norm", [&] { inner_.rms_norm(x, w, eps, o, r); });
    }
    void rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& r,
                           const Tensor& dx, const Tensor& dw) override {
        timed("rms_norm_backward", [&] { inner_.rms_norm_backward(dy, x, w, r, dx, dw); });
    }
    void cross_entropy(const Tensor& l, const Tensor& t, int64_t ig, const Tensor& losses,
                       const Tensor& lse) override {
        timed("cross_entropy", [&] { inner_.cross_entropy(l, t, ig, losses, lse); });
    }
    void cross_entropy_backward(const Tensor& l, const Tensor& t, const Tensor& lse, int64_t ig,
                                const Tensor& dl, double inv, const Tensor& dlogits) override {
        timed("cross_entropy_backward",
              [&] { inner_.cross_entropy_backward(l, t, lse, ig, dl, inv, dlogits); });
    }
    void linear_cross_entropy(const Tensor& x, const Tensor& w, const Tensor& t, int64_t ig,
                              double scale, const Tensor& losses, const Tensor& dx,
                              const Tensor& dw) override {
        timed("linear_cross_entropy",
              [&] { inner_.linear_cross_entropy(x, w, t, ig, scale, losses, dx, dw); });
    }
    void embedding(const Tensor& w, const Tensor& ids, const Tensor& o) override {
        timed("embedding", [&] { inner_.embedding(w, ids, o); });
    }
    void embedding_backward(const Tensor& d, const Tensor& ids, const Tensor& dw) override {
        timed("embedding_backward", [&] { inner_.embedding_backward(d, ids, dw); });
    }
    void rope(const Tensor& x, const RopeOptions& opts, const Tensor& o) override {
        timed("rope", [&] { inner_.rope(x, opts, o); });
    }
    void bias_act(const Tensor& x, const Tensor& b, bool gelu, const Tensor& o) override {
        timed(gelu ? "bias_act gelu" : "bias_act", [&] { inner_.bias_act(x, b, gelu, o); });
    }
    void bias_act_backward(const Tensor& dy, const Tensor& x, const Tensor& b, bool gelu,
                           const Tensor& dx, const Tensor& db) override {
        timed(gelu ? "bias_act_backward gelu" : "bias_act_backward",
              [&] { inner_.bias_act_backward(dy, x, b, gelu, dx, db); });
    }
    void attention(const Tensor& q, const Tensor& k, const Tensor& v, float s, bool c,
                   const Tensor& o, const Tensor& lse) override {
        timed("attention", [&] { inner_.attention(q, k, v, s, c, o, lse); });
    }
    void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                            const Tensor& lse, const Tensor& d, float s, bool c,
                            const Tensor& dq, const Tensor& dk, const Tensor& dv) override {
        timed("attention_backward",
              [&] { inner_.attention_backward(q, k, v, o, lse, d, s, c, dq, dk, dv); });
    }
    bool attention_strided() const override { return inner_.attention_strided(); }
    bool attention_takes_half(const Tensor& q, const Tensor& k, const Tensor& v,
                              bool causal) const override {
        return inner_.attention_takes_half(q, k, v, causal);
    }
    bool binary_mixed_float() const override { return inner_.binary_mixed_float(); }

  private:
    void report() {
        if (timer_) drain();
        std::vector<std::pair<std::string, Stat>> rows(stats_.begin(), stats_.end());
        std::sort(rows.begin(), rows.end(),
                  [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
        double total = 0;
        for (auto& [k, s] : rows) total += s.ms;
        std::fprintf(stderr, "\nFORGE_PROFILE: %s kernels, %.1f ms in all\n", inner_.name(), total);
        std::fprintf(stderr, "%10s %10s %6s  %s\n", "ms", "calls", "%", "kernel");
        for (auto& [k, s] : rows)
            std::fprintf(stderr, "%10.1f %10lld %6.1f  %s\n", s.ms, (long long)s.calls,
                         100.0 * s.ms / std::max(total, 1e-9), k.c_str());
    }

    struct Pending {
        std::string key;
        void* e0;
        void* e1;
    };

    Backend& inner_;
    std::optional<DeviceTimer> timer_; // set for the CUDA backend
    std::vector<Pending> pending_;     // event pairs not read back yet
    std::vector<void*> free_events_;
    std::mutex mu_;
    std::map<std::string, Stat> stats_;
};

} // namespace

namespace {
bool profile_requested() {
    static const bool on = [] {
        const char* v = std::getenv("FORGE_PROFILE");
        return v && *v && std::string(v) != "0";
    }();
    return on;
}
} // namespace

Backend& maybe_profiled(Backend& inner) {
    if (!profile_requested()) return inner;
    static ProfilingBackend wrapper(inner); // the CPU backend
    return wrapper;
}

Backend& maybe_profiled_cuda(Backend& inner, DeviceTimer timer) {
    if (!profile_requested()) return inner;
    static ProfilingBackend wrapper(inner, timer); // the CUDA backend (events on device 0)
    return wrapper;
}

} // namespace forge::detail
