"""The ServerApp's aggregation (flower/comigs_flower/aggregate.py), for
tests/flower/aggregate_test.ts: reads cases as JSON on stdin ({aggregation, trim, claims, replies:
[{name: {shape, f32: hex}}]}), prints each case's aggregate as {name: hex of float32 bytes}, so no
value passes through a decimal text (where -0 and the last bits could be lost)."""

import json
import sys

import numpy as np
from comigs_flower.aggregate import aggregate

results = []
for case in json.load(sys.stdin):
    replies = [
        {
            name: np.frombuffer(bytes.fromhex(t["f32"]), dtype="<f4").reshape(t["shape"])
            for name, t in reply.items()
        }
        for reply in case["replies"]
    ]
    shapes = {name: tuple(t.shape) for name, t in replies[0].items()}
    out = aggregate(replies, shapes, case["aggregation"], case["claims"], case["trim"])
    results.append({name: t.astype("<f4").tobytes().hex() for name, t in out.items()})
json.dump(results, sys.stdout)
