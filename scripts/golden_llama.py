#!/usr/bin/env python3
"""Writes the golden Llama-family debug states (issue 14's proof): base models and CoMiGS adapters.

Plain PyTorch in float64 (Debian's python3-torch under /usr/bin/python3; no transformers, no peft,
no safetensors package): LlamaForCausalLM and Qwen2ForCausalLM exactly as Hugging Face
transformers computes them (RMSNorm, rotate_half RoPE with the `llama3` rope_scaling of
`_compute_llama3_parameters`, repeat_kv grouped-query attention, SiLU-gated MLP, q/k/v biases for
qwen2 and `attention_bias` for llama, tied or untied lm_head), and CoMiGS on them (method.md §1:
attention LoRA on a subset of q/k/v/o_proj, a mixture of SwiGLU LoRA experts, a top-k router).
Each model is stored in its dtype (f32, bf16, f16) and the reference computes from exactly the
stored values. Three folders under tests/golden/ (default OUT_ROOT), each holding
  config.json                    - Hugging Face keys as model/llama_config.ts parses them
  model.safetensors              - Hugging Face tensor names (llama-mha-tiny: two shards + index)
  tokens.json                    - B = 3 sequences of T + 1 = 14 token ids (interfaces.md)
  debug.safetensors              - loss, lb_loss (0), logits [B, T, V], grad.<name> of every
                                   parameter (a tied embedding once, as model.embed_tokens.weight),
                                   train_losses of 10 full-batch AdamW steps (as gpt2-tiny)
  adapters-<case>.safetensors    - CoMiGS adapters (interfaces.md + `lora_targets`)
  debug-<case>.safetensors       - their debug state: loss, lb_loss, logits, grad.<adapter name>
Before writing, the script checks its own model: a second formulation (token by token with a KV
cache, per-head loops over the shared KV head, complex-number RoPE, Meta's scalar llama3 scaling,
sparse per-token expert dispatch with its own LB) must give the same logits and LB to ~1e-13,
autograd must match central finite differences on entries of every tensor, and the golden must
tell apart the plausible wrong models (tiled KV heads, interleaved RoPE pairs, llama3 scaling
left out, 1/√(hidden/heads) for 1/√head_dim) by far more than the engine's tolerances.
Run: /usr/bin/python3 scripts/golden_llama.py [OUT_ROOT]
"""
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_common import (  # noqa: E402
    LB_DEFAULTS, base_debug_metadata, base_debug_state, gate, lora_scale, loss_of, read_safetensors,
    stored, write_adapter_case, write_safetensors)

torch.set_default_dtype(torch.float64)

B, T = 3, 13
ADAMW = dict(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.01, steps=10)
ATTN_PROJS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJS = ("gate_proj", "up_proj", "down_proj")
# A golden must distinguish each plausible wrong model by far more than the engine's logits
# tolerance (1e-5, as for GPT-2): 100× that.
MIN_SENSITIVITY = 1e-3

MODELS = [
    # Llama 3.2 / SmolLM2 shape: GQA (6 heads share 2 KV heads, head_dim 6), tied, no biases,
    # llama3 rope_scaling whose three frequencies fall in its three regimes (wavelengths 6.3 < 64:
    # kept; 64 < 135 < 256: smoothed; 2922 > 256: divided by the factor). Stored f32.
    dict(folder="llama-gqa-tiny", seed=3101, storage="F32", shards=1, config={
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 101,
        "hidden_size": 36, "intermediate_size": 58, "num_hidden_layers": 2,
        "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 6, "hidden_act": "silu",
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 256, "rope_type": "llama3"},
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": True,
        "bos_token_id": 1, "eos_token_id": [2, 3], "torch_dtype": "float32"}),
    # Qwen2.5 shape: MQA (one KV head for 4 heads), head_dim 10 derived from hidden/heads, biases
    # on q, k, v (not o), untied lm_head, rope_theta 1e6. Stored bf16.
    dict(folder="qwen2-mqa-tiny", seed=3102, storage="BF16", shards=1, config={
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 97,
        "hidden_size": 40, "intermediate_size": 70, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 1, "hidden_act": "silu",
        "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "rope_scaling": None, "use_sliding_window": False, "sliding_window": 128,
        "max_window_layers": 2, "attention_dropout": 0.0, "tie_word_embeddings": False,
        "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "bfloat16"}),
    # Llama with attention_bias (q, k, v and o biased), plain multi-head attention (3 KV heads
    # for 3 heads), an explicit head_dim 10 so heads·head_dim = 30 ≠ hidden 40 (and 40 is not
    # divisible by 3), odd intermediate 53, tied. Stored f16, in two shards with an index.
    dict(folder="llama-mha-tiny", seed=3103, storage="F16", shards=2, config={
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 79,
        "hidden_size": 40, "intermediate_size": 53, "num_hidden_layers": 2,
        "num_attention_heads": 3, "num_key_value_heads": 3, "head_dim": 10, "hidden_act": "silu",
        "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "attention_bias": True, "mlp_bias": False, "tie_word_embeddings": True,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16"}),
]

# CoMiGS cases (method.md §1), one per base model. lb_coef / lb_rho None: key omitted (defaults
# 0.01, 0.5); lora_targets None: key omitted (default all four projections).
CASES = {
    "llama-gqa-tiny": dict(name="k2", n_experts=[2, 3], top_k=2, rank=4, alpha=8,
                           scaling="rslora", lb_coef=0.01, lb_rho=0.3, lora_targets=None,
                           seed=4101),
    "qwen2-mqa-tiny": dict(name="k1", n_experts=[3, 1], top_k=1, rank=3, alpha=6,
                           scaling="standard", lb_coef=None, lb_rho=None,
                           lora_targets="q_proj,v_proj", seed=4102),
    "llama-mha-tiny": dict(name="k2", n_experts=[3, 4], top_k=2, rank=2, alpha=3,
                           scaling="rslora", lb_coef=0.02, lb_rho=0.6,
                           lora_targets="k_proj,o_proj", seed=4103),
}


# ---- the configuration, as transformers reads it -------------------------------------------

def head_dim(c):
    return c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]


def attention_biases(c):
    """(q/k/v biased, o biased): qwen2 always (True, False); llama per attention_bias."""
    if c["model_type"] == "qwen2":
        return True, False
    return c.get("attention_bias", False), c.get("attention_bias", False)


def param_shapes(c):
    """Hugging Face names and shapes (nn.Linear weights [out, in]), model/llama_config.ts order."""
    C, F, V, D = c["hidden_size"], c["intermediate_size"], c["vocab_size"], head_dim(c)
    q, kv = c["num_attention_heads"] * D, c["num_key_value_heads"] * D
    qkv_bias, o_bias = attention_biases(c)
    shapes = {"model.embed_tokens.weight": [V, C]}
    for i in range(c["num_hidden_layers"]):
        L = f"model.layers.{i}"
        shapes[f"{L}.input_layernorm.weight"] = [C]
        for proj, out in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            shapes[f"{L}.self_attn.{proj}.weight"] = [out, C]
            if qkv_bias:
                shapes[f"{L}.self_attn.{proj}.bias"] = [out]
        shapes[f"{L}.self_attn.o_proj.weight"] = [C, q]
        if o_bias:
            shapes[f"{L}.self_attn.o_proj.bias"] = [C]
        shapes[f"{L}.post_attention_layernorm.weight"] = [C]
        shapes[f"{L}.mlp.gate_proj.weight"] = [F, C]
        shapes[f"{L}.mlp.up_proj.weight"] = [F, C]
        shapes[f"{L}.mlp.down_proj.weight"] = [C, F]
    shapes["model.norm.weight"] = [C]
    if not c["tie_word_embeddings"]:
        shapes["lm_head.weight"] = [V, C]
    return shapes


def init_params(c, dtype):
    """q and k of unit-scale outputs (std 1/√in), so attention scores are O(1) and RoPE, the
    KV-head map and the scalings visibly matter; other projections std 0.5/√in, embeddings and
    head std 0.1 (loss near ln V); random norm gains and biases so every gradient is exercised.
    Rounded to the storage dtype. (Larger weights leave a float32 computation less headroom
    under the GPT-2 tolerances: the script prints that headroom.)
    """
    params = {}
    for name, shape in param_shapes(c).items():
        if name.endswith("norm.weight"):
            t = 1 + 0.1 * torch.randn(shape)
        elif name.endswith(".bias"):
            t = 0.1 * torch.randn(shape)
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            t = 0.1 * torch.randn(shape)
        elif name.endswith(("q_proj.weight", "k_proj.weight")):
            t = torch.randn(shape) / math.sqrt(shape[1])
        else:
            t = 0.5 * torch.randn(shape) / math.sqrt(shape[1])
        params[name] = stored(t, dtype).requires_grad_()
    return params


def default_inv_freq(c):
    """_compute_default_rope_parameters: 1 / theta^(2i/d), i < d/2."""
    D = head_dim(c)
    return 1.0 / (c["rope_theta"] ** (torch.arange(0, D, 2, dtype=torch.int64).to(torch.float64) / D))


def llama3_inv_freq(inv_freq, rs):
    """_compute_llama3_parameters, vectorised as transformers writes it."""
    factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old_context_len = rs["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low
    high_freq_wavelen = old_context_len / high
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama)


def inv_freq_of(c):
    rs = c.get("rope_scaling")
    inv_freq = default_inv_freq(c)
    if rs and rs.get("rope_type", rs.get("type")) == "llama3":
        inv_freq = llama3_inv_freq(inv_freq, rs)
    return inv_freq


# ---- the model, as transformers computes it -------------------------------------------------

def rms_norm(x, w, eps):
    """LlamaRMSNorm / Qwen2RMSNorm (their f32 upcast is float64 here)."""
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rope_halves(x, cos, sin):
    """apply_rotary_pos_emb: pairs (x_i, x_{i + d/2}) turned by position · inv_freq_i."""
    return x * cos + rotate_half(x) * sin


def rope_interleaved(x, cos, sin):
    """A plausible wrong model (Meta's original pairing (x_2i, x_2i+1)), for the sensitivity check."""
    half = x.shape[-1] // 2
    c, s = cos[..., :half].repeat_interleave(2, -1), sin[..., :half].repeat_interleave(2, -1)
    pairs = x.reshape(*x.shape[:-1], half, 2)
    turned = torch.stack((-pairs[..., 1], pairs[..., 0]), -1).reshape(x.shape)
    return x * c + turned * s


def repeat_kv(x, n_rep):
    """transformers' repeat_kv: [B, KV, T, D] -> [B, KV·n_rep, T, D], head h reads KV head h // n_rep."""
    b, kv, t, d = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(b, kv, n_rep, t, d).reshape(b, kv * n_rep, t, d)


def tile_kv(x, n_rep):
    """A plausible wrong model (head h reads KV head h % KV), for the sensitivity check."""
    return x.repeat(1, n_rep, 1, 1)


def linear(x, p, name, lora=None):
    """nn.Linear (weight [out, in]) plus an optional LoRA delta s·(x·Aᵀ)·Bᵀ, lora = (A, B, s)."""
    y = x @ p[name + ".weight"].T
    if name + ".bias" in p:
        y = y + p[name + ".bias"]
    if lora is not None:
        A, B_, s = lora
        y = y + s * ((x @ A.T) @ B_.T)
    return y


def forward(p, c, idx, ad=None, moe=None, kv_expand=repeat_kv, rope=rope_halves, inv_freq=None,
            attn_scale=None):
    """LlamaForCausalLM / Qwen2ForCausalLM logits [B, T, V]; with adapters (ad, and moe = dict of
    n_experts, top_k, s, targets) CoMiGS's model. Returns (logits, routing): routing per layer is
    (router logits [N, E], chosen [N, k]), or None without a router. The keyword arguments after
    moe swap in plausible wrong models for the sensitivity check only.
    """
    Bn, Tn = idx.shape
    C, H, KV, D = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], head_dim(c)
    eps = c["rms_norm_eps"]
    inv_freq = inv_freq_of(c) if inv_freq is None else inv_freq
    freqs = torch.arange(Tn, dtype=torch.float64)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    # attention_scaling is 1 for default and llama3; cast for the float32 headroom run.
    dtype = p["model.norm.weight"].dtype
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    scale = D ** -0.5 if attn_scale is None else attn_scale
    mask = torch.tril(torch.ones(Tn, Tn, dtype=torch.bool))
    s = moe["s"] if moe else None

    def attn_lora(name, proj):
        if ad is None or proj not in moe["targets"]:
            return None
        return ad[f"{name}.lora_A"], ad[f"{name}.lora_B"], s

    x = p["model.embed_tokens.weight"][idx]
    routing = []
    for i in range(c["num_hidden_layers"]):
        L = f"model.layers.{i}"
        h = rms_norm(x, p[f"{L}.input_layernorm.weight"], eps)
        qkv = {}
        for proj, heads in (("q_proj", H), ("k_proj", KV), ("v_proj", KV)):
            name = f"{L}.self_attn.{proj}"
            qkv[proj] = linear(h, p, name, attn_lora(name, proj)).view(Bn, Tn, heads, D).transpose(1, 2)
        q, k = rope(qkv["q_proj"], cos, sin), rope(qkv["k_proj"], cos, sin)
        k, v = kv_expand(k, H // KV), kv_expand(qkv["v_proj"], H // KV)
        att = (q @ k.transpose(2, 3)) * scale
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(Bn, Tn, H * D)
        name = f"{L}.self_attn.o_proj"
        x = x + linear(y, p, name, attn_lora(name, "o_proj"))

        m = rms_norm(x, p[f"{L}.post_attention_layernorm.weight"], eps)
        if ad is None:
            mlp = lambda proj, z: linear(z, p, f"{L}.mlp.{proj}")  # noqa: E731
            x = x + mlp("down_proj", torch.nn.functional.silu(mlp("gate_proj", m)) * mlp("up_proj", m))
            continue
        m = m.reshape(Bn * Tn, C)
        E = moe["n_experts"][i]
        ys = [expert(p, ad, L, j, m, s) for j in range(E)]
        if E == 1:
            out = ys[0]
            routing.append(None)
        else:
            rl = m @ ad[f"{L}.mlp.router.weight"].T
            g, chosen = gate(rl, moe["top_k"])
            out = sum(g[:, j:j + 1] * ys[j] for j in range(E))
            routing.append((rl, chosen))
        x = x + out.reshape(Bn, Tn, C)
    head = p["model.embed_tokens.weight"] if c["tie_word_embeddings"] else p["lm_head.weight"]
    return rms_norm(x, p["model.norm.weight"], eps) @ head.T, routing


def expert(p, ad, L, j, m, s):
    """Expert j = down_j(silu(gate_j(m)) ⊙ up_j(m)), each proj_j = frozen base + its LoRA."""
    def proj(name, z):
        e = f"{L}.mlp.experts.{j}.{name}"
        return linear(z, p, f"{L}.mlp.{name}", (ad[e + ".lora_A"], ad[e + ".lora_B"], s))
    return proj("down_proj", torch.nn.functional.silu(proj("gate_proj", m)) * proj("up_proj", m))


def adapter_shapes(c, n_experts, r, targets):
    """interfaces.md's Llama adapters (PEFT shapes lora_A [r, in], lora_B [out, r]) in file order:
    per layer the adapted attention projections, the experts, the router (absent when E = 1)."""
    C, F, D = c["hidden_size"], c["intermediate_size"], head_dim(c)
    q, kv = c["num_attention_heads"] * D, c["num_key_value_heads"] * D
    dims = {"q_proj": (C, q), "k_proj": (C, kv), "v_proj": (C, kv), "o_proj": (q, C),
            "gate_proj": (C, F), "up_proj": (C, F), "down_proj": (F, C)}
    shapes = {}
    for i, E in enumerate(n_experts):
        L = f"model.layers.{i}"
        for proj in ATTN_PROJS:
            if proj in targets:
                fan_in, fan_out = dims[proj]
                shapes[f"{L}.self_attn.{proj}.lora_A"] = [r, fan_in]
                shapes[f"{L}.self_attn.{proj}.lora_B"] = [fan_out, r]
        for j in range(E):
            for proj in MLP_PROJS:
                fan_in, fan_out = dims[proj]
                shapes[f"{L}.mlp.experts.{j}.{proj}.lora_A"] = [r, fan_in]
                shapes[f"{L}.mlp.experts.{j}.{proj}.lora_B"] = [fan_out, r]
        if E > 1:
            shapes[f"{L}.mlp.router.weight"] = [E, C]
    return shapes


# ---- a second formulation of the same model, to check the reference itself -----------------

def meta_llama3_inv_freq(freqs, rs):
    """Meta's scalar apply_scaling (llama-models), written apart from the vectorised one."""
    out = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < rs["original_max_position_embeddings"] / rs["high_freq_factor"]:
            out.append(freq)
        elif wavelen > rs["original_max_position_embeddings"] / rs["low_freq_factor"]:
            out.append(freq / rs["factor"])
        else:
            smooth = ((rs["original_max_position_embeddings"] / wavelen - rs["low_freq_factor"])
                      / (rs["high_freq_factor"] - rs["low_freq_factor"]))
            out.append((1 - smooth) * freq / rs["factor"] + smooth * freq)
    return torch.tensor(out)


def forward_stepwise(p, c, idx, ad=None, moe=None):
    """The same model decoded one token at a time with a KV cache: complex-number RoPE, each
    query head looping over the cache of its KV head h // (H / KV), RMSNorm as x / √(‖x‖²/C + ε),
    and the experts dispatched sparsely per token (selection by sorting, ties to the lowest index)
    with LB from the dispatch counts. Returns logits [B, T, V] and the mean LB over routed layers.
    """
    C, H, KV, D = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], head_dim(c)
    eps, Ls = c["rms_norm_eps"], c["num_hidden_layers"]
    inv_freq = default_inv_freq(c)
    if c.get("rope_scaling"):
        inv_freq = meta_llama3_inv_freq(inv_freq, c["rope_scaling"])
    norm = lambda x, w: x / torch.sqrt(x.dot(x) / C + eps) * w  # noqa: E731

    def turn(vec, pos):  # (x_i + i·x_{i+d/2}) · e^{i·pos·θ_i}
        z = torch.complex(vec[: D // 2], vec[D // 2:]) * torch.polar(torch.ones(D // 2), pos * inv_freq)
        return torch.cat((z.real, z.imag))

    def lora_of(name, proj):
        if ad is None or proj not in moe["targets"]:
            return None
        return ad[f"{name}.lora_A"], ad[f"{name}.lora_B"], moe["s"]

    k_sel = moe["top_k"] if moe else 0
    counts = [torch.zeros(moe["n_experts"][i]) if moe else None for i in range(Ls)]
    prob_sums = [torch.zeros(moe["n_experts"][i]) if moe else None for i in range(Ls)]
    head = p["model.embed_tokens.weight"] if c["tie_word_embeddings"] else p["lm_head.weight"]
    rows = []
    for b in range(idx.shape[0]):
        cache = [([[] for _ in range(KV)], [[] for _ in range(KV)]) for _ in range(Ls)]
        for t in range(idx.shape[1]):
            x = p["model.embed_tokens.weight"][idx[b, t]]
            for i in range(Ls):
                L = f"model.layers.{i}"
                h = norm(x, p[f"{L}.input_layernorm.weight"])
                a = {proj: linear(h, p, f"{L}.self_attn.{proj}", lora_of(f"{L}.self_attn.{proj}", proj))
                     for proj in ("q_proj", "k_proj", "v_proj")}
                keys, values = cache[i]
                for g in range(KV):
                    keys[g].append(turn(a["k_proj"][g * D:(g + 1) * D], t))
                    values[g].append(a["v_proj"][g * D:(g + 1) * D])
                outs = []
                for hh in range(H):
                    g = hh // (H // KV)
                    qh = turn(a["q_proj"][hh * D:(hh + 1) * D], t)
                    w = (torch.stack(keys[g]) @ qh / math.sqrt(D)).softmax(0)
                    outs.append(w @ torch.stack(values[g]))
                x = x + linear(torch.cat(outs), p, f"{L}.self_attn.o_proj",
                               lora_of(f"{L}.self_attn.o_proj", "o_proj"))
                m = norm(x, p[f"{L}.post_attention_layernorm.weight"])
                if ad is None:
                    f = lambda proj, z: linear(z, p, f"{L}.mlp.{proj}")  # noqa: E731
                    x = x + f("down_proj", torch.nn.functional.silu(f("gate_proj", m)) * f("up_proj", m))
                    continue
                E = moe["n_experts"][i]
                if E == 1:
                    x = x + expert(p, ad, L, 0, m, moe["s"])
                    continue
                r = ad[f"{L}.mlp.router.weight"] @ m
                order = sorted(range(E), key=lambda j: (-r[j].item(), j))
                k = min(k_sel, E)
                chosen = order[:k]
                probs = torch.exp(r - r.max()) / torch.exp(r - r.max()).sum()
                weights = [probs[chosen[0]]] if k == 1 else list(r[chosen].softmax(0))
                x = x + sum(w * expert(p, ad, L, j, m, moe["s"]) for w, j in zip(weights, chosen))
                counts[i][chosen] += 1
                prob_sums[i] += probs
            rows.append(norm(x, p["model.norm.weight"]) @ head.T)
    logits = torch.stack(rows).reshape(idx.shape[0], idx.shape[1], -1)
    lbs = []
    for i in range(Ls):
        if moe is None or moe["n_experts"][i] == 1:
            continue
        E, N = moe["n_experts"][i], idx.numel()
        rho = moe["rho"]
        importance = [1 / rho] + [(E - 1) / (1 - rho)] * (E - 1)
        density = counts[i] / (N * min(k_sel, E))
        lbs.append(E * sum(prob_sums[i][e] / N * density[e] * importance[e] / E for e in range(E)))
    return logits, (sum(lbs) / len(lbs) if lbs else 0.0)


def check_finite_differences(loss_fn, tensors, rng, per_tensor=2, h=1e-5):
    """Autograd against central differences on random entries of every tensor (float64:
    truncation ~h² and rounding ~1e-16/h keep the difference below 1e-9 of the scale)."""
    worst = 0.0
    for name, t in tensors.items():
        for _ in range(per_tensor):
            flat = int(torch.randint(t.numel(), (1,), generator=rng))
            with torch.no_grad():
                orig = t.view(-1)[flat].item()
                t.view(-1)[flat] = orig + h
                up = loss_fn().item()
                t.view(-1)[flat] = orig - h
                down = loss_fn().item()
                t.view(-1)[flat] = orig
            fd = (up - down) / (2 * h)
            err = abs(fd - t.grad.view(-1)[flat].item())
            assert err < 1e-8 + 1e-6 * abs(fd), f"{name}[{flat}]: autograd vs FD {err:.3g}"
            worst = max(worst, err)
    return worst


# The GPT-2 goldens' tolerances (tests/model/gpt2_golden_test.ts, tests/cli/grad_test.ts):
# (atol, rtol) for values (loss, logits) and for gradients of the base and of adapters.
GPT2_TOL = dict(values=(1e-5, 1e-5), base_grads=(2e-7, 1e-4), adapter_grads=(1e-6, 1e-4))


def f32_headroom(p, c, idx, targets, debug, ad=None, moe=None):
    """The same model in float32 PyTorch against this float64 golden: the worst error as a
    fraction of the GPT-2 tolerances (logits, gradients). Informative: an f32 engine sums in its
    own order, but a fraction near 1 here would leave it no room."""
    torch.set_default_dtype(torch.float32)
    try:
        p32 = {n: t.detach().float().requires_grad_(ad is None) for n, t in p.items()}
        ad32 = {n: t.detach().float().requires_grad_() for n, t in ad.items()} if ad else None
        logits, _ = forward(p32, c, idx, ad32, moe)
        loss_of(logits, targets).backward()
    finally:
        torch.set_default_dtype(torch.float64)
    def ratio(ours, ref, tol):
        return ((ours.double() - ref).abs() / (tol[0] + tol[1] * ref.abs())).max().item()
    logits_ratio = ratio(logits.detach(), debug["logits"].detach(), GPT2_TOL["values"])
    grad_tol = GPT2_TOL["adapter_grads"] if ad else GPT2_TOL["base_grads"]
    grads = max(ratio(t.grad, debug[f"grad.{n}"].detach(), grad_tol)
                for n, t in (ad32 or p32).items())
    return logits_ratio, grads


# ---- writing a golden folder -----------------------------------------------------------------

def write_model(out, params, storage, shards):
    """model.safetensors, or HF shards model-0000i-of-0000n.safetensors + index (split by layer)."""
    meta = {"format": "pt"}
    if shards == 1:
        write_safetensors(os.path.join(out, "model.safetensors"), params, meta, storage)
        return ["model.safetensors"]
    names = list(params)
    cut = next(i for i, n in enumerate(names) if n.startswith("model.layers.1."))
    parts = [names[:cut], names[cut:]]
    assert shards == len(parts)
    files, weight_map = [], {}
    for s, part in enumerate(parts):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(os.path.join(out, fname), {n: params[n] for n in part}, meta, storage)
        files.append(fname)
        weight_map.update({n: fname for n in part})
    size = {"F32": 4, "F16": 2, "BF16": 2}[storage]
    total = sum(t.numel() * size for t in params.values())
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        f.write("\n")
    return files


def sensitivity(p, c, idx, ref):
    """How far each plausible wrong model's logits are from the golden's (must be ≫ 1e-5)."""
    variants = {"interleaved RoPE pairs": dict(rope=rope_interleaved)}
    H, KV = c["num_attention_heads"], c["num_key_value_heads"]
    if 1 < KV < H:
        variants["KV head h % KV (tiled)"] = dict(kv_expand=tile_kv)
    if c.get("rope_scaling"):
        variants["llama3 rope_scaling left out"] = dict(inv_freq=default_inv_freq(c))
    if head_dim(c) != c["hidden_size"] // H:
        variants["scale 1/√(hidden/heads)"] = dict(attn_scale=(c["hidden_size"] // H) ** -0.5)
    out = {}
    with torch.no_grad():
        for what, kw in variants.items():
            logits, _ = forward(p, c, idx, **kw)
            out[what] = (logits - ref).abs().max().item()
            assert out[what] > MIN_SENSITIVITY, f"{what}: the golden barely changes ({out[what]:.3g})"
    return out


def write_golden(spec, root):
    c, storage = spec["config"], spec["storage"]
    out = os.path.join(root, spec["folder"])
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(spec["seed"])
    params = init_params(c, storage)
    tokens = torch.randint(0, c["vocab_size"], (B, T + 1))
    idx, targets = tokens[:, :-1], tokens[:, 1:]
    rng = torch.Generator().manual_seed(spec["seed"])

    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
        f.write("\n")
    files = write_model(out, params, storage, spec["shards"])
    read_back = {}
    for fname in files:
        read_back.update(read_safetensors(os.path.join(out, fname)))
    assert list(read_back) == list(params) and all(
        torch.equal(read_back[n], params[n].detach()) for n in params), "stored ≠ computed values"
    with open(os.path.join(out, "tokens.json"), "w") as f:
        json.dump(tokens.tolist(), f)

    print(f"{spec['folder']}: {c['model_type']}, {storage}, heads {c['num_attention_heads']}/"
          f"{c['num_key_value_heads']} KV, head_dim {head_dim(c)}, tied {c['tie_word_embeddings']}, "
          f"{sum(t.numel() for t in params.values())} parameters")
    if c.get("rope_scaling"):
        rs, f0 = c["rope_scaling"], default_inv_freq(c)
        wavelen = (2 * math.pi / f0).tolist()
        print(f"  llama3 wavelengths {[round(w, 1) for w in wavelen]} vs bounds "
              f"{rs['original_max_position_embeddings'] / rs['high_freq_factor']}, "
              f"{rs['original_max_position_embeddings'] / rs['low_freq_factor']}; inv_freq "
              f"{inv_freq_of(c).tolist()} vs Meta's scalar form: max diff "
              f"{(inv_freq_of(c) - meta_llama3_inv_freq(f0, rs)).abs().max().item():.3g}")
        assert torch.allclose(inv_freq_of(c), meta_llama3_inv_freq(f0, rs), rtol=1e-14, atol=0)
    with torch.no_grad():
        logits, _ = forward(params, c, idx)
        second, _ = forward_stepwise(params, c, idx)
    diff = (logits - second).abs().max().item()
    print(f"  second formulation (stepwise, KV cache, complex RoPE): max |Δlogits| {diff:.3g}")
    assert diff < 1e-12, diff
    for what, d in sensitivity(params, c, idx, logits).items():
        print(f"  sensitivity, {what}: max |Δlogits| {d:.3g}")

    logits_of = lambda p: forward(p, c, idx)[0]  # noqa: E731
    fd_loss = lambda: loss_of(logits_of(params), targets)  # noqa: E731
    for t in params.values():
        t.grad = None
    fd_loss().backward()
    fd = check_finite_differences(fd_loss, params, rng)
    for t in params.values():
        t.grad = None

    debug, loss, losses = base_debug_state(params, logits_of, targets, ADAMW)
    meta = base_debug_metadata(ADAMW, targets)
    meta.update({"storage_dtype": storage})
    write_safetensors(os.path.join(out, "debug.safetensors"), debug, meta)
    grads = [v for k, v in debug.items() if k.startswith("grad.")]
    print(f"  loss {loss:.9f}, max |grad| {max(g.abs().max().item() for g in grads):.3g}, "
          f"autograd vs FD max {fd:.2g}, 10-step losses {[round(l, 5) for l in losses]}")

    # The base as stored (AdamW above moved the in-memory copy), for f32 and for CoMiGS.
    base = {}
    for fname in files:
        base.update(read_safetensors(os.path.join(out, fname)))
    print("  float32 PyTorch error / GPT-2 tolerance: logits %.2f, gradients %.2f"
          % f32_headroom(base, c, idx, targets, debug))
    write_comigs_case(CASES[spec["folder"]], base, c, idx, targets, out, rng)


def write_comigs_case(case, p, c, idx, targets, out, rng):
    targets_meta = case["lora_targets"]
    attn = tuple(targets_meta.split(",")) if targets_meta is not None else ATTN_PROJS
    rho = case["lb_rho"] if case["lb_rho"] is not None else LB_DEFAULTS["lb_rho"]
    moe = dict(n_experts=case["n_experts"], top_k=case["top_k"], s=lora_scale(case),
               targets=attn, rho=rho)
    shapes = adapter_shapes(c, case["n_experts"], case["rank"], attn)
    extra = {"lora_targets": targets_meta} if targets_meta is not None else {}
    ad, debug = write_adapter_case(case, shapes, lambda a: forward(p, c, idx, a, moe), targets, out,
                                   extra, {"lora_targets_used": ",".join(attn)})

    # The reference itself: the sparse stepwise formulation, and autograd against FD.
    with torch.no_grad():
        second, lb = forward_stepwise(p, c, idx, ad, moe)
    dl = (debug["logits"] - second).abs().max().item()
    dlb = abs(debug["lb_loss"].item() - float(lb))
    assert dl < 1e-12 and dlb < 1e-12, (dl, dlb)
    loss_fn = lambda: loss_of(forward(p, c, idx, ad, moe)[0], targets)  # noqa: E731
    fd = check_finite_differences(loss_fn, ad, rng)
    # With zero lora_B and one expert per layer the adapted model must be the base model.
    zero = {n: torch.zeros(s) for n, s in adapter_shapes(c, [1] * len(case["n_experts"]), 2,
                                                         ATTN_PROJS).items()}
    with torch.no_grad():
        plain = forward(p, c, idx)[0]
        as_adapted = forward(p, c, idx, zero, dict(moe, n_experts=[1] * len(case["n_experts"])))[0]
    db = (plain - as_adapted).abs().max().item()
    assert db < 1e-12, db
    print("  float32 PyTorch error / GPT-2 tolerance: logits %.2f, gradients %.2f"
          % f32_headroom(p, c, idx, targets, debug, ad, moe))
    grads = [v for k, v in debug.items() if k.startswith("grad.")]
    print(f"  second formulation (sparse dispatch): max |Δlogits| {dl:.3g}, |ΔLB| {dlb:.3g}; "
          f"autograd vs FD max {fd:.2g}; zero adapters = base: {db:.3g}; "
          f"max |grad| {max(g.abs().max().item() for g in grads):.3g}")


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "tests/golden"
    for spec in MODELS:
        write_golden(spec, root)
    print(f"wrote {', '.join(s['folder'] for s in MODELS)} under {root}")


if __name__ == "__main__":
    main()
