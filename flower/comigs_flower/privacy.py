"""Differential privacy of the shared update on Flower: fed/privacy.ts's mechanisms, computed as
it computes them so that a Flower run with `dp-seed` ends with the simulation's bits.

- central (`dp = "central"`): after the checks of validate_reply.py, the ServerApp clips every
  accepted update (its tensors minus the global sent) to L2 norm C, sums the clipped updates in
  float64 in client order, adds N(0, (zC)²) to every coordinate of the sum (noise.py: the keyed
  ChaCha20 stream of fed/noise.ts, drawn in the global's tensor order, then index order) and
  divides by the fixed number of clients K the run expects each round, not by how many arrived;
  every round, even when none arrived (McMahan et al. 2018's fixed-denominator DP-FedAvg).
- local (`dp = "local"`): each comigs node clips and noises its own update before it leaves the
  device (fed/privacy.ts localDpTensors, run by the node's own client); the ServerApp averages
  as usual, and only bounds update norms to allow the noise (local_dp_norm_bound).
"""

import math
from dataclasses import dataclass

import numpy as np

from .noise import GaussianNoise
from .validate_reply import sum_of_squares, update_of

DP_MODES = ("none", "central", "local")


@dataclass(frozen=True)
class DpSettings:
    """The run config's `dp`, `dp-clip` (C), `dp-noise` (z), `dp-delta` (δ) and `dp-seed`."""

    mode: str
    clip: float
    noise: float
    delta: float
    # None: a secret key (a real run); a seed: reproducible noise, no privacy.
    seed: int | None


def dp_settings(cfg) -> DpSettings:
    """The run's DP settings, checked as fed/options.ts checks train's --dp flags, each problem
    named by its run-config key."""
    mode = str(cfg["dp"])
    if mode not in DP_MODES:
        raise ValueError(f"run config `dp` is {mode!r}; expected {', '.join(DP_MODES)}")

    def real(key: str, ok, wanted: str) -> float:
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"run config `{key}` is {value!r}; expected a number {wanted}")
        if not (math.isfinite(value) and ok(value)):
            raise ValueError(f"run config `{key}` is {value!r}; expected a number {wanted}")
        return float(value)

    clip = real("dp-clip", lambda x: x > 0, "> 0")
    noise = real("dp-noise", lambda x: x > 0, "> 0 (z = 0 gives no privacy)")
    delta = real("dp-delta", lambda x: 0 < x < 1, "in (0, 1), e.g. 1e-5")
    seed = cfg["dp-seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not -1 <= seed <= 2**32 - 1:
        raise ValueError(
            f"run config `dp-seed` is {seed!r}; expected -1 (a secret key) or an integer in "
            "0..4294967295 (reproducible noise, no privacy)"
        )
    if mode == "central" and str(cfg["aggregation"]) != "uniform":
        raise ValueError(
            f"run config `aggregation` is {cfg['aggregation']!r}, which cannot be used with "
            "dp central: the noise is calibrated to a plain sum of clipped updates (use uniform)"
        )
    return DpSettings(mode, clip, noise, delta, None if seed == -1 else seed)


def local_dp_norm_bound(settings: DpSettings, values: int) -> float:
    """The largest update norm an honest local-DP node sends, C·(1 + z·(√n + 8)) for n values
    (fed/privacy.ts localDpNormBound: C plus the noise's norm but with probability 1.3e-14)."""
    return settings.clip * (1 + settings.noise * (math.sqrt(values) + 8))


def _toward_zero_f32(x: np.ndarray) -> np.ndarray:
    """Each float64 of `x` as the float32 nearest to it among those no farther from 0 (one ulp
    toward zero where rounding to nearest went outward; ±∞ becomes ±max)."""
    with np.errstate(over="ignore"):
        f = x.astype(np.float32)
    outward = np.abs(f.astype(np.float64)) > np.abs(x)
    f[outward] = np.nextafter(f[outward], np.float32(0))
    return f


def clip_update(update: dict[str, np.ndarray], clip: float) -> tuple[dict[str, np.ndarray], float]:
    """The update (float64, in the global's order) scaled to L2 norm ≤ `clip` and rounded to
    float32 so that the float32 values' norm stays ≤ clip, and its norm before clipping:
    fed/privacy.ts clipUpdate, the same operations in the same order (its comment says why the
    loop ends after one pass almost always)."""
    norm = math.sqrt(sum_of_squares(update))
    if not math.isfinite(norm):
        raise ValueError(f"clip_update: the update's norm is {norm}")
    count = sum(values.size for values in update.values())
    limit = clip * clip * (1 - (count + 3) * 2**-52)
    scale = clip / norm if norm > clip else 1
    for _ in range(8):
        out = {name: _toward_zero_f32(scale * values) for name, values in update.items()}
        squares = sum_of_squares(out)
        if squares <= limit:
            return out, norm
        scale *= min(1 - 2**-24, math.sqrt(limit / squares))
    raise ArithmeticError(f"clip_update: could not bring {count} values under norm {clip}")


def central_dp_aggregate(
    start: dict[str, np.ndarray],
    clients: list[dict[str, np.ndarray]],
    settings: DpSettings,
    expected_clients: int,
    noise: GaussianNoise,
) -> dict[str, np.ndarray]:
    """The next global, start + (Σ clip(update) + N(0, (zC)²)) / K, as float32 arrays in
    `start`'s order (fed/privacy.ts centralDpAggregate). `clients`: the accepted replies' tensors
    in client order."""
    clipped = [clip_update(update_of(start, tensors), settings.clip) for tensors in clients]
    std = settings.noise * settings.clip
    out = {}
    for name, global_values in start.items():
        total = np.zeros(global_values.size, dtype=np.float64)
        for update, _ in clipped:
            total += update[name].astype(np.float64)
        drawn = noise.take(global_values.size)
        moved = global_values.astype(np.float64).ravel() + (total + std * drawn) / expected_clients
        out[name] = moved.astype(np.float32).reshape(global_values.shape)
    return out
