# GPT-2 124M training step in PyTorch, the peer of `cuda_bench train`: same shapes (12 layers,
# 12 heads, C 768, V 50257, tied embeddings), f32 weights, AdamW (fused), flash/efficient SDPA.
# Prints one line per configuration: ms per step, tokens/s, peak memory.
# Usage: python3 bench/cuda/torch_gpt2.py B T [exact|tf32|bf16] [eager|compile] [profile]
# "profile" then prints the GPU time per kernel over 5 steps (torch.profiler), the peer of
# FORGE_PROFILE=1 cuda_bench train.
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c, h):
        super().__init__()
        self.h = h
        self.ln_1, self.ln_2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.c_attn, self.c_proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.c_fc, self.mlp_proj = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, V=50257, ctx=1024, L=12, H=12, C=768):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(ctx, C)
        self.blocks = nn.ModuleList(Block(C, H) for _ in range(L))
        self.ln_f = nn.LayerNorm(C)
        self.head = nn.Linear(C, V, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, ids, targets):
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))
        for b in self.blocks:
            x = b(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def main():
    B, T = int(sys.argv[1]), int(sys.argv[2])
    mode = sys.argv[3] if len(sys.argv) > 3 else "exact"
    tf32 = mode == "tf32"
    bf16 = mode == "bf16"  # autocast: bf16 matmuls and SDPA, f32 weights and AdamW state
    compiled = len(sys.argv) > 4 and sys.argv[4] == "compile"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.manual_seed(0)
    model = GPT().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)
    fwd = torch.compile(model) if compiled else model
    ids = torch.randint(0, 50257, (B, T + 1), device="cuda")
    x, y = ids[:, :T].contiguous(), ids[:, 1:].contiguous()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = fwd(x, y)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        n += 1
        torch.cuda.synchronize()
        el = time.perf_counter() - t0
        if (el > 3 and n >= 3) or n >= 200:
            break
    ms = el / n * 1e3
    what = " (bf16 autocast)" if bf16 else " (TF32 matmuls)" if tf32 else " (exact f32)"
    print(f"pytorch {torch.__version__} gpt2-124M train step f32 weights{what}"
          f"{' compiled' if compiled else ' eager'} B{B} T{T}: {ms:.1f} ms, {B * T / ms * 1e3:.0f} tokens/s, "
          f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB", flush=True)
    if len(sys.argv) > 5 and sys.argv[5] == "profile":
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40,
                                        max_name_column_width=90), flush=True)


if __name__ == "__main__":
    main()
