"""The aggregation of the shared tensors, computed as fed/aggregate.ts computes it, bit for bit.

- uniform / tokens: the weighted mean, summed in float64 in client order (each term weight · value,
  the weight 1/n or a capped token claim over the claims' total) and rounded to float32 once.
  Flower's own `aggregate_arrayrecords` multiplies and sums in float32 in arrival order instead.
- median / trimmed-mean: each coordinate's n values in float64, sorted ascending with −0 before
  +0 (as a Float64Array sorts: which zero lands in the middle decides the median's sign), then
  the middle value (the mean of the two middle ones for even n), or the sum of the kept values
  from the smallest up divided by their count; rounded to float32 once.
Every sum is an explicit loop over the replies, so its order is the TS loop's by construction
(numpy does not promise the order of its reductions: along a contiguous axis it adds pairwise).
Checked bit for bit against fed/aggregate.ts by tests/flower/aggregate_test.ts.
"""

import math

import numpy as np

AGGREGATIONS = ("uniform", "tokens", "median", "trimmed-mean")

# fed/aggregate.ts DEFAULT_TRIM: with 4 to 7 clients, the lowest and highest value of each
# coordinate are dropped.
DEFAULT_TRIM = 0.25


def capped_claims(claims: list[int]) -> list[int]:
    """Every claim capped at the upper median claim (fed/aggregate.ts `cappedClaims`): fewer than
    half the nodes cannot inflate their weight."""
    cap = sorted(claims)[len(claims) // 2]
    return [min(claim, cap) for claim in claims]


def check_trim(trim: float) -> None:
    """Refuse a trim fraction that would cut everything (fed/aggregate.ts `trimCount`)."""
    if not 0 <= trim < 0.5:
        raise ValueError(
            f"run config `trim` is {trim}: the fraction cut from each side must be in [0, 0.5)"
        )


def trim_count(clients: int, trim: float) -> int:
    """Values cut from each side of every coordinate: ⌊F·n⌋ with F·n in float64 (fed/aggregate.ts
    `trimCount`, scipy's trim_mean, Flower's FedTrimmedAvg)."""
    check_trim(trim)
    return math.floor(trim * clients)


def quorum_shortfall(server_round: int, accepted: int, min_clients: int) -> str | None:
    """Why a round keeps the previous global (fewer accepted replies than `min-clients`), or None;
    worded as fed/aggregate.ts `quorumShortfall`."""
    if accepted >= min_clients:
        return None
    return (
        f"round {server_round}: {accepted} accepted update{'' if accepted == 1 else 's'}, fewer "
        f"than the {min_clients} required (min clients); the previous global is kept"
    )


def _sorted_total_order(values: np.ndarray) -> np.ndarray:
    """`values` (float64, clients × coordinates, all finite) sorted along the clients as IEEE
    754's total order sorts them: as numbers, and −0 before +0 (numpy's sort treats the two zeros
    as equal and may leave either first). Each float64's bits, with the magnitude bits flipped
    for negative numbers, order as int64 exactly as the floats do; the map is its own inverse."""
    magnitude = np.int64(0x7FFF_FFFF_FFFF_FFFF)
    keys = values.view(np.int64)
    keys = keys ^ ((keys >> 63) & magnitude)
    keys.sort(axis=0)
    return (keys ^ ((keys >> 63) & magnitude)).view(np.float64)


def aggregate(
    tensors: list[dict[str, np.ndarray]],
    shapes: dict[str, tuple[int, ...]],
    aggregation: str,
    claims: list[int],
    trim: float,
) -> dict[str, np.ndarray]:
    """The aggregate of the replies' `tensors` (float32, in client order, each holding exactly
    `shapes`), as float32 arrays in `shapes`' order. `claims`: each reply's training tokens
    (`num-examples`), used by `tokens`; `trim`: the fraction `trimmed-mean` cuts from each side."""
    n = len(tensors)
    if n == 0:
        raise ValueError("aggregate: no replies")
    out = {}
    if aggregation in ("uniform", "tokens"):
        weights = [1 / n] * n
        if aggregation == "tokens":
            capped = capped_claims(claims)
            total = 0
            for claim in capped:
                total += claim
            if total <= 0:
                raise ValueError("aggregate: token weighting needs replies with training tokens")
            weights = [claim / total for claim in capped]
        for name, shape in shapes.items():
            acc = np.zeros(shape, dtype=np.float64)
            for weight, reply in zip(weights, tensors, strict=True):
                acc += weight * reply[name].astype(np.float64)
            out[name] = acc.astype(np.float32)
        return out
    if aggregation not in ("median", "trimmed-mean"):
        raise ValueError(f"aggregate: unknown aggregation {aggregation!r}")
    k = 0 if aggregation == "median" else trim_count(n, trim)
    for name, shape in shapes.items():
        columns = np.stack([reply[name].astype(np.float64).ravel() for reply in tensors])
        ordered = _sorted_total_order(columns)
        if aggregation == "median":
            middle = (
                ordered[(n - 1) // 2]
                if n % 2
                else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
            )
        else:
            total = np.zeros(columns.shape[1], dtype=np.float64)
            for row in ordered[k : n - k]:
                total += row
            middle = total / (n - 2 * k)
        out[name] = middle.astype(np.float32).reshape(shape)
    return out
