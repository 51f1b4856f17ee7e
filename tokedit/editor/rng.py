"""The per-document random numbers of the editor: the one place where randomness is seeded.

Every token position gets one uniform number in [0, 1), a pure function of
(``seed``, document id, token position). A document's key is the first 8 bytes of
``sha256(seed, id)``; position ``i``'s number is output ``i`` of the SplitMix64 stream started
at that key (the generator behind Java's ``SplittableRandom``), computed for all positions at
once with numpy. So a draw does not depend on batch size, shard order, number of processes,
which other positions are edited, the threshold ``p`` of a sweep, or whether the
probabilities come from a scores directory or from a model in the same pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def doc_key(seed: int, doc_id: str) -> int:
    """64-bit key of one document: ``sha256("tokedit-edit", seed, id)``'s first 8 bytes."""
    h = hashlib.sha256(f"tokedit-edit\0{int(seed)}\0".encode())
    h.update(doc_id.encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest()[:8], "little")


def doc_keys(seed: int, doc_ids: Sequence[str]) -> np.ndarray:
    """``doc_key`` of every id, as a uint64 array."""
    return np.fromiter((doc_key(seed, d) for d in doc_ids), dtype=np.uint64, count=len(doc_ids))


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def position_uniforms(keys: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) float64 for each (document key, token position) pair (arrays of one length)."""
    keys = np.asarray(keys, dtype=np.uint64)
    pos = np.asarray(positions).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = _mix(keys + (pos + np.uint64(1)) * _GAMMA)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
