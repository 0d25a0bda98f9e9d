"""Flower's own object layer (the pinned flwr in flower/.venv), for tests/flower/objects_test.ts.

Deflates a reply the way a Python SuperNode would (RecordDict of an ArrayRecord, a MetricRecord
and a ConfigRecord of the node's facts, inside a Message) plus a 16 MB zero array (repeated 5 MiB chunks) and a
ConfigRecord of every value type, and prints each object's id and content (hex) as JSON.
"""

import json
import sys

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.app.message.message import make_message

spec = json.load(sys.stdin)
arrays = ArrayRecord(
    {
        name: Array(np.frombuffer(bytes.fromhex(t["f32"]), dtype="<f4").reshape(t["shape"]))
        for name, t in spec["tensors"].items()
    }
)
# The node's convention (fed/flower/node.ts): num-examples is an int, every other metric a float.
metrics = MetricRecord(
    {
        k: v if k == "num-examples" else [float(x) for x in v] if isinstance(v, list) else float(v)
        for k, v in spec["metrics"].items()
    }
)
facts = ConfigRecord(spec["facts"])
content = RecordDict({"arrays": arrays, "metrics": metrics, "config": facts})
meta = spec["metadata"]
message = make_message(
    Metadata(
        run_id=int(meta["runId"]),
        message_id="",
        src_node_id=int(meta["srcNodeId"]),
        dst_node_id=int(meta["dstNodeId"]),
        reply_to_message_id=meta["replyToMessageId"],
        group_id=meta["groupId"],
        created_at=meta["createdAt"],
        ttl=meta["ttl"],
        message_type=meta["messageType"],
        src_task_id=int(meta["srcTaskId"]),
        dst_task_id=int(meta["dstTaskId"]),
    ),
    content=content,
)
zeros = Array(np.zeros(4_000_000, dtype=np.float32))
config = ConfigRecord(
    {
        "server-round": 2,
        "lr": 0.002,
        "zero": 0,
        "off": False,
        "method": "comigs-1g1s",
        "ids": [1, 2, 3],
        "fs": [0.5, -1.25],
        "blob": b"\x00\x01",
        "big": 2**63 + 5,
        "neg": -7,
        "flags": [True, False],
        "strs": ["a", "é"],
    }
)


def obj(o):
    return {"id": o.object_id, "content": o.deflate().hex()}


print(
    json.dumps(
        {
            "npy": {name: a.data.hex() for name, a in arrays.items()},
            "arrays": {name: obj(a) for name, a in arrays.items()},
            "arrayRecord": obj(arrays),
            "metricRecord": obj(metrics),
            "factsRecord": obj(facts),
            "recordDict": obj(content),
            "message": obj(message),
            "zeros": {"array": obj(zeros), "chunks": [c.object_id for _, c in zeros.slice_array()]},
            "config": obj(config),
        }
    )
)
