"""A Flower run's folder, as a comigs user knows a run folder (interfaces.md "Training runs"):

- result.json, rewritten after every phase: the options, and per phase (query 0, evaluate 0,
  then train r / evaluate r) the nodes sampled, those that replied, those missing (sampled, no
  reply: Flower's round timeout or its error), their errors, the replies refused
  (validate_reply.py: node, client, reason; left out of the phase), each accepted node's client
  id, category and metrics, Flower's aggregated metrics, after a train phase `kept` (why the
  round kept the previous global, or null) and, under DP, `privacy`: the ε spent so far and its δ
  (metrics.jsonl's `privacy` events), after an evaluation the mean test perplexity (the plain
  mean of the accepted clients', method.md §5), and `wall_s`: the seconds since the ServerApp
  started when the phase ended (metrics.jsonl's `wall_s`);
- final.safetensors at the end: the global shared tensors (global.safetensors of a simulated run);
- summary.json at the end, the fields of a simulated run's summary.json. The ServerApp holds no
  data and no model, so `scenario`, `ood`, `base_model` and every `clients` entry are the nodes'
  own report (listed under `reported_by_nodes`); the means are computed here from the reported
  perplexities, in client-id order as the simulation does; under DP, `privacy`: the mode, C, z, δ
  and the final ε, as a simulated run's summary holds them.
Node ids are uint64: written as strings so JSON readers keep every digit.
"""

import json
import os
import time

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from .privacy import DpSettings
from .safetensors_io import write_f32
from .validate_reply import Refusal


def mean(values: list[float]) -> float:
    """Sum left to right, then divide: the simulation's order (not Python 3.12's fsum-like sum)."""
    total = 0.0
    for value in values:
        total += value
    return total / len(values)


class RunRecord:
    """What the ServerApp writes to `out` as the run goes."""

    def __init__(self, out: str, run_id: int, options: dict, dp: DpSettings) -> None:
        os.makedirs(out, exist_ok=True)
        self.out = out
        self.run_id = run_id
        self.options = options
        self.started = time.monotonic()
        self.phases: list[dict] = []
        # Per reported client id: its latest facts and test perplexity, its base perplexity.
        self.clients: dict[int, dict] = {}
        self.pretrained: dict[int, float] = {}
        self.dp = dp
        # The ε spent after the latest train phase (DP runs).
        self.epsilon: float | None = None

    def phase(
        self,
        server_round: int,
        phase: str,
        sampled: list[int],
        replies: list[Message],
        refusals: list[Refusal],
        metrics: MetricRecord | None = None,
        kept: str | None = None,
        privacy: dict | None = None,
    ) -> None:
        """Records one phase (nothing for a phase the round skipped); `privacy`: the ε spent
        after a train phase, and its δ (DP runs)."""
        if not sampled and not replies:
            return
        valid = [r for r in replies if not r.has_error()]
        replied = [r.metadata.src_node_id for r in valid]
        refused = {refusal.node for refusal in refusals}
        nodes = {}
        for reply in valid:
            if reply.metadata.src_node_id in refused:
                continue
            facts = dict(reply.content.config_records.get("config", {}))
            values = dict(next(iter(reply.content.metric_records.values()), {}))
            nodes[str(reply.metadata.src_node_id)] = {**facts, **values}
            if phase == "evaluate" and "test-ppl" in values:
                self._evaluated(facts, values, reply.metadata.src_node_id)
        entry = {
            "round": server_round,
            "phase": phase,
            "sampled": sorted(str(n) for n in sampled),
            "replied": sorted(str(n) for n in replied),
            "missing": sorted(str(n) for n in sampled if n not in replied),
            "errors": {str(r.metadata.src_node_id): r.error.reason for r in replies if r.has_error()},
            "refused": [refusal.record() for refusal in refusals],
            "nodes": nodes,
            "metrics": dict(metrics) if metrics is not None else None,
            "wall_s": round(time.monotonic() - self.started, 3),
        }
        if phase == "train":
            entry["kept"] = kept
            if privacy is not None:
                entry["privacy"] = privacy
                self.epsilon = privacy["epsilon"]
        evaluated = [v for v in nodes.values() if "test-ppl" in v]
        if phase == "evaluate" and evaluated:
            ppl = [v["test-ppl"] for v in sorted(evaluated, key=lambda v: v["client"])]
            entry["mean_test_ppl"] = mean(ppl)
        self.phases.append(entry)
        self._write("result.json", {"run_id": str(self.run_id), "options": self.options,
                                    "rounds": self.phases})

    def _evaluated(self, facts: dict, values: dict, node: int) -> None:
        client = facts["client"]
        self.clients[client] = {"facts": facts, "test_ppl": values["test-ppl"], "node": node}
        if "pretrained-ppl" in values:
            self.pretrained[client] = values["pretrained-ppl"]

    def finish(self, arrays: ArrayRecord, method: str, seed: int) -> None:
        """Writes final.safetensors and summary.json."""
        write_f32(
            os.path.join(self.out, "final.safetensors"),
            {name: np.asarray(a.numpy()) for name, a in arrays.items()},
        )
        ids = sorted(self.clients)
        if not ids:
            return  # no node ever evaluated: nothing to summarise
        first = self.clients[ids[0]]["facts"]
        clients = [
            {
                "id": client,
                "name": self.clients[client]["facts"].get("name"),
                "n_experts": self.clients[client]["facts"].get("experts"),
                "train_tokens": self.clients[client]["facts"].get("train-tokens"),
                "test_ppl": self.clients[client]["test_ppl"],
            }
            for client in ids
        ]
        pretrained = [self.pretrained[c] for c in sorted(self.pretrained)]
        summary = {
            "method": method,
            "scenario": first.get("scenario"),
            "ood": first.get("ood"),
            "seed": seed,
            "base_model": first.get("base-model"),
            "clients": clients,
            "mean_test_ppl": mean([c["test_ppl"] for c in clients]),
            "pretrained_mean_test_ppl": mean(pretrained) if pretrained else None,
        }
        if self.epsilon is not None:
            summary["privacy"] = {
                "mode": self.dp.mode,
                "clip": self.dp.clip,
                "noise": self.dp.noise,
                "delta": self.dp.delta,
                "epsilon": self.epsilon,
            }
        summary["reported_by_nodes"] = ["scenario", "ood", "base_model", "clients"]
        self._write("summary.json", summary)

    def _write(self, name: str, value: dict) -> None:
        path = os.path.join(self.out, name)
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump(value, out, indent=1)
            out.write("\n")
        os.replace(tmp, path)
