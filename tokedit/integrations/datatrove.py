"""datatrove: :class:`ToEditStep` edits the documents of a pipeline, :class:`ToEditScoreStep`
adds the prior's mean log-prob and perplexity to their metadata.

::

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from tokedit.integrations.datatrove import ToEditStep

    LocalPipelineExecutor(
        pipeline=[JsonlReader(DATA), ToEditStep(PRIOR, p=0.99), JsonlWriter(OUT)],
        tasks=4,
    ).run()

Each task loads the prior once, on its first batch, and edits ``batch_rows`` documents at a
time with their own ids (``Document.id``), so the text equals ``tokedit edit --model`` on
the same documents and ids. Provenance goes to ``Document.metadata`` (``tokedit_n_above``,
``tokedit_n_changed``, ``tokedit_n_skipped``, ``tokedit_n_deleted``, ``tokedit_edits``),
totals to the step's stats.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from tokedit.api import edit
from tokedit.errors import InputError, arg
from tokedit.integrations._common import PriorConfig, check_edit_kwargs
from tokedit.io import DEFAULT_BATCH_ROWS  # as tokedit edit: the same batches, the same bytes
from tokedit.io.scores_dir import MEAN_LOGPROB, PPL
from tokedit.scoring.options import MODEL_FIELDS, ONE_PASS_FIELDS


def _batches(data: DocumentsPipeline, size: int) -> Iterator[list[Document]]:
    it = iter(data or ())
    while batch := list(islice(it, size)):
        yield batch


class _PriorStep(PipelineStep):
    """A step with a prior (loaded once per task, on its first batch) that reads
    ``batch_rows`` documents at a time. ``kwargs``: the prior's ``device``, ``dtype``,
    ``backend``, ``revision`` and ``trust_remote_code``; what is left is the step's own
    (``self.options``)."""

    def __init__(self, model: str, *, batch_rows: int = DEFAULT_BATCH_ROWS, **kwargs):
        super().__init__()
        if batch_rows < 1:
            raise InputError(
                f"{arg('batch_rows', batch_rows)} must be >= 1",
                remedy=f"e.g. {arg('batch_rows', DEFAULT_BATCH_ROWS)}",
            )
        prior = {k: kwargs.pop(k) for k in MODEL_FIELDS if k in kwargs}
        self.prior = PriorConfig(str(model), **prior)
        self.batch_rows = batch_rows
        self.options = kwargs


class ToEditStep(_PriorStep):
    """Token-Level Editing of every document's text (``tokedit.edit`` with a prior).

    Keywords: the prior's ``device``, ``dtype``, ``backend``, ``revision``,
    ``trust_remote_code``, and those of
    :func:`tokedit.edit` (``preset``, ``p``, ``top_k``,
    ``temperature``, ``drop_below``, ``seed``, ``max_length``, ``overlap``, ...).
    ``output_column``: keep ``Document.text`` and put the edited text in that metadata key.
    ``provenance=False``: no ``tokedit_*`` metadata (the stats are kept).
    Stats: ``documents``, ``documents_changed``, ``tokens`` (scored, per batch),
    ``tokens_above_p``, ``tokens_changed``, ``tokens_skipped``, ``tokens_deleted``.
    """

    name = "✂️ tokedit"
    type = "🔧 - ToEdit"

    def __init__(self, model: str, *, batch_rows: int = DEFAULT_BATCH_ROWS, **kwargs):
        super().__init__(model, batch_rows=batch_rows, **kwargs)
        self.edit_kwargs = check_edit_kwargs(self.options, "ToEditStep")

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        prior = None
        for batch in _batches(data, self.batch_rows):
            prior = prior or self.prior.load()
            with self.track_time(unit="batch"):
                edits = edit(
                    [doc.text for doc in batch],
                    prior=prior,
                    ids=[doc.id for doc in batch],
                    batch_rows=self.batch_rows,
                    **self.edit_kwargs,
                )
            output_column = edits.options.output_column
            self.stat_update("tokens", value=edits.counts.scored, unit="batch")
            for doc, e in zip(batch, edits, strict=True):
                if output_column:
                    doc.metadata[output_column] = e.text
                else:
                    doc.text = e.text
                if edits.options.provenance:
                    doc.metadata.update(
                        tokedit_n_above=e.n_above,
                        tokedit_n_changed=e.n_changed,
                        tokedit_n_skipped=e.n_skipped,
                        tokedit_n_deleted=e.n_deleted,
                        tokedit_edits=e.edits,
                    )
                self.stat_update("documents")
                if e.changed:
                    self.stat_update("documents_changed")
                self.stat_update("tokens_above_p", value=e.n_above)
                self.stat_update("tokens_changed", value=e.n_changed)
                self.stat_update("tokens_skipped", value=e.n_skipped)
                self.stat_update("tokens_deleted", value=e.n_deleted)
                yield doc


class ToEditScoreStep(_PriorStep):
    """The prior's ``mean_logprob`` and ``ppl`` of every document, into its metadata
    (``Prior.score``; None where the text has no scored token). ``score_kwargs``: the
    window options of :meth:`tokedit.Prior.score` (``max_length``, ``overlap``,
    ``batch_tokens``, ``bos``). Stats: ``documents``, ``tokens`` (scored, per document)."""

    name = "📏 tokedit score"
    type = "📊 - STATS"

    def __init__(self, model: str, *, batch_rows: int = DEFAULT_BATCH_ROWS, **kwargs):
        super().__init__(model, batch_rows=batch_rows, **kwargs)
        unknown = set(self.options) - set(ONE_PASS_FIELDS)
        if unknown:
            raise TypeError(
                f"ToEditScoreStep() got unexpected keyword argument(s) {sorted(unknown)}"
            )
        # top_k=0: no candidates kept, only the log-probs of the actual tokens
        self.score_kwargs = {"top_k": 0, **self.options}

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        prior = None
        for batch in _batches(data, self.batch_rows):
            prior = prior or self.prior.load()
            with self.track_time(unit="batch"):
                scores = prior.score(
                    [doc.text for doc in batch],
                    ids=[doc.id for doc in batch],
                    batch_rows=self.batch_rows,
                    **self.score_kwargs,
                )
            for doc, s in zip(batch, scores, strict=True):
                doc.metadata[MEAN_LOGPROB] = s.mean_logprob
                doc.metadata[PPL] = s.ppl
                self.stat_update("documents")
                self.stat_update("tokens", value=int((~_isnan(s.logprob)).sum()))
                yield doc


def _isnan(a):
    import numpy as np

    return np.isnan(a)
