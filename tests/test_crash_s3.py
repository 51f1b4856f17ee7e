"""Crash suite on an object store: ``kill -9`` of ``tokedit score`` / ``edit`` writing to
``s3://`` (moto's S3 server, a separate process on the loopback address), then the same
command again, gives the bytes and manifest entries of an uninterrupted local run, with no
temporary key or spool file left.

The kill points come from the run's progress on the bucket, read over s3fs: the completion
entries of ``OUT/.tokedit/shards/``. A seeded point is "k shards recorded, then a seeded
delay" (as in ``test_crash.py``); the upload point is "a shard recorded, and the next one
being uploaded": its temporary key exists, or its object is published and not yet recorded.
At the kill at least one shard is recorded and one is not.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import pytest

pytest.importorskip("s3fs", reason="object storage is an optional extra: pip install 'tokedit[s3]'")
pytest.importorskip("moto.server", reason="the S3 test server: pip install 'moto[server]'")

from scale_helpers import (  # noqa: E402
    edit_args,
    free_port,
    kill_mid_run,
    manifest_shards,
    mixed_corpus,
    output_files,
    progress_timeline,
    recorded_in,
    run_cli,
    score_args,
    seeded_point,
)

pytestmark = pytest.mark.s3  # a real local S3 server (moto), started by a fixture

BUCKET = "crash"
SCORE_EXTRA = ("--candidates-min-p", "0.3")
KEYS = {"key": "testing", "secret": "testing"}


class Bucket:
    """The test bucket seen over s3fs: listings, objects, what a run has recorded."""

    def __init__(self, endpoint: str):
        import s3fs

        self.client = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        self.fs = s3fs.S3FileSystem(
            **KEYS, client_kwargs=self.client, skip_instance_cache=True, use_listings_cache=False
        )
        self.options = json.dumps({**KEYS, "client_kwargs": self.client})

    def keys(self, prefix: str) -> list[str]:
        base = f"{BUCKET}/{prefix}/"
        return [k[len(base) :] for k in self.fs.find(base.rstrip("/"))]

    def recorded(self, prefix: str):
        """A probe of a run's progress: the shards whose completion entry exists."""
        entries = ".tokedit/shards/"
        return lambda: {
            unquote(k[len(entries) : -len(".json")])
            for k in self.keys(prefix)
            if k.startswith(entries)
        }

    def uploading(self, prefix: str):
        """A probe: a shard is being uploaded (a temporary key exists) or is published and
        not yet recorded (more data objects than entries)."""

        def probe() -> bool:
            keys = self.keys(prefix)
            data = [k for k in keys if not any(p.startswith(".") for p in k.split("/"))]
            entries = [k for k in keys if k.startswith(".tokedit/shards/")]
            return any(k.endswith(".tmp") for k in keys) or len(data) > len(entries)

        return probe

    def output(self, prefix: str) -> tuple[dict[str, bytes], dict]:
        """The data objects under ``prefix`` and the completion entries, by shard."""
        data, entries = {}, {}
        for rel in self.keys(prefix):
            raw = self.fs.cat_file(f"{BUCKET}/{prefix}/{rel}")
            if rel.startswith(".tokedit/shards/"):
                entry = json.loads(raw)
                entries[entry["shard"]] = entry["entry"]
            elif not any(p.startswith(".") for p in rel.split("/")):
                data[rel] = raw
        return data, entries

    def remove(self, prefix: str) -> None:
        if self.keys(prefix):
            self.fs.rm(f"{BUCKET}/{prefix}", recursive=True)


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """A moto S3 server in its own process (no IAM: any key is accepted) and its bucket;
    stopped by its pid at the end of the module."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.1)
    import boto3

    b = Bucket(f"http://127.0.0.1:{port}")
    keys = {"aws_access_key_id": KEYS["key"], "aws_secret_access_key": KEYS["secret"]}
    boto3.client("s3", **b.client, **keys).create_bucket(Bucket=BUCKET)
    yield b
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The CLI's environment: no AWS credentials or config of the machine, its own spool."""
    spool = tmp_path_factory.mktemp("spool")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, "AWS_EC2_METADATA_DISABLED": "true", "TOKEDIT_SPOOL": str(spool)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, plays, tiny_prior):
    """Uninterrupted local score and edit runs (separate processes), with the times at which
    each shard was recorded."""
    root = tmp_path_factory.mktemp("crash-s3")
    data = mixed_corpus(root / "data", plays, chars_per_shard=12_000)
    scores, edited = root / "scores", root / "edited"
    score = progress_timeline(score_args(data, scores, tiny_prior, *SCORE_EXTRA), recorded_in(scores))  # fmt: skip
    edit = progress_timeline(edit_cmd(data, scores, edited), recorded_in(edited))
    return {"data": data, "scores": scores, "edited": edited, "score": score, "edit": edit}


def edit_cmd(data, scores, out) -> list[str]:
    return edit_args(data, out, "--scores", scores, "--p", "0.5")


def kill_then_rerun(bucket, env, args, prefix, ref: Path, point, uploading=None) -> None:
    args = [*args, "--storage-options", bucket.options]
    names = list(manifest_shards(ref))
    reset = lambda: bucket.remove(prefix)  # noqa: E731
    state = kill_mid_run(args, bucket.recorded(prefix), names, point, reset, uploading, env)
    left = bucket.keys(prefix)
    print(state, "; temporary keys:", [k for k in left if k.endswith(".tmp")])
    data, _ = bucket.output(prefix)
    want = output_files(ref)
    assert {rel: data[rel] == want.get(rel) for rel in data} == dict.fromkeys(data, True)
    r = run_cli(*args, env=env)
    assert r.returncode == 0, r.stderr
    data, entries = bucket.output(prefix)
    assert data == output_files(ref)  # no missing, extra or partial shard
    assert entries == manifest_shards(ref)  # one entry per shard, same hashes
    assert not [k for k in bucket.keys(prefix) if k.endswith(".tmp")]
    assert not list(Path(env["TOKEDIT_SPOOL"]).rglob("*.tmp"))


def test_kill_9_score_to_s3_after_a_seeded_shard_then_rerun(bucket, env, reference, tiny_prior):
    prefix = "score"
    args = score_args(reference["data"], f"s3://{BUCKET}/{prefix}", tiny_prior, *SCORE_EXTRA)
    point = seeded_point(3, reference["score"])
    kill_then_rerun(bucket, env, args, prefix, reference["scores"], point)


def test_kill_9_edit_to_s3_during_an_upload_then_rerun(bucket, env, reference):
    prefix = "edit"
    args = edit_cmd(reference["data"], reference["scores"], f"s3://{BUCKET}/{prefix}")
    point = (1, 0.0)  # one shard recorded, and the next one's upload seen
    kill_then_rerun(bucket, env, args, prefix, reference["edited"], point, bucket.uploading(prefix))
