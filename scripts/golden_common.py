"""What the golden scripts share: safetensors files, the loss, and CoMiGS's gate, LB and cases.

Plain PyTorch (Debian's python3-torch under /usr/bin/python3; no safetensors package): used by
golden_gpt2.py, golden_comigs.py and golden_llama.py. References compute in float64 from exactly
the values that are stored (f32, f16 or bf16), so an engine reading the files sees the same inputs.
"""
import json
import math
import os
import struct

import torch

# safetensors dtype name -> the torch dtype of its elements.
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
MIN_MARGIN = 1e-3  # f32 router logits are off by ~1e-6; a clean selection is far above that
LB_DEFAULTS = dict(lb_coef=0.01, lb_rho=0.5)


def stored(t, dtype="F32"):
    """The float64 value of t after rounding to a storage dtype (round to nearest even)."""
    return t.detach().to(DTYPES[dtype]).to(torch.float64)


def tensor_bytes(t, dtype="F32"):
    """Little-endian raw bytes of t in a storage dtype (numpy has no bfloat16: via int16)."""
    x = t.detach().to(DTYPES[dtype]).contiguous()
    if dtype == "BF16":
        x = x.view(torch.int16)
    return x.numpy().tobytes()


def write_safetensors(path, tensors, metadata=None, dtype="F32"):
    """{name: tensor} in one dtype, header padded to 8 bytes, written atomically."""
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, t in tensors.items():
        data = tensor_bytes(t, dtype)
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    os.replace(path + ".tmp", path)


def read_safetensors(path):
    """F32/F16/BF16 safetensors -> {name: float64 tensor} (the values exactly as stored)."""
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, h in header.items():
        assert h["dtype"] in DTYPES, (name, h["dtype"])
        a, b = h["data_offsets"]
        buf = bytearray(raw[8 + n + a:8 + n + b])
        if h["dtype"] == "BF16":
            t = torch.frombuffer(buf, dtype=torch.int16).view(torch.bfloat16)
        else:
            t = torch.frombuffer(buf, dtype=DTYPES[h["dtype"]])
        out[name] = t.reshape(h["shape"]).to(torch.float64)
    return out


def loss_of(logits, targets):
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def lora_scale(case):
    """interfaces.md: rslora -> s = alpha/√r, standard -> s = alpha/r."""
    r, alpha = case["rank"], case["alpha"]
    return alpha / math.sqrt(r) if case["scaling"] == "rslora" else alpha / r


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


def draw_adapters(shapes):
    """lora_A ~ U(−1/√in, 1/√in), lora_B ~ N(0, 0.2) (non-zero, so every gradient is exercised),
    router ~ N(0, 0.5); each rounded to the f32 it is stored as."""
    ad = {}
    for name, shape in shapes.items():
        if name.endswith("lora_A"):
            bound = 1 / math.sqrt(shape[1])
            t = (torch.rand(shape) * 2 - 1) * bound
        elif name.endswith("lora_B"):
            t = 0.2 * torch.randn(shape)
        else:
            t = 0.5 * torch.randn(shape)
        ad[name] = stored(t).requires_grad_()
    return ad


def routing_acceptable(routing, k):
    """Every expert chosen somewhere, not the same choice everywhere, no selection near a tie."""
    for info in routing:
        if info is None:
            continue
        rl, chosen = info
        E = rl.shape[1]
        counts = torch.bincount(chosen.reshape(-1), minlength=E)
        if (counts == 0).any() or selection_margin(rl, k) < MIN_MARGIN:
            return False
        if min(k, E) < E and len(set(map(tuple, chosen.sort(dim=-1).values.tolist()))) < 2:
            return False
    return True


def write_adapter_case(case, shapes, forward, targets, out, extra_meta=None, extra_debug_meta=None):
    """Draws adapters (seeded by the case) until the routing is clean, then writes
    adapters-<name>.safetensors and debug-<name>.safetensors (interfaces.md's debug state).

    forward(adapters) -> (logits [B, T, V], [(router logits [N, E], chosen [N, k]) or None per
    layer]). Returns the adapters and the debug tensors.
    """
    k, s = case["top_k"], lora_scale(case)
    rho = case["lb_rho"] if case["lb_rho"] is not None else LB_DEFAULTS["lb_rho"]
    torch.manual_seed(case["seed"])
    for attempt in range(100):
        ad = draw_adapters(shapes)
        with torch.no_grad():
            _, routing = forward(ad)
        if routing_acceptable(routing, k):
            break
    else:
        raise RuntimeError("no acceptable draw")

    logits, routing = forward(ad)
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

    meta = {"lora_rank": str(case["rank"]), "lora_alpha": str(case["alpha"]),
            "lora_scaling": case["scaling"], "top_k": str(k),
            "n_experts": ",".join(map(str, case["n_experts"]))}
    if case["lb_coef"] is not None:
        meta["lb_coef"] = str(case["lb_coef"])
    if case["lb_rho"] is not None:
        meta["lb_rho"] = str(case["lb_rho"])
    meta.update(extra_meta or {})
    write_safetensors(os.path.join(out, f"adapters-{case['name']}.safetensors"), ad, meta)
    debug = {"loss": loss.reshape(1), "lb_loss": lb_loss.reshape(1), "logits": logits}
    debug.update({f"grad.{n}": t.grad for n, t in ad.items()})
    Bn, Tn = targets.shape
    dmeta = {"adapters": f"adapters-{case['name']}.safetensors", "lora_scale": repr(s),
             "lb_rho_used": str(rho), "batch": str(Bn), "seq": str(Tn),
             "reference_dtype": "float64", "torch": torch.__version__}
    dmeta.update(extra_debug_meta or {})
    write_safetensors(os.path.join(out, f"debug-{case['name']}.safetensors"), debug, dmeta)
    print(f"case {case['name']} (draw {attempt + 1}): loss {loss.item():.9f} "
          f"lb_loss {lb_loss.item():.9f} s {s:.6g}")
    for line in summary:
        print("  " + line)
    return ad, debug


def base_debug_state(params, logits_of, targets, adamw):
    """interfaces.md's debug state of a base model with every tensor trainable, plus
    train_losses: the losses of adamw["steps"] full-batch torch AdamW steps (params change).

    logits_of(params) -> logits [B, T, V]. Returns (debug tensors, the loss value, the losses).
    """
    logits = logits_of(params)
    loss = loss_of(logits, targets)
    loss.backward()
    debug = {"loss": loss.reshape(1), "lb_loss": torch.zeros(1), "logits": logits}
    # Cloned: the AdamW loop below zeroes and refills these same .grad tensors in place.
    debug.update({f"grad.{n}": t.grad.detach().clone() for n, t in params.items()})

    opt = torch.optim.AdamW(params.values(), lr=adamw["lr"], betas=(adamw["beta1"], adamw["beta2"]),
                            eps=adamw["eps"], weight_decay=adamw["weight_decay"])
    losses = []
    for _ in range(adamw["steps"]):
        opt.zero_grad()
        step_loss = loss_of(logits_of(params), targets)
        step_loss.backward()
        opt.step()
        losses.append(step_loss.item())
    debug["train_losses"] = torch.tensor(losses)
    return debug, loss.item(), losses


def base_debug_metadata(adamw, targets):
    Bn, Tn = targets.shape
    meta = {k: str(v) for k, v in adamw.items()}
    meta.update({"adamw_applies_to": "all parameters", "batch": str(Bn), "seq": str(Tn),
                 "reference_dtype": "float64", "torch": torch.__version__})
    return meta
