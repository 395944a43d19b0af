// Shared by the GPU decode tests (decode_test.cpp, quant_decode_test.cpp): the small model both
// families run at, and the comparisons of logit vectors against the CPU's.
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include <forge/models/config.h>

namespace forge::test {

// tiny's shapes with head dim 64, 3 layers; Llama with grouped-query attention and an FFN width
// (688) whose rows are not whole quantization blocks.
inline ModelConfig small_decode_config(ModelFamily family) {
    ModelConfig c = ModelConfig::preset("tiny");
    c.vocab_size = 512;
    c.n_ctx = 160;
    c.n_embd = 256;
    c.n_head = 4; // head dim 64
    c.n_head_kv = 4;
    c.n_ff = 1024;
    c.n_layer = 3;
    if (family == ModelFamily::llama) {
        c.family = ModelFamily::llama;
        c.n_head_kv = 2; // grouped-query attention
        c.n_ff = 688;
        c.tie_embeddings = false;
        c.norm_eps = 1e-6f;
        c.rope_theta = 10000.f;
    }
    c.validate();
    return c;
}

inline int64_t argmax(const std::vector<float>& v) {
    return std::max_element(v.begin(), v.end()) - v.begin();
}
// Top-1 minus top-2 logit. Rounding moves each logit by at most max_abs_diff, so a margin over
// twice that cannot flip the argmax: those steps must agree.
inline float margin(std::vector<float> v) {
    std::partial_sort(v.begin(), v.begin() + 2, v.end(), std::greater<float>());
    return v[0] - v[1];
}
inline double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
    double d = 0, n = 0;
    for (size_t i = 0; i < a.size(); ++i)
        d += double(a[i] - b[i]) * (a[i] - b[i]), n += double(b[i]) * b[i];
    return std::sqrt(d / n);
}
inline float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
    float m = 0;
    for (size_t i = 0; i < a.size(); ++i)
        m = std::max(m, std::abs(a[i] - b[i]));
    return m;
}

} // namespace forge::test
