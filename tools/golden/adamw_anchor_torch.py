#!/usr/bin/env python3
# PyTorch reference for the nanoGPT CPU anchor (docs/PERF.md ## Training): the same GPT-2 model
# (biases, tanh GELU, tied embeddings, GPT-2 init), the same AdamW no-decay set, warmup + cosine
# schedule and clipping as `forge train`, for ms/iter and val loss side by side. Needs PyTorch 2.x
# (scaled_dot_product_attention): run it on the GPU machine, pinned to 2 cores:
#   taskset -c 2,3 python3 tools/golden/adamw_anchor_torch.py data/tinyshakespeare.txt 2
import math, sys, time, torch, torch.nn as nn, torch.nn.functional as F
torch.set_num_threads(int(sys.argv[2])); torch.manual_seed(1337)
text = open(sys.argv[1]).read(); chars = sorted(set(text)); stoi = {c: i for i, c in enumerate(chars)}
data = torch.tensor([stoi[c] for c in text], dtype=torch.long); n = int(0.9 * len(data))
train, val = data[:n], data[n:]
B, T, C, H, L, V = 12, 64, 128, 4, 4, len(chars)
class Block(nn.Module):
    def __init__(s):
        super().__init__(); s.ln1 = nn.LayerNorm(C); s.attn = nn.Linear(C, 3 * C); s.proj = nn.Linear(C, C)
        s.ln2 = nn.LayerNorm(C); s.fc = nn.Linear(C, 4 * C); s.fc2 = nn.Linear(4 * C, C)
    def forward(s, x):
        q, k, v = s.attn(s.ln1(x)).split(C, 2)
        q, k, v = [t.view(x.size(0), T, H, C // H).transpose(1, 2) for t in (q, k, v)]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(x.size(0), T, C)
        x = x + s.proj(y)
        return x + s.fc2(F.gelu(s.fc(s.ln2(x)), approximate="tanh"))
class GPT(nn.Module):
    def __init__(s):
        super().__init__(); s.wte = nn.Embedding(V, C); s.wpe = nn.Embedding(T, C)
        s.h = nn.ModuleList([Block() for _ in range(L)]); s.lnf = nn.LayerNorm(C)
        for m in s.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)): nn.init.normal_(m.weight, 0, 0.02)
            if isinstance(m, nn.Linear): nn.init.zeros_(m.bias)
        for b in s.h:
            for w in (b.proj.weight, b.fc2.weight): nn.init.normal_(w, 0, 0.02 / math.sqrt(2 * L))
    def forward(s, x, y):
        h = s.wte(x) + s.wpe(torch.arange(T))
        for b in s.h: h = b(h)
        return F.cross_entropy((s.lnf(h) @ s.wte.weight.t()).view(-1, V), y.view(-1))
m = GPT()
decay = [p for n_, p in m.named_parameters() if p.dim() >= 2 and "wte" not in n_ and "wpe" not in n_]
nodecay = [p for n_, p in m.named_parameters() if not (p.dim() >= 2 and "wte" not in n_ and "wpe" not in n_)]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": nodecay, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.99))
def lr_at(s): return 1e-3 * (s + 1) / 100 if s < 100 else 1e-4 + 0.5 * (1 + math.cos(math.pi * (s - 100) / 1900)) * 9e-4
def batch(d):
    ix = torch.randint(len(d) - T - 1, (B,)); return torch.stack([d[i:i + T] for i in ix]), torch.stack([d[i + 1:i + T + 1] for i in ix])
@torch.no_grad()
def est(d): return sum(m(*batch(d)).item() for _ in range(20)) / 20
t_train = 0.0
for s in range(2000):
    for g in opt.param_groups: g["lr"] = lr_at(s)
    t0 = time.time(); x, y = batch(train); loss = m(x, y); opt.zero_grad(); loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step(); t_train += time.time() - t0
    if (s + 1) % 500 == 0: print(f"torch step {s+1} train {est(train):.4f} val {est(val):.4f} {1e3*t_train/(s+1):.1f} ms/iter", flush=True)
