"""The DP noise of central DP in the ServerApp: fed/noise.ts's generator in Python, the same
normals bit for bit from the same key (tests/flower/dp_ports_test.ts).

ChaCha20 (RFC 8439) as a counter-mode generator keyed by 256 secret bits (secrets.token_bytes in
a real run: whoever could predict the noise could subtract it) or by a key made from `dp-seed`
(reproducible experiments, no privacy). Block b of a stream is ChaCha20's key stream at the
16-byte counter‖nonce (b as a 64-bit little-endian counter, the stream number, 0): OpenSSL's
layout, which `cryptography` (a dependency of flwr) exposes, and fed/noise.ts's (its test checks
it against OpenSSL). Each 64-byte block gives eight 53-bit integers (two 32-bit words each,
k = (w0 >> 5)·2^26 + (w1 >> 6)), paired by Box–Muller into eight normals:
radius = √(−2·ln((k0 + 1)/2^53)), angle = 2π·k1/2^53, then radius·cos, radius·sin. ln, cos and
sin are rounded correctly (rounded_math.py), as Deno's Math functions are; every other operation
is the same float64 operation in the same order.
"""

import math
import re
import secrets
import struct

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from . import rounded_math

# fed/noise.ts NOISE_STREAM: the stream (nonce word) of the DP noise under a key.
NOISE_STREAM = 0
UNIFORMS_PER_BLOCK = 8
TWO_POW_53 = 2**53


def secure_key() -> str:
    """A fresh key: 256 bits of the operating system's cryptographic randomness, as hex."""
    return secrets.token_bytes(32).hex()


def seed_key(seed: int) -> str:
    """A reproducible key (fed/noise.ts seedKey): the seed's 4 bytes, little-endian, then zeros."""
    return (struct.pack("<I", seed % 2**32) + bytes(28)).hex()


def noise_key(seed: int | None) -> str:
    """The DP noise key of a run (fed/guard.ts noiseKey): from `dp-seed` when given (tests and
    reproducible experiments: no privacy), else a secret one."""
    return secure_key() if seed is None else seed_key(seed)


def block_integers(key: str, stream: int, first: int, count: int) -> np.ndarray:
    """Blocks first..first+count−1 of `stream` under `key` as their eight 53-bit integers each
    (count × 8, int64)."""
    nonce = struct.pack("<QII", first, stream, 0)
    encryptor = Cipher(algorithms.ChaCha20(bytes.fromhex(key), nonce), mode=None).encryptor()
    words = np.frombuffer(encryptor.update(bytes(64 * count)), dtype="<u4").astype(np.int64)
    pairs = words.reshape(count, UNIFORMS_PER_BLOCK, 2)
    return (pairs[:, :, 0] >> 5) * 67108864 + (pairs[:, :, 1] >> 6)


def block_normals(integers) -> list[float]:
    """One block's eight normals from its eight integers (fed/noise.ts GaussianNoise#fill)."""
    normals = []
    for p in range(UNIFORMS_PER_BLOCK // 2):
        k0, k1 = int(integers[2 * p]), int(integers[2 * p + 1])
        radius = math.sqrt(-2 * rounded_math.log((k0 + 1) / TWO_POW_53))
        cos, sin = rounded_math.cos_sin(2 * math.pi * k1 / TWO_POW_53)
        normals += [radius * cos, radius * sin]
    return normals


class GaussianNoise:
    """N(0, 1) samples, deterministic given the key and the number already drawn."""

    def __init__(self, key: str, drawn: int = 0) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            raise ValueError(f'noise state: key "{key}" is not 64 lowercase hex digits')
        if isinstance(drawn, bool) or not isinstance(drawn, int) or drawn < 0:
            raise ValueError(f"noise state: drawn = {drawn!r} is not a count")
        self.key = key
        self.drawn = drawn

    def state(self) -> dict:
        """{key, drawn}: what fed/noise.ts NoiseState holds."""
        return {"key": self.key, "drawn": self.drawn}

    def take(self, count: int) -> np.ndarray:
        """The next `count` samples, float64, in the order fed/noise.ts's next() gives them."""
        if count == 0:
            return np.zeros(0)
        first = self.drawn // UNIFORMS_PER_BLOCK
        last = (self.drawn + count - 1) // UNIFORMS_PER_BLOCK
        integers = block_integers(self.key, NOISE_STREAM, first, last - first + 1)
        normals = [x for block in integers for x in block_normals(block)]
        skip = self.drawn % UNIFORMS_PER_BLOCK
        self.drawn += count
        return np.array(normals[skip : skip + count], dtype=np.float64)
