"""The ServerApp's DP (flower/comigs_flower/noise.py, accountant.py, privacy.py), for
tests/flower/dp_ports_test.ts: reads {noise, epsilon, central} cases as JSON on stdin and prints
the results, every float as the hex of its little-endian bytes so that no bit is lost in a
decimal text; and whether a key without a seed came from secrets.token_bytes (`secure`)."""

import json
import secrets
import sys

import numpy as np
from comigs_flower import noise as noise_module
from comigs_flower.accountant import epsilon_spent
from comigs_flower.noise import GaussianNoise, noise_key
from comigs_flower.privacy import DpSettings, central_dp_aggregate


def tensors(record: dict) -> dict:
    return {
        name: np.frombuffer(bytes.fromhex(t["f32"]), dtype="<f4").reshape(t["shape"])
        for name, t in record.items()
    }


def secure_key_source() -> dict:
    """noise_key(None) twice, with secrets.token_bytes watched (the real one still answers)."""
    calls = []
    real = secrets.token_bytes

    def watched(n):
        drawn = real(n)
        calls.append({"n": n, "hex": drawn.hex()})
        return drawn

    noise_module.secrets.token_bytes = watched
    try:
        keys = [noise_key(None), noise_key(None)]
    finally:
        noise_module.secrets.token_bytes = real
    return {"keys": keys, "calls": calls}


cases = json.load(sys.stdin)
out = {
    "noise": [
        GaussianNoise(c["key"], c["drawn"]).take(c["count"]).astype("<f8").tobytes().hex()
        for c in cases["noise"]
    ],
    "epsilon": [
        epsilon_spent(c["mode"], c["noise"], c["delta"], c["rounds"]) for c in cases["epsilon"]
    ],
    "central": [],
    "secure": secure_key_source(),
}
for c in cases["central"]:
    settings = DpSettings("central", c["clip"], c["noise"], 1e-5, c["seed"])
    stream = GaussianNoise(noise_key(c["seed"]))
    result = central_dp_aggregate(
        tensors(c["global"]), [tensors(t) for t in c["clients"]], settings, c["expected"], stream
    )
    out["central"].append({name: t.astype("<f4").tobytes().hex() for name, t in result.items()})
json.dump(out, sys.stdout)
