# PyTorch's flash SDPA (bf16, causal), the peer of `cuda_bench attn`: same shapes (12 heads,
# B * T = 8192, head dims 64 and 128), forward and forward+backward, TFLOP/s by the same count
# (4 B H T^2 D / 2 forward, 3.5x that forward+backward). Usage: python3 bench/cuda/torch_attn.py
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def time_ms(f, budget=0.5):
    for _ in range(3):
        f()
    torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while True:
        f()
        n += 1
        torch.cuda.synchronize()
        el = time.perf_counter() - t0
        if (el > budget and n >= 3) or n >= 2000:
            return el / n * 1e3


def main():
    for D in (64, 128):
        for T in (1024, 2048, 4096, 8192):
            B, H = 8 * 1024 // T, 12
            q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16,
                                   requires_grad=True) for _ in range(3))
            fl = 4.0 * B * H * T * T * D / 2
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                with torch.no_grad():
                    ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
                print(f"pytorch {torch.__version__} flash sdpa fwd bf16 B{B} H{H} T{T} D{D}: "
                      f"{ms:.3f} ms {fl / ms / 1e9:.1f} TFLOP/s", flush=True)

                def fb():
                    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                    o.backward(o.detach())
                    q.grad = k.grad = v.grad = None

                ms = time_ms(fb)
                print(f"pytorch {torch.__version__} flash sdpa fwd+bwd bf16 B{B} H{H} T{T} D{D}: "
                      f"{ms:.3f} ms {3.5 * fl / ms / 1e9:.1f} TFLOP/s", flush=True)


if __name__ == "__main__":
    main()
