"""Atomic, deterministic shard writes.

Every output is written to a temporary file beside its destination and renamed into place,
so a reader (or a rerun after ``kill -9``) never sees a partial shard. Writers set no
timestamps (gzip ``mtime=0``), so the same rows always give the same bytes.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import fnmatch
import gzip
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tokedit.errors import OutputError, arg
from tokedit.io.runs import pid_alive
from tokedit.io.storage import as_path, find, is_remote, publish, spool_dir, storage_errors

TMP_SUFFIX = ".tmp"
# Temp names carry the writer's pid and a tag of its host: processes on several machines
# (Slurm tasks, Ray actors) may share one output directory, and a pid means something only
# on the machine that owns it.
HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def inside(out_dir: str | os.PathLike, rel: str, *, named_by: str = "tokedit") -> Path:
    """``out_dir / rel`` for a path tokedit writes, reads back or deletes, refused where it
    would leave ``out_dir``: an absolute path, a ``..`` part, or (on a local disk) a symbolic
    link that resolves elsewhere. ``named_by`` says where ``rel`` came from (a manifest)."""
    root = as_path(out_dir)
    parts = str(rel).replace("\\", "/").split("/")
    if not rel or str(rel).startswith("/") or ".." in parts or ":" in parts[0]:
        raise OutputError(
            f"{named_by} names the path {rel!r}, which is not inside {root}",
            remedy=f"tokedit writes only inside {arg('out_dir')}: if this manifest was edited or "
            f"copied from elsewhere, delete it (or choose another {arg('out_dir')})",
        )
    path = root / str(rel)
    if not is_remote(root):
        real_root = Path(root).resolve()
        real = Path(path).resolve()
        if real != real_root and real_root not in real.parents:
            raise OutputError(
                f"{path} resolves to {real}, outside {real_root} (a symbolic link in the output)",
                remedy=f"remove the link, or choose an {arg('out_dir')} without links that leave it",
            )
    return path


def temp_name_for(name: str) -> str:
    """The hidden temporary name of an output called ``name``: ``.NAME.PID-HOST.tmp``."""
    return f".{name}.{os.getpid()}-{HOST_TAG}{TMP_SUFFIX}"


def temp_path_for(dest: Path) -> Path:
    return dest.with_name(temp_name_for(dest.name))


def temp_owner(tmp: Path) -> tuple[int, str | None] | None:
    """``(pid, host tag)`` of the process that writes temp file ``tmp`` (host ``None`` for
    names without a tag), or ``None`` if ``tmp`` is not named like a tokedit temp file."""
    if not tmp.name.endswith(TMP_SUFFIX):
        return None
    pid, _, host = tmp.name[: -len(TMP_SUFFIX)].rsplit(".", 1)[-1].partition("-")
    try:
        return int(pid), host or None
    except ValueError:
        return None


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success fsync it and rename it to ``dest``.

    For a ``dest`` on an object store (a URL: :func:`~tokedit.io.storage.is_remote`) the
    temporary path is a local spool file, published on success by an upload to a hidden
    temporary key and a copy on the store (:func:`tokedit.io.storage.publish`).
    """
    dest = as_path(dest)
    if is_remote(dest):
        with _remote_atomic_path(dest) as tmp:
            yield tmp
        return
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(
            f"{dest.parent}: cannot create the output directory ({e.strerror})",
            remedy=f"choose a writable {arg('out_dir')}",
        ) from e
    tmp = temp_path_for(dest)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(
            f"{dest}: cannot write ({e.strerror or e})",
            remedy="check free disk space and permissions of the output directory",
        ) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _remote_atomic_path(dest) -> Iterator[Path]:
    key = hashlib.sha256(str(dest).encode()).hexdigest()[:12]
    tmp = spool_dir() / temp_name_for(f"{key}-{dest.name}")
    try:
        yield tmp
        publish(tmp, dest, temp_name_for(dest.name))
    except OSError as e:
        raise OutputError(
            f"{dest}: cannot write ({e.strerror or e})",
            remedy="check free space in the local spool directory ($TOKEDIT_SPOOL or the temp dir) and the output URL",
        ) from e
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _write_errors(dest: Path) -> Iterator[None]:
    """Turn an ``OSError`` while streaming into a shard (disk full, file too large, I/O
    error) into an :class:`OutputError` naming the destination."""
    try:
        yield
    except OSError as e:
        raise OutputError(
            f"{dest}: cannot write ({e.strerror or e})",
            remedy="check free disk space, quotas and permissions of the output directory, then rerun the same command to resume",
        ) from e


def write_json(dest: str | os.PathLike, data: dict) -> None:
    dest = as_path(dest)
    if is_remote(dest):  # one PUT: an object appears whole or not at all
        with storage_errors(dest):
            dest.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        return
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


class _ShardWriter:
    """A shard streamed into a temporary file and renamed into place on :meth:`close`.

    Subclasses open their streams in :meth:`_open` and close them in :meth:`_close_streams`;
    every ``OSError`` becomes an :class:`OutputError` naming the destination.
    """

    def __init__(self, dest: str | os.PathLike):
        self._dest = as_path(dest)
        self._ctx = atomic_path(dest)
        self._tmp = self._ctx.__enter__()
        self.rows = 0
        with _write_errors(self._dest):
            self._open()

    def _open(self) -> None:
        raise NotImplementedError

    def _close_streams(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        with _write_errors(self._dest):
            self._close_streams()
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._close_streams()
        self._tmp.unlink(missing_ok=True)


class _TableShardWriter(_ShardWriter):
    """A shard written table by table through ``self._writer`` (parquet, Arrow IPC).

    With ``group_rows`` the file's row groups (record batches) hold ``group_rows`` rows each,
    the last one the rest, whatever the tables written were: the bytes follow the rows, not
    the batches they came in (at most ``group_rows`` rows are held). Without it each table
    written is one row group."""

    def __init__(self, dest: str | os.PathLike, schema: pa.Schema, group_rows: int | None = None):
        self._schema = schema
        self._group_rows = group_rows
        self._held: list[pa.Table] = []
        super().__init__(dest)

    def write(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        if self._group_rows is None:
            with _write_errors(self._dest):
                self._writer.write_table(table)
            return
        if table.num_rows or not self._held:
            self._held.append(table)  # an empty table only as a zero-row shard's schema
        held = sum(t.num_rows for t in self._held)
        if held < self._group_rows:
            return
        whole = pa.concat_tables(self._held)
        cut = held - held % self._group_rows
        for start in range(0, cut, self._group_rows):
            self._write_group(whole.slice(start, self._group_rows))
        self._held = [whole.slice(cut)] if cut < held else []

    def _write_group(self, table: pa.Table) -> None:
        # take() copies the rows into fresh arrays: one chunk, no slice offset, so the Arrow
        # stream's buffers are the same however the rows arrived
        table = table.take(pa.array(range(table.num_rows), pa.int64()))
        with _write_errors(self._dest):
            self._writer.write_table(table, max(table.num_rows, 1))

    def close(self) -> None:
        held = pa.concat_tables(self._held) if self._held else None
        if held is not None and (held.num_rows or not self.rows):  # rows left, or none at all
            self._write_group(held)
        self._held = []
        super().close()


class ParquetShardWriter(_TableShardWriter):
    """Stream tables into one zstd-compressed parquet shard."""

    def _open(self) -> None:
        self._writer = pq.ParquetWriter(self._tmp, self._schema, compression="zstd")

    def _close_streams(self) -> None:
        self._writer.close()


def _json_value(value):
    """Values of parquet / arrow rows that JSON has no type for (dates, times, decimals):
    their ISO / decimal text."""
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} values cannot be written as JSON")


class JsonlShardWriter(_ShardWriter):
    """Stream dict rows into ``.jsonl``, ``.jsonl.gz`` or ``.jsonl.zst``."""

    def __init__(self, dest: str | os.PathLike, fmt: str):
        self._fmt = fmt
        super().__init__(dest)

    def _open(self) -> None:
        self._raw = open(self._tmp, "wb")
        if self._fmt == "jsonl.gz":
            self._out = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0)
        elif self._fmt == "jsonl.zst":
            import zstandard

            self._out = zstandard.ZstdCompressor(level=3).stream_writer(self._raw, closefd=False)
        else:
            self._out = self._raw

    def write_records(self, records: list[dict]) -> None:
        with _write_errors(self._dest):
            for r in records:
                self._out.write(
                    json.dumps(r, ensure_ascii=False, default=_json_value).encode(
                        "utf-8", "surrogatepass"
                    )
                    + b"\n"
                )
        self.rows += len(records)

    def _close_streams(self) -> None:
        if self._out is not self._raw:
            self._out.close()
        self._raw.close()


class ArrowStreamShardWriter(_TableShardWriter):
    """Arrow IPC stream files, the format of ``datasets`` ``save_to_disk`` shards."""

    def _open(self) -> None:
        self._sink = pa.OSFile(str(self._tmp), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self._schema)

    def _close_streams(self) -> None:
        self._writer.close()
        self._sink.close()


def remove_stale_temp_files(out_dir: Path) -> int:
    """Delete temp files left by processes that died (``kill -9``) before renaming them.

    Temp names carry the writer's pid and host (``.name.PID-HOST.tmp``); files of live
    processes (other ``--shard-index`` workers sharing this directory) and files written on
    other machines (whose pids cannot be checked from here) are left alone.
    """
    removed = 0
    root = as_path(out_dir)
    pattern = f".*{TMP_SUFFIX}"
    if is_remote(root):  # and the local spool files of dead writers
        found = [
            root / rel for rel in find(root) if fnmatch.fnmatch(rel.rsplit("/", 1)[-1], pattern)
        ]
        found += list(spool_dir().glob(pattern))
    else:
        found = list(root.rglob(pattern))
    for tmp in found:
        owner = temp_owner(tmp)
        if owner is None or owner[1] not in (None, HOST_TAG):
            continue
        pid = owner[0]
        if pid != os.getpid() and not pid_alive(pid):
            with storage_errors(tmp):
                tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def upload_tree(local_dir: Path, dest) -> None:
    """Publish every file under ``local_dir`` to the same relative key under ``dest``
    (reports: JSON, HTML, PNG), each through :func:`publish`."""
    for f in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
        target = dest / f.relative_to(local_dir).as_posix()
        publish(f, target, temp_name_for(target.name))
