"""The edited directory format, owned here (docs/architecture.md, "One owner for each file
format"): where each shard's output goes (``p=`` sweep
directories, ``--output-format``), the ``tokedit_*`` provenance columns, and the writer that
keeps each shard in its input's format.

An edited directory mirrors its input: one output shard per input shard at the same relative
path, in the same format (``mirror``) or in one format for all (``parquet``, ``jsonl.gz``),
one row per input row, all columns kept; a sweep over thresholds writes ``OUT/p=<p>/...``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tokedit.errors import InputError, arg, first_few
from tokedit.io.read import STATUS_EMPTY, STATUS_OK, Documents, RowBatch, iter_batches
from tokedit.io.shards import Shard
from tokedit.io.storage import arrow_source, open_arrow_stream_input
from tokedit.io.write import (
    ArrowStreamShardWriter,
    JsonlShardWriter,
    ParquetShardWriter,
    write_json,
)

# The provenance columns an edit appends, one constant each: every module that reads them uses
# these names (tests/test_formats_declared_once.py fails on the strings elsewhere).
TOKEDIT_N_ABOVE = "tokedit_n_above"
TOKEDIT_N_CHANGED = "tokedit_n_changed"
TOKEDIT_N_SKIPPED = "tokedit_n_skipped"
TOKEDIT_N_DELETED = "tokedit_n_deleted"
TOKEDIT_EDITS = "tokedit_edits"

PROVENANCE_COLUMNS = (
    TOKEDIT_N_ABOVE,
    TOKEDIT_N_CHANGED,
    TOKEDIT_N_SKIPPED,
    TOKEDIT_N_DELETED,
    TOKEDIT_EDITS,
)
# Every edited directory has these; ``tokedit_n_deleted`` came later (readers count
# deletions from ``tokedit_edits``, where ``new_id`` is -1).
PROVENANCE_COLUMNS_ALWAYS = tuple(c for c in PROVENANCE_COLUMNS if c != TOKEDIT_N_DELETED)


# ``mirror``: each shard in its input's format; otherwise every shard in this format.
OUTPUT_FORMATS = ("mirror", "parquet", "jsonl.gz")
# Rows per row group (record batch) of an edited parquet or Arrow shard: fixed, so that the
# bytes do not follow --batch-rows (io/write.py: _TableShardWriter).
ROW_GROUP_ROWS = 1024


_FORMAT_SUFFIX = {"parquet": ".parquet", "jsonl.gz": ".jsonl.gz"}


def p_label(p: float) -> str:
    return repr(float(p))


def p_dir(p: float) -> str:
    return f"p={p_label(p)}"


def parse_p_dir(name: str) -> str | None:
    """``"p=0.99"`` -> ``"0.99"`` (the threshold's label); ``None`` for any other name."""
    return name[2:] if name.startswith("p=") else None


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
            f"unknown {arg('output_format', output_format)}",
            remedy=f"use one of {', '.join(OUTPUT_FORMATS)} as {arg('output_format')}",
        )


def colliding_provenance_columns(column_names: list[str]) -> list[str]:
    """The input's columns that the editor's provenance would overwrite, where the input is
    not tokedit's own edited output (which holds every column of
    :data:`PROVENANCE_COLUMNS_ALWAYS`: re-editing it replaces them). A user's column that
    happens to share a name would otherwise be lost."""
    present = [c for c in PROVENANCE_COLUMNS if c in column_names]
    if all(c in column_names for c in PROVENANCE_COLUMNS_ALWAYS):
        return []
    return present


def replace_column(table: pa.Table, name: str, values: list, type_: pa.DataType) -> pa.Table:
    try:
        arr = pa.array(values, type=type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        arr = pa.array(values, type=pa.string())
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, arr)
    return table.append_column(name, arr)


def output_table(
    batch: RowBatch,
    docs: Documents,
    edited,
    text_column: str,
    output_column: str | None,
    provenance: bool,
) -> pa.Table:
    """The input table with the text edited (or in ``output_column``) and provenance."""
    table = batch.table
    target = output_column or text_column
    if target == text_column:
        if any(t is not None for t in edited.texts):
            values = table.column(text_column).to_pylist()
            for i, t in enumerate(edited.texts):
                if t is not None:
                    values[i] = t
            field_type = table.schema.field(text_column).type
            table = replace_column(table, text_column, values, field_type)
    else:
        values = [
            t if t is not None else (docs.texts[i] if s in (STATUS_OK, STATUS_EMPTY) else None)
            for i, (t, s) in enumerate(zip(edited.texts, docs.statuses, strict=True))
        ]
        table = replace_column(table, target, values, pa.string())
    if provenance:
        for name in PROVENANCE_COLUMNS:
            if name in table.column_names:  # re-editing an edited corpus: replace, not duplicate
                table = table.drop_columns([name])
        table = (
            table.append_column(TOKEDIT_N_ABOVE, pa.array(edited.n_above, pa.int64()))
            .append_column(TOKEDIT_N_CHANGED, pa.array(edited.n_changed, pa.int64()))
            .append_column(TOKEDIT_N_SKIPPED, pa.array(edited.n_skipped, pa.int64()))
            .append_column(TOKEDIT_N_DELETED, pa.array(edited.n_deleted, pa.int64()))
            .append_column(TOKEDIT_EDITS, edited.edits_array())
        )
    # datasets' "huggingface" metadata describes the input columns; readers infer the new ones.
    meta = {k: v for k, v in (table.schema.metadata or {}).items() if k != b"huggingface"}
    return table.replace_schema_metadata(meta or None)


def output_records(
    batch: RowBatch,
    docs: Documents,
    edited,
    text_column: str,
    output_column: str | None,
    provenance: bool,
) -> list[dict]:
    target = output_column or text_column
    lists = edited.edits_lists() if provenance else None
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
        if provenance:
            r[TOKEDIT_N_ABOVE] = int(edited.n_above[i])
            r[TOKEDIT_N_CHANGED] = int(edited.n_changed[i])
            r[TOKEDIT_N_SKIPPED] = int(edited.n_skipped[i])
            r[TOKEDIT_N_DELETED] = int(edited.n_deleted[i])
            r[TOKEDIT_EDITS] = lists[i]
        out.append(r)
    return out


class ShardOutput:
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
            self.writer = cls(self.dest, self.schema, ROW_GROUP_ROWS)
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


def empty_batch(shard: Shard, table_schema: pa.Schema | None = None) -> RowBatch:
    """A zero-row batch with the shard's schema, so an empty shard gives an empty output."""
    if table_schema is not None:  # JSON lines written as parquet
        schema = table_schema
    elif shard.fmt == "parquet":
        schema = pq.read_schema(arrow_source(shard.path))
    else:
        with open_arrow_stream_input(shard.path) as source:
            schema = pa.ipc.open_stream(source).schema
    return RowBatch(shard, 0, table=schema.empty_table())


def jsonl_table_schema(
    shard: Shard, batch_rows: int, text_column: str, id_column: str | None = None
) -> pa.Schema:
    """The Arrow schema of a JSON lines shard as a whole: each column's type inferred over
    every row (a column that is null in the first rows and a string later is a string; ints
    and floats give floats). A column whose values have no common type cannot be a parquet
    column: that is an error naming it. A shard without rows has the id column (if any) and
    the text column, as strings."""
    schema: pa.Schema | None = None
    for batch in iter_batches(shard, batch_rows):
        fields = []
        for name in batch.column_names():
            try:
                fields.append(pa.field(name, pa.array(batch.column(name)).type))
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
                raise not_tabular(shard, name, e) from e
        try:
            schema = (
                pa.schema(fields)
                if schema is None
                else pa.unify_schemas([schema, pa.schema(fields)], promote_options="permissive")
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise not_tabular(shard, None, e) from e
    if schema is None and id_column is not None:
        schema = pa.schema([pa.field(id_column, pa.string())])
    if schema is None or text_column not in schema.names:
        schema = (schema or pa.schema([])).append(pa.field(text_column, pa.string()))
    return schema


def not_tabular(shard: Shard, column: str | None, e: Exception) -> InputError:
    what = f"column {column!r}" if column else "a column"
    return InputError(
        f"{shard.path}: {what} holds values of different types ({e}), which a parquet "
        "column cannot hold",
        remedy=f"use {arg('output_format', 'mirror')} or {arg('output_format', 'jsonl.gz')} for "
        "JSON lines input with mixed-type columns",
    )


def as_output_rows(batch: RowBatch, out_fmt: str, table_schema: pa.Schema | None) -> RowBatch:
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
                remedy=f"use {arg('output_format', 'parquet')} or {arg('output_format', 'mirror')}",
            )
        records = batch.table.to_pylist()
        return RowBatch(batch.shard, batch.start, records=records)
    if not out_fmt.startswith("jsonl") and batch.records is not None:
        try:
            table = pa.Table.from_pylist(batch.records, schema=table_schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise not_tabular(batch.shard, None, e) from e
        return RowBatch(batch.shard, batch.start, table=table, line_numbers=batch.line_numbers)
    return batch


def write_dataset_sidecars(
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
