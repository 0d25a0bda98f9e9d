#!/usr/bin/env python3
"""Writes the golden CoMiGS debug state: GPT-2 with attention LoRA and a mixture of LoRA experts.

Plain PyTorch in float64 (Debian's python3-torch; no transformers, no peft, no safetensors
package), the model of method.md §1 on the tiny base of scripts/golden_gpt2.py, written per the
`deno task grad --model DIR --adapters FILE --tokens FILE --out FILE` contract of interfaces.md.
Output folder (default tests/golden/comigs-tiny):
  config.json, model.safetensors, tokens.json  - copied byte for byte from tests/golden/gpt2-tiny
  adapters-k2.safetensors - n_experts "2,3", top_k 2, rank 4, alpha 8, rslora (s = 8/√4 = 4),
                            lb_coef 0.01, lb_rho 0.3 (all seven metadata keys present)
  debug-k2.safetensors    - its debug state
  adapters-k1.safetensors - n_experts "3,1" (layer 1: one expert, no router), top_k 1, rank 3,
                            alpha 6, standard (s = 6/3 = 2); lb_coef / lb_rho deliberately absent
                            so the contract's defaults (0.01, 0.5) are exercised
  debug-k1.safetensors    - its debug state
Debug state (F32): loss [1] (mean CE over all B·T, no aux term), lb_loss [1] (unscaled LB averaged
over the layers with a router), logits [B, T, V], grad.<name> = d loss / d tensor for every tensor
of the adapters file, in its own shape. The reference computes from the f32-rounded values that
are stored, so the engine sees exactly the same inputs.
Random draws: lora_A ~ U(−1/√in, 1/√in), lora_B ~ N(0, 0.2) (non-zero, so every gradient is
exercised), router ~ N(0, 0.5). Draws are repeated until every router layer sends tokens to every
expert and no selection is near a tie (margin printed; required ≥ golden_common.MIN_MARGIN in logit units,
far above f32 rounding of the router logits).
Run: /usr/bin/python3 scripts/golden_comigs.py [OUT_DIR]
"""
import json
import math
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_common import gate, lora_scale, read_safetensors, write_adapter_case  # noqa: E402
from golden_gpt2 import gelu_tanh  # noqa: E402

BASE = "tests/golden/gpt2-tiny"
CASES = [
    dict(name="k2", n_experts=[2, 3], top_k=2, rank=4, alpha=8, scaling="rslora",
         lb_coef=0.01, lb_rho=0.3, seed=2024),
    dict(name="k1", n_experts=[3, 1], top_k=1, rank=3, alpha=6, scaling="standard",
         lb_coef=None, lb_rho=None, seed=2025),  # None: key omitted, default (0.01, 0.5) used
]


def adapter_shapes(c, n_experts, r):
    C = c["n_embd"]
    H = 4 * C
    shapes = {}
    for i, E in enumerate(n_experts):
        h = f"h.{i}"
        shapes[f"{h}.attn.c_attn.lora_A"] = [r, C]
        shapes[f"{h}.attn.c_attn.lora_B"] = [3 * C, r]
        shapes[f"{h}.attn.c_proj.lora_A"] = [r, C]
        shapes[f"{h}.attn.c_proj.lora_B"] = [C, r]
        for j in range(E):
            e = f"{h}.mlp.experts.{j}"
            shapes[f"{e}.c_fc.lora_A"] = [r, C]
            shapes[f"{e}.c_fc.lora_B"] = [H, r]
            shapes[f"{e}.c_proj.lora_A"] = [r, H]
            shapes[f"{e}.c_proj.lora_B"] = [C, r]
        if E > 1:
            shapes[f"{h}.mlp.router.weight"] = [E, C]
    return shapes


def lora(x, W, b, A, B_, s):
    """y = x·W + b + s·(x·Aᵀ)·Bᵀ   (W [in, out] Conv1D, A [r, in], B [out, r])."""
    return x @ W + b + s * ((x @ A.T) @ B_.T)


def experts_mlp(p, ad, h, xm, E, g, s):
    """Block h's MLP on xm [N, C] as method.md §1 defines it: Σ_j g_j·expert_j(xm), each expert
    the frozen MLP with its own LoRA on c_fc and c_proj (g [N, E]; None when E = 1)."""
    ys = []
    for j in range(E):
        e = f"{h}.mlp.experts.{j}"
        hj = gelu_tanh(lora(xm, p[h + ".mlp.c_fc.weight"], p[h + ".mlp.c_fc.bias"],
                            ad[e + ".c_fc.lora_A"], ad[e + ".c_fc.lora_B"], s))
        ys.append(lora(hj, p[h + ".mlp.c_proj.weight"], p[h + ".mlp.c_proj.bias"],
                       ad[e + ".c_proj.lora_A"], ad[e + ".c_proj.lora_B"], s))
    return ys[0] if g is None else sum(g[:, j:j + 1] * ys[j] for j in range(E))


def forward(p, ad, c, idx, n_experts, k, s, mlp=experts_mlp):
    """GPT-2 (as golden_gpt2.forward) with attention LoRA and a mixture of LoRA experts per MLP
    (mlp computes it: experts_mlp by definition; bench/torch_gpt2_step.py passes the fused form).

    Returns logits [B, T, V] and per-layer router info [(router logits [N, E], chosen [N, k])]
    (None for layers with E = 1).
    """
    Bn, Tn = idx.shape
    C, nh, eps = c["n_embd"], c["n_head"], c["layer_norm_epsilon"]
    ln = lambda x, n: torch.nn.functional.layer_norm(x, (C,), p[n + ".weight"], p[n + ".bias"], eps)
    x = p["wte.weight"][idx] + p["wpe.weight"][torch.arange(Tn)]
    mask = torch.tril(torch.ones(Tn, Tn, dtype=torch.bool))
    routing = []
    for i in range(c["n_layer"]):
        h = f"h.{i}"
        qkv = lora(ln(x, h + ".ln_1"), p[h + ".attn.c_attn.weight"], p[h + ".attn.c_attn.bias"],
                   ad[h + ".attn.c_attn.lora_A"], ad[h + ".attn.c_attn.lora_B"], s)
        q, kk, v = (t.view(Bn, Tn, nh, C // nh).transpose(1, 2) for t in qkv.split(C, dim=2))
        att = (q @ kk.transpose(-2, -1)) / math.sqrt(C // nh)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(Bn, Tn, C)
        x = x + lora(y, p[h + ".attn.c_proj.weight"], p[h + ".attn.c_proj.bias"],
                     ad[h + ".attn.c_proj.lora_A"], ad[h + ".attn.c_proj.lora_B"], s)
        xm = ln(x, h + ".ln_2").reshape(Bn * Tn, C)
        E = n_experts[i]
        if E == 1:
            g = None
            routing.append(None)
        else:
            rl = xm @ ad[h + ".mlp.router.weight"].T
            g, chosen = gate(rl, k)
            routing.append((rl, chosen))
        x = x + mlp(p, ad, h, xm, E, g, s).reshape(Bn, Tn, C)
    return ln(x, "ln_f") @ p["wte.weight"].T, routing


def check_base_reproduces(p, c, idx, targets, base_dir):
    """With zero lora_B and one expert per layer the model must be golden_gpt2's model."""
    ad = {n: torch.zeros(s) for n, s in adapter_shapes(c, [1] * c["n_layer"], 2).items()}
    logits, _ = forward(p, ad, c, idx, [1] * c["n_layer"], 1, 1.0)
    ref = read_safetensors(os.path.join(base_dir, "debug.safetensors"))
    err = (logits.to(torch.float32).to(torch.float64) - ref["logits"]).abs().max().item()
    assert err == 0.0 or err < 1e-6, f"base model mismatch {err}"


def run_case(case, p, c, idx, targets, out):
    E_list, k, s = case["n_experts"], case["top_k"], lora_scale(case)
    write_adapter_case(case, adapter_shapes(c, E_list, case["rank"]),
                       lambda ad: forward(p, ad, c, idx, E_list, k, s), targets, out)


def main():
    # Here, not on import: bench/torch_gpt2_step.py imports forward to run it in float32.
    torch.set_default_dtype(torch.float64)
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/golden/comigs-tiny"
    os.makedirs(out, exist_ok=True)
    for f in ("config.json", "model.safetensors", "tokens.json"):
        shutil.copyfile(os.path.join(BASE, f), os.path.join(out, f))
    with open(os.path.join(out, "config.json")) as f:
        c = json.load(f)
    with open(os.path.join(out, "tokens.json")) as f:
        tokens = torch.tensor(json.load(f))
    p = read_safetensors(os.path.join(out, "model.safetensors"))
    idx, targets = tokens[:, :-1], tokens[:, 1:]
    check_base_reproduces(p, c, idx, targets, BASE)
    for case in CASES:
        run_case(case, p, c, idx, targets, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
