#!/usr/bin/env python3
"""PyTorch peer for Forge's training benchmark: nanoGPT's CPU Tiny Shakespeare config
(char-level, 4 layers, 4 heads, 128 dim, block 64, batch 12, AdamW lr 1e-3 -> 1e-4 cosine,
warmup 100, beta2 0.99, weight decay 0.1, clip 1.0, no dropout), timed at N threads.

    python3 bench/torch/nanogpt_cpu.py --data data/tinyshakespeare.txt --iters 300 --threads 2

Prints one JSON line: {"ms_per_iter_median": ..., "val_loss": ...}. The model is written out
here (GPT-2 architecture with biases, tied embeddings, tanh GELU), not imported from nanoGPT.
`--nanogpt-model` switches to nanoGPT's own defaults (no biases in Linear/LayerNorm, exact
GELU) to see how much those choices move the val loss; `--seed` and `--eval-iters` measure
the spread; `--bf16` runs the step under CPU autocast (bf16 matmuls) as a speed peer.
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


NANOGPT = False  # set by --nanogpt-model


def layer_norm(c):
    return nn.LayerNorm(c, bias=not NANOGPT) if NANOGPT else nn.LayerNorm(c)


class Block(nn.Module):
    def __init__(self, c, h):
        super().__init__()
        self.h = h
        bias = not NANOGPT
        self.ln_1, self.ln_2 = layer_norm(c), layer_norm(c)
        self.c_attn, self.c_proj = nn.Linear(c, 3 * c, bias=bias), nn.Linear(c, c, bias=bias)
        self.c_fc, self.mlp_proj = nn.Linear(c, 4 * c, bias=bias), nn.Linear(4 * c, c, bias=bias)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        if hasattr(F, "scaled_dot_product_attention"):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # PyTorch < 2.0 (Debian's 1.13): the same math, unfused
            s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
            y = torch.softmax(s, -1) @ v
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="none" if NANOGPT else "tanh"))


class GPT(nn.Module):
    def __init__(self, vocab, block, n_layer, n_head, c):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, c), nn.Embedding(block, c)
        self.blocks = nn.ModuleList(Block(c, n_head) for _ in range(n_layer))
        self.ln_f = layer_norm(c)
        self.apply(self._init)
        for n, p in self.named_parameters():
            if n.endswith("c_proj.weight") or n.endswith("mlp_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))

    def _init(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T))
        for b in self.blocks:
            x = b(x)
        logits = self.ln_f(x) @ self.wte.weight.T
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="CPU autocast to bf16 around the step")
    ap.add_argument("--nanogpt-model", action="store_true")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--eval-iters", type=int, default=20)
    a = ap.parse_args()
    global NANOGPT
    NANOGPT = a.nanogpt_model
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    text = open(a.data, encoding="utf-8").read()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n = int(0.9 * len(data))
    train, val = data[:n], data[n:]
    B, T = 12, 64

    def batch(split):
        d = train if split == "train" else val
        ix = torch.randint(len(d) - T - 1, (B,))
        return torch.stack([d[i:i + T] for i in ix]), torch.stack([d[i + 1:i + T + 1] for i in ix])

    model = GPT(len(chars), T, 4, 4, 128)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))
    step_fn = torch.compile(model) if a.compile else model

    def lr_at(it, total=2000, warm=100, lo=1e-4, hi=1e-3):
        if it < warm:
            return hi * (it + 1) / (warm + 1)
        r = (it - warm) / (total - warm)
        return lo + 0.5 * (1 + math.cos(math.pi * min(r, 1.0))) * (hi - lo)

    times = []
    for it in range(a.iters):
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        x, y = batch("train")
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            loss = step_fn(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        vl = statistics.mean(float(model(*batch("val"))) for _ in range(a.eval_iters))
    print(json.dumps({"peer": "pytorch " + torch.__version__ + (" compile" if a.compile else " eager")
                      + (" bf16" if a.bf16 else "") + (" nanogpt-model" if NANOGPT else ""),
                      "seed": a.seed, "eval_iters": a.eval_iters,
                      "threads": a.threads, "iters": a.iters,
                      "ms_per_iter_median": 1000 * statistics.median(times[10:]),
                      # the spread shows a host whose speed changes within a run
                      "ms_per_iter_p10": 1000 * statistics.quantiles(times[10:], n=10)[0],
                      "ms_per_iter_p90": 1000 * statistics.quantiles(times[10:], n=10)[-1],
                      "val_loss": vl}))


if __name__ == "__main__":
    main()
