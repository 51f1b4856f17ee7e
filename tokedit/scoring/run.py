"""``tokedit score``: stream every shard through the scorer into a scores directory."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from tokedit.errors import InputError
from tokedit.io.manifest import Manifest
from tokedit.io.read import DEFAULT_BATCH_ROWS, iter_documents
from tokedit.io.runner import run_shards
from tokedit.io.shards import Shard, discover_shards
from tokedit.io.write import ParquetShardWriter
from tokedit.scoring.scorer import SCORES_SCHEMA, ScoreOptions, Scorer, ScoreStats


def scores_rel(shard: Shard) -> str:
    """Output path of a shard's scores, mirroring the input path."""
    return shard.with_suffix(".parquet")


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


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def score_dataset(
    input_dir: str,
    out_dir: str,
    *,
    model: str,
    options: ScoreOptions | None = None,
    text_column: str = "text",
    id_column: str | None = None,
    backend: str = "hf",
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
    overwrite: bool = False,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: bool = True,
) -> dict:
    """Score ``input_dir`` into ``out_dir``; returns totals of this run and of the directory."""
    options = options or ScoreOptions()
    shards = discover_shards(input_dir, num_shards=num_shards, shard_index=shard_index)
    check_unique_outputs(shards, scores_rel)
    from tokedit.scoring.hf import load_tokenizer, model_positions, tokenizer_hash

    tokenizer = load_tokenizer(model, revision)
    positions = model_positions(model, revision)
    options = options.resolved(positions)
    if positions and options.max_len > positions:
        raise InputError(
            f"--max-length {options.max_len} exceeds the model's {positions} positions",
            remedy=f"pass --max-length {positions} or less",
        )
    manifest_options = {
        "model": model,
        "revision": revision,
        "backend": backend,
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "dtype": dtype,
        "max_length": options.max_len,
        "overlap": options.overlap,
        "top_k": options.top_k,
        "candidates_min_p": options.candidates_min_p,
        "add_bos": options.add_bos and tokenizer.bos_token_id is not None,
        "text_column": text_column,
        "id_column": id_column,
    }
    manifest = Manifest(
        out_dir,
        "score",
        manifest_options,
        info={"input": str(Path(input_dir).resolve()), "batch_tokens": options.batch_tokens},
        overwrite=overwrite,
    )
    todo = [s for s in shards if not manifest.is_complete(s.rel)]
    engine = None
    if todo:
        engine = _load_backend(backend, model, device=device, dtype=dtype, revision=revision)
        manifest.update(
            info={
                **manifest.data.get("info", {}),
                "device": str(getattr(engine, "device", device)),
                "torch_dtype": str(getattr(engine, "dtype", dtype)),
                "model_revision": getattr(engine, "revision", None),
            }
        )
    scorer = Scorer(engine, tokenizer, options) if engine else None
    run_stats = ScoreStats()
    bar = tqdm(
        desc="score",
        unit="tok",
        unit_scale=True,
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    started = time.perf_counter()

    def process(shard: Shard) -> dict:
        shard_stats = ScoreStats()
        out_rel = scores_rel(shard)
        writer = ParquetShardWriter(Path(out_dir) / out_rel, SCORES_SCHEMA)
        try:
            for docs in iter_documents(shard, text_column, id_column, batch_rows):
                table, stats = scorer.score(docs, on_tokens=bar.update)
                writer.write(table)
                shard_stats.add(stats)
                bar.set_postfix(
                    docs=run_stats.documents + shard_stats.documents, shard=shard.rel, refresh=False
                )
        except BaseException:
            writer.abort()
            raise
        writer.close()
        run_stats.add(shard_stats)
        return {
            "outputs": [out_rel],
            "rows": writer.rows,
            "sha256": file_sha256(Path(out_dir) / out_rel),
            **asdict(shard_stats),
        }

    try:
        counts = run_shards(shards, manifest, process)
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    totals = directory_totals(manifest)
    manifest.update(totals=totals)
    return {
        **counts,
        "run": asdict(run_stats),
        "seconds": elapsed,
        "tokens_per_s": run_stats.tokens / elapsed if elapsed else 0.0,
        "totals": totals,
        "out": str(out_dir),
    }


def directory_totals(manifest: Manifest) -> dict:
    total = ScoreStats()
    for entry in manifest.shards.values():
        total.add(
            ScoreStats(
                **{
                    k: entry[k]
                    for k in (
                        "documents",
                        "tokens",
                        "computed_positions",
                        "padding_positions",
                        "statuses",
                    )
                }
            )
        )
    out = asdict(total)
    out["shards"] = len(manifest.shards)
    out["padding_share"] = (
        total.padding_positions / total.computed_positions if total.computed_positions else 0.0
    )
    return out


def _load_backend(backend: str, model: str, **kwargs):
    if backend == "hf":
        from tokedit.scoring.hf import HFBackend

        return HFBackend(model, **kwargs)
    raise InputError(f"unknown backend {backend!r}", remedy="use --backend hf")
