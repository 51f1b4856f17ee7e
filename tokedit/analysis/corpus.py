"""Reading one corpus for a report: what kind of directory it is, sampling, accumulation.

A directory is a *scores* directory when its manifest (``.tokedit/manifest.json``, found by
:func:`tokedit.io.manifest.find_manifest`) says ``"command": "score"``, an *edited* one
when it says ``"edit"`` (or its rows carry ``tokedit_*`` columns), and a *dataset* otherwise. Everything is streamed in record batches through the accumulators of
:mod:`ngrams`, :mod:`probs` and :mod:`edits`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tokedit.analysis.edits import EditAccumulator
from tokedit.analysis.ngrams import MAX_N, NgramCounterSet, NgramTable
from tokedit.analysis.probs import PerplexityAccumulator, ProbabilityAccumulator
from tokedit.analysis.units import flat_list
from tokedit.errors import InputError
from tokedit.io import DEFAULT_BATCH_ROWS
from tokedit.io.edited_dir import PROVENANCE_COLUMNS_ALWAYS, p_dir, p_label, parse_p_dir
from tokedit.io.manifest import read_manifest
from tokedit.io.read import STATUS_OK, RowBatch, iter_batches, to_documents
from tokedit.io.scores_dir import LOGPROB, N_TOKENS, PPL, READ_FOR_REPORT, STATUS, TOKEN_IDS
from tokedit.io.shards import Shard, discover_shards
from tokedit.io.storage import arrow_source, as_path

KIND_DATASET, KIND_SCORES, KIND_EDITED = "dataset", "scores", "edited"


@dataclass
class CorpusSource:
    """One directory of the report."""

    path: Path
    label: str
    kind: str
    shards: list[Shard]
    manifest: dict | None
    text_column: str | None
    edit_p: str | None = None  # edited: the threshold label of this output in the manifest

    @property
    def options(self) -> dict:
        return (self.manifest or {}).get("options", {}) or {}


def open_corpus(path: str | os.PathLike, label: str, text_column: str = "text") -> CorpusSource:
    """Detect the kind of ``path`` and list its shards.

    An edited directory of a threshold sweep (``EDITED/p=0.99``) has its manifest one level
    up, in ``EDITED``; the sweep root itself holds one dataset per threshold and is refused.
    """
    path = as_path(path)
    manifest = read_manifest(path) if path.is_dir() else None
    edit_p = None
    if manifest is None and parse_p_dir(path.name) is not None and path.parent.is_dir():
        parent = read_manifest(path.parent)
        if parent is not None and parent.get("command") == "edit":
            manifest, edit_p = parent, parse_p_dir(path.name)
    command = (manifest or {}).get("command")
    if command == "edit" and edit_p is None:
        ps = (manifest.get("options") or {}).get("p")
        ps = ps if isinstance(ps, list) else [ps] if ps is not None else []
        if len(ps) > 1:
            subdirs = ", ".join(f"{path}/{p_dir(p)}" for p in ps)
            raise InputError(
                f"{path} holds one edited dataset per threshold",
                remedy=f"pass one of them: {subdirs}",
            )
        edit_p = p_label(ps[0]) if ps else None
    shards = discover_shards(path)
    if command == "score" or (command is None and _looks_like_scores(shards[0])):
        return CorpusSource(path, label, KIND_SCORES, shards, manifest, None)
    if command == "edit":
        opts = manifest.get("options", {}) or {}
        column = opts.get("output_column") or opts.get("text_column") or text_column
        return CorpusSource(path, label, KIND_EDITED, shards, manifest, column, edit_p)
    return CorpusSource(path, label, KIND_DATASET, shards, manifest, text_column)


def _looks_like_scores(shard: Shard) -> bool:
    if shard.fmt != "parquet":
        return False
    names = set(pq.read_schema(arrow_source(shard.path)).names)
    return {TOKEN_IDS, LOGPROB} <= names and "text" not in names


def count_rows(shard: Shard) -> int:
    if shard.fmt == "parquet":
        return pq.ParquetFile(arrow_source(shard.path)).metadata.num_rows
    return sum(len(b) for b in iter_batches(shard, 8192))


def sample_rows(total: int, max_docs: int | None, seed: int) -> np.ndarray | None:
    """Sorted global row indices of a uniform sample without replacement (None: all rows)."""
    if max_docs is None or max_docs >= total:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=max_docs, replace=False))


def iter_rows(
    source: CorpusSource, selected: np.ndarray | None, batch_rows: int = DEFAULT_BATCH_ROWS
) -> Iterator[RowBatch]:
    """Batches of the corpus rows, only the ``selected`` global row indices when given."""
    offset = 0
    for shard in source.shards:
        for batch in iter_batches(shard, batch_rows):
            n = len(batch)
            if selected is None:
                yield batch
            else:
                lo, hi = np.searchsorted(selected, [offset, offset + n])
                keep = selected[lo:hi] - offset
                if len(keep):
                    yield _take(batch, keep)
            offset += n


def _take(batch: RowBatch, rows: np.ndarray) -> RowBatch:
    if batch.table is not None:
        return RowBatch(batch.shard, batch.start, table=batch.table.take(pa.array(rows)))
    return RowBatch(
        batch.shard,
        batch.start,
        records=[batch.records[i] for i in rows],
        line_numbers=[batch.line_numbers[i] for i in rows] if batch.line_numbers else [],
    )


@dataclass
class CorpusStats:
    """Everything accumulated over one corpus."""

    source: CorpusSource
    units_kind: str
    documents_total: int = 0
    documents_used: int = 0
    sampled: bool = False
    statuses: dict[str, int] = field(default_factory=dict)
    units: int = 0
    tables: dict[int, NgramTable] = field(default_factory=dict)
    probs: ProbabilityAccumulator | None = None
    ppl: PerplexityAccumulator | None = None
    edits: EditAccumulator | None = None


def accumulate(
    source: CorpusSource,
    units,
    *,
    decoder=None,
    max_docs: int | None = None,
    seed: int = 0,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> CorpusStats:
    """Stream ``source`` once and count everything the report needs.

    ``units`` (:class:`~tokedit.analysis.units.TokenUnits` or ``WordUnits``) turns text into
    ids; ``decoder`` (a ``TokenUnits``) decodes a scores directory's tokens when words are
    counted.
    """
    total = sum(count_rows(s) for s in source.shards) if max_docs is not None else None
    selected = sample_rows(total, max_docs, seed) if total is not None else None
    stats = CorpusStats(source, units.kind, sampled=selected is not None)
    counters = NgramCounterSet(units.id_limit, MAX_N)
    if source.kind == KIND_SCORES:
        stats.probs, stats.ppl = ProbabilityAccumulator(), PerplexityAccumulator()
    rows_seen = 0
    for batch in iter_rows(source, selected, batch_rows):
        rows_seen += len(batch)
        if source.kind == KIND_SCORES:
            ids, lengths = _scores_batch(batch, stats, units, decoder)
        else:
            ids, lengths = _text_batch(batch, stats, units)
        stats.units += len(ids)
        counters.add(ids, lengths)
    stats.documents_used = rows_seen
    stats.documents_total = total if total is not None else rows_seen
    stats.tables = counters.finish()
    return stats


def _count_statuses(stats: CorpusStats, statuses: list) -> None:
    for s, c in Counter(statuses).items():  # one entry per row, not per token
        stats.statuses[str(s)] = stats.statuses.get(str(s), 0) + c


def _scores_batch(batch: RowBatch, stats: CorpusStats, units, decoder):
    table = batch.table
    missing = [c for c in READ_FOR_REPORT if c not in table.column_names]
    if missing:
        raise InputError(
            f"{batch.shard.path}: scores shard without column(s) {', '.join(missing)}",
            remedy="pass a directory written by `tokedit score`",
        )
    _count_statuses(stats, table.column(STATUS).to_pylist())
    lp_values, _ = flat_list(table.column(LOGPROB))
    valid = lp_values.is_valid().to_numpy(zero_copy_only=False)
    lp = lp_values.to_numpy(zero_copy_only=False)
    stats.probs.add(lp[valid], n_no_context=int((~valid).sum()))
    ok = pc.equal(table.column(STATUS), STATUS_OK).to_numpy(zero_copy_only=False)
    ok &= table.column(N_TOKENS).to_numpy(zero_copy_only=False) > 0
    stats.ppl.add(table.column(PPL).to_numpy(zero_copy_only=False)[ok])
    token_lists = table.column(TOKEN_IDS)
    if units.kind == "tokens":
        flat, lengths = flat_list(token_lists)
        ids = flat.to_numpy(zero_copy_only=False).astype(np.uint32)
        units.check(ids, str(batch.shard.path))
        return ids, lengths
    if isinstance(token_lists, pa.ChunkedArray):
        token_lists = token_lists.combine_chunks()
    return units.encode(decoder.decode_docs(token_lists))


def _text_batch(batch: RowBatch, stats: CorpusStats, units):
    source = stats.source
    docs = to_documents(batch, source.text_column)
    _count_statuses(stats, docs.statuses)
    if all(
        batch.has_column(c) for c in PROVENANCE_COLUMNS_ALWAYS
    ):  # an edited corpus (any kind of source)
        if stats.edits is None:
            stats.edits = EditAccumulator()
        if batch.table is not None:
            cols = [batch.table.column(c) for c in PROVENANCE_COLUMNS_ALWAYS]
        else:
            cols = [batch.column(c) for c in PROVENANCE_COLUMNS_ALWAYS]
        stats.edits.add(*cols)
    return units.encode(docs.texts)
