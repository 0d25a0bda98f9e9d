"""Which adapter tensors may cross to the server under a method: the Python side's own rule.

It mirrors fed/methods.ts (`isShared`, METHOD_SPECS' `shares`) and model/adapter_layout.ts
(`isAdapterName`, `adapterRole`) of the comigs repository, so that the ServerApp refuses a
specialist, a router or an optimiser state without trusting any node's word for what is shared:
the methods that share the generalist send attention LoRA and expert 0 of every block; those that
share everything send every expert's LoRA too; no method sends a router.
"""

import re

# The FedAvg methods (fed/flower/run_options.ts FLOWER_METHODS) and what each shares.
SHARES = {
    "comigs-1g1s": "generalist",
    "comigs-1gxs": "generalist",
    "pfedmoe": "generalist",
    "comigs-2g": "all",
    "fedavg": "all",
}

# GPT-2's names, then the Llama family's (model/adapter_layout.ts).
_ATTENTION = re.compile(
    r"h\.\d+\.attn\.(c_attn|c_proj)\.lora_[AB]"
    r"|model\.layers\.\d+\.self_attn\.[qkvo]_proj\.lora_[AB]"
)
_EXPERT = re.compile(
    r"h\.\d+\.mlp\.experts\.(\d+)\.(?:c_fc|c_proj)\.lora_[AB]"
    r"|model\.layers\.\d+\.mlp\.experts\.(\d+)\.(?:gate|up|down)_proj\.lora_[AB]"
)
_ROUTER = re.compile(r"h\.\d+\.mlp\.router\.weight|model\.layers\.\d+\.mlp\.router\.weight")


def check_method(method: str) -> None:
    """Refuse a method the ServerApp cannot run (not FedAvg over shared tensors)."""
    if method not in SHARES:
        raise ValueError(
            f"run config `method` is {method!r}; a Flower federation (FedAvg over the shared "
            f"tensors) runs {', '.join(SHARES)}"
        )


def role(name: str) -> str | None:
    """The part an adapter tensor of this name plays (model/adapter_layout.ts `adapterRole`):
    attention, generalist (expert 0), specialist or router; None for a name of neither family."""
    if _ATTENTION.fullmatch(name):
        return "attention"
    if _ROUTER.fullmatch(name):
        return "router"
    expert = _EXPERT.fullmatch(name)
    if expert is None:
        return None
    return "generalist" if (expert.group(1) or expert.group(2)) == "0" else "specialist"


def is_shared(name: str, method: str) -> bool:
    """Whether a tensor of this name may reach the server under `method`."""
    kind = role(name)
    return kind in ("attention", "generalist") or (kind == "specialist" and SHARES[method] == "all")


def unshared(names, method: str) -> list[str]:
    """The names among `names` that must never reach the server under `method`."""
    return sorted(name for name in names if not is_shared(name, method))
