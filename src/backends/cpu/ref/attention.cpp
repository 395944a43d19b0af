// Reference attention: for each query row, the full row of scores, its softmax, and the weighted
// sum of values, in double. O(Tk) memory per row, no tiling, no online softmax, no threads: the
// oracle for the flash kernels (kernels/attention*.cpp).
#include <cmath>
#include <limits>
#include <vector>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/cpu_common.h"

namespace forge::cpu {

namespace {

// Geometry shared by forward and backward. q: (B, Hq, Tq, D), k/v: (B, Hkv, Tk, D), contiguous.
struct Dims {
    int64_t B, Hq, Hkv, Tq, Tk, D;
    explicit Dims(const Tensor& q, const Tensor& k)
        : B(q.size(0)), Hq(q.size(1)), Hkv(k.size(1)), Tq(q.size(2)), Tk(k.size(2)), D(q.size(3)) {}
    // Keys query i may attend to: all, or (causal) those at positions <= Tk - Tq + i.
    int64_t n_keys(bool causal, int64_t i) const {
        return causal ? std::min(Tk, Tk - Tq + i + 1) : Tk;
    }
};

// p[j] = softmax_j(scale * q_i . k_j) over the visible keys; returns the log-sum-exp.
template <typename T>
double softmax_row(const T* qi, const T* K, int64_t n, int64_t D, double scale,
                   std::vector<double>& p) {
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < n; ++j) {
        double s = 0;
        for (int64_t d = 0; d < D; ++d)
            s += double(qi[d]) * double(K[j * D + d]);
        p[size_t(j)] = s * scale;
        mx = std::max(mx, p[size_t(j)]);
    }
    double sum = 0;
    for (int64_t j = 0; j < n; ++j) {
        p[size_t(j)] = std::exp(p[size_t(j)] - mx);
        sum += p[size_t(j)];
    }
    for (int64_t j = 0; j < n; ++j)
        p[size_t(j)] /= sum;
    return mx + std::log(sum);
}

} // namespace

void CpuRefBackend::attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                              bool causal, const Tensor& out, const Tensor& lse) {
    const Dims s(q, k);
    visit_float(q.dtype(), [&]<typename T>() {
        std::vector<double> p(size_t(s.Tk));
        for (int64_t b = 0; b < s.B; ++b)
            for (int64_t h = 0; h < s.Hq; ++h) {
                const int64_t bh = b * s.Hq + h, kv = (b * s.Hkv + h / (s.Hq / s.Hkv)) * s.Tk;
                const T* K = k.data<T>() + kv * s.D;
                const T* V = v.data<T>() + kv * s.D;
                for (int64_t i = 0; i < s.Tq; ++i) {
                    const int64_t row = bh * s.Tq + i, n = s.n_keys(causal, i);
                    lse.data<T>()[row] =
                        T(softmax_row(q.data<T>() + row * s.D, K, n, s.D, scale, p));
                    for (int64_t d = 0; d < s.D; ++d) {
                        double acc = 0;
                        for (int64_t j = 0; j < n; ++j)
                            acc += p[size_t(j)] * double(V[j * s.D + d]);
                        out.data<T>()[row * s.D + d] = T(acc);
                    }
                }
            }
    });
}

// Per query row: recompute p, then dp_j = dO_i . v_j, ds_j = p_j (dp_j - sum_l p_l dp_l),
// dq_i = scale sum_j ds_j k_j, dk_j += scale ds_j q_i, dv_j += p_j dO_i. Ignores out and lse:
// everything is recomputed from q, k, v.
void CpuRefBackend::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                       const Tensor& /*out*/, const Tensor& /*lse*/,
                                       const Tensor& dout, float scale, bool causal,
                                       const Tensor& dq, const Tensor& dk, const Tensor& dv) {
    const Dims s(q, k);
    visit_float(q.dtype(), [&]<typename T>() {
        // dk, dv sum over every query head of a group: accumulate in double, store at the end.
        std::vector<double> gk(size_t(k.numel()), 0.0), gv(size_t(v.numel()), 0.0);
        std::vector<double> p(size_t(s.Tk)), dp(size_t(s.Tk));
        for (int64_t b = 0; b < s.B; ++b)
            for (int64_t h = 0; h < s.Hq; ++h) {
                const int64_t bh = b * s.Hq + h, kv = (b * s.Hkv + h / (s.Hq / s.Hkv)) * s.Tk;
                const T* K = k.data<T>() + kv * s.D;
                const T* V = v.data<T>() + kv * s.D;
                for (int64_t i = 0; i < s.Tq; ++i) {
                    const int64_t row = bh * s.Tq + i, n = s.n_keys(causal, i);
                    const T* qi = q.data<T>() + row * s.D;
                    const T* doi = dout.data<T>() + row * s.D;
                    softmax_row(qi, K, n, s.D, scale, p);
                    double pdp = 0;
                    for (int64_t j = 0; j < n; ++j) {
                        double acc = 0;
                        for (int64_t d = 0; d < s.D; ++d)
                            acc += double(doi[d]) * double(V[j * s.D + d]);
                        dp[size_t(j)] = acc;
                        pdp += p[size_t(j)] * acc;
                    }
                    for (int64_t d = 0; d < s.D; ++d) {
                        double acc = 0;
                        for (int64_t j = 0; j < n; ++j)
                            acc += p[size_t(j)] * (dp[size_t(j)] - pdp) * double(K[j * s.D + d]);
                        dq.data<T>()[row * s.D + d] = T(acc * scale);
                    }
                    for (int64_t j = 0; j < n; ++j) {
                        const double ds = p[size_t(j)] * (dp[size_t(j)] - pdp) * scale;
                        for (int64_t d = 0; d < s.D; ++d) {
                            gk[size_t((kv + j) * s.D + d)] += ds * double(qi[d]);
                            gv[size_t((kv + j) * s.D + d)] += p[size_t(j)] * double(doi[d]);
                        }
                    }
                }
            }
        for (size_t e = 0; e < gk.size(); ++e) {
            dk.data<T>()[e] = T(gk[e]);
            dv.data<T>()[e] = T(gv[e]);
        }
    });
}

} // namespace forge::cpu
