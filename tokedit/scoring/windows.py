"""Pure planning of windows and batches (no model, no files).

A document is the token sequence ``seq`` (a BOS first when ``--bos`` resolves to one). Position
``p >= 1`` is scored as ``log P(seq[p] | seq[:p])``. Documents longer than ``max_len`` are
cut into overlapping windows such that every position is scored exactly once and, beyond
the first window, with at least ``overlap`` tokens of real context. Nothing is truncated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    doc: int  # index of the document in its batch
    start: int  # first sequence position fed to the model
    end: int  # one past the last position fed to the model
    score_from: int  # first position scored by this window (earlier ones are context)

    @property
    def length(self) -> int:
        return self.end - self.start


def plan_windows(seq_len: int, max_len: int, overlap: int, doc: int = 0) -> list[Window]:
    """Windows covering positions ``1 .. seq_len-1`` once each.

    >>> [(w.start, w.end, w.score_from) for w in plan_windows(10, 4, 2)]
    [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    """
    if not 1 <= overlap < max_len:
        # A window's first scored token is predicted from the token before it: overlap >= 1.
        raise ValueError(
            f"overlap must be in [1, max_len), got overlap={overlap}, max_len={max_len}"
        )
    if seq_len <= 1:
        return []
    windows = [Window(doc, 0, min(seq_len, max_len), 1)]
    while windows[-1].end < seq_len:
        score_from = windows[-1].end
        start = score_from - overlap
        windows.append(Window(doc, start, min(start + max_len, seq_len), score_from))
    return windows


def plan_batches(
    windows: list[Window], batch_tokens: int, *, pack: bool = False
) -> list[list[Window]]:
    """Group windows into batches of similar length that fit ``batch_tokens`` positions.

    Windows are sorted by length (longest first, ties by document order for determinism).
    Unpacked (``pack=False``), a batch has one window per row, padded to its longest, with
    ``rows * longest <= batch_tokens``: padding is only the difference between neighbours in
    that order. Packed, a batch's windows share rows of its longest window's length
    (:func:`pack_rows`) and ``rows * longest <= batch_tokens``. A window longer than
    ``batch_tokens`` gets a batch of its own.
    """
    order = sorted(range(len(windows)), key=lambda i: (-windows[i].length, i))
    batches: list[list[Window]] = []
    current: list[Window] = []
    longest = 0
    free: list[int] = []  # packed: the room left in each row of the current batch
    for i in order:
        w = windows[i]
        if pack:
            if current:
                row = next((r for r, room in enumerate(free) if room >= w.length), None)
                if row is not None:
                    free[row] -= w.length
                    current.append(w)
                    continue
                if longest * (len(free) + 1) > batch_tokens:
                    batches.append(current)
                    current, free = [], []
            if not current:
                longest = w.length
            free.append(longest - w.length)
            current.append(w)
            continue
        new_longest = max(longest, w.length)
        if current and new_longest * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, new_longest = [], w.length
        current.append(w)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


@dataclass(frozen=True)
class Layout:
    """Where a batch's windows sit in the ``[n_rows, width]`` input: window ``i`` fills
    ``row[i], col[i] : col[i] + length``."""

    row: np.ndarray  # int64 [windows]
    col: np.ndarray  # int64 [windows]
    n_rows: int
    width: int


def pack_rows(lengths: np.ndarray, width: int) -> Layout:
    """First fit, in the given order, of windows of ``lengths`` into rows of ``width``.

    >>> l = pack_rows(np.array([6, 4, 3, 2, 1]), 6)
    >>> l.row.tolist(), l.col.tolist(), l.n_rows
    ([0, 1, 2, 1, 2], [0, 0, 0, 4, 3], 3)
    """
    row = np.zeros(len(lengths), dtype=np.int64)
    col = np.zeros(len(lengths), dtype=np.int64)
    used: list[int] = []
    for i, n in enumerate(lengths.tolist()):
        r = next((r for r, u in enumerate(used) if u + n <= width), None)
        if r is None:
            r = len(used)
            used.append(0)
        row[i], col[i] = r, used[r]
        used[r] += n
    return Layout(row, col, len(used), width)


def batch_layout(windows: list[Window], *, pack: bool) -> Layout:
    """The layout of one batch of :func:`plan_batches`: packed rows, or a row per window."""
    lengths = np.fromiter((w.length for w in windows), np.int64, len(windows))
    width = int(lengths.max())
    if pack:
        return pack_rows(lengths, width)
    return Layout(np.arange(len(windows)), np.zeros(len(windows), np.int64), len(windows), width)


def padding_stats(batches: list[list[Window]], *, pack: bool = False) -> tuple[int, int, int]:
    """(computed positions, of which padding, of which context) over ``batches``.

    Context positions are fed to the model but not scored: a document's first position and
    the ``overlap`` positions every window after the first recomputes. Computed positions
    = scored + context + padding.
    """
    computed = 0
    for b in batches:
        layout = batch_layout(b, pack=pack)
        computed += layout.n_rows * layout.width
    real = sum(w.length for b in batches for w in b)
    scored = sum(w.end - w.score_from for b in batches for w in b)
    return computed, computed - real, real - scored


def partition_starts(offset_pairs: np.ndarray) -> np.ndarray:
    """Char starts that make the tokens a partition of the text.

    ``offset_pairs`` is the tokenizer's ``[n, 2]`` (start, end) mapping. Tokenizers may trim
    a leading space out of a token's span (``trim_offsets``) or give several byte-level
    tokens of one multi-byte character the same span; neither is a partition. Here token
    ``i`` starts where token ``i-1`` ended (the first at 0), so token ``i``'s text is
    ``text[starts[i]:starts[i+1]]`` (the last one ends at ``len(text)``): characters that
    no span covers (a trimmed space) belong to the token after them, and a token that shares
    a character with its predecessor gets an empty span (the editor never splices those).
    """
    n = len(offset_pairs)
    starts = np.zeros(n, dtype=np.int32)
    if n > 1:
        starts[1:] = np.maximum.accumulate(offset_pairs[:-1, 1])
    return starts
