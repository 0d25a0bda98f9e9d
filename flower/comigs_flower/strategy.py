"""SharedFedAvg: Flower's FedAvg over the shared tensors, made to compute what the comigs
simulation computes (fed/strategy.ts, fed/guard.ts, fed/aggregate.ts), and to record who took part.

What it changes of FedAvg, and why:
- Every reply is checked before it counts (validate_reply.py, fed/validate_update.ts's rules): a
  refused one is left out of its phase and recorded with its node, client and reason, and the
  run goes on; Flower's own consistency check would stop the run on one bad reply instead.
- With fewer than `min-clients` accepted train replies, the round keeps the previous global
  (recorded), as fed/guard.ts does.
- Replies are ordered by the client id each node reports (its ConfigRecord "config") and
  aggregated as fed/aggregate.ts does (aggregate.py): the uniform or token-weighted mean in
  float64 in that order, the coordinate-wise median or the trimmed mean, each rounded to float32
  once. Flower's own `aggregate_arrayrecords` multiplies and sums in float32 in the order replies
  arrive, so two runs with the same seed could differ in the last bits; this way the result does
  not depend on arrival order and equals the simulation's bit for bit.
- Evaluation runs every `eval-every` rounds and at the last one, as `deno task train` does.
- Differential privacy (privacy.py), as fed/strategy.ts applies it: under central DP every round
  releases the clipped, noised sum of the accepted updates over the fixed K (no quorum: the noise
  is released even when nothing arrived); under local DP the nodes noise their own updates and the
  default update-norm bound allows for that noise. Either way the ε spent so far is recorded after
  every round (accountant.py).
Everything else (sampling, messages, timeouts, metric averaging) is FedAvg's.
"""

import logging
from collections import Counter
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from .accountant import epsilon_spent
from .aggregate import aggregate, quorum_shortfall
from .noise import GaussianNoise, noise_key
from .privacy import DpSettings, central_dp_aggregate, local_dp_norm_bound
from .run_record import RunRecord
from .shared_names import is_shared
from .validate_reply import Accepted, Refusal, check_reply, default_max_update_norm


class SharedFedAvg(FedAvg):
    """FedAvg over the shared tensors only, guarded and computed as the comigs simulation does."""

    def __init__(
        self,
        method: str,
        aggregation: str,
        trim: float,
        eval_every: int,
        num_rounds: int,
        min_nodes: int,
        min_clients: int,
        max_update_norm: float | None,
        lr: float,
        local_steps: int,
        dp: DpSettings,
        record: RunRecord,
    ) -> None:
        super().__init__(
            min_train_nodes=min_nodes,
            min_evaluate_nodes=min_nodes,
            min_available_nodes=min_nodes,
        )
        self.method = method
        self.aggregation = aggregation
        self.trim = trim
        self.eval_every = eval_every
        self.num_rounds = num_rounds
        self.min_clients = min_clients
        self.record = record
        self._norm_option = max_update_norm
        self._lr = lr
        self._local_steps = local_steps
        # The names and shapes of the initial shared tensors: the only ones a node may send.
        self.shared: dict[str, tuple[int, ...]] = {}
        # The largest accepted update norm: the option, or 2·lr·T·√(shared values).
        self.max_update_norm = float("inf")
        # The global sent in the current round's train messages: updates are measured from it.
        self.sent: dict[str, np.ndarray] = {}
        self.sampled: list[int] = []
        self.dp = dp
        # Central DP: the noise stream (a secret key unless `dp-seed` is given) and the fixed
        # denominator K, the nodes the run started with (set by initial_arrays).
        self.noise = GaussianNoise(noise_key(dp.seed)) if dp.mode == "central" else None
        self.expected_clients = 0
        # Local DP: the train rounds each node was sampled for (its own ε counts those).
        self.trained = Counter()

    def initial_arrays(self, server_round: int, replies: list[Message]) -> ArrayRecord:
        """The initial shared tensors from the query replies: those of the lowest client id whose
        offer holds only shareable, readable, finite float32 tensors (the simulation's server
        initialises with client 0's options); every other node's must have the same names and
        shapes, or it is refused."""
        answered = [r for r in replies if not r.has_error()]
        candidates = sorted(answered, key=_client_order)
        accepted: list[Accepted] = []
        refusals: list[Refusal] = []
        for reply in candidates:
            if not self.shared:
                record = reply.content.array_records.get(self.arrayrecord_key)
                offered = {} if record is None else {n: tuple(a.shape) for n, a in record.items()}
                # Its unshareable names stay out of `shapes`: they are refused as unexpected.
                shapes = {n: s for n, s in offered.items() if is_shared(n, self.method)}
                verdict = self._check(reply, "query", server_round, shapes, None)
                if isinstance(verdict, Accepted):
                    self.shared = shapes
            else:
                verdict = self._check(reply, "query", server_round, self.shared, None)
            (accepted if isinstance(verdict, Accepted) else refusals).append(verdict)
        self.record.phase(server_round, "query", self.sampled, replies, refusals)
        if not accepted:
            raise RuntimeError(
                "no node offered usable initial shared tensors: "
                + ("; ".join(r.reason for r in refusals) or "no node answered the query")
            )
        values = sum(int(np.prod(shape, dtype=np.int64)) for shape in self.shared.values())
        honest = default_max_update_norm(self._lr, self._local_steps, values)
        if self._norm_option is not None:
            self.max_update_norm = self._norm_option
        elif self.dp.mode == "local":  # an honest node's update carries its noise too
            self.max_update_norm = max(honest, local_dp_norm_bound(self.dp, values))
        else:
            self.max_update_norm = honest
        # Every node online at the start is sampled every round: K of central DP, fixed for the
        # run (dividing by the arrivals would let one client's presence reweight the others).
        self.expected_clients = len(self.sampled)
        log(logging.INFO, "comigs: updates of L2 norm above %.4g are refused (%d shared values)",
            self.max_update_norm, values)
        return ArrayRecord({name: Array(t) for name, t in accepted[0].tensors.items()})

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.sampled = [m.metadata.dst_node_id for m in messages]
        self.trained.update(self.sampled)
        self.sent = {name: np.asarray(a.numpy()) for name, a in arrays.items()}
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
        accepted, refusals = self._screen(replies, "train", server_round, self.sent)
        kept = quorum_shortfall(server_round, len(accepted), self.min_clients)
        arrays = metrics = None
        if accepted:
            metrics = self.train_metrics_aggr_fn(
                [a.reply.content for a in accepted], self.weighted_by_key
            )
        if self.noise is not None:
            # Released every round, even with no update: skipping would tell how many arrived.
            kept = None
            noised = central_dp_aggregate(
                self.sent, [a.tensors for a in accepted], self.dp, self.expected_clients, self.noise
            )
            arrays = ArrayRecord({name: Array(t) for name, t in noised.items()})
        elif kept is not None:
            log(logging.WARNING, "comigs: %s", kept)
        else:
            mean = aggregate(
                [a.tensors for a in accepted],
                self.shared,
                self.aggregation,
                [a.examples for a in accepted],
                self.trim,
            )
            arrays = ArrayRecord({name: Array(t) for name, t in mean.items()})
        spent = self._spent(server_round)
        self.record.phase(
            server_round, "train", self.sampled, replies, refusals, metrics, kept, spent
        )
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        accepted, refusals = self._screen(replies, "evaluate", server_round, None)
        metrics = None
        if accepted:
            metrics = self.evaluate_metrics_aggr_fn(
                [a.reply.content for a in accepted], self.weighted_by_key
            )
        self.record.phase(server_round, "evaluate", self.sampled, replies, refusals, metrics)
        return metrics

    def _spent(self, server_round: int) -> dict | None:
        """The privacy spent after `server_round` (None without DP): central, one Gaussian
        mechanism per round; local, the guarantee of the node sampled for the most rounds."""
        if self.dp.mode == "none":
            return None
        if self.dp.mode == "central":
            rounds = server_round
        else:
            rounds = max(self.trained.values(), default=0)
        epsilon = epsilon_spent(self.dp.mode, self.dp.noise, self.dp.delta, rounds)
        return {"epsilon": epsilon, "delta": self.dp.delta}

    def _screen(
        self,
        replies: list[Message],
        phase: str,
        server_round: int,
        start: dict[str, np.ndarray] | None,
    ) -> tuple[list[Accepted], list[Refusal]]:
        """The replies that may count, in client order, and the refused ones. FedAvg's log of
        the replies and errors, without its consistency check (one bad reply would raise)."""
        answered, _ = self._check_and_log_replies(replies, phase == "train", validate=False)
        accepted: list[Accepted] = []
        refusals: list[Refusal] = []
        for reply in answered:
            verdict = self._check(reply, phase, server_round, self.shared, start)
            (accepted if isinstance(verdict, Accepted) else refusals).append(verdict)
        accepted.sort(key=lambda a: (a.client, a.reply.metadata.src_node_id))
        return accepted, refusals

    def _check(
        self,
        reply: Message,
        phase: str,
        server_round: int,
        shapes: dict[str, tuple[int, ...]],
        start: dict[str, np.ndarray] | None,
    ) -> Accepted | Refusal:
        verdict = check_reply(
            reply,
            phase,
            server_round,
            shapes,
            start,
            self.max_update_norm,
            self.arrayrecord_key,
            self.weighted_by_key,
        )
        if isinstance(verdict, Refusal):
            log(logging.WARNING, "comigs: %s", verdict.reason)
        return verdict


def _client_order(reply: Message) -> tuple[int, int]:
    """Replies by the client id their node reports (none: last), then by node id."""
    facts = reply.content.config_records.get("config")
    client = facts.get("client") if facts is not None else None
    if isinstance(client, bool) or not isinstance(client, int):
        return (2**64, reply.metadata.src_node_id)
    return (client, reply.metadata.src_node_id)
