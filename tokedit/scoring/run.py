"""``tokedit score``: stream every shard through the scorer into a scores directory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

from tokedit.config import refuse_unknown, take
from tokedit.engines.options import RunOptions
from tokedit.engines.runner import timed_run_step
from tokedit.engines.step import ShardStep, Stats
from tokedit.errors import InputError
from tokedit.io.manifest import Manifest
from tokedit.io.read import DEFAULT_BATCH_ROWS, iter_documents
from tokedit.io.scores_dir import SCORES_SCHEMA, scores_rel
from tokedit.io.shards import Shard, discover_shards
from tokedit.io.storage import as_path, file_sha256, portable
from tokedit.io.write import ParquetShardWriter, inside
from tokedit.scoring.options import ModelOptions, ScoreOptions
from tokedit.scoring.scorer import Scorer, scored_tables

DEFAULT_PREFETCH = 2


def check_unique_outputs(shards: list[Shard], rel_of) -> None:
    seen: dict[str, str] = {}
    for s in shards:
        out = rel_of(s)
        if out in seen:
            raise InputError(
                f"shards {seen[out]} and {s.rel} would both write {out}",
                remedy="rename one of them; output paths mirror input paths without the format suffix",
            )
        seen[out] = s.rel


@dataclass(frozen=True)
class ScoreCounts:
    """Counts of a scoring run, or of a whole scores directory."""

    documents: int = 0
    tokens: int = 0  # tokens of the documents (what was scored)
    computed_positions: int = 0  # positions the model computed, context and padding included
    padding_positions: int = 0
    context_positions: int = 0  # recomputed as the context of a later window
    statuses: dict[str, int] = field(default_factory=dict)  # rows per status (ok, empty ...)

    @classmethod
    def from_dict(cls, d: dict) -> ScoreCounts:
        return cls(
            **{f.name: d.get(f.name, f.default) for f in fields(cls) if f.name != "statuses"},
            statuses=dict(d.get("statuses", {})),
        )

    @property
    def padding_share(self) -> float:
        """Padding per computed position."""
        return self.padding_positions / self.computed_positions if self.computed_positions else 0.0

    @property
    def compute_overhead(self) -> dict[str, float]:
        """Positions computed per position scored, split into context recompute and padding."""
        computed, padding, context = (
            self.computed_positions,
            self.padding_positions,
            self.context_positions,
        )
        scored = computed - padding - context
        return {
            "computed_per_scored": computed / scored if scored else 0.0,
            "context_per_scored": context / scored if scored else 0.0,
            "padding_per_scored": padding / scored if scored else 0.0,
        }


@dataclass(frozen=True)
class ScoreResult:
    """What :func:`score_dataset` did: this run's counts and the directory's totals."""

    out: str
    processed: int  # shards scored now
    skipped: int  # shards already complete (resumed)
    seconds: float
    run: ScoreCounts  # the shards scored now
    totals: ScoreCounts  # every complete shard of the directory
    shards: int  # complete shards in the directory

    @property
    def tokens_per_s(self) -> float:
        return self.run.tokens / self.seconds if self.seconds else 0.0


def score_dataset(
    input_dir: str,
    out_dir: str,
    *,
    model: str,
    options: ScoreOptions | None = None,
    model_options: ModelOptions | None = None,
    run: RunOptions | None = None,
    text_column: str = "text",
    id_column: str | None = None,
    prefetch: int = DEFAULT_PREFETCH,
    **kwargs,
) -> ScoreResult:
    """Score ``input_dir`` into ``out_dir`` with the prior ``model``.

    Options come as objects (``options``, ``model_options``, ``run``: what ``tokedit
    score`` builds from its flags) or as their fields by keyword (``max_length=256``,
    ``device="cpu"``, ``progress=False``), which replace the objects' values.
    ``engine="local"`` scores the shards one after the other in this process;
    ``engine="ray"`` runs the same :class:`ShardScorer` in a pool of Ray actors (see
    :mod:`tokedit.engines.ray_engine`). Both write the same bytes and manifest entries.
    Rerunning the same call resumes an interrupted run.
    """
    options = take(kwargs, ScoreOptions, options)
    model_options = take(kwargs, ModelOptions, model_options)
    run = take(kwargs, RunOptions, run)
    refuse_unknown(kwargs, "score_dataset", ScoreOptions, ModelOptions, RunOptions)
    shards = discover_shards(input_dir, num_shards=run.num_shards, shard_index=run.shard_index)
    check_unique_outputs(shards, scores_rel)
    tokenizer, options = _tokenizer_and_windows(model, model_options, options)
    checked = Scorer(None, tokenizer, options)  # checks the options before anything is written
    manifest = Manifest(
        out_dir,
        "score",
        _manifest_options(
            model, model_options, options, tokenizer, checked.add_bos, text_column, id_column
        ),
        info=_manifest_info(input_dir, options),
        overwrite=run.overwrite,
    )
    with manifest:
        shard_scorer = ShardScorer(
            portable(as_path(out_dir).resolve()),
            model,
            options,
            text_column=text_column,
            id_column=id_column,
            model_options=model_options,
            batch_rows=run.batch_rows,
            prefetch=prefetch,
        )
        counts, run_stats, elapsed = timed_run_step(
            "score", shards, manifest, shard_scorer, run=run, tokenizer=tokenizer
        )
        totals = directory_totals(manifest, shard_scorer)
        manifest.update(totals=totals)
    return _score_result(out_dir, counts, run_stats, totals, elapsed)


def _tokenizer_and_windows(model: str, model_options: ModelOptions, options: ScoreOptions):
    """The model's tokenizer and ``options`` resolved against its positions (read from its
    config, the model's own code run only if ``model_options`` trust it)."""
    from tokedit.scoring.hf import load_tokenizer, model_positions

    revision, trust = model_options.revision, model_options.trust_remote_code
    tokenizer = load_tokenizer(model, revision, trust_remote_code=trust)
    return tokenizer, options.resolved(model_positions(model, revision, trust_remote_code=trust))


def _score_result(
    out_dir: str, counts: dict, run_stats: Stats, totals: dict, seconds: float
) -> ScoreResult:
    return ScoreResult(
        out=str(out_dir),
        processed=counts["processed"],
        skipped=counts["skipped"],
        seconds=seconds,
        run=ScoreCounts.from_dict(run_stats.to_dict()),
        totals=ScoreCounts.from_dict(totals),
        shards=totals["shards"],
    )


def _manifest_info(input_dir: str, options: ScoreOptions) -> dict:
    """Facts a scores manifest records (not compared on resume). ``bos`` as asked ("auto",
    "always", "never") is one: two modes that resolve to the same ``add_bos`` write the same
    bytes and may resume each other."""
    return {
        "input": str(as_path(input_dir).resolve()),
        "batch_tokens": options.batch_tokens,
        "bos": options.bos,
    }


def _manifest_options(
    model: str,
    model_options: ModelOptions,
    options: ScoreOptions,
    tokenizer,
    add_bos: bool,
    text_column: str,
    id_column: str | None,
) -> dict:
    """The options a scores directory's manifest binds: the model and its tokenizer, the
    windows, the candidates kept, the BOS choice (resolved), the columns and, for a GGUF
    prior, which file and which quantization."""
    from tokedit.scoring.gguf import model_source
    from tokedit.scoring.hf import tokenizer_hash

    manifest_options = {
        "model": model,
        "revision": model_options.revision,
        "backend": model_options.backend,
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "dtype": model_options.dtype,
        "max_length": options.max_length,
        "overlap": options.overlap,
        "top_k": options.top_k,
        "candidates_min_p": options.candidates_min_p,
        "add_bos": add_bos,  # whether a BOS was prepended (bos resolved)
        "text_column": text_column,
        "id_column": id_column,
    }
    source = model_source(model)
    if source:  # a GGUF prior: which file, which quantization
        manifest_options["model_source"] = source
    return manifest_options


def format_score_summary(s: ScoreResult) -> str:
    """Human summary: this run's documents, tokens and speed, the directory's totals."""
    run, tot = s.run, s.totals
    skipped = {k: v for k, v in tot.statuses.items() if k != "ok"}
    lines = [
        f"scored {run.documents} documents, {run.tokens} tokens in {s.seconds:.1f}s "
        f"({s.tokens_per_s:.0f} tokens/s); {s.skipped} shard(s) already done",
        f"{s.out}: {s.shards} shards, {tot.documents} documents, {tot.tokens} tokens, "
        f"padding {100 * tot.padding_share:.1f}% of computed positions",
    ]
    if skipped:
        lines.append(
            "kept without scoring (status column): "
            + ", ".join(f"{k}={v}" for k, v in sorted(skipped.items()))
        )
    return "\n".join(lines)


def directory_totals(manifest: Manifest, step: ShardScorer) -> dict:
    """The scores directory's counts: every complete shard's, summed, the padding share and
    the compute overhead (positions computed per position scored, split into the context
    windows recompute and padding)."""
    out = step.directory_stats(manifest.shards.values()).to_dict()
    out["shards"] = len(manifest.shards)
    computed = out["computed_positions"]
    out["padding_share"] = out["padding_positions"] / computed if computed else 0.0
    if "context_positions" in out:  # shards written before it was counted lack it
        scored = computed - out["padding_positions"] - out["context_positions"]
        out["compute_overhead"] = {
            "computed_per_scored": computed / scored if scored else 0.0,
            "context_per_scored": out["context_positions"] / scored if scored else 0.0,
            "padding_per_scored": out["padding_positions"] / scored if scored else 0.0,
        }
    return out


@dataclass
class ShardScorer(ShardStep):
    """The per-shard step of ``tokedit score``: read a shard, score it, write it atomically.

    Both engines run this same callable: ``--engine local`` in the driver, ``--engine ray``
    in each Ray actor (it is pickled with its configuration only; the tokenizer and the
    model load lazily, once per process). It returns the shard's manifest entry; the
    caller records it after the output file is in place.
    """

    out_dir: str
    model: str
    options: ScoreOptions  # resolved: max_len and overlap set
    text_column: str = "text"
    id_column: str | None = None
    model_options: ModelOptions = field(default_factory=ModelOptions)
    batch_rows: int = DEFAULT_BATCH_ROWS
    # Batches of documents read and tokenized ahead of the model, and assembled and written
    # behind it, in two threads (0: all in turn in this thread); the bytes do not depend on it.
    prefetch: int = DEFAULT_PREFETCH

    STATS_KEYS = (
        "documents",
        "tokens",
        "computed_positions",
        "padding_positions",
        "context_positions",
        "statuses",
    )

    def __post_init__(self) -> None:
        self._scorer: Scorer | None = None
        self.on_tokens: Callable[[int], object] | None = None  # progress, this process only

    def empty_stats(self) -> Stats:
        return Stats({k: {} if k == "statuses" else 0 for k in self.STATS_KEYS})

    def load(self, tokenizer=None) -> ShardScorer:
        """Load the tokenizer (unless given) and the backend, once per process."""
        if self._scorer is None:
            from tokedit.scoring.hf import load_tokenizer

            mo = self.model_options
            tokenizer = tokenizer or load_tokenizer(
                self.model, mo.revision, trust_remote_code=mo.trust_remote_code
            )
            engine = load_backend(self.model, self.model_options, self.options)
            self._scorer = Scorer(engine, tokenizer, self.options)
        return self

    def info(self) -> dict:
        """Facts about the loaded backend, recorded in the manifest's ``info``."""
        engine = self.load()._scorer.backend
        return {
            "device": str(getattr(engine, "device", self.model_options.device)),
            "torch_dtype": str(getattr(engine, "dtype", self.model_options.dtype)),
            "model_revision": getattr(engine, "revision", None),
            # positions per LM-head chunk, sized to the device (hf backend)
            "logit_chunk_positions": getattr(engine, "logit_chunk", None),
            # windows of several documents share rows (hf backend, families that allow it)
            "packed_rows": getattr(engine, "packs", False),
        }

    def __call__(self, shard: Shard) -> dict:
        scorer = self.load()._scorer
        shard_stats = self.empty_stats()
        out_rel = scores_rel(shard)
        dest = inside(self.out_dir, out_rel)
        writer = ParquetShardWriter(dest, SCORES_SCHEMA)
        try:
            reads = iter_documents(shard, self.text_column, self.id_column, self.batch_rows)
            for _table, stats in scored_tables(
                scorer, reads, prefetch=self.prefetch, on_tokens=self.on_tokens, sink=writer.write
            ):
                shard_stats.add(stats)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        return {
            "outputs": [out_rel],
            "rows": writer.rows,
            "sha256": file_sha256(dest),
            **shard_stats.to_dict(),
        }


def load_backend(model: str, model_options: ModelOptions, options: ScoreOptions | None = None):
    """The scoring backend of ``model_options`` (hf or vllm) for ``model``, loaded in this
    process (vllm sizes its engine to ``options``' windows and candidates)."""
    mo = model_options
    kwargs = {
        "device": mo.device,
        "dtype": mo.dtype,
        "revision": mo.revision,
        "trust_remote_code": mo.trust_remote_code,
    }
    if mo.backend == "hf":
        from tokedit.scoring.hf import HFBackend

        return HFBackend(model, **kwargs)
    from tokedit.scoring.gguf import resolve_model
    from tokedit.scoring.vllm_backend import VLLMBackend

    return VLLMBackend.load(resolve_model(model), options=options or ScoreOptions(), **kwargs)
