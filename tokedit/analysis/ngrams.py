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
from functools import cached_property

import numpy as np

MAX_N = 4
BUFFER_KEYS = 1 << 22  # raw keys buffered per counter before a merge (32 MiB)

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
    n = len(sorted_keys)
    if n == 0:
        return sorted_keys, np.empty(0, np.int64), np.empty(0, np.int64)
    change = np.empty(n, dtype=bool)
    change[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=change[1:])
    first = np.flatnonzero(change)
    counts = np.empty(len(first), dtype=np.int64)
    np.subtract(first[1:], first[:-1], out=counts[:-1])
    counts[-1] = n - first[-1]
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
    # the j-th fresh key lands at (its insertion point in the old table) + j
    dest = idx[fresh] + np.arange(int(fresh.sum()))
    old = np.ones(len(keys) + len(dest), dtype=bool)
    old[dest] = False

    def place(a, b):
        out = np.empty((len(old),) + a.shape[1:], dtype=a.dtype)
        out[old] = a
        out[dest] = b
        return out

    keys = place(keys, new_keys[fresh])
    counts = place(counts, new_counts[fresh])
    if rows is not None:
        rows = place(rows, new_rows[fresh])
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

    @cached_property
    def counts_desc(self) -> np.ndarray:
        """The counts sorted from the largest down (computed once per table)."""
        return np.sort(self.counts)[::-1]

    def top(self, k: int) -> np.ndarray:
        """Indices of the ``k`` most frequent n-grams (ties: smaller key first)."""
        k = min(k, self.distinct)
        if k == 0:
            return np.empty(0, np.int64)
        kth = self.counts_desc[k - 1]
        above = np.flatnonzero(self.counts > kth)
        ties = np.flatnonzero(self.counts == kth)[: k - len(above)]  # keys ascend with index
        cand = np.concatenate([above, ties])
        order = np.lexsort((self.keys[cand], -self.counts[cand]))
        return cand[order]


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
        self.add_starts(ids, valid_starts(lengths, self.codec.n))

    def add_starts(self, ids: np.ndarray, starts: np.ndarray) -> None:
        """Count the n-grams of the flat ``ids`` that start at ``starts``."""
        if len(starts) == 0:
            return
        rows = None
        if not self.codec.packed:
            rows = np.stack([ids[starts + k] for k in range(self.codec.n)], axis=1)
        self.add_keys(self.codec.encode(ids, starts), rows)

    def add_keys(self, keys: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Count already encoded keys (with their id rows when hashed)."""
        self._buf.append(keys)
        if not self.codec.packed:
            self._buf_rows.append(rows.astype(np.uint32, copy=False))
        self._buffered += len(keys)
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


class NgramCounterSet:
    """Counters of every order 1..``max_n`` over the same documents, sharing the work.

    Ids are below ``id_limit``; keys use ``bits = id_bits(id_limit + 1)`` bits per id so that
    the all-ones value ``S`` is free as a padding sentinel. Only the highest *packed* order
    ``m = min(max_n, 64 // bits)`` is sorted and merged: every document is followed by
    ``m - 1`` sentinels and an m-gram starts at every real token. With packed keys the first
    id sits in the high bits, so ``key >> bits`` is the key of an m-gram's first ``m - 1``
    ids; each (m-1)-gram occurrence is the prefix of exactly one (padded) m-gram occurrence,
    and the sorted m-gram table aggregates by prefix (a run length over sorted keys, no sort)
    into the (m-1)-gram table, and so on down to 1. Padding only ever ends a key, so the
    n-grams that are not real are exactly the keys whose last id is ``S``: they are dropped.
    Orders above ``m`` (hashed keys) get their own counters.
    """

    def __init__(self, id_limit: int, max_n: int = MAX_N, buffer_keys: int = BUFFER_KEYS):
        self.bits = id_bits(id_limit + 1)
        if self.bits > 32:
            raise ValueError("ids must fit in 32 bits")
        self.sentinel = (1 << self.bits) - 1
        self.max_n = max_n
        self.top = max(1, min(max_n, 64 // self.bits))
        self.main = NgramCounter(self.top, self.bits, buffer_keys)
        self.hashed = {
            n: NgramCounter(n, self.bits, buffer_keys) for n in range(self.top + 1, max_n + 1)
        }

    def add(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        lengths = np.asarray(lengths, dtype=np.int64)
        pad = self.top - 1
        if pad:
            # every document followed by `pad` sentinels; a key starts at every position
            # (those starting on a sentinel are dropped at the end), built from slices
            pos = np.arange(len(ids), dtype=np.int64)
            pos += np.repeat(np.arange(len(lengths), dtype=np.int64) * pad, lengths)
            padded = np.full(len(ids) + pad * len(lengths), self.sentinel, dtype=np.uint64)
            padded[pos] = ids
            m = len(padded) - pad
            keys = padded[:m].copy()
            shift = np.uint64(self.bits)
            for k in range(1, self.top):
                keys <<= shift
                keys |= padded[k : k + m]
            self.main.add_keys(keys)
        else:
            self.main.add(ids, lengths)
        for counter in self.hashed.values():
            counter.add(ids, lengths)

    def _real(self, table: NgramTable) -> NgramTable:
        """Drop the keys that start or end with the sentinel (padding, never real)."""
        if self.top == 1:
            return table
        s = np.uint64(self.sentinel)
        # keys starting with the sentinel (all ones) are the largest: a block at the end
        end = int(np.searchsorted(table.keys, s << np.uint64(self.bits * (table.n - 1))))
        keys, counts = table.keys[:end], table.counts[:end]
        padded = np.flatnonzero((keys & s) == s)  # a few per document
        return NgramTable(table.codec, np.delete(keys, padded), np.delete(counts, padded))

    def finish(self) -> dict[int, NgramTable]:
        upper = self.main.finish()
        tables = {self.top: self._real(upper)}
        shift = np.uint64(self.bits)
        for n in range(self.top - 1, 0, -1):
            keys, _, first = _run_length(upper.keys >> shift)
            counts = np.add.reduceat(upper.counts, first) if len(first) else upper.counts[:0]
            upper = NgramTable(KeyCodec(n, self.bits), keys, counts)
            tables[n] = self._real(upper)
        for n, counter in self.hashed.items():
            tables[n] = counter.finish()
        return dict(sorted(tables.items()))


# --- metrics of one table -------------------------------------------------------------------


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy in bits of the empirical distribution ``counts / sum``."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    return float(math.log2(total) - (counts * np.log2(counts)).sum() / total)


def concentration(table: NgramTable) -> dict:
    """distinct-n, entropy and top-mass shares of one n-gram table (see docs/report.md)."""
    total, d = table.total, table.distinct
    desc = table.counts_desc
    top1pct_k = math.ceil(0.01 * d) if d else 0
    return {
        "total": total,
        "distinct": d,
        "distinct_ratio": d / total if total else None,
        "entropy_bits": entropy_bits(table.counts),
        "top1pct_count": top1pct_k,
        "top1pct_share": float(desc[:top1pct_k].sum() / total) if total else None,
        "top100_share": float(desc[:100].sum() / total) if total else None,
        "singleton_share": float((table.counts == 1).sum() / d) if d else None,
    }


def rank_frequency(table: NgramTable, points: int = 60) -> dict:
    """Log-spaced (rank, count) points of the sorted count curve, for Zipf plots."""
    d = table.distinct
    if d == 0:
        return {"rank": [], "count": []}
    ranks = np.unique(np.geomspace(1, d, num=min(points, d)).round().astype(np.int64))
    return {"rank": ranks.tolist(), "count": table.counts_desc[ranks - 1].tolist()}


# --- comparisons against a reference table ---------------------------------------------------


def member(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Boolean mask: which ``keys`` occur in the sorted array ``sorted_keys``."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    idx = np.searchsorted(sorted_keys, keys)
    idx[idx == len(sorted_keys)] = 0
    return sorted_keys[idx] == keys


def align(ref: NgramTable, other: NgramTable) -> tuple[np.ndarray, np.ndarray]:
    """Counts of both tables over the sorted union of their keys (0 where absent)."""
    if other is ref:
        return ref.counts, ref.counts
    union = np.concatenate([ref.keys, other.keys])
    union.sort()
    union, _, _ = _run_length(union)
    r = np.zeros(len(union), np.int64)
    c = np.zeros(len(union), np.int64)
    r[np.searchsorted(union, ref.keys)] = ref.counts
    c[np.searchsorted(union, other.keys)] = other.counts
    return r, c


def _kl_bits(p: np.ndarray, q: np.ndarray) -> float:
    nz = p > 0
    return float((p[nz] * np.log2(p[nz] / q[nz])).sum())


def compare(
    ref: NgramTable, other: NgramTable, rare_max_count: int, alpha: float | None = None
) -> dict:
    """Tail coverage of ``other`` against ``ref`` and, with ``alpha``, KL / JS divergences.

    Both tables are aligned once over the union of their keys; every number is then a sum
    over that union (definitions in docs/report.md).
    """
    r, c = align(ref, other)
    tot_r, tot_o = int(r.sum()), int(c.sum())
    in_ref, in_other = r > 0, c > 0
    rare = in_ref & (r <= rare_max_count)
    n_rare = int(rare.sum())
    out = {
        "reference_rare": n_rare,
        "rare_coverage": float((rare & in_other).sum() / n_rare) if n_rare else None,
        "tail_mass": float(c[rare].sum() / tot_o) if tot_o else None,
        "reference_tail_mass": float(r[rare].sum() / tot_r) if tot_r else None,
        "distinct_coverage": float((in_ref & in_other).sum() / in_ref.sum()) if tot_r else None,
        "reference_mass_covered": float(r[in_other].sum() / tot_r) if tot_r else None,
        "novel_mass": float(c[~in_ref].sum() / tot_o) if tot_o else None,
    }
    if alpha is not None:
        out.update(_divergences(r, c, alpha))
    return out


def _divergences(r: np.ndarray, c: np.ndarray, alpha: float) -> dict:
    """KL both ways with add-``alpha`` smoothing over the union support; JS unsmoothed (bits)."""
    tot_r, tot_o, u = r.sum(), c.sum(), len(r)
    if tot_r == 0 or tot_o == 0:
        return {"kl_ref_to_corpus": None, "kl_corpus_to_ref": None, "js": None, "support": u}
    rs = (r + alpha) / (tot_r + alpha * u)
    cs = (c + alpha) / (tot_o + alpha * u)
    p, q = r / tot_r, c / tot_o
    m = 0.5 * (p + q)
    return {
        "kl_ref_to_corpus": _kl_bits(rs, cs),
        "kl_corpus_to_ref": _kl_bits(cs, rs),
        "js": 0.5 * _kl_bits(p, m) + 0.5 * _kl_bits(q, m),
        "support": u,
    }
