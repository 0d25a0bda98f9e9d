"""The comigs ServerApp: Flower's FedAvg over the shared (generalist) tensors only.

The initial shared tensors come from a safetensors file named by the run config key
`initial-arrays` (written by the comigs side; the ServerApp runs on the SuperLink's machine, so
the path is one there). Their names and shapes are the only ones a node may send back: a reply
with any other array (a specialist, a router, an optimiser state) stops the run with an error
naming the node and the arrays (`SharedFedAvg._check_train_reply`). The run options (the flags of
`deno task train`) travel to the nodes in every train and evaluate ConfigRecord.

If `out` is set, the ServerApp writes `<out>/result.json` after every round (per round: the nodes
sampled, those that replied, those missing with Flower's reason, the aggregated metrics) and
`<out>/final.safetensors` (the global shared tensors) at the end.
"""

import json
import os
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from .safetensors_io import read_f32, write_f32

app = ServerApp()

# The options of `deno task train` (cli/train.ts) that the nodes need each round, by their flag
# names. Their defaults live in pyproject.toml's [tool.flwr.app.config].
NODE_OPTIONS = (
    "method",
    "local-steps",
    "eval-every",
    "router-every",
    "router-steps",
    "router-on-train",
    "lr",
    "batch",
    "seq",
    "seed",
    "rank",
    "alpha",
    "lora-scaling",
    "top-k",
    "lb-coef",
    "lb-rho",
    "aggregation",
)


class SharedArraysError(RuntimeError):
    """A node sent arrays other than the shared tensors of this run."""


class SharedFedAvg(FedAvg):
    """FedAvg that accepts only the shared tensors and records who was sampled and missing."""

    def __init__(
        self,
        shared: dict[str, tuple[int, ...]],
        eval_every: int,
        num_rounds: int,
        record_path: str | None,
        min_nodes: int,
    ) -> None:
        super().__init__(
            min_train_nodes=min_nodes,
            min_evaluate_nodes=min_nodes,
            min_available_nodes=min_nodes,
        )
        self.shared = shared
        self.eval_every = eval_every
        self.num_rounds = num_rounds
        self.record_path = record_path
        self.sampled: list[int] = []
        self.rounds: list[dict[str, object]] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.sampled = [m.metadata.dst_node_id for m in messages]
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        # Evaluate every `eval-every` rounds and at the end, as `deno task train` does.
        if server_round % self.eval_every != 0 and server_round != self.num_rounds:
            self.sampled = []
            return []
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        self.sampled = [m.metadata.dst_node_id for m in messages]
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        for reply in replies:
            if not reply.has_error():
                self._check_train_reply(reply)
        arrays, metrics = super().aggregate_train(server_round, replies)
        self._record(server_round, "train", replies, metrics)
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
        metrics = super().aggregate_evaluate(server_round, replies)
        self._record(server_round, "evaluate", replies, metrics)
        return metrics

    def _check_train_reply(self, reply: Message) -> None:
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

    def _record(self, server_round, phase, replies, metrics) -> None:
        if not self.sampled and not replies:
            return  # a phase this round skipped (evaluation between `eval-every` rounds)
        replied = [r.metadata.src_node_id for r in replies if not r.has_error()]
        errors = {str(r.metadata.src_node_id): r.error.reason for r in replies if r.has_error()}
        # Node ids are uint64: written as strings so JSON readers keep every digit.
        self.rounds.append(
            {
                "round": server_round,
                "phase": phase,
                "sampled": sorted(str(n) for n in self.sampled),
                "replied": sorted(str(n) for n in replied),
                "missing": sorted(str(n) for n in self.sampled if n not in replied),
                "errors": errors,
                "metrics": dict(metrics) if metrics is not None else None,
            }
        )
        if self.record_path:
            tmp = f"{self.record_path}.tmp"
            with open(tmp, "w", encoding="utf-8") as out:
                json.dump({"rounds": self.rounds}, out, indent=1)
            os.replace(tmp, self.record_path)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run FedAvg for `rounds` rounds over the tensors of `initial-arrays`."""
    cfg = context.run_config
    initial_path = str(cfg["initial-arrays"])
    if not initial_path:
        raise ValueError(
            "run config `initial-arrays` is empty: pass the safetensors file of the initial "
            "shared tensors, e.g. flwr run flower/ <connection> "
            "--run-config 'initial-arrays=\"/path/shared.safetensors\"'"
        )
    initial = read_f32(initial_path)
    out = str(cfg["out"])
    if out:
        os.makedirs(out, exist_ok=True)
    num_rounds = int(cfg["rounds"])
    options = ConfigRecord({key: cfg[key] for key in NODE_OPTIONS})
    strategy = SharedFedAvg(
        shared={name: tuple(t.shape) for name, t in initial.items()},
        eval_every=int(cfg["eval-every"]),
        num_rounds=num_rounds,
        record_path=os.path.join(out, "result.json") if out else None,
        min_nodes=int(cfg["min-nodes"]),
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord({name: Array(t) for name, t in initial.items()}),
        num_rounds=num_rounds,
        timeout=float(cfg["round-timeout"]),
        train_config=options,
        evaluate_config=ConfigRecord(dict(options)),
    )
    if out:
        final = {name: np.asarray(a.numpy()) for name, a in result.arrays.items()}
        write_f32(os.path.join(out, "final.safetensors"), final)
