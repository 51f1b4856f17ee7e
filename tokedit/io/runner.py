"""Run a per-shard step over many shards with resume: the one loop score and edit share."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from tokedit.io.manifest import Manifest
from tokedit.io.shards import Shard


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
