"""The comigs ServerApp: FedAvg over the shared tensors (strategy.py), comigs TypeScript nodes
(fed/flower/ in the comigs repository, `deno task flower-node`) doing the clients' work.

A run, as `deno task train` runs it in one process:
1. query: every node online (at least `min-nodes`) answers with its facts (client id, category,
   experts, training tokens) and the initial shared tensors its options give; those of the
   lowest client id become the global tensors' start (the simulation initialises its server with
   client 0's options).
2. evaluate 0: every node evaluates before training and adds the frozen base model's test
   perplexity (the "pretrained" column).
3. rounds 1..R of FedAvg: train, then evaluate every `eval-every` rounds and at the last round.
The run's options (train's flags, `rounds` included) travel to the nodes in every ConfigRecord;
the nodes add their own (model, data, experts). Flower's round timeout (`round-timeout`) ends a
phase whose nodes did not all reply; FedAvg aggregates the replies it got, and result.json names
the missing nodes. Every reply is checked first (validate_reply.py): a refused one is left out of
its phase and named in result.json, and a round with fewer than `min-clients` accepted updates
keeps the previous global. Under `dp = "central"` the ServerApp clips and noises the sum of the
accepted updates, under `dp = "local"` every node its own (privacy.py); the ε spent is recorded.
The run folder (`out`; default runs/flower-<method>-s<seed>-<run id> in the ServerApp's working
folder) is described in run_record.py.
"""

import logging
import os
import time

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from .aggregate import AGGREGATIONS, check_trim
from .privacy import dp_settings
from .run_record import RunRecord
from .shared_names import check_method
from .strategy import SharedFedAvg

app = ServerApp()

# The options of `deno task train` (cli/train_flags.ts) the nodes need, by their flag names (the
# keys fed/flower/run_options.ts reads). Their defaults live in pyproject.toml.
NODE_OPTIONS = (
    "method",
    "rounds",
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
    "lora-targets",
    "aggregation",
    "dp",
    "dp-clip",
    "dp-noise",
    "dp-delta",
    "dp-seed",
)


def guard_options(cfg) -> dict:
    """The ServerApp's own defences from the run config, checked: `aggregation` (and `trim`),
    `min-clients`, `max-update-norm` (0: the default bound, 2·lr·local-steps·√n)."""
    aggregation = str(cfg["aggregation"])
    if aggregation not in AGGREGATIONS:
        raise ValueError(
            f"run config `aggregation` is {aggregation!r}; expected {', '.join(AGGREGATIONS)}"
        )
    trim = float(cfg["trim"])
    check_trim(trim)
    min_clients = cfg["min-clients"]
    if isinstance(min_clients, bool) or not isinstance(min_clients, int) or min_clients < 1:
        raise ValueError(f"run config `min-clients` is {min_clients!r}; expected an integer >= 1")
    max_update_norm = cfg["max-update-norm"]
    if isinstance(max_update_norm, bool) or not (
        isinstance(max_update_norm, (int, float)) and max_update_norm >= 0
    ):
        raise ValueError(
            f"run config `max-update-norm` is {max_update_norm!r}; expected a number > 0 "
            "(or 0: the default bound, 2·lr·local-steps·√(shared values))"
        )
    return {
        "aggregation": aggregation,
        "trim": trim,
        "min_clients": min_clients,
        "max_update_norm": float(max_update_norm) if max_update_norm > 0 else None,
    }


def online_nodes(grid: Grid, minimum: int) -> list[int]:
    """The nodes online, once there are at least `minimum` (FedAvg's sample_nodes waits so)."""
    while len(nodes := sorted(grid.get_node_ids())) < minimum:
        log(logging.INFO, "Waiting for nodes to connect: %d connected (minimum required: %d).",
            len(nodes), minimum)
        time.sleep(1)
    return nodes


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Query the nodes, evaluate before training, then run FedAvg for `rounds` rounds."""
    cfg = context.run_config
    method = str(cfg["method"])
    check_method(method)
    num_rounds = int(cfg["rounds"])
    timeout = float(cfg["round-timeout"])
    min_nodes = int(cfg["min-nodes"])
    options = {key: cfg[key] for key in NODE_OPTIONS}
    out = str(cfg["out"]) or os.path.join(
        "runs", f"flower-{method}-s{cfg['seed']}-{context.run_id}"
    )
    log(logging.INFO, "comigs: the run folder is %s", os.path.abspath(out))
    dp = dp_settings(cfg)
    record = RunRecord(out, context.run_id, options, dp)
    strategy = SharedFedAvg(
        method=method,
        eval_every=int(cfg["eval-every"]),
        num_rounds=num_rounds,
        min_nodes=min_nodes,
        lr=float(cfg["lr"]),
        local_steps=int(cfg["local-steps"]),
        dp=dp,
        record=record,
        **guard_options(cfg),
    )

    strategy.sampled = online_nodes(grid, min_nodes)
    queries = [
        Message(RecordDict({"config": ConfigRecord(options)}), node, MessageType.QUERY)
        for node in strategy.sampled
    ]
    initial = strategy.initial_arrays(0, list(grid.send_and_receive(queries, timeout=timeout)))

    evaluations = strategy.configure_evaluate(0, initial, ConfigRecord(options), grid)
    strategy.aggregate_evaluate(0, grid.send_and_receive(evaluations, timeout=timeout))

    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=num_rounds,
        timeout=timeout,
        train_config=ConfigRecord(options),
        evaluate_config=ConfigRecord(options),
    )
    # No round aggregated anything (every node missing): the global tensors are the initial ones.
    final = result.arrays if len(result.arrays) else initial
    record.finish(final, method, int(cfg["seed"]))
