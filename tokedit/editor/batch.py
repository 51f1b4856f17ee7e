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
    above = _above(sb, draws, p)
    dpos = _deletions(sb, above.pos, drop_below)
    text_len = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(sb))
    writes = _writes(sb, above, dpos, text_len)
    spliced = _splice_rows(texts, writes, renderer)
    return _edited_batch(sb, above, writes, spliced, text_len, n_below=len(dpos))


@dataclass
class _Above:
    """The draws of one threshold: the positions with ``P > p`` and what was drawn there."""

    pos: np.ndarray  # int64 global positions
    new: np.ndarray  # int32 drawn ids; -1: no candidate
    rows: np.ndarray  # the row of each position
    orig: np.ndarray  # the original token ids
    no_candidate: np.ndarray  # bool
    want: np.ndarray  # bool: drawn another token than the original


def _above(sb: ScoreBatch, draws: Draws, p: float) -> _Above:
    sel = above_threshold(sb.logprob[draws.pos], p)
    pos, new = draws.pos[sel], draws.new_ids[sel]
    rows = sb.row_of(pos)
    orig = sb.token_ids[pos]
    no_candidate = new < 0
    want = ~no_candidate & (new != orig)
    return _Above(pos, new, rows, orig, no_candidate, want)


def _deletions(sb: ScoreBatch, above_pos: np.ndarray, drop_below: float) -> np.ndarray:
    """The positions with ``P < drop_below``. A position cannot be both deleted and redrawn:
    ``drop_below < p`` is checked by the caller, and a position above ``p`` is never deleted."""
    dpos = np.flatnonzero(below_threshold(sb.logprob, drop_below))
    if len(dpos) and len(above_pos):
        dpos = dpos[~np.isin(dpos, above_pos)]
    return dpos


@dataclass
class _Writes:
    """The positions to splice, ascending: replacements, and deletions (``new`` -1)."""

    pos: np.ndarray  # global positions
    new: np.ndarray  # int32
    is_del: np.ndarray  # bool
    row: np.ndarray
    orig: np.ndarray  # the original token ids
    tokpos: np.ndarray  # the position in the row
    starts: np.ndarray  # char spans in the row's text (aligned in place by the splice)
    ends: np.ndarray


def _writes(sb: ScoreBatch, above: _Above, dpos: np.ndarray, text_len: np.ndarray) -> _Writes:
    """The replacements and deletions merged in position order, with their char spans."""
    wpos = np.concatenate([above.pos[above.want], dpos])
    wnew = np.concatenate([above.new[above.want], np.full(len(dpos), -1, np.int32)]).astype(
        np.int32
    )
    order = np.argsort(wpos, kind="stable")
    wpos, wnew = wpos[order], wnew[order]
    wrow = sb.row_of(wpos)
    next_row_start = sb.row_offsets[wrow + 1]
    ends = np.where(
        wpos + 1 < next_row_start,
        sb.starts[np.minimum(wpos + 1, len(sb.starts) - 1)],
        text_len[wrow],
    )
    return _Writes(
        pos=wpos,
        new=wnew,
        is_del=wnew < 0,
        row=wrow,
        orig=sb.token_ids[wpos],
        tokpos=wpos - sb.row_offsets[wrow],
        starts=sb.starts[wpos],
        ends=ends,
    )


@dataclass
class _Spliced:
    """The edited texts (None: row unchanged) and which writes were applied."""

    texts: list[str | None]
    accepted: np.ndarray  # bool per write
    bad_span: np.ndarray  # bool per write: the original token's span was not found
    skipped_render: int  # replacements that render to no text


def _rendered(renderer: Renderer, w: _Writes) -> tuple[list, list]:
    """The text of each write's original token, and of its replacement ("" for a deletion)."""
    at_start = w.tokpos == 0
    orig_texts = renderer.render_many(w.orig, at_start)
    new_texts = [""] * len(w.pos)
    keep = ~w.is_del
    if keep.any():
        rendered = renderer.render_many(w.new[keep], at_start[keep])
        for j, t in zip(np.flatnonzero(keep).tolist(), rendered, strict=True):
            new_texts[j] = t
    return orig_texts, new_texts


def _splice_rows(texts: list[str], w: _Writes, renderer: Renderer) -> _Spliced:
    """The few changed positions, one by one: verify the original span, render the new token,
    and splice each edited row from untouched slices and replacements in the same pass."""
    orig_texts, new_texts = _rendered(renderer, w)
    starts, ends = w.starts, w.ends
    starts_l, ends_l = starts.tolist(), ends.tolist()
    accepted = np.zeros(len(w.pos), dtype=bool)
    bad_span = np.zeros(len(w.pos), dtype=bool)
    skipped_render = 0
    out_texts: list[str | None] = [None] * len(texts)
    row, text, last, parts = -1, "", 0, []
    for j, r in enumerate(w.row.tolist()):
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
    return _Spliced(out_texts, accepted, bad_span, skipped_render)


def _edited_batch(
    sb: ScoreBatch,
    above: _Above,
    w: _Writes,
    spliced: _Spliced,
    text_len: np.ndarray,
    n_below: int,
) -> EditedBatch:
    """Per-row counts, the applied edits and the batch's counts."""
    n_rows = len(sb)
    accepted, is_del = spliced.accepted, w.is_del
    replaced, deleted = accepted & ~is_del, accepted & is_del
    n_changed = np.bincount(w.row[replaced], minlength=n_rows).astype(np.int32)
    n_deleted = np.bincount(w.row[deleted], minlength=n_rows).astype(np.int32)
    n_skipped = (
        np.bincount(above.rows[above.no_candidate], minlength=n_rows)
        + np.bincount(w.row[~accepted & ~is_del], minlength=n_rows)
    ).astype(np.int32)
    n_edited = n_changed + n_deleted
    edit_offsets = np.zeros(n_rows + 1, dtype=np.int32)
    np.cumsum(n_edited, out=edit_offsets[1:])
    edits = {
        "pos": w.tokpos[accepted].astype(np.int32),
        "char_start": w.starts[accepted].astype(np.int32),
        "char_end": w.ends[accepted].astype(np.int32),
        "orig_id": w.orig[accepted].astype(np.int32),
        "new_id": w.new[accepted].astype(np.int32),
    }
    return EditedBatch(
        texts=spliced.texts,
        n_above=np.bincount(above.rows, minlength=n_rows).astype(np.int32),
        n_changed=n_changed,
        n_skipped=n_skipped,
        n_deleted=n_deleted,
        edit_offsets=edit_offsets,
        edits=edits,
        counts=_batch_counts(sb, above, w, spliced, text_len, n_below, n_edited, replaced, deleted),
    )


def _batch_counts(
    sb: ScoreBatch,
    above: _Above,
    w: _Writes,
    spliced: _Spliced,
    text_len: np.ndarray,
    n_below: int,
    n_edited: np.ndarray,
    replaced: np.ndarray,
    deleted: np.ndarray,
) -> dict:
    """The batch's counts (the fields of ``EditCounts``)."""
    accepted, is_del = spliced.accepted, w.is_del
    ok_rows = np.diff(sb.row_offsets) > 0
    return {
        "documents": len(sb),
        "documents_changed": int(np.count_nonzero(n_edited)),
        "tokens": int(len(sb.token_ids)),
        "scored": int(np.count_nonzero(~np.isnan(sb.logprob))),
        "chars": int(text_len[ok_rows].sum()),
        "above": int(len(above.pos)),
        "drawn_original": int(np.count_nonzero(~above.no_candidate & (above.new == above.orig))),
        "changed": int(replaced.sum()),
        "skipped": {
            "span": int(np.count_nonzero(spliced.bad_span & ~is_del)),
            "render": spliced.skipped_render,
            "no_candidate": int(above.no_candidate.sum()),
        },
        "below": n_below,
        "deleted": int(deleted.sum()),
        "deleted_chars": int((w.ends[deleted] - w.starts[deleted]).sum()),
        "delete_skipped": int(np.count_nonzero(is_del & ~accepted)),
    }
