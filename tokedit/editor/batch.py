"""Edit one batch of documents from its scores: flat numpy arrays, no per-token Python.

:meth:`ScoreBatch.from_table` flattens a scores table (see ``SCORES_SCHEMA``) into flat arrays;
:func:`draw_batch` draws a replacement for every position above the lowest threshold
(one vectorised call for the whole batch); :func:`apply_draws` keeps, for one threshold, the
positions above it and splices those whose draw differs from the original token. Only the
changed positions (a small share) are touched one by one, to check their spans and render
their replacements. Drawing once and applying per threshold is what lets a sweep
``--p 0.9,0.99,0.999`` read the scores once: a position's draw does not depend on ``p``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tokedit.editor.rng import position_uniforms
from tokedit.editor.rules import EditRule, above_threshold, below_threshold, draw
from tokedit.editor.splice import Renderer, align_span
from tokedit.io.scores_dir import ID, LOGPROB, OFFSETS, STATUS, TOKEN_IDS, TOPK_IDS, TOPK_LOGPROBS

# Why an above-threshold position whose draw differs from the original was left unchanged.
SKIP_REASONS = ("span", "render", "no_candidate")

EDIT_FIELDS = ("pos", "char_start", "char_end", "orig_id", "new_id")
# int64: the type JSON lines read back as, so parquet and jsonl outputs have one schema.
EDITS_TYPE = pa.list_(pa.struct([(name, pa.int64()) for name in EDIT_FIELDS]))


def _list_parts(arr) -> tuple[np.ndarray, pa.Array]:
    """Zero-based int64 offsets and the values of a (possibly sliced or chunked) list array."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    off = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.slice(off[0], off[-1] - off[0])
    return off - off[0], values


def _numpy(values: pa.Array, dtype, fill=None) -> np.ndarray:
    if fill is not None and values.null_count:
        values = pc.fill_null(values, fill)
    return values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)


@dataclass
class ScoreBatch:
    """The scores of consecutive rows as flat arrays; positions are global in the batch."""

    ids: list[str]
    statuses: list[str]
    row_offsets: np.ndarray  # int64 [R+1]; row r holds positions row_offsets[r]:row_offsets[r+1]
    token_ids: np.ndarray  # int32 [N]
    starts: np.ndarray  # int64 [N]: partition char starts (token i ends where i+1 starts)
    logprob: np.ndarray  # float32 [N]; NaN where the token has no context
    cand_offsets: np.ndarray  # int64 [N+1] into cand_ids / cand_lp
    cand_ids: np.ndarray  # int32 [C]
    cand_lp: np.ndarray  # float32 [C]

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_table(cls, table: pa.Table) -> ScoreBatch:
        row_offsets, tok = _list_parts(table.column(TOKEN_IDS))
        _, starts = _list_parts(table.column(OFFSETS))
        _, lp = _list_parts(table.column(LOGPROB))
        _, kids = _list_parts(table.column(TOPK_IDS))
        _, klps = _list_parts(table.column(TOPK_LOGPROBS))
        cand_offsets, cand_ids = _list_parts(kids)
        _, cand_lp = _list_parts(klps)
        return cls(
            ids=table.column(ID).to_pylist(),
            statuses=table.column(STATUS).to_pylist(),
            row_offsets=row_offsets,
            token_ids=_numpy(tok, np.int32),
            starts=_numpy(starts, np.int64),
            logprob=_numpy(lp, np.float32, fill=float("nan")),
            cand_offsets=cand_offsets,
            cand_ids=_numpy(cand_ids, np.int32),
            cand_lp=_numpy(cand_lp, np.float32),
        )

    def row_of(self, pos: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.row_offsets, pos, side="right") - 1

    def candidates(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidates of positions ``pos`` as padded ``[m, K]`` ids, log-probs and a valid mask."""
        first = self.cand_offsets[pos]
        counts = self.cand_offsets[pos + 1] - first
        k = int(counts.max()) if len(pos) else 0
        if k == 0:
            shape = (len(pos), 1)
            return np.zeros(shape, np.int32), np.zeros(shape, np.float32), np.zeros(shape, bool)
        cols = np.arange(k)
        if counts.min() == k:  # the usual case: every position has all k candidates
            idx = first[:, None] + cols
            return self.cand_ids[idx], self.cand_lp[idx], np.ones(idx.shape, bool)
        valid = cols[None, :] < counts[:, None]
        idx = np.where(valid, first[:, None] + cols[None, :], 0)
        return self.cand_ids[idx], self.cand_lp[idx], valid


@dataclass
class Draws:
    """Replacements drawn for the positions above the lowest threshold of a run."""

    pos: np.ndarray  # int64, ascending global positions
    new_ids: np.ndarray  # int32; -1 where no candidate could be drawn


def draw_batch(
    sb: ScoreBatch, keys: np.ndarray, p: float, rule: EditRule, banned: np.ndarray
) -> Draws:
    """Draw from the stored candidates at every position with ``P > p`` (``keys``: one per row)."""
    pos = np.flatnonzero(above_threshold(sb.logprob, p))
    rows = sb.row_of(pos)
    u = position_uniforms(keys[rows], pos - sb.row_offsets[rows])
    ids, lp, valid = sb.candidates(pos)
    return Draws(pos, draw(ids, lp, valid, sb.token_ids[pos], u, rule, banned))


@dataclass
class EditedBatch:
    """The result of one threshold on one batch: texts, per-row counts, edits, totals."""

    texts: list[str | None]  # edited text; None where the row is unchanged
    n_above: np.ndarray  # int32 [R]
    n_changed: np.ndarray  # int32 [R]
    n_skipped: np.ndarray  # int32 [R]
    n_deleted: np.ndarray  # int32 [R]: tokens cut out (P < drop_below)
    edit_offsets: np.ndarray  # int32 [R+1] into the edit arrays
    edits: dict[str, np.ndarray]  # EDIT_FIELDS -> int32 [E]
    counts: dict = field(default_factory=dict)

    def edits_array(self) -> pa.Array:
        """``list<struct<pos, char_start, char_end, orig_id, new_id>>``, one list per row
        (``new_id`` -1: the token was deleted)."""
        values = pa.StructArray.from_arrays(
            [pa.array(self.edits[f], pa.int32()) for f in EDIT_FIELDS], names=list(EDIT_FIELDS)
        )
        return pa.ListArray.from_arrays(pa.array(self.edit_offsets, pa.int32()), values).cast(
            EDITS_TYPE
        )

    def edits_lists(self) -> list[list[dict]]:
        """The same edits as Python lists of dicts (for JSON lines)."""
        cols = {f: self.edits[f].tolist() for f in EDIT_FIELDS}
        off = self.edit_offsets.tolist()
        return [
            [{f: cols[f][j] for f in EDIT_FIELDS} for j in range(off[r], off[r + 1])]
            for r in range(len(off) - 1)
        ]


def apply_draws(
    sb: ScoreBatch,
    texts: list[str],
    draws: Draws,
    p: float,
    renderer: Renderer,
    drop_below: float = 0.0,
) -> EditedBatch:
    """Splice the draws of positions with ``P > p`` into ``texts`` (one text per row), and
    cut out the tokens with ``P < drop_below`` (an edit with ``new_id`` -1 and empty text).

    A position with no log-prob (the first token without BOS) is never changed or deleted.
    """
    n_rows = len(sb)
    sel = above_threshold(sb.logprob[draws.pos], p)
    pos, new = draws.pos[sel], draws.new_ids[sel]
    rows = sb.row_of(pos)
    orig = sb.token_ids[pos]
    no_candidate = new < 0
    want = ~no_candidate & (new != orig)
    # Deletions (a position cannot be both: drop_below < p is checked by the caller, and a
    # position above p is never deleted here).
    dpos = np.flatnonzero(below_threshold(sb.logprob, drop_below))
    if len(dpos) and len(pos):
        dpos = dpos[~np.isin(dpos, pos)]
    wpos = np.concatenate([pos[want], dpos])
    wnew = np.concatenate([new[want], np.full(len(dpos), -1, np.int32)]).astype(np.int32)
    order = np.argsort(wpos, kind="stable")
    wpos, wnew = wpos[order], wnew[order]
    is_del = wnew < 0
    wrow = sb.row_of(wpos)
    worig = sb.token_ids[wpos]
    next_row_start = sb.row_offsets[wrow + 1]
    text_len = np.fromiter((len(t) for t in texts), dtype=np.int64, count=n_rows)
    starts = sb.starts[wpos]
    ends = np.where(
        wpos + 1 < next_row_start,
        sb.starts[np.minimum(wpos + 1, len(sb.starts) - 1)],
        text_len[wrow],
    )
    tokpos = wpos - sb.row_offsets[wrow]

    # The few changed positions, one by one: verify the original span, render the new token,
    # and splice each edited row from untouched slices and replacements in the same pass.
    at_start = tokpos == 0
    orig_texts = renderer.render_many(worig, at_start)
    new_texts = [""] * len(wpos)
    if (~is_del).any():
        rendered = renderer.render_many(wnew[~is_del], at_start[~is_del])
        for j, t in zip(np.flatnonzero(~is_del).tolist(), rendered, strict=True):
            new_texts[j] = t
    starts_l, ends_l = starts.tolist(), ends.tolist()
    accepted = np.zeros(len(wpos), dtype=bool)
    bad_span = np.zeros(len(wpos), dtype=bool)
    skipped_render = 0
    out_texts: list[str | None] = [None] * n_rows
    row, text, last, parts = -1, "", 0, []
    for j, r in enumerate(wrow.tolist()):
        if r != row:
            if parts:
                parts.append(text[last:])
                out_texts[row] = "".join(parts)
            row, text, last, parts = r, texts[r], 0, []
        s, e, orig_text = starts_l[j], ends_l[j], orig_texts[j]
        if orig_text is None:
            bad_span[j] = True
            continue
        if e - s != len(orig_text) or not text.startswith(orig_text, s):
            # rare: trimmed offsets, tokens sharing a character, offsets of another text
            span = align_span(text, s, e, orig_text)
            if span is None:
                bad_span[j] = True
                continue
            s, e = span
            starts[j], ends[j] = span
        if s < last:
            bad_span[j] = True
            continue
        piece = new_texts[j]
        if piece is None:
            skipped_render += 1
            continue
        accepted[j] = True
        parts.append(text[last:s])
        parts.append(piece)
        last = e
    if parts:
        parts.append(text[last:])
        out_texts[row] = "".join(parts)

    replaced, deleted = accepted & ~is_del, accepted & is_del
    skipped_span = int(np.count_nonzero(bad_span & ~is_del))
    n_changed = np.bincount(wrow[replaced], minlength=n_rows).astype(np.int32)
    n_deleted = np.bincount(wrow[deleted], minlength=n_rows).astype(np.int32)
    n_skipped = (
        np.bincount(rows[no_candidate], minlength=n_rows)
        + np.bincount(wrow[~accepted & ~is_del], minlength=n_rows)
    ).astype(np.int32)
    edit_offsets = np.zeros(n_rows + 1, dtype=np.int32)
    np.cumsum(n_changed + n_deleted, out=edit_offsets[1:])
    edits = {
        "pos": tokpos[accepted].astype(np.int32),
        "char_start": starts[accepted].astype(np.int32),
        "char_end": ends[accepted].astype(np.int32),
        "orig_id": worig[accepted].astype(np.int32),
        "new_id": wnew[accepted].astype(np.int32),
    }
    ok_rows = np.diff(sb.row_offsets) > 0
    counts = {
        "documents": n_rows,
        "documents_changed": int(np.count_nonzero(n_changed + n_deleted)),
        "tokens": int(len(sb.token_ids)),
        "scored": int(np.count_nonzero(~np.isnan(sb.logprob))),
        "chars": int(text_len[ok_rows].sum()),
        "above": int(len(pos)),
        "drawn_original": int(np.count_nonzero(~no_candidate & (new == orig))),
        "changed": int(replaced.sum()),
        "skipped": {
            "span": skipped_span,
            "render": skipped_render,
            "no_candidate": int(no_candidate.sum()),
        },
        "below": int(len(dpos)),
        "deleted": int(deleted.sum()),
        "deleted_chars": int((ends[deleted] - starts[deleted]).sum()),
        "delete_skipped": int(np.count_nonzero(is_del & ~accepted)),
    }
    return EditedBatch(
        texts=out_texts,
        n_above=np.bincount(rows, minlength=n_rows).astype(np.int32),
        n_changed=n_changed,
        n_skipped=n_skipped,
        n_deleted=n_deleted,
        edit_offsets=edit_offsets,
        edits=edits,
        counts=counts,
    )
