"""safetensors (F32 only) read and written with numpy: the shared tensors in and out of a run.

The format is the one model/safetensors.ts reads and writes: an 8-byte little-endian header
length, a JSON header ({name: {dtype, shape, data_offsets}}), then raw little-endian data.
"""

import json
import os
import struct
from pathlib import Path

import numpy as np


def read_f32(path: str) -> dict[str, np.ndarray]:
    """Read every tensor of a safetensors file; anything but F32 is refused."""
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: {len(data)} bytes, too short for a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if 8 + header_len > len(data):
        raise ValueError(f"{path}: header length {header_len} runs past the end of the file")
    header = json.loads(data[8 : 8 + header_len])
    body = memoryview(data)[8 + header_len :]
    tensors: dict[str, np.ndarray] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] != "F32":
            raise ValueError(f"{path}: tensor {name!r} is {entry['dtype']}, expected F32")
        start, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if end - start != 4 * int(np.prod(shape, dtype=np.int64)):
            raise ValueError(f"{path}: tensor {name!r} has {end - start} bytes for shape {shape}")
        tensors[name] = np.frombuffer(body[start:end], dtype="<f4").reshape(shape).copy()
    return tensors


def write_f32(path: str, tensors: dict[str, np.ndarray]) -> None:
    """Write tensors as F32 safetensors, atomically (temp file, then rename)."""
    header: dict[str, dict[str, object]] = {}
    offset = 0
    blobs = []
    for name, array in tensors.items():
        blob = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        offset += len(blob)
        blobs.append(blob)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)  # the format pads the header to 8 bytes
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as out:
        out.write(struct.pack("<Q", len(header_bytes)))
        out.write(header_bytes)
        for blob in blobs:
            out.write(blob)
    os.replace(tmp, path)
