// Element-wise kernels: unary (float), binary (numeric, broadcast through stride-0 views) and
// where. The op is a runtime argument (a uniform switch): one kernel per dtype keeps the build
// small, and these kernels are bound by memory, not by the branch. The math mirrors
// src/backends/cpu/elementwise_math.h.
#include "backends/cuda/common.cuh"

namespace forge::cuda {

namespace {

template <typename T> __device__ __forceinline__ T unary_fn(UnaryOp op, T x, T alpha) {
    constexpr T k0 = T(0.7978845608028654); // ::sqrt(2/pi)
    constexpr T k1 = T(0.044715);
    constexpr T inv_sqrt2 = T(0.7071067811865476);
    constexpr T inv_sqrt2pi = T(0.3989422804014327);
    switch (op) {
    case UnaryOp::neg: return -x;
    case UnaryOp::exp: return ::exp(x);
    case UnaryOp::log: return ::log(x);
    case UnaryOp::sqrt: return ::sqrt(x);
    case UnaryOp::rsqrt: return T(1) / ::sqrt(x);
    case UnaryOp::tanh: return ::tanh(x);
    case UnaryOp::sigmoid: return T(1) / (T(1) + ::exp(-x));
    case UnaryOp::relu: return x > T(0) ? x : T(0);
    case UnaryOp::abs: return ::fabs(x);
    case UnaryOp::gelu_tanh: return T(0.5) * x * (T(1) + ::tanh(k0 * (x + k1 * x * x * x)));
    case UnaryOp::gelu_erf: return T(0.5) * x * (T(1) + ::erf(x * inv_sqrt2));
    case UnaryOp::silu: return x / (T(1) + ::exp(-x));
    case UnaryOp::gelu_tanh_grad: {
        const T u = k0 * (x + k1 * x * x * x);
        const T t = ::tanh(u);
        const T du = k0 * (T(1) + T(3) * k1 * x * x);
        return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du;
    }
    case UnaryOp::gelu_erf_grad:
        return T(0.5) * (T(1) + ::erf(x * inv_sqrt2)) + x * inv_sqrt2pi * ::exp(-T(0.5) * x * x);
    case UnaryOp::silu_grad: {
        const T s = T(1) / (T(1) + ::exp(-x));
        return s * (T(1) + x * (T(1) - s));
    }
    case UnaryOp::add_scalar: return x + alpha;
    case UnaryOp::mul_scalar: return x * alpha;
    case UnaryOp::pow_scalar: return ::pow(x, alpha);
    case UnaryOp::rsub_scalar: return alpha - x;
    }
    return x;
}

template <typename T> __device__ __forceinline__ T binary_fn(BinaryOp op, T a, T b) {
    switch (op) {
    case BinaryOp::add: return T(a + b);
    case BinaryOp::sub: return T(a - b);
    case BinaryOp::mul: return T(a * b);
    case BinaryOp::div: return T(a / b);
    case BinaryOp::maximum: return a > b ? a : b;
    default: return T(0);
    }
}
template <typename T> __device__ __forceinline__ uint8_t compare_fn(BinaryOp op, T a, T b) {
    switch (op) {
    case BinaryOp::eq: return uint8_t(a == b);
    case BinaryOp::gt: return uint8_t(a > b);
    default: return uint8_t(a < b);
    }
}

#define FORGE_GRID_LOOP(i, n)                                                                      \
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n);                      \
         i += int64_t(gridDim.x) * blockDim.x)

template <typename T>
__global__ void unary_contig(UnaryOp op, const T* __restrict__ x, T* __restrict__ y, T alpha,
                             int64_t n) {
    FORGE_GRID_LOOP(i, n) y[i] = unary_fn(op, x[i], alpha);
}
template <typename T>
__global__ void unary_strided(UnaryOp op, const T* __restrict__ x, T* __restrict__ y, T alpha,
                              StridedIndex<2> ix, int64_t n) {
    FORGE_GRID_LOOP(i, n) {
        int64_t off[2];
        ix.offsets(i, off);
        y[off[1]] = unary_fn(op, x[off[0]], alpha);
    }
}

template <typename T, typename R>
__global__ void binary_kernel(BinaryOp op, const T* __restrict__ a, const T* __restrict__ b,
                              R* __restrict__ out, StridedIndex<3> ix, int64_t n, bool contig) {
    FORGE_GRID_LOOP(i, n) {
        int64_t off[3] = {i, i, i};
        if (!contig) ix.offsets(i, off);
        if constexpr (std::is_same_v<R, uint8_t>)
            out[off[2]] = compare_fn(op, a[off[0]], b[off[1]]);
        else
            out[off[2]] = binary_fn(op, a[off[0]], b[off[1]]);
    }
}

// Float operands of any storage type (f32, bf16, f16), computed in f32 and stored as TO: a
// residual add of an f32 stream and a bf16 GEMM output reads each as it is. Contiguous operands
// go 4 elements at a time.
template <typename TA, typename TB, typename TO>
__global__ void binary_float_vec4(BinaryOp op, const TA* __restrict__ a, const TB* __restrict__ b,
                                  TO* __restrict__ out, int64_t n4) {
    FORGE_GRID_LOOP(i, n4) {
        const float4 x = load4(a + 4 * i), y = load4(b + 4 * i);
        store4(out + 4 * i, make_float4(binary_fn(op, x.x, y.x), binary_fn(op, x.y, y.y),
                                        binary_fn(op, x.z, y.z), binary_fn(op, x.w, y.w)));
    }
}
// b repeating every `period` elements (a trailing block broadcast over leading dims: a position
// table added to every sequence), period % 4 == 0.
template <typename TA, typename TB, typename TO>
__global__ void binary_float_vec4_repeat(BinaryOp op, const TA* __restrict__ a,
                                         const TB* __restrict__ b, TO* __restrict__ out,
                                         int64_t n4, int64_t period) {
    FORGE_GRID_LOOP(i, n4) {
        const float4 x = load4(a + 4 * i), y = load4(b + (4 * i) % period);
        store4(out + 4 * i, make_float4(binary_fn(op, x.x, y.x), binary_fn(op, x.y, y.y),
                                        binary_fn(op, x.z, y.z), binary_fn(op, x.w, y.w)));
    }
}
// b one value (a scalar broadcast: the loss gradient scaling the LM head's dx and dw).
template <typename TA, typename TB, typename TO>
__global__ void binary_float_vec4_scalar(BinaryOp op, const TA* __restrict__ a,
                                         const TB* __restrict__ b, TO* __restrict__ out,
                                         int64_t n4) {
    const float y = half_to_float(*b);
    FORGE_GRID_LOOP(i, n4) {
        const float4 x = load4(a + 4 * i);
        store4(out + 4 * i, make_float4(binary_fn(op, x.x, y), binary_fn(op, x.y, y),
                                        binary_fn(op, x.z, y), binary_fn(op, x.w, y)));
    }
}
template <typename TA, typename TB, typename TO>
__global__ void binary_float_strided(BinaryOp op, const TA* __restrict__ a,
                                     const TB* __restrict__ b, TO* __restrict__ out,
                                     StridedIndex<3> ix, int64_t n) {
    FORGE_GRID_LOOP(i, n) {
        int64_t off[3];
        ix.offsets(i, off);
        out[off[2]] =
            float_to_half<TO>(binary_fn(op, half_to_float(a[off[0]]), half_to_float(b[off[1]])));
    }
}

template <typename T>
__global__ void where_kernel(const uint8_t* __restrict__ c, const T* __restrict__ a,
                             const T* __restrict__ b, T* __restrict__ out, StridedIndex<4> ix,
                             int64_t n) {
    FORGE_GRID_LOOP(i, n) {
        int64_t off[4];
        ix.offsets(i, off);
        out[off[3]] = c[off[0]] ? a[off[1]] : b[off[2]];
    }
}

} // namespace

void CudaBackend::unary(UnaryOp op, const Tensor& x, const Tensor& out, double alpha) {
    const int64_t n = out.numel();
    if (n == 0) return;
    cudaStream_t s = stream_of(out);
    visit_float(x.dtype(), [&]<typename T>() {
        if (x.is_contiguous() && out.is_contiguous()) {
            unary_contig<T><<<blocks_for(n), kBlock, 0, s>>>(op, x.data<T>(), out.data<T>(),
                                                             T(alpha), n);
        } else {
            const auto ix = make_index<2>(out.shape(), {&x.strides(), &out.strides()});
            unary_strided<T><<<blocks_for(n), kBlock, 0, s>>>(op, x.data<T>(), out.data<T>(),
                                                              T(alpha), ix, n);
        }
    });
    check_launch("unary");
}

void CudaBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
    const int64_t n = out.numel();
    if (n == 0) return;
    cudaStream_t s = stream_of(out);
    const bool compare = op == BinaryOp::eq || op == BinaryOp::gt || op == BinaryOp::lt;
    const bool contig = a.is_contiguous() && b.is_contiguous() && out.is_contiguous();
    const auto ix = make_index<3>(out.shape(), {&a.strides(), &b.strides(), &out.strides()});
    if (!compare && is_f32_or_half(a.dtype()) && is_f32_or_half(b.dtype()) &&
        is_f32_or_half(out.dtype())) {
        const bool vec = contig && n % 4 == 0 &&
                         ((reinterpret_cast<uintptr_t>(a.data_ptr()) |
                           reinterpret_cast<uintptr_t>(b.data_ptr()) |
                           reinterpret_cast<uintptr_t>(out.data_ptr())) & 15) == 0;
        // b as a contiguous trailing block broadcast over the leading dims (strides 0 there), or
        // as one value.
        int64_t period = 0;
        bool scalar_b = false;
        if (!vec && a.is_contiguous() && out.is_contiguous() && n % 4 == 0) {
            int64_t p = 1, d = b.dim() - 1;
            for (; d >= 0 && b.strides()[size_t(d)] == p; --d)
                p *= b.size(d);
            bool rest_zero = true;
            for (; d >= 0; --d)
                rest_zero = rest_zero && (b.strides()[size_t(d)] == 0 || b.size(d) == 1);
            const bool aligned = ((reinterpret_cast<uintptr_t>(a.data_ptr()) |
                                   reinterpret_cast<uintptr_t>(b.data_ptr()) |
                                   reinterpret_cast<uintptr_t>(out.data_ptr())) & 15) == 0;
            if (rest_zero && p % 4 == 0 && aligned) period = p;
            // (The op hands b expanded to out's shape: one value is every stride 0.)
            scalar_b = !period && p == 1 && rest_zero &&
                       ((reinterpret_cast<uintptr_t>(a.data_ptr()) |
                         reinterpret_cast<uintptr_t>(out.data_ptr())) & 15) == 0;
        }
        visit_f32_half(a.dtype(), [&]<typename TA>() {
            visit_f32_half(b.dtype(), [&]<typename TB>() {
                visit_f32_half(out.dtype(), [&]<typename TO>() {
                    if (period)
                        binary_float_vec4_repeat<TA, TB, TO><<<blocks_for(n / 4), kBlock, 0, s>>>(
                            op, a.data<TA>(), b.data<TB>(), out.data<TO>(), n / 4, period);
                    else if (scalar_b)
                        binary_float_vec4_scalar<TA, TB, TO><<<blocks_for(n / 4), kBlock, 0, s>>>(
                            op, a.data<TA>(), b.data<TB>(), out.data<TO>(), n / 4);
                    else if (vec)
                        binary_float_vec4<TA, TB, TO><<<blocks_for(n / 4), kBlock, 0, s>>>(
                            op, a.data<TA>(), b.data<TB>(), out.data<TO>(), n / 4);
                    else
                        binary_float_strided<TA, TB, TO><<<blocks_for(n), kBlock, 0, s>>>(
                            op, a.data<TA>(), b.data<TB>(), out.data<TO>(), ix, n);
                });
            });
        });
        check_launch("binary");
        return;
    }
    visit_numeric(a.dtype(), [&]<typename T>() {
        if (compare)
            binary_kernel<T, uint8_t><<<blocks_for(n), kBlock, 0, s>>>(
                op, a.data<T>(), b.data<T>(), out.data<uint8_t>(), ix, n, contig);
        else
            binary_kernel<T, T><<<blocks_for(n), kBlock, 0, s>>>(op, a.data<T>(), b.data<T>(),
                                                                 out.data<T>(), ix, n, contig);
    });
    check_launch("binary");
}

void CudaBackend::where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
    const int64_t n = out.numel();
    if (n == 0) return;
    cudaStream_t s = stream_of(out);
    const auto ix = make_index<4>(out.shape(), {&cond.strides(), &a.strides(), &b.strides(),
                                                &out.strides()});
    visit_numeric(out.dtype(), [&]<typename T>() {
        where_kernel<T><<<blocks_for(n), kBlock, 0, s>>>(cond.data<uint8_t>(), a.data<T>(),
                                                         b.data<T>(), out.data<T>(), ix, n);
    });
    check_launch("where");
}

} // namespace forge::cuda
