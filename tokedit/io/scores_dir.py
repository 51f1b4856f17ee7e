"""The scores directory format, owned here (docs/architecture.md, "One owner for each file
format"): the columns of a scores shard, where a shard's
scores live, the fingerprint of the text scored, and the reader that checks scores against
the input they claim to score (manifest, row counts, ids, statuses, text lengths and hashes).

``tokedit score`` writes it (:mod:`tokedit.scoring.run`); ``edit --scores``, ``report`` and
the experiments read it through the names here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tokedit.errors import InputError, arg, first_few
from tokedit.io.manifest import read_manifest
from tokedit.io.read import DEFAULT_BATCH_ROWS, STATUS_OK, Documents, RowBatch
from tokedit.io.shards import Shard
from tokedit.io.storage import arrow_source

# The columns of a scores shard, one constant each: every module that makes or reads a scores
# table uses these names (tests/test_formats_declared_once.py fails on the strings elsewhere).
ID = "id"
STATUS = "status"
N_TOKENS = "n_tokens"
MEAN_LOGPROB = "mean_logprob"
PPL = "ppl"
TOKEN_IDS = "token_ids"
OFFSETS = "offsets"
LOGPROB = "logprob"
TOPK_IDS = "topk_ids"
TOPK_LOGPROBS = "topk_logprobs"
TEXT_FINGERPRINT = "text_fingerprint"

# Column order and types of a scores shard (a contract: see docs/formats.md "Scores directory").
SCORES_SCHEMA = pa.schema(
    [
        (ID, pa.string()),
        (STATUS, pa.string()),
        (N_TOKENS, pa.int32()),
        (MEAN_LOGPROB, pa.float64()),
        (PPL, pa.float64()),
        (TOKEN_IDS, pa.list_(pa.int32())),
        (OFFSETS, pa.list_(pa.int32())),
        (LOGPROB, pa.list_(pa.float32())),
        (TOPK_IDS, pa.list_(pa.list_(pa.int32()))),
        (TOPK_LOGPROBS, pa.list_(pa.list_(pa.float32()))),
        # Added in issue 16 (an addition to the contract; older scores lack it):
        # "<characters>:<blake2b-8 hex of the UTF-8 bytes>" of the text scored, null where
        # the row had no scorable text. ``edit --scores`` refuses rows whose text differs.
        (TEXT_FINGERPRINT, pa.string()),
    ]
)


def text_fingerprint(text: str) -> str:
    """``"<len(text)>:<16 hex digits>"``: the length in characters and an 8-byte BLAKE2b of
    the UTF-8 bytes (lone surrogates kept as ``surrogatepass`` bytes). Cheap (~1 GB/s) and
    enough to tell that scores were made from another text."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return f"{len(text)}:{digest}"


def scores_rel(shard: Shard) -> str:
    """Output path of a shard's scores, mirroring the input path."""
    return shard.with_suffix(".parquet")


# What each reader needs of a scores shard (all of them columns of SCORES_SCHEMA).
READ_FOR_EDIT = [ID, STATUS, TOKEN_IDS, OFFSETS, LOGPROB, TOPK_IDS, TOPK_LOGPROBS]
READ_FOR_REPORT = (STATUS, N_TOKENS, PPL, TOKEN_IDS, LOGPROB)

RESCORE_REMEDY = (
    f"rerun `tokedit score` on this input (same {arg('text_column')} / {arg('id_column')}) and "
    "edit with the new scores"
)


def scores_fingerprint(manifest: dict) -> str:
    shards = {k: v.get("sha256") for k, v in sorted(manifest.get("shards", {}).items())}
    blob = json.dumps({"options": manifest.get("options"), "shards": shards}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_candidates_cover(min_p: float, ps, where: str) -> None:
    """Scores made with ``candidates_min_p`` can be edited at every threshold ``p >= min_p``:
    below it, some positions above ``p`` have no candidates to draw from."""
    too_low = [p for p in ps if p < min_p]
    if too_low:
        raise InputError(
            f"{where} holds candidates only where P >= {min_p} "
            f"({arg('candidates_min_p', min_p)} when scoring), so {arg('p', min(too_low))} cannot "
            "be edited from these scores",
            remedy=f"use a {arg('p')} >= {min_p}, or rescore with "
            f"{arg('candidates_min_p', min(ps))} or lower",
        )


def load_scores_manifest(
    scores_dir: Path, input_dir: Path, all_shards: list[Shard], ps: tuple[float, ...]
) -> dict:
    """The scores manifest, checked against the input shard list and the thresholds."""
    manifest = read_manifest(scores_dir)
    if manifest is None or manifest.get("command") != "score":
        raise InputError(
            f"{scores_dir}: no scores manifest (.tokedit/manifest.json; not a scores directory, or scoring never started)",
            remedy=f"pass as {arg('scores_dir')} the {arg('out_dir')} of a scoring run",
        )
    options = manifest.get("options", {})
    have = set(manifest.get("shards", {}))
    want = {s.rel for s in all_shards}
    missing, extra = sorted(want - have), sorted(have - want)
    if missing:
        raise InputError(
            f"{scores_dir}: no complete scores for {len(missing)} of the {len(want)} shards of {input_dir}: "
            + first_few(missing),
            remedy="finish scoring (rerun the same `tokedit score` command), or pass the dataset the scores were made from",
        )
    if extra:
        raise InputError(
            f"{scores_dir} has scores for {len(extra)} shard(s) that are not in {input_dir}: "
            + first_few(extra),
            remedy="pass the dataset directory that was scored, or rescore this one",
        )
    check_candidates_cover(float(options.get("candidates_min_p", 1.0)), ps, str(scores_dir))
    return manifest


class AlignedScores:
    """Rows of one scores shard, taken in exactly the sizes of the input batches."""

    def __init__(self, path: Path, expected_rows: int | None):
        self.path = path
        try:
            self.file = pq.ParquetFile(arrow_source(path))
        except (OSError, pa.ArrowInvalid) as e:
            raise InputError(f"{path}: cannot read the scores ({e})", remedy=RESCORE_REMEDY) from e
        names = set(self.file.schema_arrow.names)
        lacking = [c for c in READ_FOR_EDIT if c not in names]
        if lacking:
            raise InputError(
                f"{path}: not a scores shard (no column {', '.join(lacking)})",
                remedy=RESCORE_REMEDY,
            )
        self.rows = self.file.metadata.num_rows
        if expected_rows is not None and expected_rows != self.rows:
            raise InputError(
                f"{path}: {self.rows} rows, but the scores manifest records {expected_rows}",
                remedy=RESCORE_REMEDY,
            )
        # Scores written before the fingerprint column existed lack it: the id, status and
        # length checks of check_alignment still apply to them.
        columns = READ_FOR_EDIT + [TEXT_FINGERPRINT] * (TEXT_FINGERPRINT in names)
        self.schema = pa.schema([self.file.schema_arrow.field(c) for c in columns])
        self._batches = self.file.iter_batches(batch_size=DEFAULT_BATCH_ROWS, columns=columns)
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self.taken = 0

    def take(self, n: int, batch: RowBatch) -> pa.Table:
        while self._pending_rows < n:
            rb = next(self._batches, None)
            if rb is None:
                raise InputError(
                    f"{batch.shard.path} has more rows than its scores {self.path} ({self.rows} rows)",
                    remedy=RESCORE_REMEDY,
                )
            self._pending.append(rb)
            self._pending_rows += rb.num_rows
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        rest = table.slice(n)
        self._pending, self._pending_rows = rest.to_batches(), rest.num_rows
        self.taken += n
        return table.slice(0, n)

    def finish(self, shard: Shard) -> None:
        if self.taken != self.rows:
            raise InputError(
                f"{shard.path} has {self.taken} rows but its scores {self.path} have {self.rows}",
                remedy=RESCORE_REMEDY,
            )


def check_alignment(sb, docs: Documents, scores_path: Path, row0: int) -> None:
    """Ids, statuses and text lengths of a batch must match its scores rows."""
    if sb.ids != docs.ids:
        i = next(i for i, (a, b) in enumerate(zip(sb.ids, docs.ids, strict=True)) if a != b)
        raise InputError(
            f"{docs.batch.where(i)}: id {docs.ids[i]!r}, but row {row0 + i} of {scores_path} "
            f"is for id {sb.ids[i]!r}",
            remedy=RESCORE_REMEDY,
        )
    if sb.statuses != docs.statuses:
        i = next(
            i for i, (a, b) in enumerate(zip(sb.statuses, docs.statuses, strict=True)) if a != b
        )
        raise InputError(
            f"{docs.batch.where(i)}: the text is {docs.statuses[i]!r} here but was "
            f"{sb.statuses[i]!r} when {scores_path} was made: the input changed since scoring",
            remedy=RESCORE_REMEDY,
        )
    n_tok = np.diff(sb.row_offsets)
    rows = np.flatnonzero(n_tok > 0)
    if len(rows):
        last_start = sb.starts[sb.row_offsets[rows + 1] - 1]
        lengths = np.fromiter((len(docs.texts[r]) for r in rows), np.int64, count=len(rows))
        bad = np.flatnonzero(last_start > lengths)
        if len(bad):
            i = int(rows[bad[0]])
            raise InputError(
                f"{docs.batch.where(i)}: the text is shorter than the text scored in row "
                f"{row0 + i} of {scores_path}: the input changed since scoring",
                remedy=RESCORE_REMEDY,
            )


def check_fingerprints(
    stored: pa.ChunkedArray, docs: Documents, scores_path: Path, row0: int
) -> None:
    """Every scored text must be the text scored: its length and hash (``text_fingerprint``)."""
    for i, fp in enumerate(stored.to_pylist()):
        if fp is None or docs.statuses[i] != STATUS_OK:
            continue
        now = text_fingerprint(docs.texts[i])
        if now != fp:
            then_len, now_len = fp.split(":", 1)[0], now.split(":", 1)[0]
            raise InputError(
                f"{docs.batch.where(i)}: the text differs from the text scored in row {row0 + i} "
                f"of {scores_path} ({now_len} characters now, {then_len} when scored): "
                "these scores are stale, the input changed since scoring",
                remedy=RESCORE_REMEDY,
            )
