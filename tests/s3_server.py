"""The local S3 server of the object-storage tests (moto in server mode, a separate process
on the loopback address, IAM enforced) and what the tests compare on it: shared by
``test_storage.py`` and ``test_storage_faults.py``."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from scale_helpers import free_port, output_files

from tokedit.io.manifest import read_manifest
from tokedit.io.storage import as_path

BUCKET = "tok"
SCORE_EXTRA = ("--candidates-min-p", "0.3")


class S3:
    """The test server: its endpoint, a writer's and a denied user's keys, and helpers."""

    def __init__(self, endpoint: str, writer: tuple[str, str], nobody: tuple[str, str]):
        import s3fs

        self.endpoint, self.writer, self.nobody = endpoint, writer, nobody
        self.fs = s3fs.S3FileSystem(
            key=writer[0],
            secret=writer[1],
            client_kwargs={"endpoint_url": endpoint, "region_name": "us-east-1"},
            skip_instance_cache=True,
            use_listings_cache=False,
        )

    def options(
        self,
        keys: tuple[str, str] | None = None,
        *,
        endpoint: str | None = None,
        retries: int | None = None,
        config: dict | None = None,
    ) -> str:
        """``--storage-options`` JSON: ``keys``' credentials (the writer's), ``endpoint``
        (the server's), s3fs's ``retries`` and botocore's ``config`` if given."""
        keys = keys or self.writer
        opts = {
            "key": keys[0],
            "secret": keys[1],
            "client_kwargs": {
                "endpoint_url": endpoint or self.endpoint,
                "region_name": "us-east-1",
            },
        }
        if retries is not None:
            opts["retries"] = retries
        if config:
            opts["config_kwargs"] = config
        return json.dumps(opts)

    def objects(self, prefix: str, hidden: bool = False) -> dict[str, str]:
        """SHA-256 of every object under ``s3://tok/prefix`` (data only unless ``hidden``)."""
        base = f"{BUCKET}/{prefix}/"
        out = {}
        for key in self.fs.find(base.rstrip("/")):
            rel = key[len(base) :]
            if not hidden and any(part.startswith(".") for part in rel.split("/")):
                continue
            out[rel] = hashlib.sha256(self.fs.cat_file(key)).hexdigest()
        return out

    def keys(self, prefix: str) -> list[str]:
        base = f"{BUCKET}/{prefix}/"
        return [k[len(base) :] for k in self.fs.find(base.rstrip("/"))]

    def upload(self, local: Path, prefix: str) -> str:
        for p in sorted(local.rglob("*")):
            if p.is_file():
                self.fs.put_file(str(p), f"{BUCKET}/{prefix}/{p.relative_to(local).as_posix()}")
        return f"s3://{BUCKET}/{prefix}"


def moto_server(tmp_path_factory):
    """A moto S3 server in its own process with IAM enforced: ``writer`` may do anything,
    ``nobody`` nothing; the bucket ``BUCKET`` exists. A generator for a fixture (``yield
    from moto_server(tmp_path_factory)``): the server is stopped by its pid after it."""
    import boto3
    import requests

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.1)
    kw = dict(
        endpoint_url=endpoint,
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
        region_name="us-east-1",
    )
    boto3.client("s3", **kw).create_bucket(Bucket=BUCKET)
    iam = boto3.client("iam", **kw)
    keys = {}
    allow_all = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}  # fmt: skip
    for user in ("writer", "nobody"):
        iam.create_user(UserName=user)
        if user == "writer":
            iam.put_user_policy(
                UserName=user, PolicyName="all", PolicyDocument=json.dumps(allow_all)
            )
        k = iam.create_access_key(UserName=user)["AccessKey"]
        keys[user] = (k["AccessKeyId"], k["SecretAccessKey"])
    # From here on every request is authenticated and authorized against moto's IAM.
    r = requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10)
    assert r.status_code == 200, r.text
    yield S3(endpoint, keys["writer"], keys["nobody"])
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def no_environment_credentials(monkeypatch) -> None:
    """No credentials but those of the storage options: none from the environment."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")


def edit_args(data, scores, out, *extra: str) -> list[str]:
    return ["edit", str(data), "--scores", str(scores), "--out", str(out), "--p", "0.5", "-q", *extra]  # fmt: skip


def report_args(scores, edited, out) -> list[str]:
    return ["report", str(scores), str(edited), "--out", str(out), "-q"]


def local_hashes(out: Path) -> dict[str, str]:
    return {rel: hashlib.sha256(b).hexdigest() for rel, b in output_files(out).items()}


def on_bucket(url: str, options: str):
    """``url`` with the storage options ``options`` (JSON, as --storage-options takes them)."""
    return as_path(url, json.loads(options))


def remote_manifest(url: str, options: str) -> dict:
    return read_manifest(on_bucket(url, options))


def assert_same_as_local(s3: S3, prefix: str, local: Path, options: str) -> None:
    objects = s3.objects(prefix)
    assert objects == local_hashes(local)  # no missing, extra or partial shard
    assert len(objects) >= 4
    ref = read_manifest(local)["shards"]
    assert remote_manifest(f"s3://{BUCKET}/{prefix}", options)["shards"] == ref
    assert not [k for k in s3.keys(prefix) if k.endswith(".tmp")]
