# The GEMMs of GPT-2 124M's training step at batch 16 x 1024 in PyTorch (cuBLAS through
# torch.mm / F.linear, bf16 operands and output, f32 accumulation): the peer of `cuda_bench
# gemm`, same shapes and names. Prints ms and TFLOP/s per GEMM (median of 20 timed runs).
# Usage: python3 bench/cuda/torch_gemm.py
import torch
import torch.nn.functional as F


def timed(f, reps=20):
    for _ in range(3):
        f()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        f()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return sorted(ts)[len(ts) // 2]


def run(name, M, K, N, at=False, bias=False):
    bf = dict(device="cuda", dtype=torch.bfloat16)
    a = torch.randn(K, M, **bf).t() if at else torch.randn(M, K, **bf)
    w = torch.randn(N, K, **bf)  # F.linear's (out, in) weight: a @ w.t()
    bv = torch.randn(N, **bf) if bias else None
    ms = timed(lambda: F.linear(a, w, bv))
    print(f"torch gemm bf16 {name} {M}x{K}x{N}{' +bias' if bias else ''} bf16 out"
          f"  {ms:8.3f} ms  {2 * M * K * N / ms / 1e9:8.1f} TFLOP/s", flush=True)


R, C = 16384, 768
run("ceiling", 8192, 8192, 8192)
run("qkv", R, C, 3 * C, bias=True)
run("proj", R, C, C, bias=True)
run("fc", R, C, 4 * C, bias=True)
run("fc2", R, 4 * C, C, bias=True)
run("dx qkv", R, 3 * C, C)
run("dx fc", R, 4 * C, C)
run("dx fc2", R, C, 4 * C)
run("dw qkv x^T", C, R, 3 * C, at=True)
run("dw fc x^T", C, R, 4 * C, at=True)
run("dw fc2 x^T", 4 * C, R, C, at=True)
run("head", R, C, 50257)
run("head padded", R, C, 50304)
