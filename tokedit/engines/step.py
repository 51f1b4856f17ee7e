"""The per-shard step both engines run, and the one type of counts it returns
(docs/architecture.md, "The per-shard step").

A step (``ShardScorer``, ``ShardEditor``) is a dataclass of configuration: picklable, so a
Ray actor receives the same step the local engine runs. What it loads (tokenizer, model,
readers) loads lazily, once per process. Called on a shard, it writes the shard's outputs
atomically and returns the shard's manifest entry, whose counts are a :class:`Stats`; the
totals of an output directory are the sum of its entries' stats, whichever engine, process
or run wrote them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import fields

from tokedit.io.shards import Shard


def add_counts(total: dict, counts: dict) -> dict:
    """Add ``counts`` into ``total``, nested dicts key by key; returns ``total``."""
    for k, v in counts.items():
        if isinstance(v, dict):
            add_counts(total.setdefault(k, {}), v)
        else:
            total[k] = total.get(k, 0) + v
    return total


class Stats:
    """Integer counts, nested by name, that add up across batches, shards and engines:
    ``{"documents": 12, "statuses": {"ok": 11, "empty": 1}, "p": {"0.99": {"changed": 3}}}``."""

    def __init__(self, counts: dict | None = None):
        self.counts: dict = {}
        if counts:
            self.add(counts)

    def add(self, other: Stats | dict) -> Stats:
        add_counts(self.counts, other.counts if isinstance(other, Stats) else other)
        return self

    @classmethod
    def total(cls, parts: Iterable[Stats | dict], start: dict | None = None) -> Stats:
        stats = cls(start)
        for part in parts:
            stats.add(part)
        return stats

    def __getitem__(self, key: str):
        return self.counts[key]

    def get(self, key: str, default=None):
        return self.counts.get(key, default)

    def to_dict(self) -> dict:
        return copy.deepcopy(self.counts)

    def __eq__(self, other) -> bool:
        return isinstance(other, Stats) and self.counts == other.counts

    def __repr__(self) -> str:
        return f"Stats({self.counts!r})"


class ShardStep:
    """Base of a per-shard step; subclasses are dataclasses.

    Only the dataclass fields (the configuration) are pickled; what ``__post_init__`` sets up
    (loaded models, the progress callback ``on_tokens``) stays in the process that made it and
    is set up afresh, lazily, in the process that unpickles the step.

    Subclasses name the keys of their manifest entries that hold counts (``STATS_KEYS``) and
    how many tokens an entry read (:meth:`entry_tokens`, for progress).
    """

    STATS_KEYS: tuple[str, ...] = ()
    on_tokens: Callable[[int], object] | None = None

    def __getstate__(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__post_init__()

    def __post_init__(self) -> None:
        self.on_tokens = None

    def load(self, tokenizer=None) -> ShardStep:
        """Load what the step needs, once per process (``tokenizer``: one already loaded)."""
        return self

    def info(self) -> dict:
        """Facts about what was loaded (device, dtype), recorded in the manifest's ``info``."""
        return {}

    def __call__(self, shard: Shard) -> dict:
        """Write ``shard``'s outputs atomically; return its manifest entry."""
        raise NotImplementedError

    def empty_stats(self) -> Stats:
        """The stats of no shard at all (every key the summaries read, at zero)."""
        return Stats()

    def entry_stats(self, entry: dict) -> Stats:
        """The counts recorded in a shard's manifest entry."""
        return Stats({k: entry[k] for k in self.STATS_KEYS if k in entry})

    def directory_stats(self, entries: Iterable[dict]) -> Stats:
        """The counts of every complete shard of an output directory, summed."""
        return Stats.total(map(self.entry_stats, entries), self.empty_stats().counts)

    @staticmethod
    def entry_tokens(entry: dict) -> int:
        """Tokens a shard's entry read (the progress bar of ``--engine ray``)."""
        return int(entry.get("tokens", 0))
