"""``tokedit edit``: stream input shards with their scores (or a model) into edited shards.

Each input shard gives one output shard at the same relative path, in the same format
(parquet -> parquet, jsonl[.gz|.zst] -> same, datasets arrow -> arrow; ``--output-format
mirror``, the default) or in one format for every shard (``parquet`` or ``jsonl.gz``, at the
same relative path with that suffix), one row per input row, all columns kept; the text
is edited in place (or into ``output_column``) and the provenance columns ``tokedit_*``
(int64 ints in every format) are appended. A sweep over several thresholds writes ``OUT/p=<p>/...``
per threshold from one read of the input and the scores. Resume and atomicity come from
:func:`tokedit.io.runner.run_shards` and the manifest.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tokedit.editor.batch import (
    ScoreBatch,
    add_counts,
    apply_draws,
    draw_batch,
)
from tokedit.editor.rng import doc_keys
from tokedit.editor.rules import EditRule, banned_mask
from tokedit.editor.splice import Renderer
from tokedit.errors import InputError, first_few
from tokedit.io.manifest import Manifest, read_manifest
from tokedit.io.read import (
    DEFAULT_BATCH_ROWS,
    STATUS_EMPTY,
    STATUS_OK,
    Documents,
    RowBatch,
    iter_batches,
    to_documents,
)
from tokedit.io.runner import PickledAsConfig, check_engine, run_step, token_bar
from tokedit.io.shards import Shard, discover_shards
from tokedit.io.storage import arrow_source, as_path, open_arrow_stream_input
from tokedit.io.write import (
    ArrowStreamShardWriter,
    JsonlShardWriter,
    ParquetShardWriter,
    write_json,
)
from tokedit.scoring.run import check_unique_outputs, file_sha256, load_backend, scores_rel
from tokedit.scoring.scorer import (
    FINGERPRINT_COLUMN,
    ScoreOptions,
    bos_prepended,
    text_fingerprint,
)

PROVENANCE_COLUMNS = (
    "tokedit_n_above",
    "tokedit_n_changed",
    "tokedit_n_skipped",
    "tokedit_n_deleted",
    "tokedit_edits",
)
# ``mirror``: each shard in its input's format; otherwise every shard in this format.
OUTPUT_FORMATS = ("mirror", "parquet", "jsonl.gz")
_FORMAT_SUFFIX = {"parquet": ".parquet", "jsonl.gz": ".jsonl.gz"}
SCORES_COLUMNS = ["id", "status", "token_ids", "offsets", "logprob", "topk_ids", "topk_logprobs"]
_RESCORE = "rerun `tokedit score` on this input (same --text-column / --id-column) and edit with the new scores"


@dataclass(frozen=True)
class EditOptions:
    """What decides the output bytes (recorded in the manifest)."""

    ps: tuple[float, ...] = (0.99,)
    rule: EditRule = field(default_factory=EditRule)  # the up-revise preset's rule
    seed: int = 0
    output_column: str | None = None
    provenance: bool = True
    output_format: str = "mirror"  # one of OUTPUT_FORMATS
    # The --preset the rule came from and the flags that overrode it: recorded in the
    # manifest's info and named in messages; the output depends on ``rule`` and ``ps`` only.
    preset: str | None = None
    overridden: tuple[str, ...] = ()

    def flag(self, name: str) -> str:
        """``--top-k 64 (from --preset low-drop-up-revise)`` for messages."""
        value = getattr(self.rule, name.replace("-", "_"))
        where = (
            f" (from --preset {self.preset})"
            if self.preset and name.replace("-", "_") not in self.overridden
            else ""
        )
        return f"--{name} {value}{where}"


@dataclass(frozen=True)
class ModelOptions:
    """One-pass mode: the scorer's options for the model read in the same pass."""

    max_len: int | None = None
    overlap: int | None = None
    batch_tokens: int = 16384
    # --bos: "auto" / "always" / "never" (see scoring.scorer.bos_prepended); None is "auto"
    # with --model and, with --scores, "whatever the scores were made with" (no check).
    bos: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    revision: str | None = None
    backend: str = "hf"  # "vllm": top-k candidates only (no --top-k 0), on a CUDA GPU


def parse_ps(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"0.9,0.99"`` -> ``(0.9, 0.99)``; each value must lie strictly between 0 and 1."""
    items = text.split(",") if isinstance(text, str) else list(text)
    ps: list[float] = []
    for item in items:
        try:
            p = float(item)
        except ValueError:
            raise InputError(
                f"--p {item!r} is not a number", remedy="e.g. --p 0.99 or --p 0.9,0.99,0.999"
            ) from None
        if not 0 < p < 1 or math.isnan(p):
            raise InputError(
                f"--p {p} is outside (0, 1)",
                remedy="a threshold is a probability strictly between 0 and 1, e.g. 0.99",
            )
        if p not in ps:
            ps.append(p)
    if not ps:
        raise InputError("--p is empty", remedy="e.g. --p 0.99")
    return tuple(ps)


def p_label(p: float) -> str:
    return repr(float(p))


def p_dir(p: float) -> str:
    return f"p={p_label(p)}"


def output_format_of(shard: Shard, output_format: str) -> str:
    """The format ``shard``'s output is written in."""
    return shard.fmt if output_format == "mirror" else output_format


def shard_output_rel(shard: Shard, output_format: str = "mirror") -> str:
    """``a/b.jsonl.gz`` -> ``a/b.jsonl.gz`` (mirror) or ``a/b.parquet`` (parquet)."""
    if output_format == "mirror":
        return shard.rel
    return shard.with_suffix(_FORMAT_SUFFIX[output_format])


def output_rel(shard: Shard, p: float, sweep: bool, output_format: str = "mirror") -> str:
    rel = shard_output_rel(shard, output_format)
    return f"{p_dir(p)}/{rel}" if sweep else rel


def check_output_format(output_format: str) -> None:
    if output_format not in OUTPUT_FORMATS:
        raise InputError(
            f"unknown --output-format {output_format!r}",
            remedy="use --output-format " + ", ".join(OUTPUT_FORMATS),
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


def _scores_fingerprint(manifest: dict) -> str:
    shards = {k: v.get("sha256") for k, v in sorted(manifest.get("shards", {}).items())}
    blob = json.dumps({"options": manifest.get("options"), "shards": shards}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_scores_manifest(
    scores_dir: Path, input_dir: Path, all_shards: list[Shard], ps: tuple[float, ...]
) -> dict:
    """The scores manifest, checked against the input shard list and the thresholds."""
    manifest = read_manifest(scores_dir)
    if manifest is None or manifest.get("command") != "score":
        raise InputError(
            f"{scores_dir}: no scores manifest (.tokedit/manifest.json; not a scores directory, or scoring never started)",
            remedy="pass the --out directory of `tokedit score`",
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
    min_p = float(options.get("candidates_min_p", 1.0))
    too_low = [p for p in ps if p < min_p]
    if too_low:
        raise InputError(
            f"{scores_dir} holds candidates only where P >= {min_p} (--candidates-min-p when scoring), "
            f"so --p {p_label(min(too_low))} cannot be edited from these scores",
            remedy=f"use --p >= {min_p}, or rescore with --candidates-min-p {p_label(min(ps))} or lower",
        )
    return manifest


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


def _resolve_rule(options: EditOptions, stored_k: int | None, scores_mode: bool) -> EditRule:
    rule = options.rule
    if rule.drop_below >= min(options.ps):
        raise InputError(
            f"--drop-below {rule.drop_below} is not below --p {p_label(min(options.ps))}: a token "
            "cannot be both resampled (P > p) and deleted (P < drop-below)",
            remedy="pass a --drop-below below every --p, e.g. --drop-below 0.001",
        )
    if not scores_mode:
        return rule
    if not stored_k:
        raise InputError(
            "the scores hold no candidates (they were scored with --top-k 0)",
            remedy="rescore with --top-k 8, or edit in one pass with --model",
        )
    if rule.top_k == 0:
        raise InputError(
            "--top-k 0 (the full distribution) needs the model",
            remedy="pass --model instead of --scores, or --top-k between 1 and the scores' k",
        )
    if rule.top_k > stored_k:
        raise InputError(
            f"{options.flag('top-k')} but the scores store only {stored_k} candidates per position",
            remedy=f"rescore with `tokedit score --top-k {rule.top_k}`, or pass --top-k {stored_k} "
            "(fewer candidates than the strategy specifies)",
        )
    return rule


def _resolve_model_rule(options: EditOptions, backend: str) -> EditRule:
    rule = _resolve_rule(options, None, scores_mode=False)
    if backend not in ("hf", "vllm"):
        raise InputError(
            f"unknown backend {backend!r}", remedy="use --backend hf or --backend vllm"
        )
    if backend == "vllm" and rule.top_k == 0:
        raise InputError(
            "--top-k 0 (the full distribution) cannot be drawn with --backend vllm: vLLM "
            "returns at most max_logprobs candidates per position, not full rows",
            remedy="pass --top-k K (e.g. --top-k 8), or use --backend hf for --top-k 0",
        )
    return rule


class _AlignedScores:
    """Rows of one scores shard, taken in exactly the sizes of the input batches."""

    def __init__(self, path: Path, expected_rows: int | None):
        self.path = path
        try:
            self.file = pq.ParquetFile(arrow_source(path))
        except (OSError, pa.ArrowInvalid) as e:
            raise InputError(f"{path}: cannot read the scores ({e})", remedy=_RESCORE) from e
        names = set(self.file.schema_arrow.names)
        lacking = [c for c in SCORES_COLUMNS if c not in names]
        if lacking:
            raise InputError(
                f"{path}: not a scores shard (no column {', '.join(lacking)})", remedy=_RESCORE
            )
        self.rows = self.file.metadata.num_rows
        if expected_rows is not None and expected_rows != self.rows:
            raise InputError(
                f"{path}: {self.rows} rows, but the scores manifest records {expected_rows}",
                remedy=_RESCORE,
            )
        # Scores written before the fingerprint column existed lack it: the id, status and
        # length checks of check_alignment still apply to them.
        columns = SCORES_COLUMNS + [FINGERPRINT_COLUMN] * (FINGERPRINT_COLUMN in names)
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
                    remedy=_RESCORE,
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
                remedy=_RESCORE,
            )


def check_alignment(sb: ScoreBatch, docs: Documents, scores_path: Path, row0: int) -> None:
    """Ids, statuses and text lengths of a batch must match its scores rows."""
    if sb.ids != docs.ids:
        i = next(i for i, (a, b) in enumerate(zip(sb.ids, docs.ids, strict=True)) if a != b)
        raise InputError(
            f"{docs.batch.where(i)}: id {docs.ids[i]!r}, but row {row0 + i} of {scores_path} "
            f"is for id {sb.ids[i]!r}",
            remedy=_RESCORE,
        )
    if sb.statuses != docs.statuses:
        i = next(
            i for i, (a, b) in enumerate(zip(sb.statuses, docs.statuses, strict=True)) if a != b
        )
        raise InputError(
            f"{docs.batch.where(i)}: the text is {docs.statuses[i]!r} here but was "
            f"{sb.statuses[i]!r} when {scores_path} was made: the input changed since scoring",
            remedy=_RESCORE,
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
                remedy=_RESCORE,
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
                remedy=_RESCORE,
            )


# ----------------------------------------------------------------------------- output


def _replace_column(table: pa.Table, name: str, values: list, type_: pa.DataType) -> pa.Table:
    try:
        arr = pa.array(values, type=type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        arr = pa.array(values, type=pa.string())
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, arr)
    return table.append_column(name, arr)


def output_table(
    batch: RowBatch, docs: Documents, edited, text_column: str, options: EditOptions
) -> pa.Table:
    """The input table with the text edited (or in ``output_column``) and provenance."""
    table = batch.table
    target = options.output_column or text_column
    if target == text_column:
        if any(t is not None for t in edited.texts):
            values = table.column(text_column).to_pylist()
            for i, t in enumerate(edited.texts):
                if t is not None:
                    values[i] = t
            field_type = table.schema.field(text_column).type
            table = _replace_column(table, text_column, values, field_type)
    else:
        values = [
            t if t is not None else (docs.texts[i] if s in (STATUS_OK, STATUS_EMPTY) else None)
            for i, (t, s) in enumerate(zip(edited.texts, docs.statuses, strict=True))
        ]
        table = _replace_column(table, target, values, pa.string())
    if options.provenance:
        for name in PROVENANCE_COLUMNS:
            if name in table.column_names:  # re-editing an edited corpus: replace, not duplicate
                table = table.drop_columns([name])
        table = (
            table.append_column("tokedit_n_above", pa.array(edited.n_above, pa.int64()))
            .append_column("tokedit_n_changed", pa.array(edited.n_changed, pa.int64()))
            .append_column("tokedit_n_skipped", pa.array(edited.n_skipped, pa.int64()))
            .append_column("tokedit_n_deleted", pa.array(edited.n_deleted, pa.int64()))
            .append_column("tokedit_edits", edited.edits_array())
        )
    # datasets' "huggingface" metadata describes the input columns; readers infer the new ones.
    meta = {k: v for k, v in (table.schema.metadata or {}).items() if k != b"huggingface"}
    return table.replace_schema_metadata(meta or None)


def output_records(
    batch: RowBatch, docs: Documents, edited, text_column: str, options: EditOptions
) -> list[dict]:
    target = options.output_column or text_column
    lists = edited.edits_lists() if options.provenance else None
    out = []
    for i, record in enumerate(batch.records):
        r = dict(record)
        t = edited.texts[i]
        if target == text_column:
            if t is not None:
                r[text_column] = t
        else:
            ok = docs.statuses[i] in (STATUS_OK, STATUS_EMPTY)
            r[target] = t if t is not None else (docs.texts[i] if ok else None)
        if options.provenance:
            r["tokedit_n_above"] = int(edited.n_above[i])
            r["tokedit_n_changed"] = int(edited.n_changed[i])
            r["tokedit_n_skipped"] = int(edited.n_skipped[i])
            r["tokedit_n_deleted"] = int(edited.n_deleted[i])
            r["tokedit_edits"] = lists[i]
        out.append(r)
    return out


class _ShardOutput:
    """One output shard in the input's format; the writer opens on the first batch."""

    def __init__(self, dest: Path, fmt: str):
        self.dest, self.fmt = dest, fmt
        self.writer = None
        self.schema: pa.Schema | None = None
        if fmt.startswith("jsonl"):
            self.writer = JsonlShardWriter(dest, fmt)

    def write_table(self, table: pa.Table) -> None:
        if self.writer is None:
            self.schema = table.schema
            cls = ParquetShardWriter if self.fmt == "parquet" else ArrowStreamShardWriter
            self.writer = cls(self.dest, self.schema)
        elif table.schema != self.schema:
            table = table.cast(self.schema)
        self.writer.write(table)

    def write_records(self, records: list[dict]) -> None:
        self.writer.write_records(records)

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def _empty_batch(shard: Shard, table_schema: pa.Schema | None = None) -> RowBatch:
    """A zero-row batch with the shard's schema, so an empty shard gives an empty output."""
    if table_schema is not None:  # JSON lines written as parquet
        schema = table_schema
    elif shard.fmt == "parquet":
        schema = pq.read_schema(arrow_source(shard.path))
    else:
        with open_arrow_stream_input(shard.path) as source:
            schema = pa.ipc.open_stream(source).schema
    return RowBatch(shard, 0, table=schema.empty_table())


def _jsonl_table_schema(shard: Shard, batch_rows: int, text_column: str) -> pa.Schema:
    """The Arrow schema of a JSON lines shard as a whole: each column's type inferred over
    every row (a column that is null in the first rows and a string later is a string; ints
    and floats give floats). A column whose values have no common type cannot be a parquet
    column: that is an error naming it."""
    schema: pa.Schema | None = None
    for batch in iter_batches(shard, batch_rows):
        fields = []
        for name in batch.column_names():
            try:
                fields.append(pa.field(name, pa.array(batch.column(name)).type))
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
                raise _not_tabular(shard, name, e) from e
        try:
            schema = (
                pa.schema(fields)
                if schema is None
                else pa.unify_schemas([schema, pa.schema(fields)], promote_options="permissive")
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise _not_tabular(shard, None, e) from e
    if schema is None or text_column not in schema.names:
        schema = (schema or pa.schema([])).append(pa.field(text_column, pa.string()))
    return schema


def _not_tabular(shard: Shard, column: str | None, e: Exception) -> InputError:
    what = f"column {column!r}" if column else "a column"
    return InputError(
        f"{shard.path}: {what} holds values of different types ({e}), which a parquet "
        "column cannot hold",
        remedy="use --output-format mirror or jsonl.gz for JSON lines input with mixed-type columns",
    )


def _as_output_rows(batch: RowBatch, out_fmt: str, table_schema: pa.Schema | None) -> RowBatch:
    """``batch`` as the rows the output format is written from: a table for parquet / arrow
    output, JSON-ready dicts for JSON lines output."""
    if out_fmt.startswith("jsonl") and batch.table is not None:
        binary = [
            f.name
            for f in batch.table.schema
            if "binary" in str(f.type) or pa.types.is_dictionary(f.type)
        ]
        if binary:
            raise InputError(
                f"{batch.shard.path}: column(s) {first_few(binary)} hold binary or dictionary "
                "values, which JSON lines cannot hold",
                remedy="use --output-format parquet or mirror",
            )
        records = batch.table.to_pylist()
        return RowBatch(batch.shard, batch.start, records=records)
    if not out_fmt.startswith("jsonl") and batch.records is not None:
        try:
            table = pa.Table.from_pylist(batch.records, schema=table_schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise _not_tabular(batch.shard, None, e) from e
        return RowBatch(batch.shard, batch.start, table=table, line_numbers=batch.line_numbers)
    return batch


def _write_dataset_sidecars(
    shard: Shard, out_root: Path, schema: pa.Schema | None, rel_prefix: str
) -> list[str]:
    """``state.json`` and ``dataset_info.json`` of a ``save_to_disk`` folder, for the output."""
    folder = Path(shard.rel).parent
    src = shard.root / folder
    written = []
    for name in ("state.json", "dataset_info.json"):
        if not (src / name).is_file():
            continue
        data = json.loads((src / name).read_text())
        if name == "dataset_info.json" and schema is not None:
            try:
                from datasets import Features

                data["features"] = Features.from_arrow_schema(schema).to_dict()
            except Exception:
                data.pop("features", None)
        rel = (
            (Path(rel_prefix) / folder / name).as_posix()
            if rel_prefix
            else (folder / name).as_posix()
        )
        write_json(out_root / rel, data)
        written.append(rel)
    return written


# ----------------------------------------------------------------------------- sources


class _ScoresSource:
    """Documents with their stored scores and the draws from the stored candidates."""

    def __init__(self, scores_dir: Path, rows: dict, rule, banned, seed, p_min):
        self.dir = scores_dir
        self.rows = rows  # the scores manifest's row count of each shard
        self.rule, self.banned, self.seed, self.p_min = rule, banned, seed, p_min
        self.current: _AlignedScores | None = None

    def open(self, shard: Shard) -> None:
        self.current = _AlignedScores(self.dir / scores_rel(shard), self.rows.get(shard.rel))

    def batch(self, batch: RowBatch, docs: Documents, on_tokens=None):
        row0 = self.current.taken
        table = self.current.take(len(batch), batch)
        sb = ScoreBatch.from_table(table)
        check_alignment(sb, docs, self.current.path, row0)
        if FINGERPRINT_COLUMN in table.column_names:
            check_fingerprints(table.column(FINGERPRINT_COLUMN), docs, self.current.path, row0)
        keys = doc_keys(self.seed, sb.ids)
        draws = draw_batch(sb, keys, self.p_min, self.rule, self.banned)
        if on_tokens is not None:
            on_tokens(len(sb.token_ids))
        return sb, draws

    def close(self, shard: Shard) -> None:
        self.current.finish(shard)


class _CandidatesSource:
    """One pass with a backend that returns only the top-k candidates (vLLM).

    The documents are scored in memory, with candidates wherever P >= the lowest threshold,
    and drawn from exactly as from a scores directory: the same output as ``tokedit score``
    followed by ``tokedit edit --scores`` with the same options.
    """

    def __init__(self, scorer, rule, banned, seed, p_min):
        self.scorer = scorer
        self.rule, self.banned, self.seed, self.p_min = rule, banned, seed, p_min

    def open(self, shard: Shard) -> None:
        pass

    def batch(self, batch: RowBatch, docs: Documents, on_tokens=None):
        table, _ = self.scorer.score(docs, on_tokens=on_tokens)
        sb = ScoreBatch.from_table(table)
        keys = doc_keys(self.seed, sb.ids)
        return sb, draw_batch(sb, keys, self.p_min, self.rule, self.banned)

    def close(self, shard: Shard) -> None:
        pass


class _ModelSource:
    """Documents scored by a model in the same pass, with draws from the full rows."""

    def __init__(self, scorer, drawing):
        self.scorer, self.drawing = scorer, drawing

    def open(self, shard: Shard) -> None:
        pass

    def batch(self, batch: RowBatch, docs: Documents, on_tokens=None):
        ok = self.drawing.begin(docs)
        if ok:
            table, _ = self.scorer.score(docs, on_tokens=on_tokens)
        else:  # nothing to tokenize (the tokenizer refuses an empty list)
            from tokedit.scoring.scorer import build_scores_table

            table = build_scores_table(docs, [], [], [], 0)
        sb = ScoreBatch.from_table(table)
        return sb, self.drawing.draws(sb, ok)

    def close(self, shard: Shard) -> None:
        pass


# ----------------------------------------------------------------------------- the run


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
    from tokedit.scoring.hf import load_tokenizer, tokenizer_hash

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
        if model_options is not None and model_options.backend != "hf":
            raise InputError(
                f"--backend {model_options.backend} scores with --model; with --scores nothing is scored",
                remedy="leave --backend out, or pass --model instead of --scores",
            )
        scores_path = as_path(scores_dir)
        smanifest = load_scores_manifest(scores_path, input_path, all_shards, ps)
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
        text_column = sopts.get("text_column", "text")
        id_column = sopts.get("id_column")
        tok_source = tokenizer or sopts.get("model")
        tok_revision = None if tokenizer else sopts.get("revision")
        tok = load_tokenizer(tok_source, tok_revision)
        thash = tokenizer_hash(tok)
        if thash != sopts.get("tokenizer_hash"):
            raise InputError(
                f"the tokenizer of {tok_source!r} (hash {thash}) is not the one {scores_path} was scored with (hash {sopts.get('tokenizer_hash')})",
                remedy="pass --tokenizer with the scoring model's tokenizer, or rescore",
            )
        rule = _resolve_rule(options, int(sopts.get("top_k", 0)), scores_mode=True)
        _check_scores_bos(scores_path, smanifest, tok, model_options)
        identity = {
            "mode": "scores",
            "scores": _scores_fingerprint(smanifest),
            "model": sopts.get("model"),
            "tokenizer_hash": thash,
        }
        info = {"input": str(input_path.resolve()), "scores": str(scores_path.resolve())}
        reads = {  # where the ShardEditor reads its tokens and candidates from
            "tokenizer": tok_source,
            "tokenizer_revision": tok_revision,
            "scores_dir": str(scores_path.resolve()),
            "scores_rows": {rel: e.get("rows") for rel, e in smanifest["shards"].items()},
        }
    else:
        from tokedit.scoring.hf import model_positions

        model_options = model_options or ModelOptions()
        text_column = text_column or "text"
        tok = load_tokenizer(model, model_options.revision)
        thash = tokenizer_hash(tok)
        rule = _resolve_model_rule(options, model_options.backend)
        positions = model_positions(model, model_options.revision)
        full_rows = model_options.backend == "hf"  # hf draws from full rows; vllm from top-k
        score_options = ScoreOptions(
            max_len=model_options.max_len,
            overlap=model_options.overlap,
            batch_tokens=model_options.batch_tokens,
            top_k=0 if full_rows else rule.top_k,
            candidates_min_p=1.0 if full_rows else min(ps),
            bos=model_options.bos or "auto",
        ).resolved(positions)
        identity = {
            "mode": "model",
            "backend": model_options.backend,
            "model": model,
            "revision": model_options.revision,
            "tokenizer_hash": thash,
            "dtype": model_options.dtype,
            "max_length": score_options.max_len,
            "overlap": score_options.overlap,
            "add_bos": bos_prepended(tok, score_options.bos),  # a BOS was prepended
        }
        from tokedit.scoring.gguf import model_source

        if source := model_source(model):  # a GGUF prior: which file, which quantization
            identity["model_source"] = source
        info = {"input": str(input_path.resolve()), "bos": score_options.bos}
        reads = {
            "tokenizer": model,
            "tokenizer_revision": model_options.revision,
            "model": model,
            "model_options": model_options,
            "score_options": score_options,
        }

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
    shard_editor = ShardEditor(
        str(out_path.resolve()),
        replace(options, rule=rule),
        text_column=text_column,
        id_column=id_column,
        batch_rows=batch_rows,
        **reads,
    )

    run_counts: dict[str, dict] = {p_label(p): {} for p in ps}
    bar = token_bar("edit", progress)
    started = time.perf_counter()

    def record(rel: str, entry: dict) -> None:
        for k, c in entry["p"].items():
            add_counts(run_counts[k], c)

    try:
        counts = run_step(
            shards,
            manifest,
            shard_editor,
            bar=bar,
            on_entry=record,
            entry_tokens=entry_tokens,
            engine=engine,
            tokenizer=tok,
            ray_address=ray_address,
            ray_actors=ray_actors,
            progress=progress,
        )
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    totals = directory_totals(manifest, ps)
    manifest.update(totals=totals)
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


def entry_tokens(entry: dict) -> int:
    """Tokens read for one shard (every threshold of a sweep reads the same tokens)."""
    return max((c.get("tokens", 0) for c in entry["p"].values()), default=0)


@dataclass
class ShardEditor(PickledAsConfig):
    """The per-shard step of ``tokedit edit``: read a shard (and its scores), write its edits.

    Both engines run this same callable: ``--engine local`` in the driver, ``--engine ray``
    in each Ray actor. It is pickled with its configuration only; the tokenizer, and in
    one-pass mode the model, load lazily, once per process. It writes one output shard per
    threshold atomically and returns the shard's manifest entry; the caller records it.
    Exactly one of ``scores_dir`` (with ``scores_rows``, the scores manifest's row count per
    shard) and ``model`` (with ``model_options`` and the resolved ``score_options``) is set.
    """

    out_dir: str
    options: EditOptions  # thresholds parsed, rule checked against the scores
    text_column: str
    id_column: str | None
    batch_rows: int
    tokenizer: str  # what load_tokenizer loads: the scores' model, --tokenizer, or --model
    tokenizer_revision: str | None = None
    scores_dir: str | None = None
    scores_rows: dict[str, int | None] | None = None
    model: str | None = None
    model_options: ModelOptions | None = None
    score_options: ScoreOptions | None = None  # resolved: max_len and overlap set

    def __post_init__(self) -> None:
        self._renderer: Renderer | None = None
        self._source: _ScoresSource | _ModelSource | _CandidatesSource | None = None
        self._info: dict = {}
        self._table_schema: pa.Schema | None = None  # of the shard being edited (jsonl -> parquet)
        self.on_tokens: Callable[[int], object] | None = None  # progress, this process only

    @property
    def ps(self) -> tuple[float, ...]:
        return self.options.ps

    @property
    def sweep(self) -> bool:
        return len(self.options.ps) > 1

    def _rel(self, shard: Shard, p: float) -> str:
        return output_rel(shard, p, self.sweep, self.options.output_format)

    def load(self, tokenizer=None) -> ShardEditor:
        """Load the tokenizer (unless given) and the scores reader or the model, once."""
        if self._source is not None:
            return self
        from tokedit.scoring.hf import load_tokenizer

        tok = tokenizer or load_tokenizer(self.tokenizer, self.tokenizer_revision)
        rule, seed, p_min = self.options.rule, self.options.seed, min(self.ps)
        if self.scores_dir is not None:
            source = _ScoresSource(
                as_path(self.scores_dir), self.scores_rows, rule, banned_mask(tok), seed, p_min
            )
        else:
            from tokedit.scoring.scorer import Scorer

            mo, so = self.model_options, self.score_options
            engine = load_backend(
                mo.backend, self.model, options=so, device=mo.device, dtype=mo.dtype,
                revision=mo.revision,
            )  # fmt: skip
            if mo.backend == "hf":
                from tokedit.editor.onepass import DrawingBackend

                banned = banned_mask(tok, extra_size=engine.head.vocab_size)
                bos = 1 if bos_prepended(tok, so.bos) else 0
                drawing = DrawingBackend(engine, rule, banned, p_min, bos, seed)
                source = _ModelSource(Scorer(drawing, tok, so), drawing)
            else:
                scorer = Scorer(engine, tok, so)
                source = _CandidatesSource(scorer, rule, banned_mask(tok), seed, p_min)
            self._info = {"device": str(engine.device), "torch_dtype": str(engine.dtype)}
        self._renderer = Renderer(tok)
        self._source = source
        return self

    def info(self) -> dict:
        """Facts about the loaded model (one-pass mode), recorded in the manifest's ``info``."""
        return dict(self.load()._info)

    def __call__(self, shard: Shard) -> dict:
        self.load()
        out_root = as_path(self.out_dir)
        out_fmt = output_format_of(shard, self.options.output_format)
        # JSON lines to parquet: the column types of the whole shard, read once beforehand
        # (one batch's inferred types would not hold for the next).
        self._table_schema = (
            _jsonl_table_schema(shard, self.batch_rows, self.text_column)
            if shard.fmt.startswith("jsonl") and not out_fmt.startswith("jsonl")
            else None
        )
        outs = {p: _ShardOutput(out_root / self._rel(shard, p), out_fmt) for p in self.ps}
        shard_counts: dict[str, dict] = {p_label(p): {} for p in self.ps}
        statuses: dict[str, int] = {}
        rows = 0
        try:
            self._source.open(shard)
            got_any = False
            for batch in iter_batches(shard, self.batch_rows):
                got_any = True
                self._edit_batch(batch, outs, shard_counts, statuses)
                rows += len(batch)
            if not got_any and not out_fmt.startswith("jsonl"):
                empty = _empty_batch(shard, self._table_schema)
                self._edit_batch(empty, outs, shard_counts, statuses)
            self._source.close(shard)
            for o in outs.values():
                o.close()
        except BaseException:
            for o in outs.values():
                o.abort()
            raise
        outputs, sha = [], {}
        for p, o in outs.items():
            rel = self._rel(shard, p)
            outputs.append(rel)
            sha[rel] = file_sha256(out_root / rel)
            if out_fmt == "arrow":
                outputs += _write_dataset_sidecars(
                    shard, out_root, o.schema, p_dir(p) if self.sweep else ""
                )
        return {
            "outputs": outputs,
            "rows": rows,
            "sha256": sha,
            "statuses": statuses,
            "p": shard_counts,
        }

    def _edit_batch(self, batch, outs, shard_counts, statuses) -> None:
        text_column, options = self.text_column, self.options
        docs = to_documents(batch, text_column, self.id_column)
        target = options.output_column
        if target and target != text_column and batch.has_column(target):
            raise InputError(
                f"{batch.shard.path}: already has a column {target!r}",
                remedy="choose another --output-column, or leave it out to edit the text in place",
            )
        for s in docs.statuses:
            statuses[s] = statuses.get(s, 0) + 1
        sb, draws = self._source.batch(batch, docs, on_tokens=self.on_tokens)
        rows = _as_output_rows(batch, next(iter(outs.values())).fmt, self._table_schema)
        for p, out in outs.items():
            edited = apply_draws(
                sb, docs.texts, draws, p, self._renderer, drop_below=options.rule.drop_below
            )
            add_counts(shard_counts[p_label(p)], edited.counts)
            if rows.table is not None:
                out.write_table(output_table(rows, docs, edited, text_column, options))
            else:
                out.write_records(output_records(rows, docs, edited, text_column, options))


def directory_totals(manifest: Manifest, ps: Sequence[float]) -> dict:
    """Per threshold: counts summed over every complete shard of the output directory."""
    totals: dict[str, dict] = {p_label(p): {} for p in ps}
    statuses: dict[str, int] = {}
    for entry in manifest.shards.values():
        for k, c in entry.get("p", {}).items():
            add_counts(totals.setdefault(k, {}), c)
        add_counts(statuses, entry.get("statuses", {}))
    return {"shards": len(manifest.shards), "statuses": statuses, "p": totals}


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
