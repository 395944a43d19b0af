// The engine's attention (attend_row, attend_rows for blocks of prefill queries) against plain
// softmax attention in double: every head size the AVX-512 blocks specialize and one they do
// not, key counts around tile edges, every block height.
#include <cmath>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "backends/cpu/simd/nn_kernels.h"
#include "infer/attention.h"

using namespace forge::infer;
namespace nn = forge::cpu::nn;

TEST(Attention, BlocksMatchSoftmaxInDouble) {
    std::mt19937 rng(4);
    std::normal_distribution<float> dist(0.f, 1.f);
    for (int64_t D : {16, 32, 48, 64, 128}) {
        for (int64_t n0 : {1, 15, 16, 17, 100}) {
            const int64_t cap = (n0 + kQueryBlock + kKeyTile) / kKeyTile * kKeyTile;
            std::vector<float> K(size_t(cap * D)), V(size_t(cap * D)), q(size_t(kQueryBlock * D));
            for (int64_t p = 0; p < cap; ++p)
                for (int64_t d = 0; d < D; ++d) {
                    K[size_t(key_index(p, d, D))] = dist(rng);
                    V[size_t(p * D + d)] = dist(rng);
                }
            for (auto& v : q)
                v = dist(rng);
            const float scale = 1.f / std::sqrt(float(D));
            for (nn::Isa isa : {nn::Isa::generic, nn::best_isa()}) {
                nn::IsaCapScope cap_isa(isa);
                for (int nq = 1; nq <= kQueryBlock; ++nq) {
                    std::vector<float> out(size_t(nq * D), -7.f);
                    std::vector<float> scores(size_t(kQueryBlock * (cap + kKeyTile)));
                    attend_rows(q.data(), D, nq, K.data(), V.data(), n0, D, scale, scores.data(),
                                out.data(), D);
                    for (int i = 0; i < nq; ++i) {
                        const int64_t n = n0 + i;
                        std::vector<double> s(static_cast<size_t>(n));
                        double mx = -1e300, sum = 0;
                        for (int64_t j = 0; j < n; ++j) {
                            double dot = 0;
                            for (int64_t d = 0; d < D; ++d)
                                dot += double(q[size_t(i * D + d)]) * K[size_t(key_index(j, d, D))];
                            s[size_t(j)] = dot * scale;
                            mx = std::max(mx, s[size_t(j)]);
                        }
                        for (auto& v : s)
                            sum += (v = std::exp(v - mx));
                        for (int64_t d = 0; d < D; ++d) {
                            double want = 0;
                            for (int64_t j = 0; j < n; ++j)
                                want += s[size_t(j)] / sum * V[size_t(j * D + d)];
                            ASSERT_NEAR(out[size_t(i * D + d)], want, 2e-5)
                                << "D=" << D << " n0=" << n0 << " nq=" << nq << " i=" << i
                                << " d=" << d << " isa=" << int(isa);
                        }
                    }
                }
            }
        }
    }
}
