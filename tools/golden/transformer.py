#!/usr/bin/python3
"""Golden fixtures for Forge's Transformer: an independent PyTorch implementation of the GPT-2
and Llama families (written from the papers / HF modeling code's math, not from Forge) runs a
forward and backward pass on random weights; the weights, inputs, logits, loss and every
parameter gradient go into one safetensors file per model under tests/models/fixtures/.

Run with Debian's python3-torch:  /usr/bin/python3 tools/golden/transformer.py
"""
import json
import math
import os
import struct
import sys

import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "models", "fixtures")


def save_safetensors(path, tensors, meta):
    header, blobs, off = {"__metadata__": meta}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        dt = {torch.float32: "F32", torch.int64: "I64"}[t.dtype]
        raw = t.numpy().tobytes()
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def causal_attention(q, k, v):
    # q: (B, H, T, D), k/v: (B, Hkv, T, D); query head i reads kv head i // (H / Hkv)
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    T = q.shape[2]
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def gpt2(w, cfg, ids):
    B, T = ids.shape
    C, H = cfg["n_embd"], cfg["n_head"]
    x = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][:T]
    for l in range(cfg["n_layer"]):
        p = f"transformer.h.{l}."
        h = torch.nn.functional.layer_norm(x, (C,), w[p + "ln_1.weight"], w[p + "ln_1.bias"], 1e-5)
        qkv = h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
        q, k, v = (t.reshape(B, T, H, C // H).transpose(1, 2) for t in qkv.split(C, dim=2))
        a = causal_attention(q, k, v).transpose(1, 2).reshape(B, T, C)
        x = x + a @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        h = torch.nn.functional.layer_norm(x, (C,), w[p + "ln_2.weight"], w[p + "ln_2.bias"], 1e-5)
        h = gelu_tanh(h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
        x = x + h @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    x = torch.nn.functional.layer_norm(x, (C,), w["transformer.ln_f.weight"], w["transformer.ln_f.bias"], 1e-5)
    return x @ w["transformer.wte.weight"].T


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def llama_inv_freq(cfg):
    D = cfg["head_dim"]
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    rs = cfg.get("rope_scaling")
    if rs:  # Llama 3 frequency scaling
        factor, lo, hi, orig = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"], rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        smooth = (orig / wavelen - lo) / (hi - lo)
        mid = (1 - smooth) * inv / factor + smooth * inv
        inv = torch.where(wavelen < orig / hi, inv, torch.where(wavelen > orig / lo, inv / factor, mid))
    return inv


def rope(x, inv_freq):
    # NeoX / HF layout: pairs (i, i + D/2)
    T = x.shape[2]
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1).float()
    sin = torch.cat([ang.sin(), ang.sin()], -1).float()
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


def llama(w, cfg, ids):
    B, T = ids.shape
    H, Hkv, D, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"], cfg["rms_norm_eps"]
    inv = llama_inv_freq(cfg)
    x = w["model.embed_tokens.weight"][ids]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(B, T, H, D).transpose(1, 2)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(B, T, Hkv, D).transpose(1, 2)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(B, T, Hkv, D).transpose(1, 2)
        a = causal_attention(rope(q, inv), rope(k, inv), v).transpose(1, 2).reshape(B, T, H * D)
        x = x + a @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        g = torch.nn.functional.silu(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T)
        x = x + g @ w[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"], eps)
    return x @ w["lm_head.weight"].T


def shapes_gpt2(cfg):
    C, V, F, N = cfg["n_embd"], cfg["vocab_size"], cfg["n_inner"], cfg["n_positions"]
    s = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (N, C),
         "transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)}
    for l in range(cfg["n_layer"]):
        p = f"transformer.h.{l}."
        s.update({p + "ln_1.weight": (C,), p + "ln_1.bias": (C,), p + "attn.c_attn.weight": (C, 3 * C),
                  p + "attn.c_attn.bias": (3 * C,), p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
                  p + "ln_2.weight": (C,), p + "ln_2.bias": (C,), p + "mlp.c_fc.weight": (C, F),
                  p + "mlp.c_fc.bias": (F,), p + "mlp.c_proj.weight": (F, C), p + "mlp.c_proj.bias": (C,)})
    return s


def shapes_llama(cfg):
    C, V, F = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    H, Hkv, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    s = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,), "lm_head.weight": (V, C)}
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        s.update({p + "input_layernorm.weight": (C,), p + "self_attn.q_proj.weight": (H * D, C),
                  p + "self_attn.k_proj.weight": (Hkv * D, C), p + "self_attn.v_proj.weight": (Hkv * D, C),
                  p + "self_attn.o_proj.weight": (C, H * D), p + "post_attention_layernorm.weight": (C,),
                  p + "mlp.gate_proj.weight": (F, C), p + "mlp.up_proj.weight": (F, C), p + "mlp.down_proj.weight": (C, F)})
    return s


def make(name, cfg, shapes, model, seed):
    g = torch.Generator().manual_seed(seed)
    w = {}
    for n, s in shapes.items():
        base = 1.0 if (n.endswith("norm.weight") or n.endswith("ln_1.weight") or n.endswith("ln_2.weight")
                       or n.endswith("ln_f.weight") or n.endswith("layernorm.weight")) else 0.0
        w[n] = (base + 0.2 * torch.randn(s, generator=g)).requires_grad_(True)
    V = cfg["vocab_size"]
    ids = torch.randint(0, V, (2, 7), generator=g)
    targets = torch.randint(0, V, (2, 7), generator=g)
    targets[0, 3] = -100  # an ignored position
    logits = model(w, cfg, ids)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100)
    loss.backward()
    out = {"input.ids": ids, "input.targets": targets, "output.logits": logits, "output.loss": loss.reshape(1)}
    for n, t in w.items():
        out["weight." + n] = t
        out["grad." + n] = t.grad
    out.update(adamw_steps(w, cfg, model, g))
    save_safetensors(os.path.join(OUT, name + ".safetensors"), out, {"config": json.dumps(cfg)})
    print(name, "loss", float(loss))


def adamw_steps(w0, cfg, model, g, steps=10):
    """Ten torch.optim.AdamW steps from the same weights, a fresh batch each step. Decay as
    Forge's default rule: matrices yes; norms, biases and embedding tables no."""
    w = {n: t.detach().clone().requires_grad_(True) for n, t in w0.items()}
    decay = [t for n, t in w.items() if t.dim() >= 2 and not any(e in n for e in ("wte", "wpe", "embed"))]
    rest = [t for n, t in w.items() if not any(t is d for d in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    V, out, losses = cfg["vocab_size"], {}, []
    for k in range(steps):
        ids = torch.randint(0, V, (2, 7), generator=g)
        targets = torch.randint(0, V, (2, 7), generator=g)
        out[f"train.ids.{k}"], out[f"train.targets.{k}"] = ids, targets
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(w, cfg, ids).reshape(-1, V), targets.reshape(-1))
        loss.backward()
        opt.step()
        losses.append(float(loss))
    out["train.losses"] = torch.tensor(losses, dtype=torch.float32)
    for n, t in w.items():
        out["train.final." + n] = t
    return out


def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    g2 = {"model_type": "gpt2", "vocab_size": 61, "n_positions": 16, "n_embd": 32, "n_layer": 2,
          "n_head": 4, "n_inner": 128, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"}
    make("gpt2_small", g2, shapes_gpt2(g2), gpt2, 1)
    ll = {"model_type": "llama", "vocab_size": 61, "hidden_size": 32, "intermediate_size": 48,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
          "max_position_embeddings": 16, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
          "tie_word_embeddings": False, "hidden_act": "silu"}
    make("llama_small", ll, shapes_llama(ll), llama, 2)
    l3 = dict(ll, head_dim=16, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
              rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
    make("llama3_scaled_small", l3, shapes_llama(l3), llama, 3)


if __name__ == "__main__":
    sys.exit(main())
