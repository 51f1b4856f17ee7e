"""Helpers shared by the Ray, crash and bad-input suites (not a test module)."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from click.testing import CliRunner

from tokedit.cli import main
from tokedit.io.manifest import read_manifest
from tokedit.io.texts import split_documents

FORMATS = ("parquet", "jsonl", "jsonl.gz", "jsonl.zst")


def write_rows(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` as the format named by ``path``'s suffix (deterministic bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path)
        return
    data = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows)
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    elif path.name.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)


def mixed_corpus(out: Path, plays: dict[str, str], chars_per_shard: int) -> Path:
    """One shard per input format, each about ``chars_per_shard`` characters, with ids."""
    docs = [d for text in plays.values() for d in split_documents(text)]
    at = 0
    for k, fmt in enumerate(FORMATS):
        rows, size = [], 0
        while size < chars_per_shard:
            text = docs[at % len(docs)]
            rows.append({"id": f"doc-{at}", "text": text})
            size += len(text)
            at += 1
        write_rows(out / f"part-{k}.{fmt}", rows)
    return out


def score_args(
    data: Path, out: Path, prior: Path, *extra: str, id_column: str | None = "id"
) -> list[str]:
    """``tokedit score`` arguments with small windows; ``id_column=None``: no --id-column."""
    ids = ["--id-column", id_column] if id_column else []
    return [
        "score",
        str(data),
        "--model",
        str(prior),
        "--out",
        str(out),
        "--max-length",
        "128",
        "--overlap",
        "32",
        *ids,
        "-q",
        *map(str, extra),
    ]


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tokedit.cli", *args]


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """The CLI in a separate process."""
    return subprocess.run(cli_command(*args), capture_output=True, text=True, **kwargs)


def invoke(*args: str) -> subprocess.CompletedProcess:
    """The CLI in this process (fast): returncode, stdout and stderr like a process."""
    r = CliRunner().invoke(main, list(args))
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


def output_files(out: Path) -> dict[str, bytes]:
    """Every data file of an output directory (not the manifest, lock or temp files)."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)
    }


def manifest_shards(out: Path) -> dict:
    return read_manifest(out)["shards"]


def temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
