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
    changes the rows written or the bytes of a JSON lines output. ``batch_rows`` is also
    the size of a parquet row group (Arrow record batch), so the bytes of those files follow
    it, and scoring batches the windows of ``batch_rows`` rows together, so the log-probs'
    float rounding follows it (docs/score.md)."""

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
