#!/usr/bin/python3
"""Golden fixture for forge::AdamW and forge::SGD: runs torch.optim.AdamW / SGD on two small
parameters (one with weight decay, one without, as Forge's decay rule would split them) with
given gradients and per-step learning rates, and writes inputs and the parameters after every
step to tests/train/adamw_torch_fixture.json.

Run with Debian's PyTorch (not the pyenv python):  /usr/bin/python3 tools/golden/adamw_torch.py
"""
import json
import math
import os

import torch

torch.manual_seed(0)
STEPS = 6
shapes = {"w": [3, 4], "b": [5]}
init = {k: torch.randn(s, dtype=torch.float32) for k, s in shapes.items()}
# Gradients of varied scale (including tiny ones, where eps matters) for every step.
grads = [{k: torch.randn(s, dtype=torch.float32) * (10.0 ** (i % 3 - 1)) for k, s in shapes.items()}
         for i in range(STEPS)]
lrs = [1e-3 * (i + 1) / STEPS + 1e-4 * math.cos(i) for i in range(STEPS)]


def run(make_opt):
    params = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    opt = make_opt(params)
    out = []
    for i in range(STEPS):
        for g in opt.param_groups:
            g["lr"] = lrs[i]
        for k, p in params.items():
            p.grad = grads[i][k].clone()
        opt.step()
        out.append({k: p.detach().flatten().tolist() for k, p in params.items()})
    return out


adamw = run(lambda p: torch.optim.AdamW(
    [{"params": [p["w"]], "weight_decay": 0.1}, {"params": [p["b"]], "weight_decay": 0.0}],
    lr=lrs[0], betas=(0.9, 0.99), eps=1e-8))
sgd = run(lambda p: torch.optim.SGD(
    [{"params": [p["w"]], "weight_decay": 0.01}, {"params": [p["b"]], "weight_decay": 0.0}],
    lr=lrs[0], momentum=0.9))

fixture = {
    "torch_version": torch.__version__,
    "shapes": shapes,
    "init": {k: v.flatten().tolist() for k, v in init.items()},
    "grads": [{k: g[k].flatten().tolist() for k in shapes} for g in grads],
    "lrs": lrs,
    "adamw": {"beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.1, "params": adamw},
    "sgd": {"momentum": 0.9, "weight_decay": 0.01, "params": sgd},
}
path = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "train", "adamw_torch_fixture.json")
with open(path, "w") as f:
    json.dump(fixture, f)
print("wrote", os.path.normpath(path))
