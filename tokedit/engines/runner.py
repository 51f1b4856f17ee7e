"""Run a per-shard step over many shards with resume: the one loop score and edit share
(docs/architecture.md, "The per-shard step")."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from tokedit.engines.options import RunOptions
from tokedit.engines.step import ShardStep, Stats
from tokedit.io.manifest import Manifest
from tokedit.io.shards import Shard
from tokedit.io.write import remove_stale_temp_files

logger = logging.getLogger(__name__)


def run_shards(
    shards: list[Shard],
    manifest: Manifest,
    process_shard: Callable[[Shard], dict[str, Any]],
) -> dict[str, int]:
    """Process every shard not yet complete in ``manifest``; return counts.

    ``process_shard`` writes the shard's outputs atomically and returns its manifest entry,
    which must list the files it wrote under ``"outputs"`` (paths relative to the output
    directory). The entry is recorded only after the files are in place, so a crash at any
    point leaves either a complete shard or none. A resumed run logs (INFO, this module's
    logger) how many shards were already complete.
    """
    remove_stale_temp_files(manifest.out_dir)
    done = skipped = 0
    for shard in shards:
        if manifest.is_complete(shard.rel):
            skipped += 1
            continue
        entry = process_shard(shard)
        manifest.mark_complete(shard.rel, entry)
        done += 1
    if skipped:
        logger.info(
            "resumed: %d shard(s) already complete in %s, %d processed now",
            skipped,
            manifest.out_dir,
            done,
        )
    return {"processed": done, "skipped": skipped}


def run_step(
    shards: list[Shard],
    manifest: Manifest,
    step: ShardStep,
    *,
    bar,
    run: RunOptions | None = None,
    tokenizer=None,
) -> tuple[dict[str, int], Stats]:
    """Run a :class:`ShardStep` over ``shards`` with either engine, resuming ``manifest``.

    Returns the counts of shards processed and skipped, and the :class:`Stats` of the shards
    done in this run. The ``bar`` counts tokens: batch by batch with ``--engine local``,
    shard by shard with ``--engine ray``. What ``step.info()`` reports (device, dtype) goes
    into the manifest.
    """
    run = run or RunOptions()
    logger.debug(
        "%d shard(s) in this slice (%d of %d), %d already complete; engine %s, %d rows a batch",
        len(shards),
        run.shard_index,
        run.num_shards,
        sum(manifest.is_complete(s.rel) for s in shards),
        run.engine,
        run.batch_rows,
    )
    run_stats = step.empty_stats()
    if run.engine == "ray":
        counts = _run_ray(shards, manifest, step, bar, run, run_stats)
    else:
        counts = _run_local(shards, manifest, step, bar, tokenizer, run_stats)
    manifest.refresh()  # shards other processes completed count in the totals
    return counts, run_stats


def timed_run_step(
    desc: str,
    shards: list[Shard],
    manifest: Manifest,
    step: ShardStep,
    *,
    run: RunOptions,
    tokenizer=None,
) -> tuple[dict[str, int], Stats, float]:
    """:func:`run_step` under a :func:`token_bar` named ``desc`` (closed on every way out),
    and the seconds it took."""
    bar = token_bar(desc, run.progress)
    started = time.perf_counter()
    try:
        counts, run_stats = run_step(shards, manifest, step, bar=bar, run=run, tokenizer=tokenizer)
    finally:
        bar.close()
    return counts, run_stats, time.perf_counter() - started


def _info_recorder(manifest: Manifest) -> Callable[[dict], None]:
    """What records a step's ``info()`` into the manifest's ``info``."""

    def record_info(info: dict) -> None:
        if info:
            manifest.update(info={**manifest.data.get("info", {}), **info})

    return record_info


def _run_ray(
    shards: list[Shard], manifest: Manifest, step: ShardStep, bar, run: RunOptions, run_stats: Stats
) -> dict[str, int]:
    """``--engine ray``: the bar and ``run_stats`` advance shard by shard."""
    from tokedit.engines.ray_engine import run_shards_ray

    def on_ray_entry(rel: str, entry: dict) -> None:
        run_stats.add(step.entry_stats(entry))
        bar.update(step.entry_tokens(entry))
        bar.set_postfix(shard=rel, refresh=False)

    return run_shards_ray(
        shards,
        manifest,
        step,
        address=run.ray_address,
        num_actors=run.ray_actors,
        on_entry=on_ray_entry,
        on_info=_info_recorder(manifest),
        progress=run.progress,
    )


def _run_local(
    shards: list[Shard], manifest: Manifest, step: ShardStep, bar, tokenizer, run_stats: Stats
) -> dict[str, int]:
    """``--engine local``: the step loads here (unless every shard is complete), the bar
    advances batch by batch."""
    if not all(manifest.is_complete(s.rel) for s in shards):
        _info_recorder(manifest)(step.load(tokenizer).info())
    step.on_tokens = bar.update

    def process(shard: Shard) -> dict:
        bar.set_postfix(shard=shard.rel, refresh=False)
        entry = step(shard)
        run_stats.add(step.entry_stats(entry))
        return entry

    return run_shards(shards, manifest, process)


def token_bar(desc: str, enabled: bool = True):
    """The progress bar of a sharded run: tokens done and tokens/s, on stderr when it is a
    terminal (a person watches); never with ``enabled`` False (``progress=False``, ``-q``)."""
    from tqdm.auto import tqdm

    return tqdm(
        desc=desc,
        unit="tok",
        unit_scale=True,
        disable=None if enabled else True,  # None: off unless stderr is a TTY
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=1.0,
    )
