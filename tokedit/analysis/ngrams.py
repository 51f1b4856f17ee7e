"""Vectorised n-gram counting over integer unit ids, and the metrics computed from the counts.

A corpus arrives as flat ``uint32`` unit ids (model token ids or word ids) with per-document
lengths; n-grams never cross a document boundary. Each n-gram becomes one ``uint64`` key:

* **packed** (exact) when ``n * bits <= 64``: the ids side by side, ``bits`` per id, first id
  in the high bits, so key order is the lexicographic order of the id tuples;
* **hashed** otherwise (large vocabularies, e.g. word ids at 32 bits for n >= 3): a 64-bit
  mix of the ids (murmur3 finaliser chained over the ids). Two distinct n-grams share a key
  with probability about ``D**2 / 2**65`` for ``D`` distinct n-grams (< 3e-4 for 1e8). The
  id tuple of each distinct key is kept beside it, so counts stay decodable.

Counting never loops over tokens in Python: keys are built with numpy shifts / multiplies,
buffered, sorted with ``np.sort`` (or ``argsort`` when hashed) and run-length encoded, then
merged into the sorted table of distinct keys with ``searchsorted`` + ``insert``. Memory is
the table of distinct n-grams plus a fixed-size buffer, not the corpus.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_N = 4
BUFFER_KEYS = 1 << 21  # raw keys buffered per counter before a merge (16 MiB)

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S33 = np.uint64(33)


def _fmix64(x: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser, in place on a uint64 array (wrapping arithmetic)."""
    x ^= x >> _S33
    x *= _M1
    x ^= x >> _S33
    x *= _M2
    x ^= x >> _S33
    return x


def id_bits(vocab_size: int) -> int:
    """Bits needed for ids ``0 .. vocab_size - 1`` (at least 1)."""
    return max(1, int(vocab_size - 1).bit_length())


def valid_starts(lengths: np.ndarray, n: int) -> np.ndarray:
    """Flat start positions of all n-grams that lie inside one document."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total < n:
        return np.empty(0, dtype=np.int64)
    if n == 1:
        return np.arange(total, dtype=np.int64)
    ends = np.cumsum(lengths)
    doc_end = np.repeat(ends, lengths)[: total - n + 1]
    starts = np.arange(total - n + 1, dtype=np.int64)
    return starts[starts + n <= doc_end]


@dataclass(frozen=True)
class KeyCodec:
    """How the n-grams of ids below ``2**bits`` map to uint64 keys."""

    n: int
    bits: int

    @property
    def packed(self) -> bool:
        return self.n * self.bits <= 64

    @property
    def encoding(self) -> str:
        return "packed" if self.packed else "hashed"

    def encode(self, ids: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Keys of the n-grams starting at ``starts`` of the flat id array ``ids``."""
        ids64 = ids.astype(np.uint64, copy=False)
        if self.packed:
            key = ids64[starts].copy()
            shift = np.uint64(self.bits)
            for k in range(1, self.n):
                key <<= shift
                key |= ids64[starts + k]
            return key
        key = ids64[starts] + _GOLDEN
        _fmix64(key)
        for k in range(1, self.n):
            key *= _GOLDEN
            key += ids64[starts + k] + np.uint64(k + 1)
            _fmix64(key)
        return key

    def decode(self, keys: np.ndarray) -> np.ndarray:
        """``[len(keys), n]`` uint32 ids of packed keys."""
        if not self.packed:
            raise ValueError("hashed keys are decoded through the table's id rows")
        keys = np.asarray(keys, dtype=np.uint64)
        out = np.empty((len(keys), self.n), dtype=np.uint32)
        mask = np.uint64((1 << self.bits) - 1) if self.bits < 64 else np.uint64(2**64 - 1)
        for k in range(self.n):
            shift = np.uint64(self.bits * (self.n - 1 - k))
            out[:, k] = (keys >> shift) & mask
        return out


def _run_length(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct keys, their counts and first indices in a sorted key array."""
    if len(sorted_keys) == 0:
        return sorted_keys, np.empty(0, np.int64), np.empty(0, np.int64)
    first = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
    counts = np.diff(np.append(first, len(sorted_keys))).astype(np.int64)
    return sorted_keys[first], counts, first


def merge_counts(
    keys: np.ndarray,
    counts: np.ndarray,
    rows: np.ndarray | None,
    new_keys: np.ndarray,
    new_counts: np.ndarray,
    new_rows: np.ndarray | None,
):
    """Merge two sorted, distinct key tables (and their id rows, when hashed)."""
    if len(keys) == 0:
        return new_keys, new_counts, new_rows
    idx = np.searchsorted(keys, new_keys)
    found = idx < len(keys)
    found[found] = keys[idx[found]] == new_keys[found]
    counts = counts.copy()
    counts[idx[found]] += new_counts[found]  # new keys are distinct: no index repeats
    fresh = ~found
    at = idx[fresh]
    keys = np.insert(keys, at, new_keys[fresh])
    counts = np.insert(counts, at, new_counts[fresh])
    if rows is not None:
        rows = np.insert(rows, at, new_rows[fresh], axis=0)
    return keys, counts, rows


@dataclass
class NgramTable:
    """Distinct n-grams of a corpus: sorted ``keys``, their ``counts`` and, when hashed, ``rows``."""

    codec: KeyCodec
    keys: np.ndarray  # uint64, sorted, distinct
    counts: np.ndarray  # int64
    rows: np.ndarray | None = None  # uint32 [distinct, n], only for hashed keys

    @property
    def n(self) -> int:
        return self.codec.n

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def distinct(self) -> int:
        return len(self.keys)

    def ids(self, index: np.ndarray) -> np.ndarray:
        """``[len(index), n]`` ids of the n-grams at ``index``."""
        if self.rows is not None:
            return self.rows[index]
        return self.codec.decode(self.keys[index])

    def top(self, k: int) -> np.ndarray:
        """Indices of the ``k`` most frequent n-grams (ties: smaller key first)."""
        d = self.distinct
        k = min(k, d)
        if k == 0:
            return np.empty(0, np.int64)
        kth = np.partition(self.counts, d - k)[d - k]
        cand = np.flatnonzero(self.counts >= kth)
        order = np.lexsort((self.keys[cand], -self.counts[cand]))
        return cand[order[:k]]


class NgramCounter:
    """Streaming counter of the n-grams of one order ``n``; feed batches, then ``finish()``."""

    def __init__(self, n: int, bits: int, buffer_keys: int = BUFFER_KEYS):
        if not 1 <= n <= MAX_N:
            raise ValueError(f"n must be in 1..{MAX_N}")
        self.codec = KeyCodec(n, bits)
        self.buffer_keys = buffer_keys
        self._keys = np.empty(0, np.uint64)
        self._counts = np.empty(0, np.int64)
        self._rows = None if self.codec.packed else np.empty((0, n), np.uint32)
        self._buf: list[np.ndarray] = []
        self._buf_rows: list[np.ndarray] = []
        self._buffered = 0

    def add(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        """Count the n-grams of documents given as flat ``ids`` and per-document ``lengths``."""
        starts = valid_starts(lengths, self.codec.n)
        if len(starts) == 0:
            return
        self._buf.append(self.codec.encode(ids, starts))
        if not self.codec.packed:
            self._buf_rows.append(
                np.stack([ids[starts + k] for k in range(self.codec.n)], axis=1).astype(np.uint32)
            )
        self._buffered += len(starts)
        if self._buffered >= self.buffer_keys:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        raw = np.concatenate(self._buf)
        if self.codec.packed:
            raw.sort()
            keys, counts, _ = _run_length(raw)
            rows = None
        else:
            order = np.argsort(raw)
            keys, counts, first = _run_length(raw[order])
            rows = np.concatenate(self._buf_rows)[order[first]]
        self._buf, self._buf_rows, self._buffered = [], [], 0
        self._keys, self._counts, self._rows = merge_counts(
            self._keys, self._counts, self._rows, keys, counts, rows
        )

    def finish(self) -> NgramTable:
        self._flush()
        return NgramTable(self.codec, self._keys, self._counts, self._rows)


# --- metrics of one table -------------------------------------------------------------------


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy in bits of the empirical distribution ``counts / sum``."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    return float(math.log2(total) - (counts * np.log2(counts)).sum() / total)


def top_mass(counts: np.ndarray, k: int) -> float:
    """Share of all occurrences held by the ``k`` most frequent n-grams."""
    total = counts.sum()
    d = len(counts)
    k = min(k, d)
    if total == 0 or k == 0:
        return 0.0
    return float(np.partition(counts, d - k)[d - k :].sum() / total)


def concentration(table: NgramTable) -> dict:
    """distinct-n, entropy and top-mass shares of one n-gram table (see docs/report.md)."""
    total, d = table.total, table.distinct
    c = table.counts
    top1pct_k = math.ceil(0.01 * d) if d else 0
    return {
        "total": total,
        "distinct": d,
        "distinct_ratio": d / total if total else None,
        "entropy_bits": entropy_bits(c),
        "top1pct_count": top1pct_k,
        "top1pct_share": top_mass(c, top1pct_k) if total else None,
        "top100_share": top_mass(c, 100) if total else None,
        "singleton_share": float((c == 1).sum() / d) if d else None,
    }


def rank_frequency(counts: np.ndarray, points: int = 60) -> dict:
    """Log-spaced (rank, count) points of the sorted count curve, for Zipf plots."""
    d = len(counts)
    if d == 0:
        return {"rank": [], "count": []}
    ranks = np.unique(np.geomspace(1, d, num=min(points, d)).round().astype(np.int64))
    sorted_desc = np.sort(counts)[::-1]
    return {"rank": ranks.tolist(), "count": sorted_desc[ranks - 1].tolist()}


# --- comparisons against a reference table ---------------------------------------------------


def member(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Boolean mask: which ``keys`` occur in the sorted array ``sorted_keys``."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    idx = np.searchsorted(sorted_keys, keys)
    idx[idx == len(sorted_keys)] = 0
    return sorted_keys[idx] == keys


def _align(ref: NgramTable, other: NgramTable):
    """Counts of both tables over the union of their keys (0 where absent)."""
    union = np.union1d(ref.keys, other.keys)
    r = np.zeros(len(union), np.float64)
    c = np.zeros(len(union), np.float64)
    r[np.searchsorted(union, ref.keys)] = ref.counts
    c[np.searchsorted(union, other.keys)] = other.counts
    return r, c


def _kl_bits(p: np.ndarray, q: np.ndarray) -> float:
    nz = p > 0
    return float((p[nz] * np.log2(p[nz] / q[nz])).sum())


def divergences(ref: NgramTable, other: NgramTable, alpha: float) -> dict:
    """KL both ways with add-``alpha`` smoothing over the union support; JS unsmoothed (bits)."""
    if ref.total == 0 or other.total == 0:
        return {"kl_ref_to_corpus": None, "kl_corpus_to_ref": None, "js": None, "support": 0}
    r, c = _align(ref, other)
    u = len(r)
    rs = (r + alpha) / (r.sum() + alpha * u)
    cs = (c + alpha) / (c.sum() + alpha * u)
    p, q = r / r.sum(), c / c.sum()
    m = 0.5 * (p + q)
    return {
        "kl_ref_to_corpus": _kl_bits(rs, cs),
        "kl_corpus_to_ref": _kl_bits(cs, rs),
        "js": 0.5 * _kl_bits(p, m) + 0.5 * _kl_bits(q, m),
        "support": u,
    }


def tail_coverage(ref: NgramTable, other: NgramTable, rare_max_count: int) -> dict:
    """How much of the reference's n-grams, and of its rare tail, the corpus contains."""
    present = member(other.keys, ref.keys)
    rare = ref.counts <= rare_max_count
    n_rare = int(rare.sum())
    in_ref = member(ref.keys, other.keys)
    on_tail = member(ref.keys[rare], other.keys)
    tot_o, tot_r = other.total, ref.total
    return {
        "reference_rare": n_rare,
        "rare_coverage": float(present[rare].sum() / n_rare) if n_rare else None,
        "tail_mass": float(other.counts[on_tail].sum() / tot_o) if tot_o else None,
        "reference_tail_mass": float(ref.counts[rare].sum() / tot_r) if tot_r else None,
        "distinct_coverage": float(present.mean()) if ref.distinct else None,
        "reference_mass_covered": float(ref.counts[present].sum() / tot_r) if tot_r else None,
        "novel_mass": float(other.counts[~in_ref].sum() / tot_o) if tot_o else None,
    }
