"""The ServerApp's check of one node's reply before it may count: fed/validate_update.ts's rules
in Python, worded the same way, plus what Flower's FedAvg needs of a reply's records.

A train reply enters the round only with: a client id (ConfigRecord `config`, an int `client`);
exactly one MetricRecord, whose `num-examples` is a count in 1..2⁵³−1 (FedAvg divides by their
sum, fed/validate_update.ts bounds the token claim likewise) and whose other values are finite
numbers; exactly one ArrayRecord `arrays` holding exactly the shared tensors (a specialist's, a
router's or an unknown name is named as such), each readable, of the shared shape, float32 and
finite; and an update (the reply's tensors minus the global sent that round, all tensors
together) of L2 norm at most `max-update-norm`. An evaluate reply needs the first two and no
arrays. A query reply (the initial tensors) needs the client id and the train reply's arrays,
without the norm. The facts a reply carries (recorded in result.json) must be JSON values.
A refused reply is left out with a one-line reason; one bad node never stops the run.
"""

import math
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message

from .shared_names import role

# fed/validate_update.ts ADAM_STEP_BOUND: an AdamW step (betas 0.9, 0.95, weight decay 0.01)
# moves each coordinate by at most 2·lr.
ADAM_STEP_BOUND = 2

# Counts must be exact in a float64 (fed/validate_update.ts: Number.isSafeInteger).
MAX_COUNT = 2**53 - 1


def default_max_update_norm(lr: float, local_steps: int, values: int) -> float:
    """The largest update an honest node can send after `local_steps` AdamW steps of learning
    rate ≤ `lr` on `values` shared values: 2·lr·T·√n (fed/validate_update.ts
    `defaultMaxUpdateNorm`, the same operations in the same order)."""
    return ADAM_STEP_BOUND * lr * local_steps * math.sqrt(values)


@dataclass
class Refusal:
    """A reply left out of its phase."""

    node: int
    client: int | None
    # One line: node, client, round, phase and the problem.
    reason: str

    def record(self) -> dict:
        """As result.json lists it (node ids as strings: JSON readers keep every digit)."""
        return {"node": str(self.node), "client": self.client, "reason": self.reason}


@dataclass
class Accepted:
    """A reply that may count, with what the ServerApp reads of it."""

    reply: Message
    client: int
    # Its num-examples: FedAvg's weight, the token claim `tokens` caps (0 for a query reply).
    examples: int
    # The shared tensors it sent (train and query replies), decoded, in the expected order.
    tensors: dict[str, np.ndarray]


# Numbers and shapes are printed as the TS validator prints them (`${x}`, toPrecision(4)), so a
# refusal reads the same from either server.


def _js_number(x: float) -> str:
    """A non-finite value as JavaScript prints it."""
    if math.isnan(x):
        return "NaN"
    return "Infinity" if x > 0 else "-Infinity"


def _js_shape(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _js_precision4(x: float) -> str:
    """JavaScript's x.toPrecision(4) for a finite x ≥ 0: fixed notation for exponents −6..3,
    else d.ddde±N (an exact decimal tie rounds up there, to even here)."""
    mantissa, exponent = f"{x:.3e}".split("e")
    e = int(exponent)
    if -6 <= e < 4:
        return f"{x:.{3 - e}f}"
    return f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"


def _unexpected(name: str) -> str:
    """Why an unexpected tensor name is refused (fed/validate_update.ts `unexpected`)."""
    kind = role(name)
    if kind is None:
        return f'sent "{name}", which is not an adapter tensor'
    if kind == "router":
        return f"sent {name}, a router (routers never leave the device)"
    if kind == "specialist":
        return f"sent {name}, a specialist's tensor (specialists never leave the device)"
    return f"sent {name}, which the server did not send this round"


def _finite_number(value: object) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    )


def _facts_problem(reply: Message) -> str | None:
    """What is wrong with the reply's facts (they end up in result.json: only what JSON holds as
    it is), or None."""
    facts = reply.content.config_records.get("config")
    for key, value in (facts or {}).items():
        items = value if isinstance(value, list) else [value]
        if any(isinstance(v, bytes) or (isinstance(v, float) and not math.isfinite(v))
               for v in items):
            return f"its fact {key!r} is {value!r}, not text, a flag or a finite number"
    return None


def _metrics_problem(reply: Message, weighted_by_key: str) -> str | None:
    """What is wrong with the reply's metrics (what FedAvg averages), or None."""
    metrics = reply.content.metric_records
    if len(metrics) != 1:
        return f"it holds {len(metrics)} metric records, not exactly one"
    values = next(iter(metrics.values()))
    examples = values.get(weighted_by_key)
    if not (isinstance(examples, int) and not isinstance(examples, bool)
            and 1 <= examples <= MAX_COUNT):
        return f"it claims {examples!r} as {weighted_by_key}, not a count in 1..2^53-1"
    for key, value in values.items():
        if not _finite_number(value):
            return f"its metric {key!r} is {value!r}, not a finite number"
    return None


def _tensors_problem(
    record: ArrayRecord, shapes: dict[str, tuple[int, ...]]
) -> str | dict[str, np.ndarray]:
    """What is wrong with the sent tensors, or the tensors decoded in `shapes`' order."""
    for name in record.keys():
        if name not in shapes:
            return _unexpected(name)
    if not shapes:
        return "it holds no shared tensors"
    missing = [name for name in shapes if name not in record]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        return f"it lacks {missing[0]}{more} of the {len(shapes)} shared tensors"
    tensors = {}
    for name, shape in shapes.items():
        try:
            # The .npy bytes decide dtype and shape; the Array's own fields are only a label.
            tensor = record[name].numpy()
        except Exception as error:  # any unreadable array is one refusal, whatever numpy raises
            return f"{name} cannot be read ({error})"
        if tuple(tensor.shape) != shape:
            return f"{name} is {_js_shape(tensor.shape)}, expected {_js_shape(shape)}"
        if tensor.dtype != np.dtype("<f4"):
            return f"{name} is {tensor.dtype}, not float32"
        tensors[name] = tensor
    for name, tensor in tensors.items():
        bad = np.flatnonzero(~np.isfinite(tensor))
        if bad.size:
            more = f" (and {bad.size - 1} more non-finite values)" if bad.size > 1 else ""
            return f"{name}[{bad[0]}] is {_js_number(float(tensor.ravel()[bad[0]]))}{more}"
    return tensors


def update_of(start: dict[str, np.ndarray], now: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """now − start per tensor, flat float64 arrays in `start`'s name order (fed/update.ts
    `updateOf`)."""
    return {
        name: now[name].astype(np.float64).ravel() - values.astype(np.float64).ravel()
        for name, values in start.items()
    }


def sum_of_squares(tensors: dict[str, np.ndarray]) -> float:
    """The float64 sum of the squares of every value, in name order then index order
    (fed/update.ts `sumOfSquares`; cumsum adds left to right, where numpy's sum would add
    pairwise)."""
    squares = [np.square(values.astype(np.float64).ravel()) for values in tensors.values()]
    flat = np.concatenate(squares) if squares else np.zeros(0)
    return float(np.cumsum(flat)[-1]) if flat.size else 0.0


def update_norm(start: dict[str, np.ndarray], now: dict[str, np.ndarray]) -> float:
    """The L2 norm of now − start over all tensors together (fed/update.ts
    `l2Norm(updateOf(...))`)."""
    return math.sqrt(sum_of_squares(update_of(start, now)))


def check_reply(
    reply: Message,
    phase: str,
    server_round: int,
    shapes: dict[str, tuple[int, ...]],
    start: dict[str, np.ndarray] | None,
    max_update_norm: float,
    arrayrecord_key: str = "arrays",
    weighted_by_key: str = "num-examples",
) -> Accepted | Refusal:
    """Checks one error-free reply of `phase` (query, train or evaluate). `shapes`: the shared
    tensors' names and shapes, exactly what must come back; `start`: the global sent this round
    (train; None for a query), from which the update is measured."""
    node = reply.metadata.src_node_id
    facts = reply.content.config_records.get("config")
    client = facts.get("client") if facts is not None else None
    if isinstance(client, bool) or not isinstance(client, int):
        client = None

    def refuse(problem: str) -> Refusal:
        who = f"node {node} (client {client})" if client is not None else f"node {node}"
        what = "update" if phase == "train" else f"{phase} reply"
        reason = f"{who}, round {server_round}: {what} refused: {problem}"
        return Refusal(node, client, reason)

    if client is None:
        return refuse(
            "it names no client id (a ConfigRecord 'config' with an int 'client'): "
            "is it a comigs node?"
        )
    problem = _facts_problem(reply)
    if problem is None and phase != "query":  # a query reply carries no metrics
        problem = _metrics_problem(reply, weighted_by_key)
    if problem is not None:
        return refuse(problem)
    examples = (
        next(iter(reply.content.metric_records.values()))[weighted_by_key]
        if phase != "query"
        else 0
    )
    records = reply.content.array_records
    if phase == "evaluate":
        if records:
            return refuse(
                f"it carries arrays (records {sorted(records)}); evaluate replies carry "
                "metrics only"
            )
        return Accepted(reply, client, examples, {})
    if list(records) != [arrayrecord_key]:
        return refuse(
            f"it holds array records {sorted(records)}, not exactly one named {arrayrecord_key!r}"
        )
    tensors = _tensors_problem(records[arrayrecord_key], shapes)
    if isinstance(tensors, str):
        return refuse(tensors)
    if start is not None:
        norm = update_norm(start, tensors)
        if not norm <= max_update_norm:
            return refuse(
                f"its update's L2 norm {_js_precision4(norm)} exceeds the bound "
                f"{_js_precision4(max_update_norm)} (max update norm)"
            )
    return Accepted(reply, client, examples, tensors)
