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

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tokedit.editor.options import (
    EditOptions,
    ModelOptions,
    parse_ps,
    resolve_model_rule,
    resolve_rule,
)
from tokedit.editor.rules import EditRule
from tokedit.editor.step import ShardEditor, load_checked_tokenizer
from tokedit.engines.runner import check_engine, run_step, token_bar
from tokedit.errors import InputError
from tokedit.io.edited_dir import check_output_format, p_dir, p_label, shard_output_rel
from tokedit.io.manifest import Manifest
from tokedit.io.read import (
    DEFAULT_BATCH_ROWS,
    STATUS_OK,
)
from tokedit.io.scores_dir import load_scores_manifest, scores_fingerprint
from tokedit.io.shards import discover_shards
from tokedit.io.storage import as_path
from tokedit.scoring.run import check_unique_outputs
from tokedit.scoring.scorer import (
    ScoreOptions,
    bos_prepended,
)

# ----------------------------------------------------------------------------- validation


def _check_out_dir(out_dir: Path, input_dir: Path, scores_dir: Path | None) -> None:
    out, inp = out_dir.resolve(), input_dir.resolve()
    if out == inp or inp in out.parents or (inp.is_file() and out == inp.parent):
        raise InputError(
            f"--out {out_dir} is the input directory or inside it",
            remedy="write the edited dataset to a directory outside the input",
        )
    if scores_dir is not None and out == scores_dir.resolve():
        raise InputError(f"--out {out_dir} is the scores directory", remedy="choose another --out")


def _check_scores_bos(scores_dir: Path, manifest: dict, tok, model_options) -> None:
    """With ``--scores``, an explicit ``--bos`` must resolve (with the scores' tokenizer) to
    the BOS choice the scores were made with: the stored log-probs are conditioned on it,
    and nothing is rescored. Without ``--bos`` the scores' choice is taken as it is."""
    mode = model_options.bos if model_options is not None else None
    stored = manifest.get("options", {}).get("add_bos")
    if mode is None or stored is None:
        return
    wanted = bos_prepended(tok, mode)
    if wanted != bool(stored):
        asked = manifest.get("info", {}).get("bos")
        made = (
            ("with" if stored else "without")
            + " a BOS token"
            + (f" (--bos {asked})" if asked else "")
        )
        raise InputError(
            f"--bos {mode} {'prepends' if wanted else 'does not prepend'} a BOS token with this "
            f"tokenizer, but {scores_dir} was scored {made}",
            remedy="leave --bos out to edit with the scores as they are, or rescore with "
            f"`tokedit score --bos {mode}`",
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
            tokenizer_hash=self.tokenizer_hash,
            scores_dir=self.scores_dir,
            scores_rows=self.scores_rows,
            model=self.model,
            model_options=self.model_options,
            score_options=self.score_options,
        )


def plan_from_scores(
    scores_path,
    input_path,
    all_shards,
    options: EditOptions,
    model_options: ModelOptions | None,
    text_column: str | None,
    id_column: str | None,
    tokenizer: str | None,
) -> EditPlan:
    """Edit from a scores directory: checked against the input, the thresholds, the columns
    given and (if asked) the tokenizer and ``--bos``."""
    if model_options is not None and model_options.backend != "hf":
        raise InputError(
            f"--backend {model_options.backend} scores with --model; with --scores nothing is scored",
            remedy="leave --backend out, or pass --model instead of --scores",
        )
    smanifest = load_scores_manifest(scores_path, input_path, all_shards, options.ps)
    sopts = smanifest["options"]
    for flag, given, stored in (
        ("--text-column", text_column, sopts.get("text_column", "text")),
        ("--id-column", id_column, sopts.get("id_column")),
    ):
        if given is not None and given != stored:
            raise InputError(
                f"{flag} {given!r}, but the scores in {scores_path} were computed with {flag} {stored!r}",
                remedy=f"leave {flag} out (the scores' value is used), or rescore",
            )
    tok_source = tokenizer or sopts.get("model")
    tok_revision = None if tokenizer else sopts.get("revision")
    thash = sopts.get("tokenizer_hash")
    # The scores' own tokenizer loads (and is checked against their hash) only when a shard
    # is edited: a resumed run with nothing left to do starts in well under 2 s.
    tok = None
    if tokenizer is not None or (model_options is not None and model_options.bos):
        tok = load_checked_tokenizer(tok_source, tok_revision, thash, scores_path)
    _check_scores_bos(scores_path, smanifest, tok, model_options)
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
        tokenizer_hash=thash,
        loaded_tokenizer=tok,
        scores_dir=str(scores_path.resolve()),
        scores_rows={rel: e.get("rows") for rel, e in smanifest["shards"].items()},
    )


def plan_from_model(
    model: str,
    options: EditOptions,
    model_options: ModelOptions | None,
    text_column: str | None,
    id_column: str | None,
) -> EditPlan:
    """Score with ``model`` and edit in the same pass (hf: draws from full rows; vLLM: from
    its top-k candidates)."""
    from tokedit.scoring.gguf import model_source
    from tokedit.scoring.hf import load_tokenizer, model_positions, tokenizer_hash

    model_options = model_options or ModelOptions()
    tok = load_tokenizer(model, model_options.revision)
    rule = resolve_model_rule(options, model_options.backend)
    full_rows = model_options.backend == "hf"
    score_options = ScoreOptions(
        max_len=model_options.max_len,
        overlap=model_options.overlap,
        batch_tokens=model_options.batch_tokens,
        top_k=0 if full_rows else rule.top_k,
        candidates_min_p=1.0 if full_rows else min(options.ps),
        bos=model_options.bos or "auto",
    ).resolved(model_positions(model, model_options.revision))
    identity = {
        "mode": "model",
        "backend": model_options.backend,
        "model": model,
        "revision": model_options.revision,
        "tokenizer_hash": tokenizer_hash(tok),
        "dtype": model_options.dtype,
        "max_length": score_options.max_len,
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
        loaded_tokenizer=tok,
        model=model,
        model_options=model_options,
        score_options=score_options,
    )


def edit_dataset(
    input_dir: str,
    out_dir: str,
    *,
    scores_dir: str | None = None,
    model: str | None = None,
    options: EditOptions | None = None,
    model_options: ModelOptions | None = None,
    text_column: str | None = None,
    id_column: str | None = None,
    tokenizer: str | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
    overwrite: bool = False,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: bool = True,
    engine: str = "local",
    ray_address: str | None = None,
    ray_actors: int | None = None,
) -> dict:
    """Edit ``input_dir`` into ``out_dir`` from ``scores_dir`` (or in one pass with ``model``).

    ``engine="local"`` edits the shards one after the other in this process;
    ``engine="ray"`` runs the same :class:`ShardEditor` in a pool of Ray actors. Both write
    the same bytes and manifest entries. Returns counts of this run and, per threshold,
    totals over the whole output directory.
    """
    options = options or EditOptions()
    check_engine(engine)
    if (scores_dir is None) == (model is None):
        raise InputError(
            "pass either --scores (edit from a scores directory) or --model (score and edit in one pass)",
            remedy="e.g. tokedit edit DATA --scores SCORES --out EDITED",
        )
    if batch_rows < 1:
        raise InputError(f"--batch-rows {batch_rows} must be >= 1", remedy="e.g. --batch-rows 512")
    input_path, out_path = as_path(input_dir), as_path(out_dir)
    ps = parse_ps(options.ps)
    options = replace(options, ps=ps)
    check_output_format(options.output_format)
    sweep = len(ps) > 1
    all_shards = discover_shards(input_path)
    check_unique_outputs(all_shards, lambda s: shard_output_rel(s, options.output_format))
    shards = discover_shards(input_path, num_shards=num_shards, shard_index=shard_index)
    _check_out_dir(out_path, input_path, as_path(scores_dir) if scores_dir else None)

    if scores_dir is not None:
        plan = plan_from_scores(
            as_path(scores_dir), input_path, all_shards, options, model_options,
            text_column, id_column, tokenizer,
        )  # fmt: skip
    else:
        plan = plan_from_model(model, options, model_options, text_column, id_column)
    rule, text_column, id_column, identity = (
        plan.rule,
        plan.text_column,
        plan.id_column,
        plan.identity,
    )
    info = {"input": str(input_path.resolve()), **plan.info}

    manifest_options = {
        **identity,
        "p": list(ps),
        "strategy": rule.strategy,
        "top_k": rule.top_k,
        "top_p": rule.top_p,
        "temperature": rule.temperature,
        "exclude_original": rule.exclude_original,
        "drop_below": rule.drop_below,
        "seed": options.seed,
        "text_column": text_column,
        "id_column": id_column,
        "output_column": options.output_column,
        "provenance": options.provenance,
        "output_format": options.output_format,
    }
    info["preset"] = options.preset
    info["overridden"] = list(options.overridden)
    manifest = Manifest(out_path, "edit", manifest_options, info=info, overwrite=overwrite)
    shard_editor = plan.shard_editor(str(out_path.resolve()), options, batch_rows)

    bar = token_bar("edit", progress)
    started = time.perf_counter()
    try:
        counts, run_stats = run_step(
            shards,
            manifest,
            shard_editor,
            bar=bar,
            engine=engine,
            tokenizer=plan.loaded_tokenizer,
            ray_address=ray_address,
            ray_actors=ray_actors,
            progress=progress,
        )
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    totals = directory_totals(manifest, shard_editor)
    manifest.update(totals=totals)
    run_counts = run_stats["p"]
    tokens = max((c.get("tokens", 0) for c in run_counts.values()), default=0)
    return {
        **counts,
        "mode": identity["mode"],
        "rule": asdict(rule),
        "seconds": elapsed,
        "tokens_per_s": tokens / elapsed if elapsed else 0.0,
        "run": run_counts,
        "totals": totals,
        "out": str(out_path),
        "outputs": {p_label(p): str(out_path / p_dir(p)) if sweep else str(out_path) for p in ps},
    }


def directory_totals(manifest: Manifest, step: ShardEditor) -> dict:
    """Per threshold: counts summed over every complete shard of the output directory."""
    stats = step.directory_stats(manifest.shards.values())
    return {"shards": len(manifest.shards), **stats.to_dict()}


def _share(a: int, b: int) -> str:
    return f"{100 * a / b:.2f}%" if b else "n/a"


def format_edit_summary(s: dict) -> str:
    """Human summary: per threshold, the share above it, the share actually changed, the
    positions redrawn as themselves, and the share deleted (``--drop-below``)."""
    tot = s["totals"]
    lines = []
    run_tokens = max((c.get("tokens", 0) for c in s["run"].values()), default=0)
    run_docs = max((c.get("documents", 0) for c in s["run"].values()), default=0)
    lines.append(
        f"edited {run_docs} documents, {run_tokens} tokens in {s['seconds']:.1f}s "
        f"({s['tokens_per_s']:.0f} tokens/s, {s['mode']} mode); {s['skipped']} shard(s) already done"
    )
    for k, c in tot["p"].items():
        scored = c.get("scored", 0)
        sk = c.get("skipped", {})
        n_sk = sum(sk.values())
        q = s.get("rule", {}).get("drop_below", 0.0)
        deleted = c.get("deleted", 0)
        lines.append(
            f"p={k}: above threshold {_share(c.get('above', 0), scored)} of scored tokens "
            f"({c.get('above', 0)}), changed {_share(c.get('changed', 0), scored)} "
            f"({c.get('changed', 0)}), redrawn as themselves {c.get('drawn_original', 0)}, "
            f"deleted {_share(deleted, scored)} ({deleted}"
            + (
                f"; P < {q}; {_share(c.get('deleted_chars', 0), c.get('chars', 0))} of the "
                f"characters; {c.get('delete_skipped', 0)} not spliceable, kept)"
                if q
                else "; no --drop-below)"
            )
            + f", skipped {n_sk} (span {sk.get('span', 0)}, render {sk.get('render', 0)}, "
            f"no candidate {sk.get('no_candidate', 0)}) -> {s['outputs'][k]}"
        )
    kept = {k: v for k, v in tot["statuses"].items() if k != STATUS_OK}
    if kept:
        lines.append(
            "kept unedited (not text): " + ", ".join(f"{k}={v}" for k, v in sorted(kept.items()))
        )
    return "\n".join(lines)
