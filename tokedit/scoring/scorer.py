"""Documents in, score tables out: tokenization, windows, batches, a backend, stitching.

The scorer never writes files; :mod:`tokedit.scoring.run` streams its tables to ``io``.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from tokedit.engines.step import Stats
from tokedit.errors import InputError, arg
from tokedit.io.read import STATUS_OK, Documents
from tokedit.io.scores_dir import (
    ID,
    LOGPROB,
    MEAN_LOGPROB,
    N_TOKENS,
    OFFSETS,
    PPL,
    SCORES_SCHEMA,
    STATUS,
    TEXT_FINGERPRINT,
    TOKEN_IDS,
    TOPK_IDS,
    TOPK_LOGPROBS,
    text_fingerprint,
)
from tokedit.scoring.options import BOS_MODES, ScoreOptions
from tokedit.scoring.windows import (
    Window,
    padding_stats,
    partition_starts,
    plan_batches,
    plan_windows,
)

_BOS_PROBE = "Hello world"


def bos_prepended(tokenizer, mode: str) -> bool:
    """Whether tokedit puts the tokenizer's BOS before every document under ``--bos mode``.

    ``auto`` is exactly what the tokenizer does with its own special tokens: a probe text is
    encoded with ``add_special_tokens=True`` and the answer is yes only if that prepends
    ``bos_token_id`` (Llama, Gemma: yes; GPT-2-style tokenizers whose BOS is
    ``<|endoftext|>``, Qwen: no). ``always``: yes whenever the tokenizer has a BOS token.
    ``never``: no (the first token of a document then has no log-prob).
    """
    if mode not in BOS_MODES:
        raise InputError(
            f"{arg('bos', mode)} is not one of {', '.join(BOS_MODES)}",
            remedy=f"e.g. {arg('bos', 'auto')}",
        )
    bos_id = tokenizer.bos_token_id
    if mode == "never" or bos_id is None:
        return False
    if mode == "always":
        return True
    plain = tokenizer(_BOS_PROBE, add_special_tokens=False)["input_ids"]
    special = tokenizer(_BOS_PROBE, add_special_tokens=True)["input_ids"]
    return special[:1] == [bos_id] and special[1 : 1 + len(plain)] == plain


@dataclass
class DocTokens:
    """A tokenized document: ``seq`` is what the model reads (BOS first if used)."""

    token_ids: np.ndarray  # int32 [n]
    starts: np.ndarray  # int32 [n], partition char starts
    seq: np.ndarray  # int32 [n + bos]
    bos: int  # 1 if seq starts with BOS


def tokenize_documents(tokenizer, texts: list[str], add_bos: bool) -> list[DocTokens]:
    """Tokenize with character offsets (no special tokens inside the text)."""
    bos_id = tokenizer.bos_token_id if add_bos else None
    if not texts:  # fast tokenizers fail on an empty batch
        return []
    enc = tokenizer(
        texts, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False
    )
    docs = []
    for ids, offs in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        token_ids = np.asarray(ids, dtype=np.int32)
        pairs = np.asarray(offs, dtype=np.int64).reshape(-1, 2)
        seq = (
            token_ids if bos_id is None else np.concatenate([[bos_id], token_ids]).astype(np.int32)
        )
        docs.append(DocTokens(token_ids, partition_starts(pairs), seq, 0 if bos_id is None else 1))
    return docs


class Scorer:
    """Score :class:`Documents` with a backend; returns one scores table row per input row."""

    def __init__(self, backend, tokenizer, options: ScoreOptions):
        self.backend = backend
        self.tokenizer = tokenizer
        self.options = options
        self.add_bos = bos_prepended(tokenizer, options.bos)  # a BOS before every document
        if not 1 <= options.overlap < options.max_length:
            raise InputError(
                f"{arg('overlap', options.overlap)} must be at least 1 and below "
                f"{arg('max_length', options.max_length)}",
                remedy=f"e.g. {arg('max_length', 1024)}, {arg('overlap', 256)}",
            )

    def score(self, docs: Documents, on_tokens=None) -> tuple[pa.Table, Stats]:
        """Tokenize, window, batch, score and assemble ``docs`` (the three stages below, in
        turn; :func:`scored_tables` runs them overlapped)."""
        return self.assemble(self.run(self.prepare(docs), on_tokens))

    def prepare(self, docs: Documents) -> Planned:
        """The CPU stage before the model: tokenization, windows and batches."""
        opts = self.options
        ok = [i for i, s in enumerate(docs.statuses) if s == STATUS_OK]
        tokens = tokenize_documents(self.tokenizer, [docs.texts[i] for i in ok], self.add_bos)
        windows = [
            w
            for j, t in enumerate(tokens)
            for w in plan_windows(len(t.seq), opts.max_length, opts.overlap, doc=j)
        ]
        pack = getattr(self.backend, "packs", False)  # several windows per row
        batches = plan_batches(windows, opts.batch_tokens, pack=pack)
        return Planned(docs, ok, tokens, windows, batches, pack)

    def run(self, planned: Planned, on_tokens=None) -> Planned:
        """The model stage: every batch through the backend (results kept on ``planned``)."""
        opts = self.options
        seqs = [t.seq for t in planned.tokens]
        results = planned.results
        for batch in planned.batches:
            scores = self.backend.score_batch(
                seqs, batch, top_k=opts.top_k, min_p=opts.candidates_min_p
            )
            for w, r in zip(batch, scores, strict=True):
                results[(w.doc, w.start)] = r
            if on_tokens is not None:
                on_tokens(sum(w.end - w.score_from for w in batch))
        return planned

    def assemble(self, planned: Planned) -> tuple[pa.Table, Stats]:
        """The CPU stage after the model: the scores table and the counts."""
        docs, tokens = planned.docs, planned.tokens
        per_doc: list[list] = [[] for _ in tokens]
        for w in planned.windows:  # windows are in document, then position order
            per_doc[w.doc].append(planned.results[(w.doc, w.start)])
        computed, padding, context = padding_stats(planned.batches, pack=planned.pack)
        statuses: dict[str, int] = {}
        for s in docs.statuses:
            statuses[s] = statuses.get(s, 0) + 1
        table = build_scores_table(docs, planned.ok, tokens, per_doc, self.options.top_k)
        stats = Stats(
            {
                "documents": len(docs),
                "tokens": int(sum(len(t.token_ids) for t in tokens)),
                "computed_positions": int(computed),
                "padding_positions": int(padding),
                "context_positions": int(context),
                "statuses": statuses,
            }
        )
        return table, stats


@dataclass
class Planned:
    """One batch of documents between the scorer's stages."""

    docs: Documents
    ok: list[int]  # rows with text to score
    tokens: list[DocTokens]
    windows: list[Window]
    batches: list[list[Window]]
    pack: bool
    results: dict = field(default_factory=dict)  # (doc, window start) -> WindowScores


def scored_tables(
    scorer: Scorer,
    batches: Iterable[Documents],
    *,
    prefetch: int,
    on_tokens=None,
    sink: Callable[[pa.Table], object] | None = None,
) -> Iterator[tuple[pa.Table, Stats]]:
    """``scorer.score`` of every batch of ``batches``, in order, each table also passed to
    ``sink`` (a writer) in order, with the CPU overlapping the model: with ``prefetch > 0``
    reading and :meth:`Scorer.prepare` of the next batches run in one thread, and
    :meth:`Scorer.assemble` and ``sink`` of the last ones in another, each at most
    ``prefetch`` batches ahead or behind (bounded queues). The tables do not depend on it."""

    def finish(planned: Planned) -> tuple[pa.Table, Stats]:
        table, stats = scorer.assemble(planned)
        if sink is not None:
            sink(table)
        return table, stats

    if prefetch <= 0:
        for docs in batches:
            yield finish(scorer.run(scorer.prepare(docs), on_tokens))
        return
    planned: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    # One thread reads and prepares; one assembles and writes, in submission order.
    with (
        ThreadPoolExecutor(1, thread_name_prefix="tokedit-prepare") as reader,
        ThreadPoolExecutor(1, thread_name_prefix="tokedit-write") as writer,
    ):
        producer = reader.submit(_prepare_ahead, scorer, batches, planned, stop)
        pending: collections.deque = collections.deque()
        try:
            while (item := planned.get()) is not _DONE:
                pending.append(writer.submit(finish, scorer.run(item, on_tokens)))
                while len(pending) > prefetch or (pending and pending[0].done()):
                    yield pending.popleft().result()
            producer.result()  # a reading or tokenization error surfaces here
            while pending:
                yield pending.popleft().result()
        finally:
            stop.set()
            _drain(planned, producer)


_DONE = object()


def _prepare_ahead(
    scorer: Scorer, batches: Iterable[Documents], planned: queue.Queue, stop: threading.Event
) -> None:
    """The reading thread: :meth:`Scorer.prepare` of every batch into ``planned`` (bounded),
    until the batches end or ``stop`` is set; ``_DONE`` last, on every way out."""
    try:
        for docs in batches:
            item = scorer.prepare(docs)
            while not stop.is_set():
                try:
                    planned.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
    finally:
        planned.put(_DONE)  # the consumer drains the queue until this thread ends


def _drain(planned: queue.Queue, producer) -> None:
    """Empty ``planned`` until the reading thread has ended (it may be blocked on a full
    queue)."""
    while not producer.done():
        try:
            planned.get(timeout=0.1)
        except queue.Empty:
            pass


def build_scores_table(
    docs: Documents, ok: list[int], tokens: list[DocTokens], per_doc: list[list], top_k: int
) -> pa.Table:
    """Assemble the scores table with flat numpy buffers and list offsets (no per-token Python)."""
    n_rows = len(docs)
    n_tok = np.zeros(n_rows, dtype=np.int64)
    mean_lp = np.full(n_rows, np.nan)
    parts: list[_DocParts] = []
    ok_set = {row: j for j, row in enumerate(ok)}
    for row in range(n_rows):
        j = ok_set.get(row)
        if j is None:
            continue
        doc, mean = _doc_parts(tokens[j], per_doc[j], top_k)
        n_tok[row] = len(doc.token_ids)
        parts.append(doc)
        if mean is not None:
            mean_lp[row] = mean
    fingerprints = [
        text_fingerprint(docs.texts[row]) if row in ok_set else None for row in range(n_rows)
    ]
    return _scores_table(docs, n_tok, mean_lp, _by_column(parts), fingerprints)


class _DocParts(NamedTuple):
    """One document's flat columns (or, as lists, every document's)."""

    token_ids: np.ndarray  # int32 [n]
    starts: np.ndarray  # int32 [n]
    logprob: np.ndarray  # float32 [n]; 0 where there is no context
    valid: np.ndarray  # bool [n]: has a log-prob
    topk_ids: np.ndarray  # int32 [m, k]: the candidates of the m positions that keep them
    topk_logprobs: np.ndarray  # float32 [m, k]
    topk_count: np.ndarray  # [n]: candidates kept per position (k or 0)


def _by_column(parts: list[_DocParts]) -> _DocParts:
    """Every document's columns, one sequence per column."""
    if not parts:
        return _DocParts(*[()] * len(_DocParts._fields))
    return _DocParts(*zip(*parts, strict=True))


def _doc_parts(t: DocTokens, scored: list, top_k: int) -> tuple[_DocParts, float | None]:
    """A document's columns from its windows' scores (in position order), and its mean
    log-prob (None without scored tokens)."""
    n = len(t.token_ids)
    lp = np.concatenate([r.logprob for r in scored]) if scored else np.zeros(0, np.float32)
    has = np.concatenate([r.has_topk for r in scored]) if scored else np.zeros(0, bool)
    kid = np.concatenate([r.topk_ids for r in scored]) if scored else np.zeros((0, top_k), np.int32)
    klp = (
        np.concatenate([r.topk_logprobs for r in scored])
        if scored
        else np.zeros((0, top_k), np.float32)
    )
    missing = n - len(lp)  # 1 when there is no BOS: the first token has no context
    lp_full = np.concatenate([np.zeros(missing, np.float32), lp])
    valid = np.concatenate([np.zeros(missing, bool), np.ones(len(lp), bool)])
    has_full = np.concatenate([np.zeros(missing, bool), has])
    doc = _DocParts(
        t.token_ids, t.starts, lp_full, valid, kid[has], klp[has], np.where(has_full, top_k, 0)
    )
    return doc, (float(lp.astype(np.float64).mean()) if len(lp) else None)


def _scores_table(
    docs: Documents,
    n_tok: np.ndarray,
    mean_lp: np.ndarray,
    parts: _DocParts,
    fingerprints: list[str | None],
) -> pa.Table:
    """The scores table from every document's columns (``parts``: one list per column)."""

    def cat(parts, dtype):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    row_offsets = np.zeros(len(n_tok) + 1, dtype=np.int32)
    np.cumsum(n_tok, out=row_offsets[1:])
    valid = cat(parts.valid, bool)
    kcount = cat(parts.topk_count, np.int32)
    inner_offsets = np.zeros(len(kcount) + 1, dtype=np.int32)
    np.cumsum(kcount, out=inner_offsets[1:])

    def lists(values: pa.Array) -> pa.Array:
        return pa.ListArray.from_arrays(pa.array(row_offsets), values)

    topk_ids = pa.ListArray.from_arrays(
        pa.array(inner_offsets), pa.array(cat(parts.topk_ids, np.int32).reshape(-1))
    )
    topk_lps = pa.ListArray.from_arrays(
        pa.array(inner_offsets), pa.array(cat(parts.topk_logprobs, np.float32).reshape(-1))
    )
    mean_valid = ~np.isnan(mean_lp)
    columns = {
        ID: pa.array(docs.ids, pa.string()),
        STATUS: pa.array(docs.statuses, pa.string()),
        N_TOKENS: pa.array(n_tok.astype(np.int32)),
        MEAN_LOGPROB: pa.array(mean_lp, mask=~mean_valid),
        PPL: pa.array(np.exp(-np.where(mean_valid, mean_lp, 0.0)), mask=~mean_valid),
        TOKEN_IDS: lists(pa.array(cat(parts.token_ids, np.int32))),
        OFFSETS: lists(pa.array(cat(parts.starts, np.int32))),
        LOGPROB: lists(pa.array(cat(parts.logprob, np.float32), mask=~valid)),
        TOPK_IDS: lists(topk_ids),
        TOPK_LOGPROBS: lists(topk_lps),
        TEXT_FINGERPRINT: pa.array(fingerprints, pa.string()),
    }
    return pa.Table.from_pydict(columns, schema=SCORES_SCHEMA)
