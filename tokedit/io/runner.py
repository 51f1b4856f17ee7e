"""Run a per-shard step over many shards with resume: the one loop score and edit share."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from tokedit.errors import InputError
from tokedit.io.manifest import Manifest
from tokedit.io.shards import Shard
from tokedit.io.storage import RemotePath, as_path, spool_dir
from tokedit.io.write import HOST_TAG, TMP_SUFFIX, temp_owner


class PickledAsConfig:
    """Mixin for the dataclass of a per-shard step, sent to other processes (Ray actors).

    Only the dataclass fields (the configuration) are pickled; what ``__post_init__`` sets up
    (loaded models, callbacks such as a progress bar) stays in the process that made it and
    is set up afresh, lazily, in the process that unpickles the step.
    """

    def __getstate__(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__post_init__()


def run_shards(
    shards: list[Shard],
    manifest: Manifest,
    process_shard: Callable[[Shard], dict[str, Any]],
    *,
    log=None,
) -> dict[str, int]:
    """Process every shard not yet complete in ``manifest``; return counts.

    ``process_shard`` writes the shard's outputs atomically and returns its manifest entry,
    which must list the files it wrote under ``"outputs"`` (paths relative to the output
    directory). The entry is recorded only after the files are in place, so a crash at any
    point leaves either a complete shard or none.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
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
        log(
            f"resumed: {skipped} shard(s) already complete in {manifest.out_dir}, {done} processed now"
        )
    return {"processed": done, "skipped": skipped}


ENGINES = ("local", "ray")


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}", remedy="use --engine local or --engine ray")


def run_step(
    shards: list[Shard],
    manifest: Manifest,
    step,
    *,
    bar,
    on_entry: Callable[[str, dict], None],
    entry_tokens: Callable[[dict], int],
    engine: str = "local",
    tokenizer=None,
    ray_address: str | None = None,
    ray_actors: int | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Run a per-shard step (``ShardScorer``, ``ShardEditor``) with either engine.

    ``step`` is a :class:`PickledAsConfig` dataclass with ``load(tokenizer)``, ``info()``,
    an ``on_tokens`` hook and ``__call__(shard) -> manifest entry``. ``on_entry(rel, entry)``
    runs in this process for every shard done now (this run's counts). The ``bar`` counts
    tokens: batch by batch with ``--engine local``, shard by shard (``entry_tokens``) with
    ``--engine ray``. What ``step.info()`` reports (device, dtype) goes into the manifest.
    """
    check_engine(engine)

    def record_info(info: dict) -> None:
        if info:
            manifest.update(info={**manifest.data.get("info", {}), **info})

    if engine == "ray":
        from tokedit.engines.ray_engine import run_shards_ray

        def on_ray_entry(rel: str, entry: dict) -> None:
            on_entry(rel, entry)
            bar.update(entry_tokens(entry))
            bar.set_postfix(shard=rel, refresh=False)

        counts = run_shards_ray(
            shards,
            manifest,
            step,
            address=ray_address,
            num_actors=ray_actors,
            on_entry=on_ray_entry,
            on_info=record_info,
            progress=progress,
        )
        manifest.refresh()  # shards other processes completed count in the totals
        return counts
    if not all(manifest.is_complete(s.rel) for s in shards):
        record_info(step.load(tokenizer).info())
    step.on_tokens = bar.update

    def process(shard: Shard) -> dict:
        bar.set_postfix(shard=shard.rel, refresh=False)
        entry = step(shard)
        on_entry(shard.rel, entry)
        return entry

    counts = run_shards(shards, manifest, process)
    manifest.refresh()  # shards other processes completed count in the totals
    return counts


def remove_stale_temp_files(out_dir: Path) -> int:
    """Delete temp files left by processes that died (``kill -9``) before renaming them.

    Temp names carry the writer's pid and host (``.name.PID-HOST.tmp``); files of live
    processes (other ``--shard-index`` workers sharing this directory) and files written on
    other machines (whose pids cannot be checked from here) are left alone.
    """
    removed = 0
    root = as_path(out_dir)
    found = list(root.rglob(f".*{TMP_SUFFIX}"))
    if isinstance(root, RemotePath):  # and the local spool files of dead writers
        found += list(spool_dir().glob(f".*{TMP_SUFFIX}"))
    for tmp in found:
        owner = temp_owner(tmp)
        if owner is None or owner[1] not in (None, HOST_TAG):
            continue
        pid = owner[0]
        if pid != os.getpid() and not _alive(pid):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def token_bar(desc: str, enabled: bool = True):
    """The progress bar of a sharded run: tokens done and tokens/s, on stderr."""
    from tqdm.auto import tqdm

    return tqdm(
        desc=desc,
        unit="tok",
        unit_scale=True,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=1.0,
    )
