// Flash-style attention, forward and backward (Dao et al. 2022, https://arxiv.org/abs/2205.14135):
// tiles of 32 keys (or queries) staged in shared memory, an online softmax in the forward, and a
// backward that recomputes the probabilities from q, k and the saved log-sum-exp, so memory is
// O(T * D), never (Tq, Tk). Causal (query i sits at position Tk - Tq + i), GQA (query head h
// reads kv-head h / (Hq / Hkv)), head dims up to 256, f32/f64 on CUDA cores: the exact kernel.
// With forge::cuda::set_allow_reduced_precision_attention(true) or bf16 / f16 autocast, f32 (or
// bf16) attention of head dim 64 or 128 runs the bf16 tensor-core kernel of attention_tc.cu.
// Layout: a warp owns one query row (forward, dq) or one key row (dk, dv). Scores: lane j
// takes key (query) j of the tile; outputs: lane l owns features l, l + 32, ... (DPL of them).
// Tensors: rows at any B, H, T strides (attention.cuh), lse and delta contiguous (B, Hq, Tq).
#include "backends/cuda/attention.cuh"

namespace forge::cuda {

namespace {

constexpr int kTile = 32;  // keys (or queries) per shared-memory tile
constexpr int kWarps = 8;  // rows per block

struct Geo {
    int64_t B, Hq, Hkv, Tq, Tk, D;
    float scale;
    bool causal;
    // Row strides of each tensor (o: out, g: dout).
    HeadRows q{}, k{}, v{}, o{}, g{}, dq{}, dk{}, dv{};
    // Last key row i may see (inclusive).
    __device__ __forceinline__ int64_t last_key(int64_t i) const {
        return causal ? Tk - Tq + i : Tk - 1;
    }
};

// Copies rows [r0, r0 + kTile) of src (n_rows, D; rows `stride` apart) into tile (kTile, D + 1),
// zero past the end.
template <typename T>
__device__ void load_tile(T* tile, const T* src, int64_t stride, int64_t r0, int64_t n_rows,
                          int64_t D) {
    const int64_t ld = D + 1;
    for (int64_t e = threadIdx.x; e < kTile * D; e += blockDim.x) {
        const int64_t r = e / D, d = e - r * D;
        tile[r * ld + d] = r0 + r < n_rows ? src[(r0 + r) * stride + d] : T(0);
    }
}

template <typename T> __device__ __forceinline__ T dot_row(const T* a, const T* b, int64_t D) {
    T s = 0;
    for (int64_t d = 0; d < D; ++d)
        s += a[d] * b[d];
    return s;
}

// grid (ceil(Tq / kWarps), B * Hq); smem: K, V tiles (kTile, D+1), q rows (kWarps, D).
template <typename T, int DPL>
__global__ void attn_fwd(const T* __restrict__ q, const T* __restrict__ k,
                         const T* __restrict__ v, T* __restrict__ out, T* __restrict__ lse,
                         Geo g) {
    extern __shared__ unsigned char smem_raw[];
    T* Ks = reinterpret_cast<T*>(smem_raw);
    T* Vs = Ks + kTile * (g.D + 1);
    T* Qs = Vs + kTile * (g.D + 1);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t bh = blockIdx.y, b = bh / g.Hq, h = bh % g.Hq, hk = h / (g.Hq / g.Hkv);
    const T* K = k + g.k.at(b, hk, 0);
    const T* V = v + g.v.at(b, hk, 0);
    const int64_t i = int64_t(blockIdx.x) * kWarps + warp;
    const bool active = i < g.Tq;
    const int64_t row = bh * g.Tq + i; // of lse
    T* qs = Qs + warp * g.D;
    if (active)
        for (int64_t d = lane; d < g.D; d += 32)
            qs[d] = q[g.q.at(b, h, i) + d];
    const int64_t i_last = min64(g.Tq - 1, int64_t(blockIdx.x) * kWarps + kWarps - 1);
    const int64_t k_end = g.last_key(i_last) + 1; // keys any row of the block sees
    const int64_t my_last = active ? g.last_key(i) : -1;
    T m = T(-INFINITY), l = 0, o[DPL];
#pragma unroll
    for (int t = 0; t < DPL; ++t)
        o[t] = 0;
    const int64_t ld = g.D + 1;
    for (int64_t k0 = 0; k0 < k_end; k0 += kTile) {
        __syncthreads(); // previous tile fully read
        load_tile(Ks, K, g.k.t, k0, g.Tk, g.D);
        load_tile(Vs, V, g.v.t, k0, g.Tk, g.D);
        __syncthreads();
        if (!active) continue;
        const int64_t j = k0 + lane;
        T s = j <= my_last ? dot_row(qs, Ks + lane * ld, g.D) * T(g.scale) : T(-INFINITY);
        const T m_new = ::fmax(m, warp_max(s));
        if (m_new == T(-INFINITY)) continue; // nothing visible yet
        const T p = j <= my_last ? ::exp(s - m_new) : T(0);
        const T corr = ::exp(m - m_new);
        l = l * corr + warp_sum(p);
        m = m_new;
#pragma unroll
        for (int t = 0; t < DPL; ++t)
            o[t] *= corr;
        const int n_keys = int(min64(kTile, my_last - k0 + 1));
        for (int jj = 0; jj < n_keys; ++jj) {
            const T pj = __shfl_sync(0xffffffffu, p, jj);
#pragma unroll
            for (int t = 0; t < DPL; ++t) {
                const int64_t d = lane + 32 * t;
                if (d < g.D) o[t] += pj * Vs[jj * ld + d];
            }
        }
    }
    if (!active) return;
    const T inv = T(1) / l;
#pragma unroll
    for (int t = 0; t < DPL; ++t) {
        const int64_t d = lane + 32 * t;
        if (d < g.D) out[g.o.at(b, h, i) + d] = o[t] * inv;
    }
    if (lane == 0) lse[row] = m + ::log(l);
}

// delta[row] = dO[row] . O[row]; a warp per row (b, h, i) of B Hq Tq.
template <typename T>
__global__ void attn_delta(const T* __restrict__ dout, const T* __restrict__ out,
                           T* __restrict__ delta, int64_t rows, Geo g) {
    const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const int64_t bh = row / g.Tq, i = row % g.Tq, b = bh / g.Hq, h = bh % g.Hq;
    const T* go = dout + g.g.at(b, h, i);
    const T* o = out + g.o.at(b, h, i);
    T s = 0;
    for (int64_t d = lane; d < g.D; d += 32)
        s += go[d] * o[d];
    s = warp_sum(s);
    if (lane == 0) delta[row] = s;
}

// dq: like the forward with p = exp(s - lse) known. smem: K, V tiles, q and dO rows.
template <typename T, int DPL>
__global__ void attn_bwd_dq(const T* __restrict__ q, const T* __restrict__ k,
                            const T* __restrict__ v, const T* __restrict__ lse,
                            const T* __restrict__ delta, const T* __restrict__ dout,
                            T* __restrict__ dq, Geo g) {
    extern __shared__ unsigned char smem_raw[];
    T* Ks = reinterpret_cast<T*>(smem_raw);
    T* Vs = Ks + kTile * (g.D + 1);
    T* Qs = Vs + kTile * (g.D + 1);
    T* Gs = Qs + kWarps * g.D;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t bh = blockIdx.y, b = bh / g.Hq, h = bh % g.Hq, hk = h / (g.Hq / g.Hkv);
    const T* K = k + g.k.at(b, hk, 0);
    const T* V = v + g.v.at(b, hk, 0);
    const int64_t i = int64_t(blockIdx.x) * kWarps + warp;
    const bool active = i < g.Tq;
    const int64_t row = bh * g.Tq + i; // of lse, delta
    T* qs = Qs + warp * g.D;
    T* gs = Gs + warp * g.D;
    if (active)
        for (int64_t d = lane; d < g.D; d += 32) {
            qs[d] = q[g.q.at(b, h, i) + d];
            gs[d] = dout[g.g.at(b, h, i) + d];
        }
    const T L = active ? lse[row] : T(0), Di = active ? delta[row] : T(0);
    const int64_t i_last = min64(g.Tq - 1, int64_t(blockIdx.x) * kWarps + kWarps - 1);
    const int64_t k_end = g.last_key(i_last) + 1;
    const int64_t my_last = active ? g.last_key(i) : -1;
    const int64_t ld = g.D + 1;
    T acc[DPL];
#pragma unroll
    for (int t = 0; t < DPL; ++t)
        acc[t] = 0;
    for (int64_t k0 = 0; k0 < k_end; k0 += kTile) {
        __syncthreads();
        load_tile(Ks, K, g.k.t, k0, g.Tk, g.D);
        load_tile(Vs, V, g.v.t, k0, g.Tk, g.D);
        __syncthreads();
        if (!active || k0 > my_last) continue;
        const int64_t j = k0 + lane;
        T ds = 0;
        if (j <= my_last) {
            const T p = ::exp(dot_row(qs, Ks + lane * ld, g.D) * T(g.scale) - L);
            ds = p * (dot_row(gs, Vs + lane * ld, g.D) - Di);
        }
        const int n_keys = int(min64(kTile, my_last - k0 + 1));
        for (int jj = 0; jj < n_keys; ++jj) {
            const T dj = __shfl_sync(0xffffffffu, ds, jj);
#pragma unroll
            for (int t = 0; t < DPL; ++t) {
                const int64_t d = lane + 32 * t;
                if (d < g.D) acc[t] += dj * Ks[jj * ld + d];
            }
        }
    }
    if (!active) return;
#pragma unroll
    for (int t = 0; t < DPL; ++t) {
        const int64_t d = lane + 32 * t;
        if (d < g.D) dq[g.dq.at(b, h, i) + d] = acc[t] * T(g.scale);
    }
}

// dk, dv: a warp per key row j of kv-head (b, hk), summing over the query heads of its group
// and the queries that see it. grid (ceil(Tk / kWarps), B * Hkv). smem: Q, dO tiles
// (kTile, D+1), lse/delta of the tile, k and v rows (kWarps, D).
template <typename T, int DPL>
__global__ void attn_bwd_dkv(const T* __restrict__ q, const T* __restrict__ k,
                             const T* __restrict__ v, const T* __restrict__ lse,
                             const T* __restrict__ delta, const T* __restrict__ dout,
                             T* __restrict__ dk, T* __restrict__ dv, Geo g) {
    extern __shared__ unsigned char smem_raw[];
    T* Qs = reinterpret_cast<T*>(smem_raw);
    T* Gs = Qs + kTile * (g.D + 1);
    T* Ls = Gs + kTile * (g.D + 1);
    T* Ds = Ls + kTile;
    T* Kr = Ds + kTile;
    T* Vr = Kr + kWarps * g.D;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t bk = blockIdx.y, b = bk / g.Hkv, hk = bk % g.Hkv, group = g.Hq / g.Hkv;
    const int64_t j = int64_t(blockIdx.x) * kWarps + warp;
    const bool active = j < g.Tk;
    T* ks = Kr + warp * g.D;
    T* vs = Vr + warp * g.D;
    if (active)
        for (int64_t d = lane; d < g.D; d += 32) {
            ks[d] = k[g.k.at(b, hk, j) + d];
            vs[d] = v[g.v.at(b, hk, j) + d];
        }
    // Query i sees key j iff j <= Tk - Tq + i: the block's first key bounds the first query.
    const int64_t j_first = int64_t(blockIdx.x) * kWarps;
    const int64_t i_start =
        g.causal ? max64(0, j_first - (g.Tk - g.Tq)) / kTile * kTile : 0;
    const int64_t ld = g.D + 1;
    T ak[DPL], av[DPL];
#pragma unroll
    for (int t = 0; t < DPL; ++t)
        ak[t] = av[t] = 0;
    for (int64_t hh = 0; hh < group; ++hh) {
        const int64_t h = hk * group + hh, qh = b * g.Hq + h; // query head, (b, h) of lse
        const T* Q = q + g.q.at(b, h, 0);
        const T* G = dout + g.g.at(b, h, 0);
        for (int64_t i0 = i_start; i0 < g.Tq; i0 += kTile) {
            __syncthreads();
            load_tile(Qs, Q, g.q.t, i0, g.Tq, g.D);
            load_tile(Gs, G, g.g.t, i0, g.Tq, g.D);
            if (threadIdx.x < kTile) {
                const int64_t ii = i0 + threadIdx.x;
                Ls[threadIdx.x] = ii < g.Tq ? lse[qh * g.Tq + ii] : T(0);
                Ds[threadIdx.x] = ii < g.Tq ? delta[qh * g.Tq + ii] : T(0);
            }
            __syncthreads();
            if (!active) continue;
            const int64_t i = i0 + lane;
            const bool vis = i < g.Tq && (!g.causal || j <= g.Tk - g.Tq + i);
            T p = 0, ds = 0;
            if (vis) {
                p = ::exp(dot_row(Qs + lane * ld, ks, g.D) * T(g.scale) - Ls[lane]);
                ds = p * (dot_row(Gs + lane * ld, vs, g.D) - Ds[lane]);
            }
            const int n_q = int(min64(kTile, g.Tq - i0));
            for (int ii = 0; ii < n_q; ++ii) {
                const T pi = __shfl_sync(0xffffffffu, p, ii);
                const T di = __shfl_sync(0xffffffffu, ds, ii);
#pragma unroll
                for (int t = 0; t < DPL; ++t) {
                    const int64_t d = lane + 32 * t;
                    if (d < g.D) {
                        av[t] += pi * Gs[ii * ld + d];
                        ak[t] += di * Qs[ii * ld + d];
                    }
                }
            }
        }
    }
    if (!active) return;
#pragma unroll
    for (int t = 0; t < DPL; ++t) {
        const int64_t d = lane + 32 * t;
        if (d < g.D) {
            dk[g.dk.at(b, hk, j) + d] = ak[t] * T(g.scale);
            dv[g.dv.at(b, hk, j) + d] = av[t];
        }
    }
}

// `rows`: q, k, v, out, then (backward) dout, dq, dk, dv; undefined ones get no strides.
Geo make_geo(const Tensor& q, const Tensor& k, float scale, bool causal,
             std::initializer_list<const Tensor*> rows) {
    Geo g{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3), scale, causal};
    HeadRows* dst[] = {&g.q, &g.k, &g.v, &g.o, &g.g, &g.dq, &g.dk, &g.dv};
    int n = 0;
    for (const Tensor* t : rows)
        *dst[n++] = t ? head_rows(*t) : HeadRows{0, 0, 0};
    FORGE_CHECK(g.D <= 256, "[attention] the CUDA kernel takes head dims up to 256, got ", g.D,
                " (q ", shape_str(q.shape()), ")");
    FORGE_CHECK(g.B * g.Hq < 65536 && g.B * g.Hkv < 65536, "[attention] B * H = ", g.B * g.Hq,
                " exceeds the CUDA kernel's grid (65535)");
    return g;
}

// Calls f.template operator()<DPL>() for the features-per-lane that covers D.
template <typename F> void visit_dpl(int64_t D, F&& f) {
    if (D <= 32) f.template operator()<1>();
    else if (D <= 64) f.template operator()<2>();
    else if (D <= 128) f.template operator()<4>();
    else f.template operator()<8>();
}

template <typename K> void set_smem(K kernel, size_t bytes) {
    FORGE_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

} // namespace

namespace {
bool tc_allowed() {
    return allow_reduced_precision_attention() || autocast_bf16() || autocast_f16();
}
void check_exact_dtype(const Tensor& q) {
    FORGE_CHECK(q.dtype() == DType::f32 || q.dtype() == DType::f64,
                "[attention] CUDA takes ", dtype_name(q.dtype()),
                " q/k/v only on the tensor-core kernel (head dim 64 or 128, reduced precision or "
                "autocast on), got q ", shape_str(q.shape()));
}
} // namespace

bool CudaBackend::attention_takes_half(const Tensor& q, const Tensor& k, const Tensor& v,
                                       bool causal) const {
    return q.dtype() == DType::bf16 && tc_allowed() && attention_tc_supported(q, k, v, causal);
}

void CudaBackend::attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                            bool causal, const Tensor& out, const Tensor& lse) {
    const Geo g = make_geo(q, k, scale, causal, {&q, &k, &v, &out});
    if (g.Tq == 0) return;
    if (tc_allowed() && out.dtype() == q.dtype() && lse.dtype() == DType::f32 &&
        attention_tc_supported(q, k, v, causal, {&out})) {
        attention_tc_forward(q, k, v, scale, causal, out, lse);
        return;
    }
    check_exact_dtype(q);
    cudaStream_t s = stream_of(q);
    visit_float(q.dtype(), [&]<typename T>() {
        visit_dpl(g.D, [&]<int DPL>() {
            const size_t smem = (2 * kTile * (g.D + 1) + kWarps * g.D) * sizeof(T);
            set_smem(attn_fwd<T, DPL>, smem);
            const dim3 grid(unsigned((g.Tq + kWarps - 1) / kWarps), unsigned(g.B * g.Hq));
            attn_fwd<T, DPL><<<grid, kWarps * 32, smem, s>>>(q.data<T>(), k.data<T>(),
                                                             v.data<T>(), out.data<T>(),
                                                             lse.data<T>(), g);
        });
    });
    check_launch("attention");
}

void CudaBackend::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                     const Tensor& out, const Tensor& lse, const Tensor& dout,
                                     float scale, bool causal, const Tensor& dq, const Tensor& dk,
                                     const Tensor& dv) {
    const Geo g = make_geo(q, k, scale, causal, {&q, &k, &v, &out, &dout, &dq, &dk, &dv});
    // The tensor-core backward reads q, k, v, out in their type (f32 or bf16) and dout in f32 or
    // q's type, and writes dq, dk, dv in q's type; lse is f32.
    const DType qd = q.dtype();
    const bool tc_dtypes = lse.dtype() == DType::f32 && out.dtype() == qd &&
                           (dout.dtype() == DType::f32 || dout.dtype() == qd) &&
                           dq.dtype() == qd && dk.dtype() == qd && dv.dtype() == qd;
    // bf16 q, k, v ran on the tensor-core forward: its backward follows, autocast on or not (the
    // exact kernel does not take them).
    if ((tc_allowed() || qd == DType::bf16) && tc_dtypes &&
        attention_tc_supported(q, k, v, causal, {&out, &dout, &dq, &dk, &dv})) {
        attention_tc_backward(q, k, v, out, lse, dout, scale, causal, dq, dk, dv);
        return;
    }
    check_exact_dtype(q);
    cudaStream_t s = stream_of(q);
    visit_float(q.dtype(), [&]<typename T>() {
        const int64_t rows = g.B * g.Hq * g.Tq;
        auto delta_buf = allocate(size_t(std::max<int64_t>(rows, 1)) * sizeof(T), q.device());
        T* delta = static_cast<T*>(delta_buf->data);
        if (rows > 0)
            attn_delta<T><<<blocks_for(rows * 32), kBlock, 0, s>>>(dout.data<T>(), out.data<T>(),
                                                                   delta, rows, g);
        visit_dpl(g.D, [&]<int DPL>() {
            const size_t smem_q = (2 * kTile * (g.D + 1) + 2 * kWarps * g.D) * sizeof(T);
            set_smem(attn_bwd_dq<T, DPL>, smem_q);
            if (g.Tq > 0) {
                const dim3 grid(unsigned((g.Tq + kWarps - 1) / kWarps), unsigned(g.B * g.Hq));
                attn_bwd_dq<T, DPL><<<grid, kWarps * 32, smem_q, s>>>(
                    q.data<T>(), k.data<T>(), v.data<T>(), lse.data<T>(), delta, dout.data<T>(),
                    dq.data<T>(), g);
            }
            const size_t smem_kv =
                (2 * kTile * (g.D + 1) + 2 * kTile + 2 * kWarps * g.D) * sizeof(T);
            set_smem(attn_bwd_dkv<T, DPL>, smem_kv);
            const dim3 grid(unsigned((g.Tk + kWarps - 1) / kWarps), unsigned(g.B * g.Hkv));
            attn_bwd_dkv<T, DPL><<<grid, kWarps * 32, smem_kv, s>>>(
                q.data<T>(), k.data<T>(), v.data<T>(), lse.data<T>(), delta, dout.data<T>(),
                dk.data<T>(), dv.data<T>(), g);
        });
    });
    check_launch("attention_backward");
}

} // namespace forge::cuda
