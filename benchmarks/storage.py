"""Throughput of ``tokedit edit --scores`` on an S3 server vs on local disk, same data, one run.

An S3-compatible server (moto in server mode, a separate process on 127.0.0.1) holds a
copy of the corpus and its scores. ``edit_dataset`` then runs alternately on local disk
(input, scores and output directories) and on the bucket (``s3://`` for all three, through
s3fs), best of ``--repeat`` each; the wall time of the whole call is measured (listing,
manifest, streaming reads, writes and publishes included). Both outputs are checked to be
byte-identical. The goal (issue 13) is at least 0.5x the local-disk throughput.

Usage::

    python benchmarks/storage.py                    # the edit benchmark's fixture corpus,
                                                    # prior and scores (cached, ~1-2 min once)
    python benchmarks/storage.py --input DATA --scores SCORES [--p 0.99] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def start_server(log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the S3 server did not start: {log.read_text()}") from None
            time.sleep(0.1)


def scale_fixture(corpus: Path, scores: Path, k: int, out: Path) -> tuple[Path, Path]:
    """A corpus and its scores with every shard's rows repeated ``k`` times (the same
    documents, so the same scores): shards of a more realistic size, the same per-shard
    work on both storages. Ids repeat; the edit draws depend on them only."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tokedit.io.manifest import read_manifest
    from tokedit.io.shards import discover_shards
    from tokedit.io.storage import file_sha256
    from tokedit.io.write import write_json

    if k == 1:
        return corpus, scores
    c_out, s_out = out / "corpus", out / "scores"
    for shard in discover_shards(corpus):
        dest = c_out / shard.rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if shard.fmt == "parquet":
            pq.write_table(pa.concat_tables([pq.read_table(shard.path)] * k), dest)
        elif shard.fmt == "jsonl.gz":
            raw = gzip.decompress(shard.path.read_bytes())
            dest.write_bytes(gzip.compress((raw.rstrip(b"\n") + b"\n") * k, mtime=0))
        elif shard.fmt == "jsonl":
            raw = shard.path.read_bytes()
            dest.write_bytes((raw.rstrip(b"\n") + b"\n") * k)
        else:
            raise SystemExit(f"--scale: {shard.fmt} shards are not supported here")
    manifest = read_manifest(scores)
    for entry in manifest["shards"].values():
        for name in entry["outputs"]:
            table = pq.read_table(scores / name)
            (s_out / name).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.concat_tables([table] * k), s_out / name, compression="zstd")
            entry["sha256"] = file_sha256(s_out / name)
        entry["rows"] = entry["rows"] * k
    write_json(s_out / ".tokedit" / "manifest.json", manifest)
    return c_out, s_out


def tree_hashes(files: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", type=Path, help="dataset directory that was scored")
    ap.add_argument("--scores", type=Path, help="its scores directory")
    ap.add_argument("--p", default="0.99", help="threshold(s), as tokedit edit --p")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs per storage")
    ap.add_argument(
        "--scale",
        type=int,
        default=8,
        help="repeat every shard's rows this many times (1: the fixture as it is)",
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    import s3fs

    from tokedit.demo import cache_dir
    from tokedit.editor.run import EditOptions, edit_dataset
    from tokedit.io import storage

    if args.input is None or args.scores is None:
        from edit import build_fixture

        corpus, scores = build_fixture(cache_dir() / "bench-edit")
    else:
        corpus, scores = args.input, args.scores
    ps = tuple(float(x) for x in args.p.split(","))

    work = Path(tempfile.mkdtemp(prefix="tokedit-bench-storage-"))
    corpus, scores = scale_fixture(Path(corpus), Path(scores), args.scale, work / "scaled")
    proc, endpoint = start_server(work / "moto.log")
    try:
        creds = {"key": "bench", "secret": "bench"}
        client = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        fs = s3fs.S3FileSystem(**creds, client_kwargs=client, skip_instance_cache=True)
        import boto3

        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            region_name="us-east-1",
        ).create_bucket(Bucket="bench")
        for local, prefix in ((Path(corpus), "corpus"), (Path(scores), "scores")):
            for p in sorted(local.rglob("*")):
                if p.is_file():
                    fs.put_file(str(p), f"bench/{prefix}/{p.relative_to(local).as_posix()}")
        opts = {**creds, "client_kwargs": client}  # attached to the URLs, as --storage-options

        def run(kind: str, i: int) -> tuple[float, dict]:
            if kind == "local":
                src, sc, out = str(corpus), str(scores), str(work / f"local-{i}")
            else:
                src, sc, out = (
                    storage.as_path(url, opts)
                    for url in ("s3://bench/corpus", "s3://bench/scores", f"s3://bench/out-{i}")
                )
            t0 = time.perf_counter()
            s = edit_dataset(src, out, scores_dir=sc, options=EditOptions(ps=ps), progress=False)
            return time.perf_counter() - t0, s

        best = {"local": float("inf"), "s3": float("inf")}
        tokens = 0
        for i in range(args.repeat):
            for kind in ("local", "s3"):  # alternate, so that machine load hits both alike
                seconds, s = run(kind, i)
                best[kind] = min(best[kind], seconds)
                tokens = s.tokens

        local_out = work / "local-0"
        local_files = {
            p.relative_to(local_out).as_posix(): p.read_bytes()
            for p in local_out.rglob("*")
            if p.is_file() and ".tokedit" not in p.parts
        }
        remote_files = {
            k[len("bench/out-0/") :]: fs.cat_file(k)
            for k in fs.find("bench/out-0")
            if "/.tokedit/" not in k
        }
        identical = tree_hashes(local_files) == tree_hashes(remote_files)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    local_tps, s3_tps = tokens / best["local"], tokens / best["s3"]
    result = {
        "tokens": tokens,
        "p": list(ps),
        "local_seconds": best["local"],
        "s3_seconds": best["s3"],
        "local_tokens_per_s": local_tps,
        "s3_tokens_per_s": s3_tps,
        "ratio": s3_tps / local_tps,
        "identical_bytes": identical,
        "repeat": args.repeat,
        "scale": args.scale,
        "cpus": os.cpu_count(),
    }
    print(
        f"tokedit edit --scores, {tokens} tokens (fixture x{args.scale}), p={args.p}, "
        f"best of {args.repeat}:"
    )
    print(f"  local disk : {local_tps:12,.0f} tokens/s  ({best['local']:.2f} s)")
    print(f"  S3 (moto)  : {s3_tps:12,.0f} tokens/s  ({best['s3']:.2f} s)")
    print(
        f"  ratio s3/local: {s3_tps / local_tps:.2f} (goal >= 0.5); outputs identical: {identical}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
