"""``tokedit edit``: stream input shards with their scores (or a model) into edited shards.

Each input shard gives one output shard at the same relative path, in the same format
(parquet -> parquet, jsonl[.gz|.zst] -> same, datasets arrow -> arrow; ``--output-format
mirror``, the default) or in one format for every shard (``parquet`` or ``jsonl.gz``, at the
same relative path with that suffix), one row per input row, all columns kept; the text
is edited in place (or into ``output_column``) and the provenance columns ``tokedit_*``
(int64 ints in every format) are appended. A sweep over several thresholds writes ``OUT/p=<p>/...``
per threshold from one read of the input and the scores. Resume and atomicity come from
:func:`tokedit.engines.runner.run_shards` and the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from tokedit.config import refuse_unknown, take
from tokedit.editor.options import (
    EDIT_KEYWORDS,
    EditOptions,
    build_edit_options,
    resolve_model_rule,
    resolve_rule,
)
from tokedit.editor.rules import EditRule
from tokedit.editor.step import ShardEditor, load_checked_tokenizer, one_pass_options
from tokedit.engines.options import RunOptions
from tokedit.engines.runner import timed_run_step
from tokedit.errors import InputError, arg
from tokedit.io.edited_dir import check_output_format, p_dir, p_label, shard_output_rel
from tokedit.io.manifest import Manifest
from tokedit.io.read import STATUS_OK
from tokedit.io.scores_dir import load_scores_manifest, scores_fingerprint
from tokedit.io.shards import discover_shards
from tokedit.io.storage import as_path, portable
from tokedit.scoring.options import (
    MODEL_FIELDS,
    ONE_PASS_FIELDS,
    ModelOptions,
    ScoreOptions,
    one_pass_score_options,
)
from tokedit.scoring.run import check_unique_outputs
from tokedit.scoring.scorer import bos_prepended

# ----------------------------------------------------------------------------- validation


def _check_out_dir(out_dir: Path, input_dir: Path, scores_dir: Path | None) -> None:
    out, inp = out_dir.resolve(), input_dir.resolve()
    if out == inp or inp in out.parents or (inp.is_file() and out == inp.parent):
        raise InputError(
            f"{arg('out_dir', str(out_dir))} is the input directory or inside it",
            remedy="write the edited dataset to a directory outside the input",
        )
    if scores_dir is not None and out == scores_dir.resolve():
        raise InputError(
            f"{arg('out_dir', str(out_dir))} is the scores directory",
            remedy=f"choose another {arg('out_dir')}",
        )


def _check_scores_bos(scores_dir: Path, manifest: dict, tok, score_options) -> None:
    """With ``--scores``, an explicit ``--bos`` must resolve (with the scores' tokenizer) to
    the BOS choice the scores were made with: the stored log-probs are conditioned on it,
    and nothing is rescored. Without ``--bos`` the scores' choice is taken as it is."""
    mode = score_options.bos if score_options is not None else None
    stored = manifest.get("options", {}).get("add_bos")
    if mode is None or stored is None:
        return
    wanted = bos_prepended(tok, mode)
    if wanted != bool(stored):
        asked = manifest.get("info", {}).get("bos")
        made = (
            ("with" if stored else "without")
            + " a BOS token"
            + (f" ({arg('bos', asked)})" if asked else "")
        )
        raise InputError(
            f"{arg('bos', mode)} {'prepends' if wanted else 'does not prepend'} a BOS token "
            f"with this tokenizer, but {scores_dir} was scored {made}",
            remedy=f"leave {arg('bos')} out to edit with the scores as they are, or rescore "
            f"with {arg('bos', mode)}",
        )


# ----------------------------------------------------------------------------- output


# ----------------------------------------------------------------------------- sources


# ----------------------------------------------------------------------------- the run


@dataclass
class EditPlan:
    """What an edit reads and what its manifest records, decided before any shard is read.

    ``identity`` is the part of the manifest's options that names the source (compared on
    resume); ``info`` holds facts (recorded, not compared). The other fields are what the
    :class:`ShardEditor` reads its tokens and candidates from: a scores directory, or a model.
    """

    mode: str  # "scores" or "model"
    rule: EditRule  # resolved against the scores' top-k or the backend
    text_column: str
    id_column: str | None
    identity: dict
    info: dict
    tokenizer: str  # what the step loads: the scores' model, --tokenizer, or --model
    tokenizer_revision: str | None = None
    tokenizer_trust_remote_code: bool = False  # the tokenizer's own code may run
    tokenizer_hash: str | None = None  # scores mode: checked when the step loads it
    loaded_tokenizer: object = None  # already loaded here (one-pass, or a checked --tokenizer)
    scores_dir: str | None = None
    scores_rows: dict[str, int | None] | None = None
    model: str | None = None
    model_options: ModelOptions | None = None
    score_options: ScoreOptions | None = None

    def shard_editor(self, out_dir: str, options: EditOptions, batch_rows: int) -> ShardEditor:
        return ShardEditor(
            out_dir,
            replace(options, rule=self.rule),
            text_column=self.text_column,
            id_column=self.id_column,
            batch_rows=batch_rows,
            tokenizer=self.tokenizer,
            tokenizer_revision=self.tokenizer_revision,
            tokenizer_trust_remote_code=self.tokenizer_trust_remote_code,
            tokenizer_hash=self.tokenizer_hash,
            scores_dir=self.scores_dir,
            scores_rows=self.scores_rows,
            model=self.model,
            model_options=self.model_options,
            score_options=self.score_options,
        )


def _refuse_a_backend(model_options: ModelOptions | None) -> None:
    """With scores nothing is scored: a backend other than the default is a mistake."""
    if model_options is not None and model_options.backend != "hf":
        raise InputError(
            f"{arg('backend', model_options.backend)} scores with {arg('model')}; with "
            f"{arg('scores_dir')} nothing is scored",
            remedy=f"leave {arg('backend')} out, or pass {arg('model')} instead of {arg('scores_dir')}",
        )


def plan_from_scores(
    scores_path,
    input_path,
    all_shards,
    options: EditOptions,
    model_options: ModelOptions | None,
    score_options: ScoreOptions | None,
    text_column: str | None,
    id_column: str | None,
    tokenizer: str | None,
) -> EditPlan:
    """Edit from a scores directory: checked against the input, the thresholds, the columns
    given and (if asked) the tokenizer and ``--bos``."""
    _refuse_a_backend(model_options)
    smanifest = load_scores_manifest(scores_path, input_path, all_shards, options.ps)
    sopts = smanifest["options"]
    for name, given, stored in (
        ("text_column", text_column, sopts.get("text_column", "text")),
        ("id_column", id_column, sopts.get("id_column")),
    ):
        if given is not None and given != stored:
            computed = arg(name, stored) if stored is not None else f"no {arg(name)}"
            raise InputError(
                f"{arg(name, given)}, but the scores in {scores_path} were computed with {computed}",
                remedy=f"leave {arg(name)} out (the scores' value is used), or rescore",
            )
    tok_source = tokenizer or sopts.get("model")
    tok_revision = None if tokenizer else sopts.get("revision")
    thash = sopts.get("tokenizer_hash")
    trust = model_options is not None and model_options.trust_remote_code
    # The scores' own tokenizer loads (and is checked against their hash) only when a shard
    # is edited: a resumed run with nothing left to do starts in well under 2 s.
    tok = None
    if tokenizer is not None or score_options is not None:
        tok = load_checked_tokenizer(tok_source, tok_revision, thash, scores_path, trust)
    _check_scores_bos(scores_path, smanifest, tok, score_options)
    return EditPlan(
        mode="scores",
        rule=resolve_rule(options, int(sopts.get("top_k", 0)), scores_mode=True),
        text_column=sopts.get("text_column", "text"),
        id_column=sopts.get("id_column"),
        identity={
            "mode": "scores",
            "scores": scores_fingerprint(smanifest),
            "model": sopts.get("model"),
            "tokenizer_hash": thash,
        },
        info={"scores": str(scores_path.resolve())},
        tokenizer=tok_source,
        tokenizer_revision=tok_revision,
        tokenizer_trust_remote_code=trust,
        tokenizer_hash=thash,
        loaded_tokenizer=tok,
        scores_dir=portable(scores_path.resolve()),
        scores_rows={rel: e.get("rows") for rel, e in smanifest["shards"].items()},
    )


def plan_from_model(
    model: str,
    options: EditOptions,
    model_options: ModelOptions | None,
    score_options: ScoreOptions | None,
    text_column: str | None,
    id_column: str | None,
) -> EditPlan:
    """Score with ``model`` and edit in the same pass (hf: draws from full rows; vLLM: from
    its top-k candidates)."""
    from tokedit.scoring.gguf import model_source
    from tokedit.scoring.hf import load_tokenizer, model_positions, tokenizer_hash

    model_options = model_options or ModelOptions()
    revision, trust = model_options.revision, model_options.trust_remote_code
    tok = load_tokenizer(model, revision, trust_remote_code=trust)
    rule = resolve_model_rule(options, model_options.backend)
    score_options = one_pass_options(
        score_options or ScoreOptions(), rule, model_options.backend, min(options.ps)
    ).resolved(model_positions(model, revision, trust_remote_code=trust))
    identity = {
        "mode": "model",
        "backend": model_options.backend,
        "model": model,
        "revision": model_options.revision,
        "tokenizer_hash": tokenizer_hash(tok),
        "dtype": model_options.dtype,
        "max_length": score_options.max_length,
        "overlap": score_options.overlap,
        "add_bos": bos_prepended(tok, score_options.bos),  # a BOS was prepended
    }
    if source := model_source(model):  # a GGUF prior: which file, which quantization
        identity["model_source"] = source
    return EditPlan(
        mode="model",
        rule=rule,
        text_column=text_column or "text",
        id_column=id_column,
        identity=identity,
        info={"bos": score_options.bos},
        tokenizer=model,
        tokenizer_revision=model_options.revision,
        tokenizer_trust_remote_code=trust,
        loaded_tokenizer=tok,
        model=model,
        model_options=model_options,
        score_options=score_options,
    )


@dataclass(frozen=True)
class EditCounts:
    """Counts of one threshold: over a run, a shard, or a whole edited directory."""

    documents: int = 0
    documents_changed: int = 0
    tokens: int = 0  # tokens read
    scored: int = 0  # tokens with a log-prob (all but a first token without BOS)
    chars: int = 0
    above: int = 0  # tokens with P > p
    changed: int = 0  # replaced by another token
    drawn_original: int = 0  # redrawn as themselves (kept)
    skipped: dict[str, int] = field(default_factory=dict)  # span, render, no_candidate
    below: int = 0  # tokens with P < drop_below
    deleted: int = 0
    deleted_chars: int = 0
    delete_skipped: int = 0  # below drop_below but not spliceable, kept

    @classmethod
    def from_dict(cls, d: dict) -> EditCounts:
        values = {f.name: d.get(f.name, 0) for f in fields(cls) if f.name != "skipped"}
        return cls(**values, skipped=dict(d.get("skipped", {})))

    @property
    def above_share(self) -> float:
        return self.above / self.scored if self.scored else 0.0

    @property
    def changed_share(self) -> float:
        return self.changed / self.scored if self.scored else 0.0


@dataclass(frozen=True)
class EditResult:
    """What :func:`edit_dataset` did: per threshold (``p_label``: ``"0.99"``), this run's
    counts and the directory's totals, and where each threshold's output is."""

    out: str
    mode: str  # "scores" or "model"
    rule: EditRule  # as resolved (against the scores' top-k or the backend)
    processed: int  # shards edited now
    skipped: int  # shards already complete (resumed)
    seconds: float
    run: dict[str, EditCounts]
    totals: dict[str, EditCounts]
    statuses: dict[str, int]  # rows per status over the directory (ok, empty ...)
    shards: int  # complete shards in the directory
    outputs: dict[str, str]  # threshold -> its directory

    @property
    def tokens(self) -> int:
        """Tokens read in this run (every threshold of a sweep reads the same ones)."""
        return max((c.tokens for c in self.run.values()), default=0)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def edit_dataset(
    input_dir: str,
    out_dir: str,
    *,
    scores_dir: str | None = None,
    model: str | None = None,
    options: EditOptions | None = None,
    model_options: ModelOptions | None = None,
    score_options: ScoreOptions | None = None,
    run: RunOptions | None = None,
    text_column: str | None = None,
    id_column: str | None = None,
    tokenizer: str | None = None,
    **kwargs,
) -> EditResult:
    """Edit ``input_dir`` into ``out_dir`` from ``scores_dir`` (or in one pass with ``model``).

    Options come as objects (what ``tokedit edit`` builds from its flags) or by keyword:
    ``preset``, ``p`` (one threshold or several), the rule's fields (``top_k``,
    ``temperature``, ``drop_below`` ...), ``seed``, ``output_column``, ``provenance``,
    ``output_format``; with ``model``, the fields of ``ModelOptions`` and ``ScoreOptions``
    (windows, ``batch_tokens``, ``bos``); the fields of ``RunOptions``. With ``scores_dir``,
    a ``bos`` given is checked against the scores. ``engine="local"`` edits the shards one
    after the other in this process; ``engine="ray"`` runs the same :class:`ShardEditor` in
    a pool of Ray actors. Both write the same bytes and manifest entries.
    """
    options = build_edit_options(options, kwargs)
    model_options, score_options, run = _edit_keywords(kwargs, model_options, score_options, run)
    _check_one_source(scores_dir, model)
    input_path, out_path = as_path(input_dir), as_path(out_dir)
    check_output_format(options.output_format)
    all_shards = discover_shards(input_path)
    check_unique_outputs(all_shards, lambda s: shard_output_rel(s, options.output_format))
    shards = discover_shards(input_path, num_shards=run.num_shards, shard_index=run.shard_index)
    _check_out_dir(out_path, input_path, as_path(scores_dir) if scores_dir else None)

    if scores_dir is not None:
        plan = plan_from_scores(
            as_path(scores_dir), input_path, all_shards, options, model_options,
            score_options, text_column, id_column, tokenizer,
        )  # fmt: skip
    else:
        plan = plan_from_model(model, options, model_options, score_options, text_column, id_column)
    info = {"input": str(input_path.resolve()), **plan.info}
    info["preset"] = options.preset
    info["overridden"] = list(options.overridden)
    manifest = Manifest(
        out_path, "edit", _manifest_options(plan, options), info=info, overwrite=run.overwrite
    )
    with manifest:
        shard_editor = plan.shard_editor(portable(out_path.resolve()), options, run.batch_rows)
        counts, run_stats, elapsed = timed_run_step(
            "edit", shards, manifest, shard_editor, run=run, tokenizer=plan.loaded_tokenizer
        )
        totals = directory_totals(manifest, shard_editor)
        manifest.update(totals=totals)
    return _edit_result(out_path, plan, options.ps, counts, run_stats, totals, elapsed)


def _check_one_source(scores_dir: str | None, model: str | None) -> None:
    """Exactly one source of tokens and candidates: a scores directory or a model."""
    if (scores_dir is None) == (model is None):
        raise InputError(
            f"pass either {arg('scores_dir')} (edit from a scores directory) or {arg('model')} "
            "(score and edit in one pass)",
            remedy="e.g. `tokedit edit DATA --scores SCORES --out EDITED`",
        )


def _edit_keywords(
    kwargs: dict,
    model_options: ModelOptions | None,
    score_options: ScoreOptions | None,
    run: RunOptions | None,
) -> tuple[ModelOptions | None, ScoreOptions | None, RunOptions]:
    """The model, one-pass window and run options of :func:`edit_dataset`, with their fields
    given by keyword taken from ``kwargs``; a keyword left over is refused."""
    if model_options is not None or any(k in kwargs for k in MODEL_FIELDS):
        model_options = take(kwargs, ModelOptions, model_options)
    score_options = one_pass_score_options(score_options, kwargs)
    run = take(kwargs, RunOptions, run)
    refuse_unknown(
        kwargs,
        "edit_dataset",
        ModelOptions,
        RunOptions,
        extra=EDIT_KEYWORDS + ONE_PASS_FIELDS,
    )
    return model_options, score_options, run


def _manifest_options(plan: EditPlan, options: EditOptions) -> dict:
    """The options an edited directory's manifest binds: the source (``plan.identity``),
    the thresholds, the resolved rule, the seed, the columns and the output's form."""
    rule = plan.rule
    return {
        **plan.identity,
        "p": list(options.ps),
        "strategy": rule.strategy,
        "top_k": rule.top_k,
        "top_p": rule.top_p,
        "temperature": rule.temperature,
        "exclude_original": rule.exclude_original,
        "drop_below": rule.drop_below,
        "seed": options.seed,
        "text_column": plan.text_column,
        "id_column": plan.id_column,
        "output_column": options.output_column,
        "provenance": options.provenance,
        "output_format": options.output_format,
    }


def _edit_result(
    out_path, plan: EditPlan, ps, counts: dict, run_stats, totals: dict, seconds: float
) -> EditResult:
    """The run's counts and the directory's totals per threshold, and where each threshold's
    output is (``OUT/p=<p>`` in a sweep, else ``OUT``)."""
    sweep = len(ps) > 1
    return EditResult(
        out=str(out_path),
        mode=plan.identity["mode"],
        rule=plan.rule,
        processed=counts["processed"],
        skipped=counts["skipped"],
        seconds=seconds,
        run={k: EditCounts.from_dict(c) for k, c in run_stats["p"].items()},
        totals={k: EditCounts.from_dict(c) for k, c in totals["p"].items()},
        statuses=dict(totals["statuses"]),
        shards=totals["shards"],
        outputs={p_label(p): str(out_path / p_dir(p)) if sweep else str(out_path) for p in ps},
    )


def directory_totals(manifest: Manifest, step: ShardEditor) -> dict:
    """Per threshold: counts summed over every complete shard of the output directory."""
    stats = step.directory_stats(manifest.shards.values())
    return {"shards": len(manifest.shards), **stats.to_dict()}


def _share(a: int, b: int) -> str:
    return f"{100 * a / b:.2f}%" if b else "n/a"


def format_edit_summary(s: EditResult) -> str:
    """Human summary: per threshold, the share above it, the share actually changed, the
    positions redrawn as themselves, and the share deleted (``--drop-below``)."""
    run_docs = max((c.documents for c in s.run.values()), default=0)
    lines = [
        f"edited {run_docs} documents, {s.tokens} tokens in {s.seconds:.1f}s "
        f"({s.tokens_per_s:.0f} tokens/s, {s.mode} mode); {s.skipped} shard(s) already done"
    ]
    q = s.rule.drop_below
    for k, c in s.totals.items():
        sk = c.skipped
        lines.append(
            f"p={k}: above threshold {_share(c.above, c.scored)} of scored tokens "
            f"({c.above}), changed {_share(c.changed, c.scored)} "
            f"({c.changed}), redrawn as themselves {c.drawn_original}, "
            f"deleted {_share(c.deleted, c.scored)} ({c.deleted}"
            + (
                f"; P < {q}; {_share(c.deleted_chars, c.chars)} of the "
                f"characters; {c.delete_skipped} not spliceable, kept)"
                if q
                else "; no --drop-below)"
            )
            + f", skipped {sum(sk.values())} (span {sk.get('span', 0)}, render {sk.get('render', 0)}, "
            f"no candidate {sk.get('no_candidate', 0)}) -> {s.outputs[k]}"
        )
    kept = {k: v for k, v in s.statuses.items() if k != STATUS_OK}
    if kept:
        lines.append(
            "kept unedited (not text): " + ", ".join(f"{k}={v}" for k, v in sorted(kept.items()))
        )
    return "\n".join(lines)
