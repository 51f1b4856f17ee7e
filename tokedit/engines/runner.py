"""Run a per-shard step over many shards with resume: the one loop score and edit share."""

from __future__ import annotations

import logging
import sys
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

    def record_info(info: dict) -> None:
        if info:
            manifest.update(info={**manifest.data.get("info", {}), **info})

    run_stats = step.empty_stats()
    if run.engine == "ray":
        from tokedit.engines.ray_engine import run_shards_ray

        def on_ray_entry(rel: str, entry: dict) -> None:
            run_stats.add(step.entry_stats(entry))
            bar.update(step.entry_tokens(entry))
            bar.set_postfix(shard=rel, refresh=False)

        counts = run_shards_ray(
            shards,
            manifest,
            step,
            address=run.ray_address,
            num_actors=run.ray_actors,
            on_entry=on_ray_entry,
            on_info=record_info,
            progress=run.progress,
        )
        manifest.refresh()  # shards other processes completed count in the totals
        return counts, run_stats
    if not all(manifest.is_complete(s.rel) for s in shards):
        record_info(step.load(tokenizer).info())
    step.on_tokens = bar.update

    def process(shard: Shard) -> dict:
        bar.set_postfix(shard=shard.rel, refresh=False)
        entry = step(shard)
        run_stats.add(step.entry_stats(entry))
        return entry

    counts = run_shards(shards, manifest, process)
    manifest.refresh()  # shards other processes completed count in the totals
    return counts, run_stats


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
