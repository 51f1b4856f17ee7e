"""Streaming reads of shards in record batches.

Memory is bounded by ``batch_rows`` rows whatever the shard size: parquet and arrow files
are read batch by batch, JSON lines line by line through a (de)compressing stream.
A :class:`RowBatch` keeps every original column, so editors can write rows back unchanged.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tokedit.errors import InputError, arg
from tokedit.io import DEFAULT_BATCH_ROWS
from tokedit.io.shards import Shard, discover_shards
from tokedit.io.storage import arrow_source, open_arrow_stream_input, open_read

MEMORY = "memory"  # the format of texts given in memory (no file)

# Row statuses for documents that are kept but not processed (documented in docs/formats.md).
STATUS_OK = "ok"
STATUS_EMPTY = "empty"
STATUS_NULL = "null_text"
STATUS_NOT_STRING = "not_string"


@dataclass
class RowBatch:
    """Consecutive rows ``start .. start+len-1`` of one shard, all columns kept.

    JSON lines arrive as ``records`` (a list of dicts, written back as they came);
    parquet / arrow as a ``table``.
    """

    shard: Shard
    start: int
    table: pa.Table | None = None
    records: list[dict] | None = None
    line_numbers: list[int] = field(default_factory=list)  # 1-based, for jsonl messages

    def __len__(self) -> int:
        return len(self.records) if self.records is not None else self.table.num_rows

    def column_names(self) -> list[str]:
        if self.table is not None:
            return self.table.column_names
        names: dict[str, None] = {}
        for r in self.records:
            names.update(dict.fromkeys(r))
        return list(names)

    def has_column(self, name: str) -> bool:
        if self.table is not None:
            return name in self.table.column_names
        return any(name in r for r in self.records)

    def column(self, name: str) -> list:
        if self.table is not None:
            return self.table.column(name).to_pylist()
        return [r.get(name) for r in self.records]

    def where(self, i: int) -> str:
        """Human location of row ``i`` of this batch: ``file:line N``, ``file row N``, or
        (texts given in memory) ``texts[N]``."""
        if self.shard.fmt == MEMORY:
            return f"{self.shard.rel}[{self.start + i}]"
        if self.line_numbers:
            return f"{self.shard.path}:{self.line_numbers[i]}"
        return f"{self.shard.path} row {self.start + i}"


@dataclass
class Documents:
    """The text and id view of a :class:`RowBatch` that scorers and editors work on."""

    batch: RowBatch
    ids: list[str]
    texts: list[str]  # "" where the row is not processable (see statuses)
    statuses: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def iter_batches(shard: Shard, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[RowBatch]:
    """Yield the rows of ``shard`` in order, ``batch_rows`` at a time."""
    path = shard.path
    if path.is_symlink() and not path.exists():
        raise InputError(
            f"{path}: broken symlink (it points to {os.readlink(path)}, which does not exist)",
            remedy="fix or remove the link, or move it out of the dataset directory",
        )
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(
            f"{path}: file is empty (0 bytes)",
            remedy="remove the empty file, or re-create it; an upstream write probably failed",
        )
    if shard.fmt == "parquet":
        yield from _parquet_batches(shard, batch_rows)
    elif shard.fmt == "arrow":
        yield from _arrow_batches(shard, batch_rows)
    else:
        yield from _jsonl_batches(shard, batch_rows)


def _parquet_batches(shard: Shard, batch_rows: int) -> Iterator[RowBatch]:
    try:
        pf = pq.ParquetFile(arrow_source(shard.path))
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(
            f"{shard.path}: not a readable parquet file ({e})",
            remedy="re-create the shard, or move it out of the dataset directory",
        ) from e
    start = 0
    batches = pf.iter_batches(batch_size=batch_rows)
    while True:
        try:
            rb = next(batches, None)
        except (pa.ArrowException, OSError) as e:  # a valid footer over corrupt data pages
            raise InputError(
                f"{shard.path}: corrupt parquet data after row {start} ({e})",
                remedy="re-create the shard, or move it out of the dataset directory",
            ) from e
        if rb is None:
            return
        yield RowBatch(shard, start, table=pa.Table.from_batches([rb]))
        start += rb.num_rows


def _arrow_batches(shard: Shard, batch_rows: int) -> Iterator[RowBatch]:
    # datasets' save_to_disk writes Arrow IPC *stream* files; memory-map and slice them.
    try:
        with open_arrow_stream_input(shard.path) as source:
            reader = pa.ipc.open_stream(source)
            start = 0
            pending: list[pa.RecordBatch] = []
            pending_rows = 0
            for rb in reader:
                pending.append(rb)
                pending_rows += rb.num_rows
                while pending_rows >= batch_rows:
                    table = pa.Table.from_batches(pending)
                    yield RowBatch(shard, start, table=table.slice(0, batch_rows))
                    start += batch_rows
                    rest = table.slice(batch_rows)
                    pending, pending_rows = rest.to_batches(), rest.num_rows
            if pending_rows:
                yield RowBatch(shard, start, table=pa.Table.from_batches(pending))
    except (pa.ArrowException, OSError) as e:
        raise InputError(
            f"{shard.path}: not a readable Arrow stream ({e})",
            remedy="re-save the dataset with datasets' save_to_disk",
        ) from e


def _open_text_stream(shard: Shard) -> io.BufferedIOBase:
    try:
        raw = open_read(shard.path)
    except FileNotFoundError as e:  # a dangling symlink, or a file removed since discovery
        raise InputError(
            f"{shard.path}: cannot open ({e.strerror}{'; it is a broken symlink' if shard.path.is_symlink() else ''})",
            remedy="fix or remove the link / file, or move it out of the dataset directory",
        ) from e
    if shard.fmt == "jsonl.gz":
        return gzip.GzipFile(fileobj=raw)
    if shard.fmt == "jsonl.zst":
        return io.BufferedReader(ZstdFramesReader(raw))
    return raw


class ZstdFramesReader(io.RawIOBase):
    """Decompress a zstd file of one or more frames; raise ``EOFError`` if it is cut short.

    ``zstandard``'s ``stream_reader`` ends silently at the end of a truncated file, so a
    shard cut at a line boundary would lose its last rows without a word. This reader
    checks that the last frame is complete.
    """

    CHUNK = 1 << 16

    def __init__(self, raw):
        import zstandard

        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = None
        self._pending = b""  # compressed bytes after the end of a frame
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not len(self._out):
            chunk, self._pending = self._pending or self._raw.read(self.CHUNK), b""
            if not chunk:
                if self._obj is not None and not self._obj.eof:
                    raise EOFError("the zstd stream ends inside a frame (truncated file)")
                return 0
            if self._obj is None or self._obj.eof:
                self._obj = self._dctx.decompressobj()
            self._out = memoryview(self._obj.decompress(chunk))
            if self._obj.eof:
                self._pending = self._obj.unused_data
        n = min(len(b), len(self._out))
        b[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def _jsonl_batches(shard: Shard, batch_rows: int) -> Iterator[RowBatch]:
    records: list[dict] = []
    lines: list[int] = []
    row = 0
    lineno = 0
    with _open_text_stream(shard) as stream:
        try:
            for raw_line in stream:
                lineno += 1
                if not raw_line.strip():
                    continue  # blank lines (often a trailing newline) are not rows
                records.append(_parse_json_line(shard, lineno, raw_line))
                lines.append(lineno)
                if len(records) == batch_rows:
                    yield RowBatch(shard, row, records=records, line_numbers=lines)
                    row += len(records)
                    records, lines = [], []
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
            raise InputError(
                f"{shard.path}: the compressed stream is corrupt or truncated after line {lineno} ({e})",
                remedy="re-create the file; a partial download or an interrupted write leaves truncated archives",
            ) from e
        except Exception as e:  # zstandard raises its own ZstdError
            if type(e).__name__ == "ZstdError":
                raise InputError(
                    f"{shard.path}: the zstd stream is corrupt or truncated after line {lineno} ({e})",
                    remedy="re-create the file",
                ) from e
            raise
    if records:
        yield RowBatch(shard, row, records=records, line_numbers=lines)


def _parse_json_line(shard: Shard, lineno: int, raw_line: bytes) -> dict:
    try:
        line = raw_line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{shard.path}:{lineno}: invalid UTF-8 at byte {e.start} of the line",
            remedy="re-encode the file as UTF-8 (for example with iconv) or remove the line",
        ) from e
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(
            f"{shard.path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})",
            remedy="fix or remove that line; each line must be one JSON object",
        ) from e
    except RecursionError as e:
        raise InputError(
            f"{shard.path}:{lineno}: JSON nested too deeply to parse",
            remedy="flatten or remove that line",
        ) from e
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise InputError(
            f"{shard.path}:{lineno}: JSON value cannot be read ({e})",
            remedy="fix or remove that line (store huge numbers as strings)",
        ) from e
    if not isinstance(value, dict):
        raise InputError(
            f"{shard.path}:{lineno}: a JSON line must be an object, found {type(value).__name__}",
            remedy='write one object per line, e.g. {"text": "..."}',
        )
    return value


def to_documents(batch: RowBatch, text_column: str, id_column: str | None = None) -> Documents:
    """Extract ids and texts; rows that cannot be processed are kept with a status.

    A missing text (or id) column is an error naming the file and the columns it has.
    ``null`` text, non-string text and empty text are *kept* rows with the statuses
    ``null_text``, ``not_string`` and ``empty``: they pass through unchanged and are counted.
    """
    if not batch.has_column(text_column):
        have = ", ".join(batch.column_names()[:20]) or "(none)"
        raise InputError(
            f"{batch.shard.path}: no column {text_column!r} (columns: {have})",
            remedy=f"pick the text column with {arg('text_column')}",
        )
    values = batch.column(text_column)
    if id_column is not None and not batch.has_column(id_column):
        have = ", ".join(batch.column_names()[:20])
        raise InputError(
            f"{batch.shard.path}: no id column {id_column!r} (columns: {have})",
            remedy=f"pick the id column with {arg('id_column')}, or leave it out to use "
            "'<shard>:<row>' ids",
        )
    raw_ids = batch.column(id_column) if id_column else [None] * len(values)
    ids, texts, statuses = [], [], []
    from_json = batch.records is not None  # Arrow strings are valid UTF-8 already
    for i, (value, raw_id) in enumerate(zip(values, raw_ids, strict=True)):
        ids.append(
            default_id(batch.shard, batch.start + i)
            if raw_id is None or raw_id == ""
            else str(raw_id)
        )
        if from_json:
            _check_unicode(batch, i, ids[-1], "id")
            if isinstance(value, str):
                _check_unicode(batch, i, value, "text")
        if value is None:
            texts.append("")
            statuses.append(STATUS_NULL)
        elif not isinstance(value, str):
            texts.append("")
            statuses.append(STATUS_NOT_STRING)
        else:
            texts.append(value)
            statuses.append(STATUS_OK if value else STATUS_EMPTY)
    return Documents(batch, ids, texts, statuses)


def _check_unicode(batch: RowBatch, i: int, value: str, what: str) -> None:
    """JSON can escape lone surrogates (``"\\ud800"``), which no UTF-8 writer or tokenizer takes."""
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(
            f"{batch.where(i)}: the {what} holds a lone surrogate (U+{ord(value[e.start]):04X} at character {e.start}), which is not valid Unicode",
            remedy="fix or remove that row; \\ud800-\\udfff escapes in JSON must come in high/low pairs",
        ) from None


def default_id(shard: Shard, row: int) -> str:
    """Stable id of a row without one: ``"{shard relative path}:{row index}"``; for texts
    given in memory, the index of the text (``"0"``, ``"1"`` ...)."""
    if shard.fmt == MEMORY:
        return str(row)
    return f"{shard.rel}:{row}"


def memory_batch(
    texts: list, ids: list | None = None, start: int = 0, name: str = "texts"
) -> RowBatch:
    """Texts given in memory (the Python API) as rows ``start ..`` of a ``text`` (and
    ``id``) table: the same statuses, ids and messages as the rows of a shard."""
    if ids is not None and len(ids) != len(texts):
        raise InputError(f"{len(ids)} ids for {len(texts)} texts", remedy="pass one id per text")
    shard = Shard(Path("."), name, MEMORY)
    id_values = None if ids is None else [None if i is None else str(i) for i in ids]
    for i, t in enumerate(texts):
        if t is not None and not isinstance(t, str):
            raise InputError(
                f"{name}[{start + i}] is a {type(t).__name__}, not a string",
                remedy="pass strings (None is kept as a row without text, status null_text)",
            )
    columns = {"text": pa.array(texts, pa.string())}
    if id_values is not None:
        columns["id"] = pa.array(id_values, pa.string())
    return RowBatch(shard, start, table=pa.table(columns))


def iter_documents(
    shard: Shard,
    text_column: str = "text",
    id_column: str | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> Iterator[Documents]:
    for batch in iter_batches(shard, batch_rows):
        yield to_documents(batch, text_column, id_column)


def read_ok_texts(
    data_dir, text_column: str = "text", id_column: str | None = None
) -> tuple[list[str], list[str]]:
    """Ids and texts of every processable row (status ok) of a dataset, in shard then row order."""
    ids: list[str] = []
    texts: list[str] = []
    for shard in discover_shards(data_dir):
        for docs in iter_documents(shard, text_column, id_column):
            for i, t, status in zip(docs.ids, docs.texts, docs.statuses, strict=True):
                if status == STATUS_OK:
                    ids.append(i)
                    texts.append(t)
    return ids, texts
