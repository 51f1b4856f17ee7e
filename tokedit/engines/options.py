"""The options of a sharded run, declared once: :class:`RunOptions`."""

from __future__ import annotations

from dataclasses import dataclass

from tokedit.errors import InputError, arg
from tokedit.io import DEFAULT_BATCH_ROWS

ENGINES = ("local", "ray")


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise InputError(
            f"unknown engine {engine!r}",
            remedy=f"use {arg('engine', 'local')} or {arg('engine', 'ray')}",
        )


@dataclass(frozen=True)
class RunOptions:
    """How a sharded run runs: which slice of the shards this process takes, resume or
    overwrite, the engine, the rows read at a time, and a progress bar. None of these
    changes the rows written, or the bytes of an edited directory made from scores.
    ``batch_rows`` is the size of a scores parquet row group, and scoring batches the windows
    of ``batch_rows`` rows together, so the scores' bytes (their float rounding) follow it
    (docs/score.md); edited parquet and Arrow shards have fixed row groups
    (``io/edited_dir.py: ROW_GROUP_ROWS``)."""

    num_shards: int = 1  # split the shards into this many slices (e.g. one per Slurm task)
    shard_index: int = 0  # the slice this process handles (0-based)
    overwrite: bool = False  # replace an output written with other options (default: refuse)
    engine: str = "local"  # one of ENGINES
    ray_address: str | None = None  # engine="ray": a running cluster; None: a local instance
    ray_actors: int | None = None  # engine="ray": the pool size; None: one per GPU, or CPUs
    batch_rows: int = DEFAULT_BATCH_ROWS  # rows read, scored and edited at a time
    progress: bool = True  # a progress bar on stderr

    def __post_init__(self) -> None:
        check_engine(self.engine)
        if self.batch_rows < 1:
            raise InputError(
                f"{arg('batch_rows', self.batch_rows)} must be >= 1",
                remedy=f"e.g. {arg('batch_rows', DEFAULT_BATCH_ROWS)}",
            )
