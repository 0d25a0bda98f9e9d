"""What the timed PyTorch step scripts share (scripts/torch_llama_step.py and
bench/torch_gpt2_step.py): their command line, the f32 safetensors reader, the adapters' metadata,
their LoRA tensors, the expert step's objective and the timed AdamW loop.

Plain PyTorch in float32 on the CPU (Debian's python3-torch under /usr/bin/python3; no
safetensors package). golden_common's reader is float64 (references); this one reads each tensor
straight into its own f32 storage, so a timed run's peak memory is the model's.
"""
import argparse
import json
import math
import struct
import sys
import time

import torch

from golden_common import lora_scale


def step_arguments(doc, extra=None):
    """The scripts' shared command line: DIR --steps N [--warmup 1] [--threads 2], plus what
    extra(parser) adds; torch set to that many threads."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--steps", type=int, required=True, help="steps timed (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=1, help="steps run first, not timed")
    ap.add_argument("--threads", type=int, default=2)
    if extra:
        extra(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args


def read_f32_safetensors(path):
    """{name: f32 tensor} and the metadata, each tensor read straight into its own storage, so
    the peak memory is the model's, not the file's twice (golden_common's reader is float64)."""
    out = {}
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        meta = header.pop("__metadata__", {})
        for name, h in header.items():
            if h["dtype"] != "F32":
                sys.exit(f"{path}: {name} is {h['dtype']}; this script reads F32 files "
                         "(what the project writes)")
            t = torch.empty(h["shape"], dtype=torch.float32)
            a, b = h["data_offsets"]
            f.seek(8 + n + a)
            if f.readinto(memoryview(t.numpy()).cast("B")) != b - a:
                sys.exit(f"{path}: {name} runs past the end of the file")
            out[name] = t
    return out, meta


def adapter_meta(meta, layers):
    """interfaces.md's adapter metadata as the forward passes use it: the LoRA scale s, top_k,
    the experts of every block, lb_coef and lb_rho (the contract's defaults when absent)."""
    experts = [int(e) for e in meta["n_experts"].split(",")]
    case = dict(rank=int(meta["lora_rank"]), alpha=float(meta["lora_alpha"]),
                scaling=meta["lora_scaling"])
    return dict(s=lora_scale(case), top_k=int(meta["top_k"]),
                n_experts=experts * layers if len(experts) == 1 else experts,
                lb_coef=float(meta.get("lb_coef", "0.01")), lb_rho=float(meta.get("lb_rho", "0.5")))


def lora_tensors(adapters):
    """The adapters' LoRA factors, made trainable: what an expert step's AdamW updates."""
    return [t.requires_grad_() for name, t in adapters.items()
            if name.endswith(("lora_A", "lora_B"))]


def expert_step_objective(loss, lbs, meta):
    """(loss, what an expert step minimises): loss + lb_coef · the mean of the blocks' LB terms
    `lbs`, or the loss alone when no block has a router or lb_coef is 0."""
    if not lbs or meta["lb_coef"] == 0:
        return loss, loss
    return loss, loss + meta["lb_coef"] * torch.stack(lbs).mean()


def peak_rss_bytes():
    """This process's peak resident memory: VmHWM, which exec starts afresh (getrusage's
    ru_maxrss can carry the high-water mark of the parent that forked this process)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def run_steps(params, objective, adamw, steps, warmup):
    """warmup + steps AdamW steps (torch.optim.AdamW(params, **adamw)) of objective() ->
    (loss, what is minimised), each timed from zero_grad to the update. Prints one JSON line:
    the loss and the objective of every step, the seconds of each step after the warm-up, the
    peak resident memory of this process, the threads and torch's version."""
    opt = torch.optim.AdamW(params, **adamw)
    losses, objectives, seconds = [], [], []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss, minimised = objective()
        minimised.backward()
        opt.step()
        elapsed = time.perf_counter() - t0
        losses.append(loss.item())
        objectives.append(minimised.item())
        if step >= warmup:
            seconds.append(elapsed)
        if not math.isfinite(losses[-1]):
            sys.exit(f"step {step}: the loss is {losses[-1]}")
    print(json.dumps({
        "losses": losses,
        "objectives": objectives,
        "step_s": seconds,
        "peak_rss_bytes": peak_rss_bytes(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }))
