// Fast element-wise and reduction kernels: contiguous and broadcast fast paths with OpenMP
// over chunks; the loop bodies come from elementwise_math.h so the compiler can vectorise them.
#include <algorithm>
#include <numeric>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/cpu_common.h"
#include "backends/cpu/elementwise_math.h"
#include "backends/cpu/simd/nn_kernels.h"

namespace forge::cpu {

// Vectorised f32 activations (activations_avx*.cpp); false if op has no vector form.
bool unary_f32_avx512(UnaryOp op, const float* x, float* y, int64_t n);
void bias_act_f32_avx512(const float* x, const float* b, float* y, int64_t rows, int64_t cols,
                         bool gelu);
void bias_act_f32_avx2(const float* x, const float* b, float* y, int64_t rows, int64_t cols,
                       bool gelu);
void bias_act_backward_f32_avx512(const float* dy, const float* x, const float* b, float* dx,
                                  float* db, int64_t rows, int64_t cols, bool gelu);
void bias_act_backward_f32_avx2(const float* dy, const float* x, const float* b, float* dx,
                                float* db, int64_t rows, int64_t cols, bool gelu);
bool unary_f32_avx2(UnaryOp op, const float* x, float* y, int64_t n);

namespace {
// Below this many elements a parallel region costs more than it saves.
constexpr int64_t kParallelMin = 1 << 15;

bool all_zero(const Shape& strides) {
    return std::all_of(strides.begin(), strides.end(), [](int64_t s) { return s == 0; });
}
} // namespace

void CpuBackend::unary(UnaryOp op, const Tensor& x, const Tensor& out, double alpha) {
    if (!x.is_contiguous()) return CpuRefBackend().CpuRefBackend::unary(op, x, out, alpha);
    const nn::Isa level = nn::active_isa();
    auto* vec = level == nn::Isa::avx512 ? unary_f32_avx512 : unary_f32_avx2;
    // A zero-length call only asks whether op has a vector form.
    if (x.dtype() == DType::f32 && level != nn::Isa::generic && vec(op, nullptr, nullptr, 0)) {
        const float* xp = x.data<float>();
        float* yp = out.data<float>();
        const int64_t n = out.numel(), chunk = 16384;
#pragma omp parallel for if (n >= kParallelMin)
        for (int64_t c = 0; c < n; c += chunk)
            vec(op, xp + c, yp + c, std::min(chunk, n - c));
        return;
    }
    visit_float(x.dtype(), [&]<typename T>() {
        visit_unary(op, [&]<UnaryOp O>() {
            const T* xp = x.data<T>();
            T* yp = out.data<T>();
            const int64_t n = out.numel();
            const T a = T(alpha);
#pragma omp parallel for simd if (n >= kParallelMin)
            for (int64_t i = 0; i < n; ++i)
                yp[i] = unary_fn<O, T>(xp[i], a);
        });
    });
}

// Rows per task of the fused bias kernels. The backward sums db per block of rows and adds
// the blocks in order, so db does not depend on the thread count.
constexpr int64_t kBiasRows = 64;

void CpuBackend::bias_act(const Tensor& x, const Tensor& b, bool gelu, const Tensor& out) {
    const nn::Isa level = nn::active_isa();
    if (x.dtype() != DType::f32 || level == nn::Isa::generic || !x.is_contiguous() ||
        !b.is_contiguous())
        return Backend::bias_act(x, b, gelu, out);
    auto* kernel = level == nn::Isa::avx512 ? bias_act_f32_avx512 : bias_act_f32_avx2;
    const int64_t N = b.numel(), R = x.numel() / std::max<int64_t>(N, 1);
#pragma omp parallel for schedule(static) if (R * N >= kParallelMin)
    for (int64_t r0 = 0; r0 < R; r0 += kBiasRows)
        kernel(x.data<float>() + r0 * N, b.data<float>(), out.data<float>() + r0 * N,
               std::min(kBiasRows, R - r0), N, gelu);
}

void CpuBackend::bias_act_backward(const Tensor& dy, const Tensor& x, const Tensor& b, bool gelu,
                                   const Tensor& dx, const Tensor& db) {
    const nn::Isa level = nn::active_isa();
    if (x.dtype() != DType::f32 || level == nn::Isa::generic || !x.is_contiguous() ||
        !dy.is_contiguous() || !b.defined() || !b.is_contiguous())
        return Backend::bias_act_backward(dy, x, b, gelu, dx, db);
    auto* kernel = level == nn::Isa::avx512 ? bias_act_backward_f32_avx512
                                            : bias_act_backward_f32_avx2;
    const int64_t N = b.numel(), R = x.numel() / std::max<int64_t>(N, 1);
    const int64_t blocks = (R + kBiasRows - 1) / kBiasRows;
    std::vector<float> partial(size_t(blocks * N), 0.0f);
#pragma omp parallel for schedule(static) if (R * N >= kParallelMin)
    for (int64_t k = 0; k < blocks; ++k) {
        const int64_t r0 = k * kBiasRows;
        kernel(dy.data<float>() + r0 * N, x.data<float>() + r0 * N, b.data<float>(),
               dx.data<float>() + r0 * N, partial.data() + k * N, std::min(kBiasRows, R - r0), N,
               gelu);
    }
    float* out = db.data<float>();
    for (int64_t n = 0; n < N; ++n) out[n] = 0.0f;
    for (int64_t k = 0; k < blocks; ++k)
        for (int64_t n = 0; n < N; ++n) out[n] += partial[size_t(k * N + n)];
}

void CpuBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
    const int64_t n = out.numel();
    const int64_t inner = out.dim() ? out.shape().back() : 1;
    visit_numeric(a.dtype(), [&]<typename T>() {
        visit_binary(op, [&]<BinaryOp O>() {
            using R = decltype(binary_fn<O, T>(T(), T()));
            const T* ap = a.data<T>();
            const T* bp = b.data<T>();
            R* yp = out.data<R>();
            if (a.is_contiguous() && b.is_contiguous()) {
#pragma omp parallel for simd if (n >= kParallelMin)
                for (int64_t i = 0; i < n; ++i)
                    yp[i] = binary_fn<O, T>(ap[i], bp[i]);
            } else if (a.is_contiguous() && all_zero(b.strides())) { // x op scalar
                const T s = bp[0];
#pragma omp parallel for simd if (n >= kParallelMin)
                for (int64_t i = 0; i < n; ++i)
                    yp[i] = binary_fn<O, T>(ap[i], s);
            } else if (a.is_contiguous() && out.dim() >= 1 && b.strides().back() == 1 &&
                       all_zero(Shape(b.strides().begin(), b.strides().end() - 1))) {
                // x (..., C) op row (C): bias adds, norm weights
                const int64_t rows = n / std::max<int64_t>(inner, 1);
#pragma omp parallel for if (n >= kParallelMin)
                for (int64_t r = 0; r < rows; ++r) {
                    const T* ar = ap + r * inner;
                    R* yr = yp + r * inner;
#pragma omp simd
                    for (int64_t i = 0; i < inner; ++i)
                        yr[i] = binary_fn<O, T>(ar[i], bp[i]);
                }
            } else {
                for_each_row<3>(out.shape(), {&a.strides(), &b.strides(), &out.strides()},
                                [&](auto off, int64_t m, auto in) {
                                    const T* ar = ap + off[0];
                                    const T* br = bp + off[1];
                                    R* yr = yp + off[2];
                                    if (in[0] == 1 && in[1] == 1) {
#pragma omp simd
                                        for (int64_t i = 0; i < m; ++i)
                                            yr[i] = binary_fn<O, T>(ar[i], br[i]);
                                    } else if (in[0] == 1 && in[1] == 0) {
                                        const T s = br[0];
#pragma omp simd
                                        for (int64_t i = 0; i < m; ++i)
                                            yr[i] = binary_fn<O, T>(ar[i], s);
                                    } else {
                                        for (int64_t i = 0; i < m; ++i)
                                            yr[i] = binary_fn<O, T>(ar[i * in[0]], br[i * in[1]]);
                                    }
                                });
            }
        });
    });
}

void CpuBackend::where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
    if (!(cond.is_contiguous() && a.is_contiguous() && b.is_contiguous()))
        return CpuRefBackend().CpuRefBackend::where(cond, a, b, out);
    visit_numeric(out.dtype(), [&]<typename T>() {
        const uint8_t* cp = cond.data<uint8_t>();
        const T* ap = a.data<T>();
        const T* bp = b.data<T>();
        T* yp = out.data<T>();
        const int64_t n = out.numel();
#pragma omp parallel for simd if (n >= kParallelMin)
        for (int64_t i = 0; i < n; ++i)
            yp[i] = cp[i] ? ap[i] : bp[i];
    });
}

// Reduces x viewed as (outer, r, inner) over r. Sums accumulate in double.
template <typename T>
static void reduce_block(ReduceOp op, const T* x, T* y, int64_t outer, int64_t r, int64_t inner) {
    using Acc = std::conditional_t<std::is_floating_point_v<T>, double, T>;
    if (inner == 1) {
#pragma omp parallel for if (outer * r >= kParallelMin)
        for (int64_t o = 0; o < outer; ++o) {
            const T* row = x + o * r;
            if (op == ReduceOp::sum) {
                Acc s = 0;
#pragma omp simd reduction(+ : s)
                for (int64_t i = 0; i < r; ++i)
                    s += Acc(row[i]);
                y[o] = T(s);
            } else {
                T m = row[0];
                for (int64_t i = 1; i < r; ++i)
                    if (row[i] > m || row[i] != row[i]) m = row[i];
                y[o] = m;
            }
        }
        return;
    }
    // Column reduction: accumulate whole rows of `inner` elements (vectorises across inner).
#pragma omp parallel if (outer * r * inner >= kParallelMin)
    {
        std::vector<Acc> acc(static_cast<size_t>(inner));
#pragma omp for
        for (int64_t o = 0; o < outer; ++o) {
            const T* blk = x + o * r * inner;
            for (int64_t j = 0; j < inner; ++j)
                acc[size_t(j)] = Acc(blk[j]);
            for (int64_t i = 1; i < r; ++i) {
                const T* row = blk + i * inner;
                if (op == ReduceOp::sum) {
                    for (int64_t j = 0; j < inner; ++j)
                        acc[size_t(j)] += Acc(row[j]);
                } else {
                    for (int64_t j = 0; j < inner; ++j)
                        if (Acc(row[j]) > acc[size_t(j)] || row[j] != row[j])
                            acc[size_t(j)] = Acc(row[j]);
                }
            }
            for (int64_t j = 0; j < inner; ++j)
                y[o * inner + j] = T(acc[size_t(j)]);
        }
    }
}

void CpuBackend::reduce(ReduceOp op, const Tensor& x, const std::vector<int64_t>& dims,
                        const Tensor& out) {
    const int64_t rank = x.dim();
    if (x.numel() == 0 || rank == 0)
        return CpuRefBackend().CpuRefBackend::reduce(op, x, dims, out);
    const bool block = dims.back() - dims.front() + 1 == int64_t(dims.size());
    if (!block) {
        // Move the reduced dims last, then reduce rows.
        std::vector<int64_t> perm;
        for (int64_t d = 0; d < rank; ++d)
            if (!std::binary_search(dims.begin(), dims.end(), d)) perm.push_back(d);
        perm.insert(perm.end(), dims.begin(), dims.end());
        Tensor xp = x.permute(perm).contiguous();
        std::vector<int64_t> last;
        for (int64_t d = rank - int64_t(dims.size()); d < rank; ++d)
            last.push_back(d);
        Shape kept = xp.shape();
        for (auto d : last)
            kept[d] = 1;
        Tensor tmp = Tensor::empty(kept, out.dtype());
        reduce(op, xp, last, tmp);
        copy(tmp.view(out.shape()), out); // same element order: kept dims in original order
        return;
    }
    int64_t outer = 1, r = 1, inner = 1;
    for (int64_t d = 0; d < rank; ++d) {
        if (d < dims.front()) outer *= x.shape()[d];
        else if (d <= dims.back()) r *= x.shape()[d];
        else inner *= x.shape()[d];
    }
    visit_numeric(x.dtype(), [&]<typename T>() {
        reduce_block<T>(op, x.data<T>(), out.data<T>(), outer, r, inner);
    });
}

} // namespace forge::cpu
