"""PyTorch's batch-1 GPT-2 decode loop, the peer of `forge bench --device cuda` (bench/cuda/decode.sh).

GPT-2 124M shapes, random bf16 weights, a static KV cache of --cap positions (the mask hides the
unfilled ones, as in gpt-fast), one decode step (embedding .. argmax, next token and position kept
on the device) captured in a CUDA graph and replayed; optionally the same step under
torch.compile (Inductor) captured in a CUDA graph. Also: prefill of --pp tokens (SDPA, causal) and the
device-to-device copy bandwidth. Prints one line a figure.
"""
import argparse
import time

import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--tg", type=int, default=128)
p.add_argument("--cap", type=int, default=128, help="KV cache positions (>= tg)")
p.add_argument("--pp", type=int, nargs="*", default=[512, 1024])
p.add_argument("--compile", action="store_true", help="also the step through torch.compile, in a CUDA graph")
p.add_argument("--reps", type=int, default=5)
a = p.parse_args()

dev, dt = "cuda", torch.bfloat16
C, H, L, V, FF, NCTX = 768, 12, 12, 50257, 3072, 1024
D = C // H
torch.manual_seed(0)


def rnd(*s, std=0.02):
    return (torch.randn(*s, device=dev) * std).to(dt)


wte, wpe = rnd(V, C), rnd(NCTX, C, std=0.01)
layers = [dict(ln1w=torch.ones(C, device=dev, dtype=dt), ln1b=torch.zeros(C, device=dev, dtype=dt),
               qkv=rnd(3 * C, C), qkv_b=torch.zeros(3 * C, device=dev, dtype=dt),
               proj=rnd(C, C), proj_b=torch.zeros(C, device=dev, dtype=dt),
               ln2w=torch.ones(C, device=dev, dtype=dt), ln2b=torch.zeros(C, device=dev, dtype=dt),
               fc=rnd(FF, C), fc_b=torch.zeros(FF, device=dev, dtype=dt),
               fc2=rnd(C, FF), fc2_b=torch.zeros(C, device=dev, dtype=dt)) for _ in range(L)]
lnfw, lnfb = torch.ones(C, device=dev, dtype=dt), torch.zeros(C, device=dev, dtype=dt)
weight_bytes = (wte.numel() + sum(w["qkv"].numel() + w["proj"].numel() + w["fc"].numel() +
                                  w["fc2"].numel() for w in layers)) * 2


def new_cache(cap):
    return [torch.zeros(2, 1, H, cap, D, device=dev, dtype=dt) for _ in range(L)]


def step(tok, pos, cache, arange):
    """tok, pos: (1,) int64 on the device; writes the argmax into tok and advances pos."""
    x = wte[tok] + wpe[pos]  # (1, C)
    mask = (arange <= pos).view(1, 1, 1, -1)
    for w, kv in zip(layers, cache):
        h = F.layer_norm(x, (C,), w["ln1w"], w["ln1b"])
        q, k, v = F.linear(h, w["qkv"], w["qkv_b"]).view(1, 3, H, 1, D).unbind(1)
        kv[0].index_copy_(2, pos, k)
        kv[1].index_copy_(2, pos, v)
        y = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)
        x = x + F.linear(y.view(1, C), w["proj"], w["proj_b"])
        h = F.layer_norm(x, (C,), w["ln2w"], w["ln2b"])
        h = F.gelu(F.linear(h, w["fc"], w["fc_b"]), approximate="tanh")
        x = x + F.linear(h, w["fc2"], w["fc2_b"])
    logits = F.linear(F.layer_norm(x, (C,), lnfw, lnfb), wte)
    tok.copy_(logits.argmax(-1))
    pos.add_(1)


def prefill(ids, cache):
    T = ids.numel()
    x = wte[ids] + wpe[:T]  # (T, C)
    for w, kv in zip(layers, cache):
        h = F.layer_norm(x, (C,), w["ln1w"], w["ln1b"])
        q, k, v = F.linear(h, w["qkv"], w["qkv_b"]).view(T, 3, H, D).permute(1, 2, 0, 3).unbind(0)
        kv[0][0, :, :T] = k
        kv[1][0, :, :T] = v
        y = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True)
        x = x + F.linear(y[0].transpose(0, 1).reshape(T, C), w["proj"], w["proj_b"])
        h = F.layer_norm(x, (C,), w["ln2w"], w["ln2b"])
        x = x + F.linear(F.gelu(F.linear(h, w["fc"], w["fc_b"]), approximate="tanh"), w["fc2"], w["fc2_b"])
    return F.linear(F.layer_norm(x[-1:], (C,), lnfw, lnfb), wte)


def timed(fn, reps):
    out = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return sorted(out)[len(out) // 2]


@torch.inference_mode()
def main():
    print(f"gpu: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    # Copy ceiling: 1 GiB device to device, bytes read + written.
    src = torch.empty(1 << 28, device=dev, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    n = 20
    s = timed(lambda: [dst.copy_(src) for _ in range(n)], 3) / n
    copy_gbs = 2 * src.numel() * 4 / s / 1e9
    print(f"device copy 1 GiB: {s * 1e3:.3f} ms, {copy_gbs:.0f} GB/s (read + write)")
    del src, dst

    for T in a.pp:
        cache = new_cache(T)
        ids = torch.arange(T, device=dev) * 7919 % V
        prefill(ids, cache)
        s = timed(lambda: prefill(ids, cache), a.reps)
        print(f"torch pp{T}: {T / s:.1f} tokens/s ({s * 1e3:.2f} ms)")

    cache, arange = new_cache(a.cap), torch.arange(a.cap, device=dev)
    tok = torch.zeros(1, dtype=torch.long, device=dev)
    pos = torch.zeros(1, dtype=torch.long, device=dev)
    s_ = torch.cuda.Stream()
    s_.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s_):  # warm-up before capture
        for _ in range(3):
            step(tok, pos, cache, arange)
    torch.cuda.current_stream().wait_stream(s_)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step(tok, pos, cache, arange)

    def run_graph():
        pos.zero_()
        tok.fill_(13)
        for _ in range(a.tg):
            g.replay()

    run_graph()
    s = timed(run_graph, a.reps)
    print(f"torch tg{a.tg} (CUDA graph, argmax on the device): {a.tg / s:.1f} tokens/s, "
          f"{s / a.tg * 1e6:.1f} us/token, {weight_bytes / (s / a.tg) / 1e9:.0f} GB/s of weights "
          f"({weight_bytes / 2**20:.1f} MiB)")

    def run_eager():
        pos.zero_()
        tok.fill_(13)
        for _ in range(a.tg):
            step(tok, pos, cache, arange)

    run_eager()
    s = timed(run_eager, 3)
    print(f"torch tg{a.tg} (eager): {a.tg / s:.1f} tokens/s")

    if a.compile:  # Inductor's fused kernels, captured in a CUDA graph by hand (its own
        try:       # cudagraph mode skips a step that mutates its inputs)
            cstep = torch.compile(step, fullgraph=True)
            t0 = time.perf_counter()
            pos.zero_()
            s_ = torch.cuda.Stream()
            s_.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s_):
                for _ in range(3):
                    cstep(tok, pos, cache, arange)
            torch.cuda.current_stream().wait_stream(s_)
            g2 = torch.cuda.CUDAGraph()
            pos.zero_()
            with torch.cuda.graph(g2):
                cstep(tok, pos, cache, arange)
            print(f"(torch.compile warm-up and capture {time.perf_counter() - t0:.0f} s)")

            def run_compiled():
                pos.zero_()
                tok.fill_(13)
                for _ in range(a.tg):
                    g2.replay()

            run_compiled()
            s = timed(run_compiled, a.reps)
            print(f"torch tg{a.tg} (torch.compile + CUDA graph): {a.tg / s:.1f} tokens/s, "
                  f"{s / a.tg * 1e6:.1f} us/token, {weight_bytes / (s / a.tg) / 1e9:.0f} GB/s of weights")
        except Exception as e:  # report, keep the other figures
            print(f"torch.compile failed: {type(e).__name__}: {str(e)[:300]}")


main()
