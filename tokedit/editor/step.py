"""The per-shard step of ``tokedit edit``: read a shard with its source of candidates, write
one output shard per threshold, return the shard's manifest entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pyarrow as pa

from tokedit.editor.batch import apply_draws
from tokedit.editor.options import EditOptions
from tokedit.editor.rules import banned_mask
from tokedit.editor.sources import CandidatesSource, ModelSource, ScoresSource
from tokedit.editor.splice import Renderer
from tokedit.engines.step import ShardStep, Stats
from tokedit.errors import InputError, arg
from tokedit.io.edited_dir import (
    ShardOutput,
    as_output_rows,
    colliding_provenance_columns,
    empty_batch,
    jsonl_table_schema,
    output_format_of,
    output_records,
    output_rel,
    output_table,
    p_dir,
    p_label,
    write_dataset_sidecars,
)
from tokedit.io.read import iter_batches, to_documents
from tokedit.io.shards import Shard
from tokedit.io.storage import as_path, file_sha256
from tokedit.io.write import inside
from tokedit.scoring.options import ModelOptions, ScoreOptions
from tokedit.scoring.run import load_backend
from tokedit.scoring.scorer import bos_prepended


def load_checked_tokenizer(
    source: str, revision: str | None, expected_hash, scores_dir, trust_remote_code: bool
):
    """The tokenizer edits render with, refused unless it is the one the scores were made with."""
    from tokedit.scoring.hf import load_tokenizer, tokenizer_hash

    tok = load_tokenizer(source, revision, trust_remote_code=trust_remote_code)
    thash = tokenizer_hash(tok)
    if thash != expected_hash:
        raise InputError(
            f"the tokenizer of {source!r} (hash {thash}) is not the one {scores_dir} was scored with (hash {expected_hash})",
            remedy=f"pass {arg('tokenizer')} with the scoring model's tokenizer, or rescore",
        )
    return tok


def one_pass_options(so: ScoreOptions, rule, backend: str, p_min: float) -> ScoreOptions:
    """The scorer's options when editing in one pass: no stored candidates with ``hf`` (the
    draws come from full rows), the rule's top-k down to the lowest threshold with ``vllm``."""
    full_rows = backend == "hf"
    return replace(
        so,
        top_k=0 if full_rows else rule.top_k,
        candidates_min_p=1.0 if full_rows else p_min,
    )


def model_source(engine, tok, backend: str, so: ScoreOptions, rule, seed: int, p_min: float):
    """Tokens and draws from a loaded model in the same pass: full rows with ``hf``
    (:class:`DrawingBackend`), the top-k candidates with ``vllm``."""
    from tokedit.scoring.scorer import Scorer

    if backend == "hf":
        from tokedit.editor.onepass import DrawingBackend

        banned = banned_mask(tok, extra_size=engine.head.vocab_size)
        bos = 1 if bos_prepended(tok, so.bos) else 0
        drawing = DrawingBackend(engine, rule, banned, p_min, bos, seed)
        return ModelSource(Scorer(drawing, tok, so), drawing)
    return CandidatesSource(Scorer(engine, tok, so), rule, banned_mask(tok), seed, p_min)


def edit_batch(source, renderer, batch, docs, ps, drop_below: float, on_tokens=None):
    """Draws for one batch from ``source``, applied at each threshold of ``ps``: the
    batch's scores and ``{p: EditedBatch}``."""
    sb, draws = source.batch(batch, docs, on_tokens=on_tokens)
    edited = {p: apply_draws(sb, docs.texts, draws, p, renderer, drop_below=drop_below) for p in ps}
    return sb, edited


@dataclass
class ShardEditor(ShardStep):
    """The per-shard step of ``tokedit edit``: read a shard (and its scores), write its edits.

    Both engines run this same callable: ``--engine local`` in the driver, ``--engine ray``
    in each Ray actor. It is pickled with its configuration only; the tokenizer, and in
    one-pass mode the model, load lazily, once per process. It writes one output shard per
    threshold atomically and returns the shard's manifest entry; the caller records it.
    Exactly one of ``scores_dir`` (with ``scores_rows``, the scores manifest's row count per
    shard) and ``model`` (with ``model_options`` and the resolved ``score_options``) is set.
    """

    out_dir: str
    options: EditOptions  # thresholds parsed, rule checked against the scores
    text_column: str
    id_column: str | None
    batch_rows: int
    tokenizer: str  # what load_tokenizer loads: the scores' model, --tokenizer, or --model
    tokenizer_revision: str | None = None
    tokenizer_trust_remote_code: bool = False  # the tokenizer's own code may run
    tokenizer_hash: str | None = None  # with scores_dir: the scores' tokenizer, checked on load
    scores_dir: str | None = None
    scores_rows: dict[str, int | None] | None = None
    model: str | None = None
    model_options: ModelOptions | None = None
    score_options: ScoreOptions | None = None  # resolved: max_len and overlap set

    STATS_KEYS = ("statuses", "p")  # "p": per threshold, the counts of apply_draws

    def empty_stats(self) -> Stats:
        return Stats({"statuses": {}, "p": {p_label(p): {} for p in self.ps}})

    @staticmethod
    def entry_tokens(entry: dict) -> int:
        """Tokens read for one shard (every threshold of a sweep reads the same tokens)."""
        return max((c.get("tokens", 0) for c in entry["p"].values()), default=0)

    def __post_init__(self) -> None:
        self._renderer: Renderer | None = None
        self._source: ScoresSource | ModelSource | CandidatesSource | None = None
        self._info: dict = {}
        self._table_schema: pa.Schema | None = None  # of the shard being edited (jsonl -> parquet)
        self.on_tokens: Callable[[int], object] | None = None  # progress, this process only

    @property
    def ps(self) -> tuple[float, ...]:
        return self.options.ps

    @property
    def sweep(self) -> bool:
        return len(self.options.ps) > 1

    def _rel(self, shard: Shard, p: float) -> str:
        return output_rel(shard, p, self.sweep, self.options.output_format)

    def load(self, tokenizer=None) -> ShardEditor:
        """Load the tokenizer (unless given) and the scores reader or the model, once."""
        if self._source is not None:
            return self
        from tokedit.scoring.hf import load_tokenizer

        trust = self.tokenizer_trust_remote_code
        if tokenizer is not None:
            tok = tokenizer
        elif self.tokenizer_hash is not None:
            tok = load_checked_tokenizer(
                self.tokenizer, self.tokenizer_revision, self.tokenizer_hash, self.scores_dir, trust
            )
        else:
            tok = load_tokenizer(self.tokenizer, self.tokenizer_revision, trust_remote_code=trust)
        rule, seed, p_min = self.options.rule, self.options.seed, min(self.ps)
        if self.scores_dir is not None:
            source = ScoresSource(
                as_path(self.scores_dir), self.scores_rows, rule, banned_mask(tok), seed, p_min
            )
        else:
            mo, so = self.model_options, self.score_options
            engine = load_backend(self.model, mo, so)
            source = model_source(engine, tok, mo.backend, so, rule, seed, p_min)
            self._info = {"device": str(engine.device), "torch_dtype": str(engine.dtype)}
        self._renderer = Renderer(tok)
        self._source = source
        return self

    def info(self) -> dict:
        """Facts about the loaded model (one-pass mode), recorded in the manifest's ``info``."""
        return dict(self.load()._info)

    def __call__(self, shard: Shard) -> dict:
        self.load()
        out_root = as_path(self.out_dir)
        out_fmt = output_format_of(shard, self.options.output_format)
        # JSON lines to parquet: the column types of the whole shard, read once beforehand
        # (one batch's inferred types would not hold for the next).
        self._table_schema = (
            jsonl_table_schema(shard, self.batch_rows, self.text_column, self.id_column)
            if shard.fmt.startswith("jsonl") and not out_fmt.startswith("jsonl")
            else None
        )
        outs = {p: ShardOutput(inside(out_root, self._rel(shard, p)), out_fmt) for p in self.ps}
        stats = self.empty_stats()
        rows = 0
        try:
            self._source.open(shard)
            got_any = False
            for batch in iter_batches(shard, self.batch_rows):
                got_any = True
                self._edit_batch(batch, outs, stats)
                rows += len(batch)
            if not got_any and not out_fmt.startswith("jsonl"):
                empty = empty_batch(shard, self._table_schema)
                self._edit_batch(empty, outs, stats)
            self._source.close(shard)
            for o in outs.values():
                o.close()
        except BaseException:
            for o in outs.values():
                o.abort()
            raise
        outputs, sha = [], {}
        for p, o in outs.items():
            rel = self._rel(shard, p)
            outputs.append(rel)
            sha[rel] = file_sha256(out_root / rel)
            if out_fmt == "arrow":
                outputs += write_dataset_sidecars(
                    shard, out_root, o.schema, p_dir(p) if self.sweep else ""
                )
        return {
            "outputs": outputs,
            "rows": rows,
            "sha256": sha,
            **stats.to_dict(),
        }

    def _edit_batch(self, batch, outs, stats: Stats) -> None:
        text_column, options = self.text_column, self.options
        docs = to_documents(batch, text_column, self.id_column)
        target = options.output_column
        if target and target != text_column and batch.has_column(target):
            raise InputError(
                f"{batch.shard.path}: already has a column {target!r}",
                remedy=f"choose another {arg('output_column')}, or leave it out to edit the text in place",
            )
        colliding = colliding_provenance_columns(batch.column_names()) if options.provenance else []
        if colliding:
            raise InputError(
                f"{batch.shard.path}: has column(s) {', '.join(map(repr, colliding))}, which the "
                "edit writes as provenance: the input's values would be lost",
                remedy=f"rename the column(s) in the input, or pass {arg('provenance', False)}",
            )
        for s in docs.statuses:
            stats.add({"statuses": {s: 1}})
        _, edited = edit_batch(
            self._source, self._renderer, batch, docs, self.ps, options.rule.drop_below,
            self.on_tokens,
        )  # fmt: skip
        rows = as_output_rows(batch, next(iter(outs.values())).fmt, self._table_schema)
        provenance = (options.output_column, options.provenance)
        for p, out in outs.items():
            stats.add({"p": {p_label(p): edited[p].counts}})
            if rows.table is not None:
                out.write_table(output_table(rows, docs, edited[p], text_column, *provenance))
            else:
                out.write_records(output_records(rows, docs, edited[p], text_column, *provenance))
