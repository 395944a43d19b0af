#!/usr/bin/env python3
"""Checks model folders written by forge::formats::export_hf against Hugging Face transformers.

Each DIR holds config.json, model.safetensors (or shards + model.safetensors.index.json) and
forge_logits.safetensors (input_ids and the logits Forge computed for them); the unit test
tests/formats/hf_export_test.cpp leaves such folders in build/hf_check/<case>/.

  python3 tools/golden/hf_load_check.py DIR [DIR ...]
      (needs torch + transformers 4.x) AutoModelForCausalLM.from_pretrained(DIR) in float32
      (float16/bfloat16 files are upcast exactly, as Forge's loader does), run the ids, print
      the max |HF - Forge| of the logits; exit 1 above 1e-4 * max(1, max |logit|): both sides
      compute in float32 from identical weights, so only summation order differs (~1e-6).
  python3 tools/golden/hf_load_check.py --names-only DIR [DIR ...]
      (pure Python; uses torch to read the tensors when it is importable) the files' tensor
      names, shapes and dtypes against the names HF's GPT2LMHeadModel / LlamaForCausalLM give
      their parameters for that config.json; the index's weight_map and total_size.
"""
import json
import os
import struct
import sys

DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "U8": 1}
TORCH_DTYPE = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
TORCH_READ = None  # torch version that read the tensors, if torch is importable


def read_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", {})
    return header, meta, 8 + n


def expected(cfg):
    """HF parameter names and shapes (modeling_gpt2.py / modeling_llama.py module trees)."""
    L = cfg.get("n_layer", cfg.get("num_hidden_layers"))
    V = cfg["vocab_size"]
    tied = cfg.get("tie_word_embeddings", cfg["model_type"] == "gpt2")
    s = {}
    if cfg["model_type"] == "gpt2":
        C, P = cfg["n_embd"], cfg["n_positions"]
        F = cfg.get("n_inner") or 4 * C
        s["transformer.wte.weight"] = [V, C]
        s["transformer.wpe.weight"] = [P, C]
        for i in range(L):
            p = f"transformer.h.{i}."
            s[p + "ln_1.weight"] = s[p + "ln_1.bias"] = [C]
            s[p + "attn.c_attn.weight"], s[p + "attn.c_attn.bias"] = [C, 3 * C], [3 * C]  # Conv1D
            s[p + "attn.c_proj.weight"], s[p + "attn.c_proj.bias"] = [C, C], [C]
            s[p + "ln_2.weight"] = s[p + "ln_2.bias"] = [C]
            s[p + "mlp.c_fc.weight"], s[p + "mlp.c_fc.bias"] = [C, F], [F]
            s[p + "mlp.c_proj.weight"], s[p + "mlp.c_proj.bias"] = [F, C], [C]
        s["transformer.ln_f.weight"] = s["transformer.ln_f.bias"] = [C]
    elif cfg["model_type"] == "llama":
        C, F = cfg["hidden_size"], cfg["intermediate_size"]
        H = cfg["num_attention_heads"]
        Hkv = cfg.get("num_key_value_heads") or H
        D = cfg.get("head_dim") or C // H
        s["model.embed_tokens.weight"] = [V, C]
        for i in range(L):
            p = f"model.layers.{i}."
            s[p + "input_layernorm.weight"] = s[p + "post_attention_layernorm.weight"] = [C]
            s[p + "self_attn.q_proj.weight"] = [H * D, C]  # nn.Linear: (out, in)
            s[p + "self_attn.k_proj.weight"] = s[p + "self_attn.v_proj.weight"] = [Hkv * D, C]
            s[p + "self_attn.o_proj.weight"] = [C, H * D]
            s[p + "mlp.gate_proj.weight"] = s[p + "mlp.up_proj.weight"] = [F, C]
            s[p + "mlp.down_proj.weight"] = [C, F]
        s["model.norm.weight"] = [C]
    else:
        raise SystemExit(f"unsupported model_type {cfg['model_type']}")
    if not tied:
        s["lm_head.weight"] = [V, C]
    return s


def names_only(d):
    cfg = json.load(open(os.path.join(d, "config.json")))
    want_dtype = TORCH_DTYPE[cfg["torch_dtype"]]
    index = os.path.join(d, "model.safetensors.index.json")
    files = ["model.safetensors"]
    weight_map = None
    if os.path.exists(index):
        idx = json.load(open(index))
        weight_map = idx["weight_map"]
        files = sorted(set(weight_map.values()))
    got, total = {}, 0
    for f in files:
        header, meta, start = read_header(os.path.join(d, f))
        assert meta.get("format") == "pt", f"{f}: metadata format must be 'pt' for transformers"
        for name, info in header.items():
            assert name not in got, f"{name} appears in two shards"
            if weight_map is not None:
                assert weight_map.get(name) == f, f"{name} is in {f}, the index says {weight_map.get(name)}"
            assert info["dtype"] == want_dtype, f"{name}: {info['dtype']}, config says {want_dtype}"
            b, e = info["data_offsets"]
            n = 1
            for x in info["shape"]:
                n *= x
            assert e - b == n * DTYPES[info["dtype"]], f"{name}: byte range vs shape"
            got[name] = info["shape"]
            total += e - b
        try:  # optional: materialise every tensor with torch (Debian's python3-torch has no
            import torch  # safetensors package, so the bytes are read directly)
            tdt = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
            data = open(os.path.join(d, f), "rb").read()
            for name, info in header.items():
                b, e = info["data_offsets"]
                t = torch.frombuffer(bytearray(data[start + b:start + e]), dtype=tdt[info["dtype"]])
                t = t.reshape(info["shape"])
                assert torch.isfinite(t.float()).all(), f"{name}: non-finite values"
            global TORCH_READ
            TORCH_READ = torch.__version__
        except ImportError:
            pass
    if weight_map is not None:
        assert set(weight_map) == set(got), "index and shards disagree"
        assert idx["metadata"]["total_size"] == total, "metadata.total_size"
    want = expected(cfg)
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    bad = [k for k in want if k in got and list(want[k]) != list(got[k])]
    if missing or extra or bad:
        print(f"{d}: missing {missing[:5]} unexpected {extra[:5]} wrong shapes {bad[:5]}")
        return False
    via = f", read by torch {TORCH_READ}" if TORCH_READ else ""
    print(f"{d}: {len(got)} tensors, names and shapes are HF's ({cfg['architectures'][0]}, {want_dtype}{via})")
    return True


def full(d):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    ref = load_file(os.path.join(d, "forge_logits.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32)
    model.eval()
    stored = json.load(open(os.path.join(d, "config.json")))["torch_dtype"]
    with torch.no_grad():
        logits = model(ref["input_ids"].long()).logits.float()
    diff = (logits - ref["logits"].float()).abs().max().item()
    scale = max(1.0, ref["logits"].abs().max().item())
    tol = 1e-4 * scale
    ok = diff <= tol
    print(f"{d}: {type(model).__name__} (weights stored as {stored}): max |HF - Forge| = {diff:.3g} "
          f"(tolerance {tol:.3g}) {'OK' if ok else 'FAIL'}")
    return ok


def main(argv):
    names = "--names-only" in argv
    dirs = [a for a in argv if a != "--names-only"]
    if not dirs:
        print(__doc__)
        return 2
    ok = all([names_only(d) if names else full(d) for d in dirs])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
