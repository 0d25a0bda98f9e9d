#!/usr/bin/env python3
"""GPT-2 training steps in plain PyTorch on the CPU (float32), timed: the PyTorch side of
bench/gpt2_vs_torch.ts, which runs it interleaved with the same steps on our engine.

Debian's torch under /usr/bin/python3 (no transformers, no peft, no safetensors package). The
model is GPT2LMHeadModel as transformers computes it in eager mode: scripts/golden_gpt2.py's
forward (pre-LN blocks, Conv1D weights [in, out], causal attention, gelu_new, tied head),
imported, not written again. DIR/step.json's "step" says what is trained:
  full    every base tensor (forward, backward, AdamW on all of them), the loss minimised;
  expert  CoMiGS's expert step (method.md §1): the base frozen, LoRA on attn.c_attn and
          attn.c_proj, every MLP a mixture of its E LoRA experts under the router's top-k gate
          (scripts/golden_comigs.py's forward, imported), the objective loss + lb_coef · mean
          LB over the routed blocks, AdamW on the LoRA tensors (the routers stay frozen). The
          mixture is computed as kernels/moe_mlp.ts fuses it: the frozen c_fc and c_proj
          products once whatever E is (golden_comigs's experts_mlp runs them once per expert:
          the definition, E times the work).

DIR holds what bench/gpt2_vs_torch.ts wrote: config.json and model.safetensors (the Hugging Face
GPT-2 layout), adapters.safetensors for an expert step (interfaces.md's adapters, their config
in __metadata__), and step.json ({"step", "ids": B lists of T + 1 token ids, "adamw": our
optimiser's lr, betas, eps and weight_decay}). Prints one JSON line (torch_step_common.run_steps).

Run: /usr/bin/python3 bench/torch_gpt2_step.py DIR --steps N [--warmup 1] [--threads 2]
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from golden_common import lb_value, loss_of  # noqa: E402
from golden_comigs import forward as comigs_forward  # noqa: E402
from golden_gpt2 import forward as gpt2_forward, gelu_tanh  # noqa: E402
from torch_step_common import (  # noqa: E402
    adapter_meta, expert_step_objective, lora_tensors, read_f32_safetensors, run_steps,
    step_arguments)


def fused_experts_mlp(p, ad, h, xm, E, g, s):
    """golden_comigs.experts_mlp by linearity, as kernels/moe_mlp.ts computes it:
    Σ_j g_j·(h_j·W_p + b_p + s·(h_j·A_pjᵀ)·B_pjᵀ) = (Σ_j g_j·h_j)·W_p + (Σ_j g_j)·b_p + s·Σ_j …,
    h_j = gelu(xm·W_f + b_f + s·(xm·A_fjᵀ)·B_fjᵀ), the frozen xm·W_f + b_f shared by the experts."""
    if g is None:
        g = torch.ones(xm.shape[0], 1)
    frozen = xm @ p[h + ".mlp.c_fc.weight"] + p[h + ".mlp.c_fc.bias"]
    mix, delta = 0, 0
    for j in range(E):
        e = f"{h}.mlp.experts.{j}"
        hj = gelu_tanh(frozen + s * ((xm @ ad[e + ".c_fc.lora_A"].T) @ ad[e + ".c_fc.lora_B"].T))
        w = g[:, j:j + 1]
        mix = mix + w * hj
        delta = delta + (w * (hj @ ad[e + ".c_proj.lora_A"].T)) @ ad[e + ".c_proj.lora_B"].T
    bias = g.sum(dim=-1, keepdim=True) * p[h + ".mlp.c_proj.bias"]
    return mix @ p[h + ".mlp.c_proj.weight"] + bias + s * delta


def expert_objective(p, ad, meta, c, idx, targets):
    """(loss, loss + lb_coef · mean LB over the blocks with a router) of the adapted model."""
    k = meta["top_k"]
    logits, routing = comigs_forward(p, ad, c, idx, meta["n_experts"], k, meta["s"],
                                     mlp=fused_experts_mlp)
    loss = loss_of(logits, targets)
    lbs = [lb_value(rl, chosen, k, meta["lb_rho"]) for rl, chosen in filter(None, routing)]
    return expert_step_objective(loss, lbs, meta)


def main():
    args = step_arguments(__doc__)
    with open(os.path.join(args.dir, "config.json")) as f:
        c = json.load(f)
    if c.get("model_type", "gpt2") != "gpt2":
        sys.exit(f"{args.dir}/config.json: model_type {c['model_type']}; this script runs GPT-2")
    with open(os.path.join(args.dir, "step.json")) as f:
        step = json.load(f)
    ids = torch.tensor(step["ids"], dtype=torch.long)
    idx, targets = ids[:, :-1], ids[:, 1:]
    adamw = step["adamw"]
    adamw["betas"] = tuple(adamw["betas"])
    p, _ = read_f32_safetensors(os.path.join(args.dir, "model.safetensors"))
    if step["step"] == "full":
        params = [t.requires_grad_() for t in p.values()]

        def objective():
            loss = loss_of(gpt2_forward(p, c, idx), targets)
            return loss, loss
    elif step["step"] == "expert":
        ad, raw_meta = read_f32_safetensors(os.path.join(args.dir, "adapters.safetensors"))
        meta = adapter_meta(raw_meta, c["n_layer"])
        params = lora_tensors(ad)

        def objective():
            return expert_objective(p, ad, meta, c, idx, targets)
    else:
        sys.exit(f"{args.dir}/step.json: step {step['step']!r} is neither 'full' nor 'expert'")
    run_steps(params, objective, adamw, args.steps, args.warmup)


if __name__ == "__main__":
    main()
