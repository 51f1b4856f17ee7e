"""The report's token view: a few documents, each token shaded by its prior probability and
every edit marked (original → replacement, deletions struck through).

The pure core works on one document's text, its scores row (``offsets``: char start of each
token, ``logprob``) and its edits (spans in the same text); it returns *segments*: runs of
text with a probability and an optional edit, bounded to a window of ``max_chars``. The shell
below (:func:`collect_examples`) picks the documents of a scores or edited directory and reads
the rows they need. Every key written to ``report.json`` is defined in docs/report.md
("Token view").

An edited directory's edits are spans of the ORIGINAL text, so the view shows the original
text with each edit overlaid: the original token struck through, its replacement after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow.parquet as pq

from tokedit.io.edited_dir import TOKEDIT_EDITS, TOKEDIT_N_CHANGED, TOKEDIT_N_DELETED
from tokedit.io.scores_dir import ID, LOGPROB, N_TOKENS, OFFSETS, STATUS, TOKEN_IDS
from tokedit.io.storage import arrow_source, as_path

DEFAULT_EXAMPLES = 3
DEFAULT_EXAMPLE_CHARS = 1500
# the window starts at the first edit minus this share of max_chars, when the first edit
# would otherwise fall in the last fifth of the window (or beyond it)
LEAD_SHARE = 0.2


# --- pure core --------------------------------------------------------------------------------


def choose_rows(counts: Sequence[int], usable: Sequence[bool], n: int) -> list[int]:
    """Row indices of the ``n`` usable rows with the highest count, ties by the earlier row.

    With all counts equal (scores directories: zeros) these are the first ``n`` usable rows.
    """
    if n <= 0:
        return []
    counts = np.asarray(counts, dtype=np.int64)
    rows = np.flatnonzero(np.asarray(usable, dtype=bool))
    order = np.lexsort((rows, -counts[rows]))  # last key first: by -count, then by row
    return [int(r) for r in rows[order[:n]]]


def token_groups(offsets: Sequence[int], logprob: Sequence[float | None], text_len: int):
    """Character spans of the tokens with their probabilities.

    Token ``i`` spans ``[offsets[i], offsets[i+1])`` (the last one up to the end of the text),
    so characters no token claims (a space trimmed out of a span) go to the token before
    them. Tokens that share a start (byte-level pieces of one multi-byte character: all but
    one have an empty span) form one group whose probability is the product of theirs
    (positions without a log-prob are left out; a group of only such positions has none).
    Returns ``starts, ends, probs (nan: none), sizes, first`` (first token position).
    """
    off = np.clip(np.asarray(offsets, dtype=np.int64), 0, text_len)
    n = len(off)
    if n == 0:
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty(0), empty, empty
    off = np.maximum.accumulate(off)  # offsets never go back
    lp = np.array([np.nan if x is None else float(x) for x in logprob], dtype=np.float64)
    first = np.flatnonzero(np.r_[True, off[1:] != off[:-1]])
    starts = off[first]
    ends = np.r_[starts[1:], text_len]
    valid = ~np.isnan(lp)
    sums = np.add.reduceat(np.where(valid, lp, 0.0), first)
    any_valid = np.add.reduceat(valid.astype(np.int64), first) > 0
    probs = np.where(any_valid, np.exp(sums), np.nan)
    sizes = np.diff(np.r_[first, n])
    return starts, ends, probs, sizes, first


def _valid_edits(edits: Sequence[dict], text_len: int) -> tuple[list[dict], int]:
    """Edits sorted by start, without empty, out-of-range or overlapping spans (counted)."""
    out, dropped, last = [], 0, 0
    for e in sorted(edits, key=lambda e: (e["char_start"], e["char_end"])):
        s, t = int(e["char_start"]), int(e["char_end"])
        if not (0 <= s < t <= text_len) or s < last:
            dropped += 1
            continue
        out.append(e)
        last = t
    return out, dropped


def _prob(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 6)


def _text_groups(text: str, offsets, logprob):
    """The token groups of :func:`token_groups` covering the whole text (text before the
    first token, or all of it without scores, is a group of no token and no probability):
    ``starts, ends, probs, sizes``."""
    n_chars = len(text)
    if offsets is None or not len(offsets):
        return np.array([0]), np.array([n_chars]), np.array([np.nan]), np.array([0])
    gs, ge, gp, gn, _ = token_groups(offsets, logprob, n_chars)
    if gs[0] > 0:  # text before the first token: a gap without probability
        gs, ge = np.r_[0, gs], np.r_[gs[0], ge]
        gp, gn = np.r_[np.nan, gp], np.r_[0, gn]
    return gs, ge, gp, gn


def window_start(group_starts, edit_starts, edit_ends, max_chars: int) -> int:
    """Where the window of a document starts (see :func:`view_segments`)."""
    es, ee = edit_starts, edit_ends
    if not len(es) or es[0] + (ee[0] - es[0]) <= max_chars * (1 - LEAD_SHARE):
        return 0
    target = es[0] - int(max_chars * LEAD_SHARE)
    k = np.searchsorted(group_starts, target, side="right") - 1
    start = int(group_starts[k]) if k >= 0 else 0
    j = np.searchsorted(es, start, side="right") - 1
    if j >= 0 and start < ee[j]:
        start = int(es[j])
    return start


def _runs(gs, ge, es, ee, start: int, n_chars: int):
    """Runs of text from ``start``: ``(lo, hi, key)`` of consecutive atomic intervals with one
    key, the key being ``-1 - j`` inside edit ``j`` and the token group's index elsewhere."""
    cuts = np.unique(np.r_[gs, ge, es, ee, start, n_chars])
    cuts = cuts[(cuts >= start) & (cuts <= n_chars)]
    lo, hi = cuts[:-1], cuts[1:]
    j = np.searchsorted(es, lo, side="right") - 1
    in_edit = (j >= 0) & (lo < np.r_[ee, 0][np.where(j >= 0, j, len(ee))])
    g = np.searchsorted(gs, lo, side="right") - 1
    key = np.where(in_edit, -1 - j, g)  # edits negative, groups >= 0
    i = 0
    while i < len(lo):
        i2 = i
        while i2 + 1 < len(lo) and key[i2 + 1] == key[i]:
            i2 += 1
        yield int(lo[i]), int(hi[i2]), int(key[i])
        i = i2 + 1


def _edit_segment(text: str, e: dict, lp) -> dict:
    pos = int(e["pos"])
    p = np.exp(lp[pos]) if lp is not None and 0 <= pos < len(lp) else np.nan
    return {
        "text": text,
        "p": _prob(p),
        "tokens": 1,
        "edit": {
            "pos": pos,
            "orig_id": int(e["orig_id"]),
            "new_id": int(e["new_id"]),
            "new": e.get("new"),
            "deleted": bool(e.get("deleted", False)),
        },
    }


def view_segments(
    text: str,
    offsets: Sequence[int] | None = None,
    logprob: Sequence[float | None] | None = None,
    edits: Sequence[dict] = (),
    max_chars: int = DEFAULT_EXAMPLE_CHARS,
) -> dict:
    """Segments of one document for the token view.

    ``offsets`` / ``logprob``: its scores row (None: no shading). ``edits``: dicts with
    ``char_start, char_end`` (a span of ``text``), ``pos``, ``orig_id``, ``new_id``, ``new``
    (replacement text, None when it cannot be rendered) and ``deleted``.

    The window is ``max_chars`` characters from the start of the text, or, when the first edit
    would fall in the window's last fifth or beyond it, from a token start about
    ``max_chars / 5`` before that edit. Segments are never cut: the window ends at the last
    segment that fits (at least one segment is shown).
    """
    n_chars = len(text)
    edits, dropped = _valid_edits(edits, n_chars)
    gs, ge, gp, gn = _text_groups(text, offsets, logprob)
    es = np.array([e["char_start"] for e in edits], dtype=np.int64)
    ee = np.array([e["char_end"] for e in edits], dtype=np.int64)
    lp = None
    if logprob is not None:
        lp = np.array([np.nan if x is None else float(x) for x in logprob], dtype=np.float64)
    start = window_start(gs, es, ee, max_chars)
    segments: list[dict] = []
    end = start
    for s, t, k in _runs(gs, ge, es, ee, start, n_chars):
        if t > start + max_chars and segments:
            break
        if k < 0:
            segments.append(_edit_segment(text[s:t], edits[-1 - k], lp))
        else:
            segments.append(
                {"text": text[s:t], "p": _prob(gp[k]), "tokens": int(gn[k]), "edit": None}
            )
        end = t
    return {
        "chars": n_chars,
        "window": {"start": start, "end": end},
        "truncated": start > 0 or end < n_chars,
        "edits_valid": len(edits),
        "edits_invalid": dropped,
        "edits_shown": sum(1 for s in segments if s["edit"] is not None),
        "segments": segments,
    }


def apply_edits(text: str, edits: Sequence[dict]) -> str | None:
    """``text`` with each edit's span replaced by its ``new`` text ("" when deleted).

    None when a replacement has no text (it could not be rendered).
    """
    parts, last = [], 0
    for e in sorted(edits, key=lambda e: e["char_start"]):
        new = "" if e.get("deleted") else e.get("new")
        if new is None:
            return None
        parts += [text[last : e["char_start"]], new]
        last = e["char_end"]
    parts.append(text[last:])
    return "".join(parts)


def reconstruct_original(edited: str, edits: Sequence[dict]) -> str | None:
    """The original text from the edited one, given each edit's ``orig`` and ``new`` text.

    Edit ``j`` starts in the edited text at ``char_start + Σ (len(new) - (char_end -
    char_start))`` over the earlier edits (docs/report.md, "Token view"). None unless every replacement
    is found there and every original text has its span's length.
    """
    parts, last, shift = [], 0, 0
    for e in sorted(edits, key=lambda e: e["char_start"]):
        s, t = int(e["char_start"]), int(e["char_end"])
        new = "" if e.get("deleted") else e.get("new")
        orig = e.get("orig")
        if new is None or orig is None or len(orig) != t - s:
            return None
        out_s = s + shift
        if out_s < last or edited[out_s : out_s + len(new)] != new:
            return None
        parts += [edited[last:out_s], orig]
        last = out_s + len(new)
        shift += len(new) - (t - s)
    parts.append(edited[last:])
    return "".join(parts)


# --- shell: choosing and reading the rows of a scores or edited directory ---------------------


def read_rows(shard, rows: Sequence[int], columns: Sequence[str]) -> dict[int, dict]:
    """The given rows of one shard (index within the shard -> {column: value}).

    Parquet reads only the row groups and columns needed; other formats are streamed.
    Columns the shard lacks are left out.
    """
    wanted = sorted(set(int(r) for r in rows))
    if not wanted:
        return {}
    out: dict[int, dict] = {}
    if shard.fmt == "parquet":
        pf = pq.ParquetFile(arrow_source(shard.path))
        cols = [c for c in columns if c in pf.schema_arrow.names]
        first = 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            inside = [r for r in wanted if first <= r < first + n]
            if inside:
                table = pf.read_row_group(g, columns=cols)
                for r in inside:
                    out[r] = table.slice(r - first, 1).to_pylist()[0]
            first += n
        return out
    from tokedit.io.read import iter_batches

    for batch in iter_batches(shard):
        inside = [r for r in wanted if batch.start <= r < batch.start + len(batch)]
        if inside:
            cols = {c: batch.column(c) for c in columns if batch.has_column(c)}
            for r in inside:
                out[r] = {c: v[r - batch.start] for c, v in cols.items()}
        if batch.start + len(batch) > wanted[-1]:
            break
    return out


def _column_values(shard, columns: Sequence[str]) -> dict[str, list]:
    """Whole columns of one shard (parquet: only those columns are read)."""
    if shard.fmt == "parquet":
        pf = pq.ParquetFile(arrow_source(shard.path))
        cols = [c for c in columns if c in pf.schema_arrow.names]
        table = pf.read(columns=cols)
        return {c: table.column(c).to_pylist() for c in cols}
    from tokedit.io.read import iter_batches

    out: dict[str, list] = {c: [] for c in columns}
    for batch in iter_batches(shard):
        for c in columns:
            out[c] += batch.column(c) if batch.has_column(c) else [None] * len(batch)
    return out


def _named_dir(source, key: str):
    """The directory ``info[key]`` of ``source``'s manifest (its input, its scores) if it is
    one, else ``None``; a URL gets the storage options of ``source``'s own path."""
    path = ((source.manifest or {}).get("info") or {}).get(key)
    path = as_path(path, like=source.path) if path else None
    return path if path is not None and path.is_dir() else None


def _input_shards(source) -> dict[str, object]:
    """The shards of the dataset a scores / edit manifest was made from, by relative path."""
    from tokedit.io.shards import discover_shards

    path = _named_dir(source, "input")
    if path is None:
        return {}
    try:
        return {s.rel: s for s in discover_shards(path)}
    except Exception:  # moved, changed or unreadable: the view falls back
        return {}


def _doc_id(value, shard, row: int) -> str:
    return str(value) if value not in (None, "") else f"{shard.rel}:{row}"


def _scores_row_ok(srow: dict | None, text: str, edits: Sequence[dict]) -> bool:
    """A scores row fits a text and its edits: offsets inside it, edit tokens where scored."""
    if not srow or srow.get(OFFSETS) is None or srow.get(LOGPROB) is None:
        return False
    ids, off = srow.get(TOKEN_IDS) or [], srow[OFFSETS]
    if len(off) != len(srow[LOGPROB]) or (off and max(off) > len(text)):
        return False
    return all(0 <= e["pos"] < len(ids) and ids[e["pos"]] == e["orig_id"] for e in edits)


def collect_examples(
    source, n: int, max_chars: int, tokenizer: Callable[[], object] = lambda: None
) -> list[dict] | None:
    """Token-view examples of a scores or edited corpus (None for a dataset directory).

    ``source`` is a :class:`~tokedit.analysis.corpus.CorpusSource`; ``tokenizer()`` returns
    the prior's tokenizer or None (called only when needed): it renders replacement tokens and
    decodes scored ids when the input text is not available.
    """
    from tokedit.analysis.corpus import KIND_EDITED, KIND_SCORES

    if n <= 0 or source.kind not in (KIND_SCORES, KIND_EDITED):
        return None
    if source.kind == KIND_SCORES:
        return _scores_examples(source, n, max_chars, tokenizer)
    return _edited_examples(source, n, max_chars, tokenizer)


def _global_choice(source, n: int, count_columns: Sequence[str], usable_of) -> list[tuple]:
    """(global row, shard, row in shard) of the chosen rows, in the order of choice.

    The count of a row is the sum of its ``count_columns`` (none: every row counts 0, and
    reading stops once ``n`` usable rows are known).
    """
    counts, usable, where = [], [], []
    for shard in source.shards:
        cols = _column_values(shard, [*count_columns, STATUS, N_TOKENS])
        size = max((len(v) for v in cols.values()), default=0)
        if size == 0 and shard.fmt == "parquet":
            size = pq.ParquetFile(shard.path).metadata.num_rows
        row_counts = np.zeros(size, dtype=np.int64)
        for c in count_columns:
            if c in cols:
                row_counts += np.array([int(x or 0) for x in cols[c]], dtype=np.int64)
        counts += row_counts.tolist()
        usable += [usable_of(cols, i) for i in range(size)]
        where += [(shard, i) for i in range(size)]
        if not count_columns and sum(usable) >= n:
            break  # the first n usable rows are known
    return [(r, *where[r]) for r in choose_rows(counts, usable, n)]


def _scores_examples(source, n, max_chars, tokenizer) -> list[dict]:
    def usable(cols, i):
        status = cols[STATUS][i] if STATUS in cols else "ok"
        return status == "ok" and (cols[N_TOKENS][i] or 0) > 0

    chosen = _global_choice(source, n, (), usable)
    inputs = _input_shards(source)
    by_input = {s.with_suffix(".parquet"): s for s in inputs.values()}
    text_column = source.options.get("text_column") or "text"
    out = []
    for row, shard, r in chosen:
        srow = read_rows(shard, [r], [ID, TOKEN_IDS, OFFSETS, LOGPROB]).get(r) or {}
        ids, off = srow.get(TOKEN_IDS) or [], srow.get(OFFSETS) or []
        text, text_source = None, None
        ishard = by_input.get(shard.rel)
        if ishard is not None:
            try:
                text = read_rows(ishard, [r], [text_column]).get(r, {}).get(text_column)
                text_source = "input"
            except Exception:  # unreadable input: decode instead
                text = None
        if not isinstance(text, str) or (off and max(off) > len(text)):
            text, text_source = None, None
            tok = tokenizer()
            if tok is not None:
                backend = getattr(tok, "backend_tokenizer", tok)
                text = backend.decode([int(i) for i in ids], skip_special_tokens=False)
                text_source = "decoded"
        if text is None:
            continue
        view = view_segments(text, off, srow.get(LOGPROB), (), max_chars)
        out.append(
            {
                "row": row,
                "shard": shard.rel,
                "row_in_shard": r,
                "id": _doc_id(srow.get(ID), shard, r),
                "text_source": text_source,
                "scores": str(source.path),
                "tokens": len(ids),
                "edits": None,
                "verified": None,
                **view,
            }
        )
    return out


def _row_edits(drow: dict, renderer) -> list[dict]:
    """The ``tokedit_edits`` of an edited row, each with ``deleted``, and ``new`` / ``orig``
    rendered by the prior's tokenizer (None without one)."""
    render = renderer.render if renderer is not None else (lambda i, a: None)
    edits = []
    for e in drow.get(TOKEDIT_EDITS) or []:
        e = {k: int(v) if isinstance(v, int | np.integer) else v for k, v in e.items()}
        deleted = bool(e.get("deleted")) or e["new_id"] < 0
        at_start = e["pos"] == 0
        e["deleted"] = deleted
        e["new"] = "" if deleted else render(e["new_id"], at_start)
        e["orig"] = render(e["orig_id"], at_start)
        edits.append(e)
    return edits


def _original_text(
    source, drow: dict, shard, r: int, inputs, edits, edited: str
) -> tuple[str | None, str | None]:
    """The original text of an edited row and where it came from (docs/report.md, "Token
    view"): the column beside ``--output-column``, the input row, or rebuilt from the edits."""
    opts = source.options
    orig_column = opts.get("text_column") if opts.get("output_column") else None
    input_column = opts.get("text_column") or "text"
    if orig_column and isinstance(drow.get(orig_column), str):
        return drow[orig_column], "output_column"
    if shard.rel in inputs:
        try:
            value = read_rows(inputs[shard.rel], [r], [input_column]).get(r, {}).get(input_column)
        except Exception:
            value = None
        if isinstance(value, str):
            return value, "input"
    if edits:
        original = reconstruct_original(edited, edits)
        return original, "reconstructed" if original is not None else None
    return edited, "edited"  # nothing changed: the same text


def _shading_row(scores_dir, shard, r: int, original: str, edits) -> tuple[dict | None, str | None]:
    """The scores row that shades an edited row, and its directory (None when it does not fit)."""
    from tokedit.io.shards import Shard

    if scores_dir is None:
        return None, None
    sshard = Shard(scores_dir, shard.with_suffix(".parquet"), "parquet")
    if not sshard.path.is_file():
        return None, None
    cand = read_rows(sshard, [r], [TOKEN_IDS, OFFSETS, LOGPROB]).get(r)
    if not _scores_row_ok(cand, original, edits):
        return None, None
    return cand, str(scores_dir)


def _edited_examples(source, n, max_chars, tokenizer) -> list[dict]:
    opts = source.options
    orig_column = opts.get("text_column") if opts.get("output_column") else None
    id_column = opts.get("id_column")
    chosen = _global_choice(source, n, (TOKEDIT_N_CHANGED, TOKEDIT_N_DELETED), lambda c, i: True)
    inputs = _input_shards(source)
    scores_dir = _named_dir(source, "scores")
    renderer = None
    tok = tokenizer()
    if tok is not None:
        from tokedit.editor.splice import Renderer

        renderer = Renderer(tok)
    cols = [source.text_column, TOKEDIT_EDITS, TOKEDIT_N_CHANGED]
    cols += [c for c in (orig_column, id_column) if c]
    out = []
    for row, shard, r in chosen:
        drow = read_rows(shard, [r], cols).get(r) or {}
        edited = drow.get(source.text_column)
        edited = edited if isinstance(edited, str) else ""
        edits = _row_edits(drow, renderer)
        original, text_source = _original_text(source, drow, shard, r, inputs, edits, edited)
        srow, scores_used, verified = None, None, None
        if original is None:
            # the edits cannot be placed: the edited text alone, unshaded
            view = view_segments(edited, None, None, (), max_chars)
            text_source = "edited"
        else:
            srow, scores_used = _shading_row(scores_dir, shard, r, original, edits)
            offsets, logprob = (srow[OFFSETS], srow[LOGPROB]) if srow else (None, None)
            view = view_segments(original, offsets, logprob, edits, max_chars)
            verified = apply_edits(original, edits) == edited
        out.append(
            {
                "row": row,
                "shard": shard.rel,
                "row_in_shard": r,
                "id": _doc_id(drow.get(id_column) if id_column else None, shard, r),
                "text_source": text_source,
                "scores": scores_used,
                "tokens": len(srow[TOKEN_IDS]) if srow else None,
                "edits": len(edits),
                "verified": verified,
                **view,
            }
        )
    return out
