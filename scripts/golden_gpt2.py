#!/usr/bin/env python3
"""Writes the golden GPT-2 debug state our engine is checked against (llm.c's discipline).

Plain PyTorch (Debian's python3-torch; no transformers, no safetensors package): GPT-2 exactly as
Hugging Face's GPT2LMHeadModel computes it, in float64 so the reference carries no float32 error
of its own. Output folder (default tests/golden/gpt2-tiny):
  config.json, model.safetensors  - a base model in the Hugging Face GPT-2 layout
  tokens.json                     - B sequences of T+1 token ids (interfaces.md's --tokens file)
  debug.safetensors               - loss, lb_loss, logits, grad.<name> (the `deno task grad`
                                    contract) plus train_losses: the losses of the first 10
                                    AdamW steps of full training, hyperparameters in __metadata__
Run: /usr/bin/python3 scripts/golden_gpt2.py [OUT_DIR]
"""
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_common import base_debug_metadata, base_debug_state, stored, write_safetensors  # noqa: E402

CONFIG = dict(n_layer=2, n_head=3, n_embd=36, vocab_size=101, n_positions=24, layer_norm_epsilon=1e-5)
B, T = 3, 13
ADAMW = dict(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.01, steps=10)


def param_shapes(c):
    L, C, V, P = c["n_layer"], c["n_embd"], c["vocab_size"], c["n_positions"]
    shapes = {"wte.weight": [V, C], "wpe.weight": [P, C]}
    for i in range(L):
        h = f"h.{i}"
        shapes.update({
            f"{h}.ln_1.weight": [C], f"{h}.ln_1.bias": [C],
            f"{h}.attn.c_attn.weight": [C, 3 * C], f"{h}.attn.c_attn.bias": [3 * C],
            f"{h}.attn.c_proj.weight": [C, C], f"{h}.attn.c_proj.bias": [C],
            f"{h}.ln_2.weight": [C], f"{h}.ln_2.bias": [C],
            f"{h}.mlp.c_fc.weight": [C, 4 * C], f"{h}.mlp.c_fc.bias": [4 * C],
            f"{h}.mlp.c_proj.weight": [4 * C, C], f"{h}.mlp.c_proj.bias": [C],
        })
    shapes.update({"ln_f.weight": [C], "ln_f.bias": [C]})
    return shapes


def init_params(c):
    """GPT-2 init, but with random biases and LayerNorm gains so every gradient is exercised."""
    params = {}
    for name, shape in param_shapes(c).items():
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
            t = 1 + 0.1 * torch.randn(shape)
        elif name.endswith("bias"):
            t = 0.02 * torch.randn(shape)
        else:
            std = 0.02 / math.sqrt(2 * c["n_layer"]) if name.endswith("c_proj.weight") else 0.02
            t = std * torch.randn(shape)
        params[name] = t.requires_grad_()
    return params


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def forward(p, c, idx):
    """GPT2LMHeadModel: pre-LN blocks, Conv1D weights [in, out], causal attention, tied head."""
    Bn, Tn = idx.shape
    C, H, eps = c["n_embd"], c["n_head"], c["layer_norm_epsilon"]
    ln = lambda x, n: torch.nn.functional.layer_norm(x, (C,), p[n + ".weight"], p[n + ".bias"], eps)
    x = p["wte.weight"][idx] + p["wpe.weight"][torch.arange(Tn)]
    mask = torch.tril(torch.ones(Tn, Tn, dtype=torch.bool))
    for i in range(c["n_layer"]):
        h = f"h.{i}"
        qkv = ln(x, h + ".ln_1") @ p[h + ".attn.c_attn.weight"] + p[h + ".attn.c_attn.bias"]
        q, k, v = (t.view(Bn, Tn, H, C // H).transpose(1, 2) for t in qkv.split(C, dim=2))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // H)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(Bn, Tn, C)
        x = x + y @ p[h + ".attn.c_proj.weight"] + p[h + ".attn.c_proj.bias"]
        m = gelu_tanh(ln(x, h + ".ln_2") @ p[h + ".mlp.c_fc.weight"] + p[h + ".mlp.c_fc.bias"])
        x = x + m @ p[h + ".mlp.c_proj.weight"] + p[h + ".mlp.c_proj.bias"]
    return ln(x, "ln_f") @ p["wte.weight"].T


def main():
    # Here, not on import: bench/torch_gpt2_step.py imports forward to run it in float32.
    torch.manual_seed(1234)
    torch.set_default_dtype(torch.float64)
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/golden/gpt2-tiny"
    os.makedirs(out, exist_ok=True)
    c = CONFIG
    params = init_params(c)
    tokens = torch.randint(0, c["vocab_size"], (B, T + 1))
    idx, targets = tokens[:, :-1], tokens[:, 1:]
    # The base model is stored in f32; the reference computes from exactly those f32 values.
    with torch.no_grad():
        for t in params.values():
            t.copy_(stored(t))

    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({"model_type": "gpt2", **c}, f, indent=2)
    write_safetensors(os.path.join(out, "model.safetensors"), params)
    with open(os.path.join(out, "tokens.json"), "w") as f:
        json.dump(tokens.tolist(), f)

    debug, loss, losses = base_debug_state(params, lambda p: forward(p, c, idx), targets, ADAMW)
    write_safetensors(os.path.join(out, "debug.safetensors"), debug, base_debug_metadata(ADAMW, targets))
    print(f"wrote {out}: loss {loss:.6f}, 10-step losses {[round(l, 5) for l in losses]}")


if __name__ == "__main__":
    main()
