"""The storage contract on a second fsspec filesystem: ``memory://`` (fsspec's in-process
store, a real filesystem with no rename and no lock, like an object store).

The same things as the object-storage tests (tests/test_storage.py, on S3): a dataset on
the store, score and edit into the store, the shards listed as on disk, outputs published
whole or not at all, a run resumed from the manifest, and every byte equal to a local run.
``memory://`` lives in this process only: the CLI runs in-process (click's runner).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import uuid
from pathlib import Path

import fsspec
import pytest
from scale_helpers import invoke, mixed_corpus, output_files, score_args

from tokedit.io.manifest import read_manifest
from tokedit.io.shards import discover_shards
from tokedit.io.storage import as_path, find, is_remote, publish
from tokedit.io.write import atomic_path, temp_name_for

SCORE_EXTRA = ("--candidates-min-p", "0.3")


class Memory:
    """The ``memory://`` store: one fresh root per test, emptied at the end."""

    def __init__(self):
        self.fs = fsspec.filesystem("memory")
        self.root = f"memory://contract-{uuid.uuid4().hex[:8]}"

    def url(self, prefix: str) -> str:
        return f"{self.root}/{prefix}"

    def _key(self, prefix: str) -> str:
        return type(self.fs)._strip_protocol(self.url(prefix))

    def keys(self, prefix: str) -> list[str]:
        base = self._key(prefix) + "/"
        return sorted(k[len(base) :] for k in self.fs.find(base.rstrip("/")))

    def objects(self, prefix: str) -> dict[str, str]:
        """SHA-256 of every data object under ``prefix`` (nothing hidden)."""
        base = self._key(prefix) + "/"
        return {
            rel: hashlib.sha256(self.fs.cat_file(base + rel)).hexdigest()
            for rel in self.keys(prefix)
            if not any(part.startswith(".") for part in rel.split("/"))
        }

    def upload(self, local: Path, prefix: str) -> str:
        for p in sorted(local.rglob("*")):
            if p.is_file():
                self.fs.put_file(str(p), f"{self._key(prefix)}/{p.relative_to(local).as_posix()}")
        return self.url(prefix)

    def remove(self) -> None:
        if self.fs.exists(self._key("")):
            self.fs.rm(self._key("").rstrip("/"), recursive=True)


@pytest.fixture
def store():
    m = Memory()
    yield m
    m.remove()


@pytest.fixture(scope="module")
def data(tmp_path_factory, plays):
    return mixed_corpus(tmp_path_factory.mktemp("contract-data"), plays, chars_per_shard=4_000)


def edit_args(data, scores, out, *extra: str) -> list[str]:
    return ["edit", str(data), "--scores", str(scores), "--out", str(out), "--p", "0.5", "-q", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data, tiny_prior):
    """score -> edit on local disk."""
    root = tmp_path_factory.mktemp("contract-ref")
    for args in (
        score_args(data, root / "scores", tiny_prior, *SCORE_EXTRA),
        edit_args(data, root / "scores", root / "edited"),
    ):
        r = invoke(*args)
        assert r.returncode == 0, r.stderr
    return {"scores": root / "scores", "edited": root / "edited"}


def local_hashes(out: Path) -> dict[str, str]:
    return {rel: hashlib.sha256(b).hexdigest() for rel, b in output_files(out).items()}


def assert_same_as_local(store: Memory, prefix: str, local: Path) -> None:
    objects = store.objects(prefix)
    assert objects == local_hashes(local)  # no missing, extra or partial shard
    assert len(objects) >= 4
    assert read_manifest(store.url(prefix))["shards"] == read_manifest(local)["shards"]
    assert not [k for k in store.keys(prefix) if k.endswith(".tmp")]


def test_score_and_edit_into_the_store_match_local_bytes(store, data, reference, tiny_prior):
    data_url = store.upload(data, "data")
    scores, edited = store.url("scores"), store.url("edited")
    r = invoke(*score_args(data_url, scores, tiny_prior, *SCORE_EXTRA))
    assert r.returncode == 0, r.stderr
    r = invoke(*edit_args(data_url, scores, edited))
    assert r.returncode == 0, r.stderr
    assert_same_as_local(store, "scores", reference["scores"])
    assert_same_as_local(store, "edited", reference["edited"])
    header = json.loads(store.fs.cat_file(store._key("edited") + "/.tokedit/manifest.json"))
    assert header["info"]["input"] == data_url
    # one completion entry object per shard (no lock on the store)
    entries = [k for k in store.keys("edited") if k.startswith(".tokedit/shards/")]
    assert len(entries) == len(read_manifest(reference["edited"])["shards"])


def test_a_run_resumes_from_the_manifest_on_the_store(store, data, reference):
    """Half the shards (one of two --num-shards tasks), then the whole command: the shards
    done are kept, the rest written, and the bytes are those of one local run."""
    out = store.url("resumed")
    scores = reference["scores"]
    r = invoke(*edit_args(data, scores, out, "--num-shards", "2", "--shard-index", "0"))
    assert r.returncode == 0, r.stderr
    first = read_manifest(out)["shards"]
    n_shards = len(read_manifest(reference["edited"])["shards"])
    assert 1 <= len(first) < n_shards
    r = invoke(*edit_args(data, scores, out))
    assert r.returncode == 0, r.stderr
    assert f"{len(first)} shard(s) already done" in r.stdout
    assert_same_as_local(store, "resumed", reference["edited"])
    # a shard whose output object is gone is not complete: the rerun writes it again
    shard = next(iter(store.objects("resumed")))
    store.fs.rm_file(f"{store._key('resumed')}/{shard}")
    r = invoke(*edit_args(data, scores, out))
    assert r.returncode == 0, r.stderr
    assert f"{n_shards - 1} shard(s) already done" in r.stdout
    assert_same_as_local(store, "resumed", reference["edited"])


def test_shards_are_listed_as_on_disk(store, data, tmp_path):
    """The same shards, formats and order as the local directory; hidden and ``_``
    directories, temp files and manifests skipped."""
    import shutil

    local = tmp_path / "d"
    shutil.copytree(data, local)
    (local / ".cache").mkdir()
    (local / ".cache" / "x.parquet").write_bytes(b"not data")
    (local / "_tmp").mkdir()
    (local / "_tmp" / "y.jsonl").write_text("{}\n")
    (local / f".part-0.jsonl.{temp_name_for('x')}").write_text("partial")
    url = store.upload(local, "listed")
    here = [(s.rel, s.fmt) for s in discover_shards(local)]
    there = discover_shards(url)
    assert [(s.rel, s.fmt) for s in there] == here and len(here) == 4
    assert all(is_remote(s.path) and str(s.path) == f"{url}/{s.rel}" for s in there)
    assert find(as_path(url + "/_tmp")) == ["y.jsonl"]
    assert find(as_path(url + "/nothing-here")) == []


def test_a_write_is_published_whole_or_not_at_all(store, tmp_path):
    dest = as_path(store.url("pub/a/part.bin"))
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("the writer dies before it is done")
    assert store.keys("pub") == []  # neither the object nor a temporary key
    with atomic_path(dest) as tmp:
        tmp.write_bytes(b"whole")
    assert store.keys("pub") == ["a/part.bin"]
    assert dest.read_bytes() == b"whole"
    local = tmp_path / "x"
    local.write_bytes(b"second")
    publish(local, dest, temp_name_for(dest.name))  # replaces it, and leaves no temp key
    assert store.keys("pub") == ["a/part.bin"] and dest.read_bytes() == b"second"


def test_storage_options_travel_with_the_path_and_never_into_its_name():
    opts = {"key": "AKIA-test", "secret": "s3cr3t", "client_kwargs": {"endpoint_url": "http://h:1"}}
    p = as_path("s3://bkt/data/", opts)
    for q in (p, p / "a/b.parquet", (p / "a").parent, pickle.loads(pickle.dumps(p / "x"))):
        assert q.storage_options["secret"] == "s3cr3t"
        assert q.storage_options["client_kwargs"] == {"endpoint_url": "http://h:1"}
        assert q.storage_options["config_kwargs"]["connect_timeout"] == 10  # S3 defaults under
        assert "s3cr3t" not in str(q) and "AKIA" not in str(q) and "s3cr3t" not in repr(q)
    per_protocol = {"s3": {"anon": True}, "hf": {"token": "t"}}
    assert as_path("hf://datasets/o/n", per_protocol).storage_options == {"token": "t"}
    assert as_path("memory://x", per_protocol).storage_options == {}
    # a URL named by a manifest takes the options of the directory the manifest is in
    assert as_path("s3://other/x", like=p).storage_options == p.storage_options
    assert as_path("memory://x", like=p).storage_options == {}
