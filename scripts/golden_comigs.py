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
expert and no selection is near a tie (margin printed; required ≥ MIN_MARGIN in logit units,
far above f32 rounding of the router logits).
Run: /usr/bin/python3 scripts/golden_comigs.py [OUT_DIR]
"""
import json
import math
import os
import shutil
import struct
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_gpt2 import gelu_tanh, loss_of, write_safetensors  # noqa: E402  (also sets float64)

torch.set_default_dtype(torch.float64)

BASE = "tests/golden/gpt2-tiny"
MIN_MARGIN = 1e-3  # the brief asks for 1e-6; f32 router logits are off by ~1e-6, so be generous
CASES = [
    dict(name="k2", n_experts=[2, 3], top_k=2, rank=4, alpha=8, scaling="rslora",
         lb_coef=0.01, lb_rho=0.3, seed=2024),
    dict(name="k1", n_experts=[3, 1], top_k=1, rank=3, alpha=6, scaling="standard",
         lb_coef=None, lb_rho=None, seed=2025),  # None: key omitted, default (0.01, 0.5) used
]
LB_DEFAULTS = dict(lb_coef=0.01, lb_rho=0.5)


def read_safetensors(path):
    """F32 safetensors -> {name: float64 tensor} (the values exactly as stored)."""
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, h in header.items():
        assert h["dtype"] == "F32", (name, h["dtype"])
        a, b = h["data_offsets"]
        t = torch.frombuffer(bytearray(raw[8 + n + a:8 + n + b]), dtype=torch.float32)
        out[name] = t.reshape(h["shape"]).to(torch.float64)
    return out


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


def draw_adapters(c, n_experts, r):
    ad = {}
    for name, shape in adapter_shapes(c, n_experts, r).items():
        if name.endswith("lora_A"):
            bound = 1 / math.sqrt(shape[1])
            t = (torch.rand(shape) * 2 - 1) * bound
        elif name.endswith("lora_B"):
            t = 0.2 * torch.randn(shape)
        else:
            t = 0.5 * torch.randn(shape)
        # Stored as f32: compute from exactly the stored values.
        ad[name] = t.to(torch.float32).to(torch.float64).requires_grad_()
    return ad


def lora(x, W, b, A, B_, s):
    """y = x·W + b + s·(x·Aᵀ)·Bᵀ   (W [in, out] Conv1D, A [r, in], B [out, r])."""
    return x @ W + b + s * ((x @ A.T) @ B_.T)


def gate(logits, k):
    """Dense gates [N, E] (zero for unselected experts) and the chosen indices [N, k].

    k >= 2: top-k of the raw logits, softmax over those k (gradient through the selected logits).
    k == 1: softmax over all E, top-1 of the probabilities, gate = p_max (not renormalised);
            autograd sends the gradient through p_max to every logit (as the authors' code).
    """
    E = logits.shape[-1]
    k = min(k, E)
    if k == 1:
        probs = logits.softmax(dim=-1)
        vals, idx = probs.topk(1, dim=-1)
        return torch.zeros_like(logits).scatter(1, idx, vals), idx
    vals, idx = logits.topk(k, dim=-1)
    return torch.zeros_like(logits).scatter(1, idx, vals.softmax(dim=-1)), idx


def selection_margin(logits, k):
    """Smallest gap, over tokens, that decides the selection (in logit units)."""
    E = logits.shape[-1]
    k = min(k, E)
    if k == E:
        return math.inf
    srt = logits.sort(dim=-1, descending=True).values
    return (srt[:, k - 1] - srt[:, k]).min().item()


def lb_value(logits, idx, k, rho):
    """Switch-style load balancing of method.md for one layer with E > 1 (value only)."""
    E = logits.shape[-1]
    k = min(k, E)
    N = logits.shape[0]
    density = torch.zeros(E).index_add_(0, idx.reshape(-1), torch.ones(N * k)) / (N * k)
    prob = logits.softmax(dim=-1).mean(dim=0)
    f = torch.tensor([1 / rho] + [(E - 1) / (1 - rho)] * (E - 1)) / E
    return E * E * (prob * density * f).mean()


def forward(p, ad, c, idx, n_experts, k, s):
    """GPT-2 (as golden_gpt2.forward) with attention LoRA and a mixture of LoRA experts per MLP.

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
        ys = []
        for j in range(E):
            e = f"{h}.mlp.experts.{j}"
            hj = gelu_tanh(lora(xm, p[h + ".mlp.c_fc.weight"], p[h + ".mlp.c_fc.bias"],
                                ad[e + ".c_fc.lora_A"], ad[e + ".c_fc.lora_B"], s))
            ys.append(lora(hj, p[h + ".mlp.c_proj.weight"], p[h + ".mlp.c_proj.bias"],
                           ad[e + ".c_proj.lora_A"], ad[e + ".c_proj.lora_B"], s))
        if E == 1:
            m = ys[0]
            routing.append(None)
        else:
            rl = xm @ ad[h + ".mlp.router.weight"].T
            g, chosen = gate(rl, k)
            m = sum(g[:, j:j + 1] * ys[j] for j in range(E))
            routing.append((rl, chosen))
        x = x + m.reshape(Bn, Tn, C)
    return ln(x, "ln_f") @ p["wte.weight"].T, routing


def check_base_reproduces(p, c, idx, targets, base_dir):
    """With zero lora_B and one expert per layer the model must be golden_gpt2's model."""
    ad = {n: torch.zeros(s) for n, s in adapter_shapes(c, [1] * c["n_layer"], 2).items()}
    logits, _ = forward(p, ad, c, idx, [1] * c["n_layer"], 1, 1.0)
    ref = read_safetensors(os.path.join(base_dir, "debug.safetensors"))
    err = (logits.to(torch.float32).to(torch.float64) - ref["logits"]).abs().max().item()
    assert err == 0.0 or err < 1e-6, f"base model mismatch {err}"


def run_case(case, p, c, idx, targets, out):
    k, r, alpha = case["top_k"], case["rank"], case["alpha"]
    s = alpha / math.sqrt(r) if case["scaling"] == "rslora" else alpha / r
    rho = case["lb_rho"] if case["lb_rho"] is not None else LB_DEFAULTS["lb_rho"]
    E_list = case["n_experts"]
    torch.manual_seed(case["seed"])
    for attempt in range(100):
        ad = draw_adapters(c, E_list, r)
        with torch.no_grad():
            _, routing = forward(p, ad, c, idx, E_list, k, s)
        ok, margins = True, []
        for i, info in enumerate(routing):
            if info is None:
                continue
            rl, chosen = info
            E = rl.shape[1]
            counts = torch.bincount(chosen.reshape(-1), minlength=E)
            margin = selection_margin(rl, k)
            margins.append(margin)
            # Every expert chosen somewhere, and not the same choice everywhere.
            if (counts == 0).any() or margin < MIN_MARGIN:
                ok = False
            if min(k, E) < E and len(set(map(tuple, chosen.sort(dim=-1).values.tolist()))) < 2:
                ok = False
        if ok:
            break
    else:
        raise RuntimeError("no acceptable draw")

    logits, routing = forward(p, ad, c, idx, E_list, k, s)
    loss = loss_of(logits, targets)
    loss.backward()
    lbs, summary = [], []
    for i, info in enumerate(routing):
        if info is None:
            summary.append(f"layer {i}: E=1 (no router)")
            continue
        rl, chosen = info
        E = rl.shape[1]
        lb = lb_value(rl.detach(), chosen, k, rho)
        lbs.append(lb)
        counts = torch.bincount(chosen.reshape(-1), minlength=E).tolist()
        summary.append(f"layer {i}: E={E} k={min(k, E)} chosen counts {counts} "
                       f"LB {lb.item():.6f} margin {selection_margin(rl.detach(), k):.4g}")
    lb_loss = torch.stack(lbs).mean() if lbs else torch.zeros(())

    meta = {"lora_rank": str(r), "lora_alpha": str(alpha), "lora_scaling": case["scaling"],
            "top_k": str(k), "n_experts": ",".join(map(str, E_list))}
    if case["lb_coef"] is not None:
        meta["lb_coef"] = str(case["lb_coef"])
    if case["lb_rho"] is not None:
        meta["lb_rho"] = str(case["lb_rho"])
    write_safetensors(os.path.join(out, f"adapters-{case['name']}.safetensors"), ad, meta)
    debug = {"loss": loss.reshape(1), "lb_loss": lb_loss.reshape(1), "logits": logits}
    debug.update({f"grad.{n}": t.grad for n, t in ad.items()})
    dmeta = {"adapters": f"adapters-{case['name']}.safetensors", "lora_scale": repr(s),
             "lb_rho_used": str(rho), "batch": str(idx.shape[0]), "seq": str(idx.shape[1]),
             "reference_dtype": "float64", "torch": torch.__version__}
    write_safetensors(os.path.join(out, f"debug-{case['name']}.safetensors"), debug, dmeta)
    print(f"case {case['name']} (draw {attempt + 1}): loss {loss.item():.9f} "
          f"lb_loss {lb_loss.item():.9f} s {s:.6g}")
    for line in summary:
        print("  " + line)


def main():
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
