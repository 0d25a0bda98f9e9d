#!/usr/bin/env python3
"""CoMiGS-1G1S expert steps on a Llama-family base in plain PyTorch on the CPU (float32), timed:
the PyTorch side of bench/smollm2_size.ts, which runs it interleaved with our engine's steps.

Debian's torch under /usr/bin/python3 (no transformers, no peft, no safetensors package). The
model is LlamaForCausalLM as transformers computes it (RMSNorm, rotate_half RoPE, repeat_kv
grouped-query attention, SiLU-gated MLP, tied or untied head), frozen; CoMiGS on it as our engine
computes it (model/llama_comigs.ts, method.md §1): LoRA on q/k/v/o_proj and an MLP that mixes E
SwiGLU experts (each of gate/up/down its frozen base plus the expert's LoRA) with the router's
top-k gate, the frozen products run once whatever E is (by linearity, as kernels/moe_swiglu.ts
does), the objective loss + lb_coef · mean LB over the routed blocks, AdamW (torch.optim.AdamW)
on the LoRA tensors; the routers stay frozen in an expert step.

DIR holds what bench/smollm2_size.ts wrote: config.json, model.safetensors, adapters.safetensors
(interfaces.md's Llama adapters, their config in __metadata__) and batch.json ({"ids": B lists of
T + 1 token ids}). Prints one JSON line: the loss and the objective (loss + lb_coef · mean LB) of
every step, the seconds of each step after the first `warmup` ones, the peak resident memory of
this process and torch's version.

Run: /usr/bin/python3 scripts/torch_llama_step.py DIR --steps N [--warmup 1] [--threads 2]
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_common import gate, lb_value  # noqa: E402
from torch_step_common import (  # noqa: E402
    adapter_meta, expert_step_objective, lora_tensors, read_f32_safetensors, run_steps,
    step_arguments)

# model/optim.ts's defaults and bench/comigs_step.ts's settings, which bench/smollm2_size.ts uses.
ADAMW = dict(lr=2e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)
ATTN_PROJS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJS = ("gate_proj", "up_proj", "down_proj")


def rms_norm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def lora_linear(x, w, lora, s):
    """x·Wᵀ + s·(x·Aᵀ)·Bᵀ with lora = (A [r, in], B [out, r])."""
    a, b = lora
    return x @ w.T + s * ((x @ a.T) @ b.T)


def moe_swiglu(m, g, p, experts, s):
    """Σ_j g_j·down_j(silu(gate_j(m)) ⊙ up_j(m)), the three frozen products once:
    m·W_gᵀ and m·W_uᵀ shared by the experts, W_d applied once to Σ_j g_j·h_j."""
    frozen_g, frozen_u = m @ p["gate_proj"].T, m @ p["up_proj"].T
    mix, delta = 0, 0
    for j, e in enumerate(experts):
        gj = frozen_g + s * ((m @ e["gate_proj"][0].T) @ e["gate_proj"][1].T)
        uj = frozen_u + s * ((m @ e["up_proj"][0].T) @ e["up_proj"][1].T)
        h = torch.nn.functional.silu(gj) * uj
        w = g[:, j:j + 1]
        mix = mix + w * h
        delta = delta + (w * (h @ e["down_proj"][0].T)) @ e["down_proj"][1].T
    return mix @ p["down_proj"].T + s * delta


def forward(c, p, ad, meta, idx, targets):
    """(loss, the objective loss + lb_coef · mean LB) of the adapted model on idx [B, T]."""
    Bn, Tn = idx.shape
    C, H, KV = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    D = c.get("head_dim") or C // H
    eps = c.get("rms_norm_eps", 1e-6)
    theta = c.get("rope_theta", 10000.0)
    inv_freq = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    freqs = torch.arange(Tn, dtype=torch.float64)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().float(), emb.sin().float()
    mask = torch.tril(torch.ones(Tn, Tn, dtype=torch.bool))
    s, k = meta["s"], meta["top_k"]
    x = p["model.embed_tokens.weight"][idx].reshape(Bn * Tn, C)
    lbs = []
    for i in range(c["num_hidden_layers"]):
        L = f"model.layers.{i}"
        h = rms_norm(x, p[f"{L}.input_layernorm.weight"], eps)

        def proj(z, name):
            w = p[f"{L}.self_attn.{name}.weight"]
            key = f"{L}.self_attn.{name}"
            return lora_linear(z, w, (ad[key + ".lora_A"], ad[key + ".lora_B"]), s)

        def heads(z, n):
            return z.view(Bn, Tn, n, D).transpose(1, 2)

        q = heads(proj(h, "q_proj"), H)
        kk = heads(proj(h, "k_proj"), KV)
        v = heads(proj(h, "v_proj"), KV)
        q, kk = q * cos + rotate_half(q) * sin, kk * cos + rotate_half(kk) * sin
        kk, v = (t.repeat_interleave(H // KV, dim=1) for t in (kk, v))
        att = (q @ kk.transpose(2, 3)) * D ** -0.5
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(Bn * Tn, H * D)
        x = x + proj(y, "o_proj")

        m = rms_norm(x, p[f"{L}.post_attention_layernorm.weight"], eps)
        E = meta["n_experts"][i]
        router = ad.get(f"{L}.mlp.router.weight")
        if router is None:
            g = torch.ones(Bn * Tn, 1)
        else:
            logits = m @ router.T
            g, chosen = gate(logits, k)
            lbs.append(lb_value(logits, chosen, k, meta["lb_rho"]))
        frozen = {n: p[f"{L}.mlp.{n}.weight"] for n in MLP_PROJS}
        experts = [{n: (ad[f"{L}.mlp.experts.{j}.{n}.lora_A"],
                        ad[f"{L}.mlp.experts.{j}.{n}.lora_B"]) for n in MLP_PROJS}
                   for j in range(E)]
        x = x + moe_swiglu(m, g, frozen, experts, s)
    head = p["model.embed_tokens.weight"] if c.get("tie_word_embeddings") else p["lm_head.weight"]
    logits = rms_norm(x, p["model.norm.weight"], eps) @ head.T
    loss = torch.nn.functional.cross_entropy(logits, targets.reshape(-1))
    return expert_step_objective(loss, lbs, meta)


def main():
    args = step_arguments(__doc__)
    with open(os.path.join(args.dir, "config.json")) as f:
        c = json.load(f)
    if c.get("model_type") != "llama" or c.get("attention_bias") or c.get("rope_scaling"):
        sys.exit(f"{args.dir}/config.json: this script runs model_type llama without biases "
                 "or rope_scaling")
    p, _ = read_f32_safetensors(os.path.join(args.dir, "model.safetensors"))
    ad, raw_meta = read_f32_safetensors(os.path.join(args.dir, "adapters.safetensors"))
    meta = adapter_meta(raw_meta, c["num_hidden_layers"])
    with open(os.path.join(args.dir, "batch.json")) as f:
        ids = torch.tensor(json.load(f)["ids"], dtype=torch.long)
    idx, targets = ids[:, :-1], ids[:, 1:]
    run_steps(lora_tensors(ad), lambda: forward(c, p, ad, meta, idx, targets), ADAMW,
              args.steps, args.warmup)


if __name__ == "__main__":
    main()
