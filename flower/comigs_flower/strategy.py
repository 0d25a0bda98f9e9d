"""SharedFedAvg: Flower's FedAvg over the shared tensors, made to compute what the comigs
simulation computes (fed/strategy.ts, fed/aggregate.ts), and to record who took part.

What it changes of FedAvg, and why:
- Replies are ordered by the client id each node reports (its ConfigRecord "config"), and the
  arrays are averaged in float64 in that order and rounded to float32 once, as fed/aggregate.ts
  does. Flower's own `aggregate_arrayrecords` multiplies and sums in float32 (numpy 2 keeps a
  float32 array times a Python float in float32) in the order replies arrive, so two runs with the
  same seed could differ in the last bits; this way the result does not depend on arrival order
  and equals the simulation's bit for bit.
- `aggregation`: "uniform" weighs every reply 1/n; "tokens" weighs by `num-examples` (the node's
  training tokens) after capping every claim at the round's upper median claim
  (fed/aggregate.ts `cappedClaims`: fewer than half the nodes cannot inflate their weight).
- Only the shared tensors may arrive (shared_names.py); anything else stops the run.
- Evaluation runs every `eval-every` rounds and at the last one, as `deno task train` does.
Everything else (sampling, messages, timeouts, metric averaging) is FedAvg's.
"""

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from .run_record import RunRecord
from .shared_names import unshared


class SharedArraysError(RuntimeError):
    """A node sent arrays other than the shared tensors of this run."""


def client_of(reply: Message) -> tuple[int, int]:
    """The order of a reply: the client id its node reports, then the node id."""
    node = reply.metadata.src_node_id
    facts = reply.content.config_records.get("config")
    if facts is None or not isinstance(facts.get("client"), int):
        raise SharedArraysError(
            f"node {node} sent no client id (ConfigRecord 'config' with an int 'client'): "
            "is it a comigs node?"
        )
    return (facts["client"], node)


def capped_claims(claims: list[int]) -> list[int]:
    """Every claim capped at the upper median claim (fed/aggregate.ts `cappedClaims`)."""
    cap = sorted(claims)[len(claims) // 2]
    return [min(claim, cap) for claim in claims]


class SharedFedAvg(FedAvg):
    """FedAvg over the shared tensors only, computed as the comigs simulation computes it."""

    def __init__(
        self,
        method: str,
        aggregation: str,
        eval_every: int,
        num_rounds: int,
        min_nodes: int,
        record: RunRecord,
    ) -> None:
        super().__init__(
            min_train_nodes=min_nodes,
            min_evaluate_nodes=min_nodes,
            min_available_nodes=min_nodes,
        )
        if aggregation not in ("uniform", "tokens"):
            raise ValueError(
                f"run config `aggregation` is {aggregation!r}; expected uniform or tokens"
            )
        self.method = method
        self.aggregation = aggregation
        self.eval_every = eval_every
        self.num_rounds = num_rounds
        self.record = record
        # The names and shapes of the initial shared tensors: the only ones a node may send.
        self.shared: dict[str, tuple[int, ...]] = {}
        self.sampled: list[int] = []

    def initial_arrays(self, server_round: int, replies: list[Message]) -> ArrayRecord:
        """The initial shared tensors from the query replies: those of the lowest client id
        (the simulation's server initialises with client 0's options); every node's must have
        the same names and shapes, all of them shareable."""
        valid = [r for r in replies if not r.has_error()]
        self.record.phase(server_round, "query", self.sampled, replies)
        if not valid:
            raise RuntimeError("no node answered the query for the initial shared tensors")
        valid.sort(key=client_of)
        first = valid[0].content.array_records.get(self.arrayrecord_key)
        if first is None:
            raise SharedArraysError(f"node {valid[0].metadata.src_node_id} sent no arrays")
        self.shared = {name: tuple(a.shape) for name, a in first.items()}
        bad = unshared(self.shared, self.method)
        if bad:
            raise SharedArraysError(
                f"node {valid[0].metadata.src_node_id} offered initial arrays that "
                f"{self.method} never shares: {bad}"
            )
        for reply in valid[1:]:
            self._check_arrays(reply)
        return first

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.sampled = [m.metadata.dst_node_id for m in messages]
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if server_round % self.eval_every != 0 and server_round != self.num_rounds:
            self.sampled = []
            return []
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        self.sampled = [m.metadata.dst_node_id for m in messages]
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        # Ours first: a leaked specialist is named as such, not as inconsistent replies.
        for reply in replies:
            if not reply.has_error():
                self._check_arrays(reply)
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        valid.sort(key=client_of)
        arrays = metrics = None
        if valid:
            arrays = self._mean(valid)
            metrics = self.train_metrics_aggr_fn(
                [r.content for r in valid], self.weighted_by_key
            )
        self.record.phase(server_round, "train", self.sampled, replies, metrics)
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        for reply in replies:
            if not reply.has_error() and reply.content.array_records:
                raise SharedArraysError(
                    f"node {reply.metadata.src_node_id} sent arrays in its evaluate reply "
                    f"(records {sorted(reply.content.array_records)}); evaluate replies "
                    "carry metrics only"
                )
        valid, _ = self._check_and_log_replies(replies, is_train=False)
        valid.sort(key=client_of)
        metrics = None
        if valid:
            metrics = self.evaluate_metrics_aggr_fn(
                [r.content for r in valid], self.weighted_by_key
            )
        self.record.phase(server_round, "evaluate", self.sampled, replies, metrics)
        return metrics

    def _check_arrays(self, reply: Message) -> None:
        node = reply.metadata.src_node_id
        records = reply.content.array_records
        if list(records) != [self.arrayrecord_key]:
            raise SharedArraysError(
                f"node {node} replied with array records {sorted(records)}; expected "
                f"exactly one named {self.arrayrecord_key!r}"
            )
        received = records[self.arrayrecord_key]
        names = set(received.keys())
        if names != set(self.shared):
            raise SharedArraysError(
                f"node {node} sent arrays that are not exactly this run's shared tensors: "
                f"unexpected {sorted(names - set(self.shared))}, "
                f"missing {sorted(set(self.shared) - names)}"
            )
        for name, array in received.items():
            if array.dtype != "float32" or tuple(array.shape) != self.shared[name]:
                raise SharedArraysError(
                    f"node {node} sent {name!r} as {array.dtype}{list(array.shape)}; "
                    f"expected float32{list(self.shared[name])}"
                )

    def _mean(self, replies: list[Message]) -> ArrayRecord:
        """The weighted mean in float64, in client order, rounded to float32 once."""
        n = len(replies)
        weights = [1 / n] * n
        if self.aggregation == "tokens":
            claims = capped_claims(
                [int(r.content.metric_records["metrics"][self.weighted_by_key]) for r in replies]
            )
            total = sum(claims)
            if total <= 0:
                raise SharedArraysError("token weighting needs nodes with training tokens")
            weights = [claim / total for claim in claims]
        out = {}
        for name in self.shared:
            acc = np.zeros(self.shared[name], dtype=np.float64)
            for weight, reply in zip(weights, replies, strict=True):
                acc += weight * reply.content[self.arrayrecord_key][name].numpy().astype(np.float64)
            out[name] = Array(acc.astype(np.float32))
        return ArrayRecord(out)
