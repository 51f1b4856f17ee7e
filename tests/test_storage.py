"""Object storage: score, edit and report on a real S3-compatible server (moto in server mode,
a separate process on the loopback address), reached through s3fs / aiobotocore.

Every output object is compared (SHA-256) with the same run on local disk; kill -9 and two
concurrent writers must leave the bytes of an uninterrupted run; the store's errors exit 2
naming the URL. ``hf://`` cannot be reached here: its code path runs against a local
stand-in filesystem registered for the ``hf`` protocol.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("s3fs", reason="object storage is an optional extra: pip install 'tokedit[s3]'")
pytest.importorskip("moto.server", reason="the S3 test server: pip install 'moto[server]'")

from s3_server import (  # noqa: E402
    BUCKET,
    S3,
    SCORE_EXTRA,
    assert_same_as_local,
    edit_args,
    local_hashes,
    moto_server,
    no_environment_credentials,
    on_bucket,
    remote_manifest,
    report_args,
)
from scale_helpers import cli_command, invoke, mixed_corpus, score_args  # noqa: E402
from upath import UPath  # noqa: E402

from tokedit.io import storage  # noqa: E402
from tokedit.io.manifest import read_manifest  # noqa: E402
from tokedit.io.storage import as_path  # noqa: E402

pytestmark = pytest.mark.s3  # a real local S3 server (moto), started by a fixture


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    yield from moto_server(tmp_path_factory)


@pytest.fixture(autouse=True)
def _storage_env(monkeypatch):
    no_environment_credentials(monkeypatch)


@pytest.fixture(scope="module")
def data(tmp_path_factory, plays):
    return mixed_corpus(tmp_path_factory.mktemp("storage-data"), plays, chars_per_shard=8_000)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data, tiny_prior, s3):
    """score -> edit -> report on local disk, and the input and scores put on the bucket."""
    root = tmp_path_factory.mktemp("storage-ref")
    for args in (
        score_args(data, root / "scores", tiny_prior, *SCORE_EXTRA),
        edit_args(data, root / "scores", root / "edited"),
        report_args(root / "scores", root / "edited", root / "report"),
    ):
        r = invoke(*args)
        assert r.returncode == 0, r.stderr
    return {
        "root": root,
        "scores": root / "scores",
        "edited": root / "edited",
        "report": root / "report",
        "data_url": s3.upload(data, "data"),
        "scores_url": s3.upload(root / "scores", "ref-scores"),
    }


def _timeless(value):
    """A report without its timings (``seconds``), which differ from run to run."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


# ---------------------------------------------------------------- URL handling (no server)


def test_urls_and_local_paths():
    assert as_path("data/x") == Path("data/x")
    assert as_path("file:///tmp/x") == Path("/tmp/x")
    p = as_path("s3://bkt/a/b/")
    assert isinstance(p, UPath) and str(p) == "s3://bkt/a/b"
    assert str(p / "c/d.parquet") == "s3://bkt/a/b/c/d.parquet"
    assert (p / "c.parquet").name == "c.parquet" and p.parent == as_path("s3://bkt/a")
    assert str(as_path("hf://datasets/org/name/data/../x")) == "hf://datasets/org/name/x"
    assert as_path("gs://b/p").protocol == "gs"
    import pickle

    assert pickle.loads(pickle.dumps(p)) == p
    from tokedit.errors import InputError

    with pytest.raises(InputError, match="holds a password"):
        as_path("ftp://user:hunter2@host/data")


def test_bad_storage_options_json_exits_2(tmp_path):
    r = invoke("report", "s3://tok/x", "--out", str(tmp_path / "r"), "--storage-options", "{no")
    assert r.returncode == 2 and "--storage-options" in r.stderr
    r = invoke("report", "s3://tok/x", "--out", str(tmp_path / "r"), "--storage-options", '{"no_such_option": 1}')  # fmt: skip
    assert r.returncode == 2 and "filesystem refuses the storage options" in r.stderr, r.stderr


# ---------------------------------------------------------------- the whole flow on a bucket


def test_score_edit_report_on_the_bucket_match_local_bytes(s3, reference, data, tiny_prior):
    opts = s3.options()
    data_url, out = reference["data_url"], f"s3://{BUCKET}/flow"
    for args in (
        score_args(data_url, f"{out}/scores", tiny_prior, *SCORE_EXTRA),
        edit_args(data_url, f"{out}/scores", f"{out}/edited"),
        report_args(f"{out}/scores", f"{out}/edited", f"{out}/report"),
    ):
        r = invoke(*args, "--storage-options", opts)
        assert r.returncode == 0, r.stderr
    assert_same_as_local(s3, "flow/scores", reference["scores"], opts)
    assert_same_as_local(s3, "flow/edited", reference["edited"], opts)
    # The report: same files; report.json equal once the corpus locations are aligned.
    ref_report = reference["report"]
    assert set(s3.keys("flow/report")) == {
        p.relative_to(ref_report).as_posix() for p in ref_report.rglob("*") if p.is_file()
    }
    got = s3.fs.cat_file(f"{BUCKET}/flow/report/report.json").decode()
    want = (ref_report / "report.json").read_text()
    for sub in ("scores", "edited"):
        got = got.replace(f"{out}/{sub}", str(reference["root"] / sub))
    got = got.replace(data_url, str(data))
    assert _timeless(json.loads(got)) == _timeless(json.loads(want))
    # Secrets never reach a manifest; the header names the input URL.
    for prefix in ("flow/scores", "flow/edited"):
        for key in s3.keys(prefix):
            if key.startswith(".tokedit/"):
                text = s3.fs.cat_file(f"{BUCKET}/{prefix}/{key}").decode()
                assert s3.writer[1] not in text and s3.writer[0] not in text
    header = json.loads(s3.fs.cat_file(f"{BUCKET}/flow/edited/.tokedit/manifest.json"))
    assert header["info"]["input"] == data_url
    # Rerun: every shard complete, nothing rewritten.
    r = invoke(*edit_args(data_url, f"{out}/scores", f"{out}/edited"), "--storage-options", opts)
    assert r.returncode == 0 and "4 shard(s) already done" in r.stdout


def test_one_pass_model_edit_on_the_bucket_matches_local(s3, reference, data, tiny_prior, tmp_path):
    opts = s3.options()
    args = ["--model", str(tiny_prior), "--p", "0.5", "--max-length", "128", "--overlap", "32", "-q"]  # fmt: skip
    local = invoke("edit", str(data), "--out", str(tmp_path / "e"), *args)
    assert local.returncode == 0, local.stderr
    r = invoke("edit", reference["data_url"], "--out", f"s3://{BUCKET}/onepass", *args, "--storage-options", opts)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert_same_as_local(s3, "onepass", tmp_path / "e", opts)


# ---------------------------------------------------------------- kill -9 and concurrency


def _entries(s3: S3, prefix: str) -> list[str]:
    return [k for k in s3.keys(prefix) if k.startswith(".tokedit/shards/")]


def _kill_when(s3: S3, args: list[str], prefix: str, ready) -> dict:
    """Run the CLI in its own process, ``kill -9`` it as soon as ``ready(keys)`` holds;
    return what the bucket held at that moment."""
    proc = subprocess.Popen(cli_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            keys = s3.keys(prefix)
            if ready(keys):
                alive = proc.poll() is None
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return {"alive": alive, "keys": keys}
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.01)
        raise AssertionError("the run never reached the kill point")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_kill_9_score_between_shards_then_rerun(s3, reference, tiny_prior):
    opts = s3.options()
    out = f"s3://{BUCKET}/kill-score"
    args = [*score_args(reference["data_url"], out, tiny_prior, *SCORE_EXTRA), "--storage-options", opts]  # fmt: skip
    state = _kill_when(s3, args, "kill-score", lambda keys: any(k.startswith(".tokedit/shards/") for k in keys))  # fmt: skip
    n_done = len([k for k in state["keys"] if k.startswith(".tokedit/shards/")])
    assert state["alive"] and 1 <= n_done < 4, state  # the kill landed mid-run
    r = invoke(*args)
    assert r.returncode == 0, r.stderr
    assert f"{n_done} shard(s) already done" in r.stdout or "already done" in r.stdout
    assert_same_as_local(s3, "kill-score", reference["scores"], opts)


def test_kill_9_edit_during_publish_then_rerun(s3, reference):
    """Killed once a shard object (or its temporary key) exists but its manifest entry does
    not: a reader must not take that shard for complete, and the rerun rewrites it."""
    opts = s3.options()
    out = f"s3://{BUCKET}/kill-edit"
    args = [*edit_args(reference["data_url"], reference["scores_url"], out), "--storage-options", opts]  # fmt: skip

    def published_not_recorded(keys):
        outputs = [k for k in keys if not k.startswith(".tokedit/")]
        return len(outputs) > len(_entries_in(keys))

    state = _kill_when(s3, args, "kill-edit", published_not_recorded)
    assert state["alive"] and len(_entries_in(state["keys"])) < 4, state
    complete = remote_manifest(out, opts)["shards"] if remote_manifest(out, opts) else {}
    assert len(complete) < 4  # the half-published shard is not complete for a reader
    r = invoke(*args)
    assert r.returncode == 0, r.stderr
    assert_same_as_local(s3, "kill-edit", reference["edited"], opts)


def _entries_in(keys: list[str]) -> list[str]:
    return [k for k in keys if k.startswith(".tokedit/shards/")]


def test_two_processes_share_one_output_prefix(s3, reference):
    opts = s3.options()
    out = f"s3://{BUCKET}/two"
    procs = [
        subprocess.Popen(
            cli_command(
                *edit_args(reference["data_url"], reference["scores_url"], out),
                "--num-shards",
                "2",
                "--shard-index",
                str(i),
                "--storage-options",
                opts,
            ),  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in (0, 1)
    ]
    for p in procs:
        assert p.wait(timeout=180) == 0, p.stderr.read().decode()
    assert len(_entries(s3, "two")) == 4  # one entry object per shard, from both writers
    assert_same_as_local(s3, "two", reference["edited"], opts)
    # Totals: those over every shard, or none when the header missed a writer's last shard.
    ref_totals = read_manifest(reference["edited"])["totals"]
    merged = remote_manifest(out, opts)
    assert merged.get("totals", ref_totals) == ref_totals


def _edit_process(s3: S3, reference, out: str, *extra: str) -> subprocess.Popen:
    args = edit_args(reference["data_url"], reference["scores_url"], out, *extra)
    return subprocess.Popen(
        cli_command(*args, "--storage-options", s3.options()),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _runs(s3: S3, prefix: str) -> list[str]:
    return [k for k in s3.keys(prefix) if k.startswith(".tokedit/runs/")]


def test_two_identical_runs_at_once_on_the_bucket_give_the_bytes_of_one(s3, reference):
    procs = [_edit_process(s3, reference, f"s3://{BUCKET}/same") for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read().decode()) for p in procs]
    assert [rc for rc, _ in results] == [0, 0], results
    assert_same_as_local(s3, "same", reference["edited"], s3.options())
    assert _runs(s3, "same") == []


def test_two_runs_of_other_options_at_once_on_the_bucket_one_is_refused(s3, reference, data, tmp_path):  # fmt: skip
    """No lock on an object store: each run writes its record, then lists the others; of two
    runs of other options started at once exactly one goes on, the other is refused naming it."""
    other = tmp_path / "seed-7"
    r = invoke(*edit_args(data, reference["scores"], other, "--seed", "7"))
    assert r.returncode == 0, r.stderr
    out = f"s3://{BUCKET}/race"
    procs = [_edit_process(s3, reference, out), _edit_process(s3, reference, out, "--seed", "7")]
    results = [(p.wait(timeout=300), p.stderr.read().decode()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    won = 0 if results[0][0] == 0 else 1
    refused = results[1 - won][1]
    named = f"another run with other options is writing here: `tokedit edit`, pid {procs[won].pid} on host {socket.gethostname()}, started "  # fmt: skip
    assert named in refused and "Traceback" not in refused, refused
    assert_same_as_local(s3, "race", [reference["edited"], other][won], s3.options())
    assert _runs(s3, "race") == []


def _record(s3: S3, prefix: str, host: str, pid: int) -> None:
    record = {"host": host, "pid": pid, "command": "edit", "options_tag": "0" * 16,
              "started": "2026-01-01T00:00:00.000+00:00"}  # fmt: skip
    s3.fs.pipe_file(
        f"{BUCKET}/{prefix}/.tokedit/runs/{host}-{pid}.json", json.dumps(record).encode()
    )


def test_stale_run_records_on_the_bucket(s3, reference):
    """A killed run's record (its pid gone on this host) is taken over with a message; one
    from another host (whose pids cannot be checked) refuses other options until
    ``--overwrite`` takes it over, with a message."""
    opts = s3.options()
    gone = subprocess.Popen(["true"])
    gone.wait()
    _record(s3, "stale", socket.gethostname(), gone.pid)
    r = invoke(*edit_args(reference["data_url"], reference["scores_url"], f"s3://{BUCKET}/stale"), "--storage-options", opts)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"pid {gone.pid} on host {socket.gethostname()}" in r.stderr and "was killed" in r.stderr
    assert_same_as_local(s3, "stale", reference["edited"], opts)
    assert _runs(s3, "stale") == []

    _record(s3, "elsewhere", "another-host", 4242)
    args = (*edit_args(reference["data_url"], reference["scores_url"], f"s3://{BUCKET}/elsewhere"), "--storage-options", opts)  # fmt: skip
    r = invoke(*args)
    assert r.returncode == 2, r.stderr
    assert (
        "pid 4242 on host another-host" in r.stderr
        and "cannot tell whether it still runs" in r.stderr
    )
    assert s3.objects("elsewhere") == {}
    r = invoke(*args, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert "pid 4242 on host another-host" in r.stderr and "is taken over" in r.stderr
    assert_same_as_local(s3, "elsewhere", reference["edited"], opts)
    assert _runs(s3, "elsewhere") == []


# ---------------------------------------------------------------- errors: exit 2, URL named


def test_bucket_that_does_not_exist(s3, reference, tiny_prior, tmp_path):
    opts = s3.options()
    url = "s3://no-such-bucket/data"
    r = invoke(*score_args(url, tmp_path / "s", tiny_prior), "--storage-options", opts)
    assert r.returncode == 2 and url in r.stderr and "does not exist" in r.stderr, r.stderr
    out = "s3://no-such-bucket/edited"
    r = invoke(*edit_args(reference["data_url"], reference["scores_url"], out), "--storage-options", opts)  # fmt: skip
    assert r.returncode == 2 and "s3://no-such-bucket" in r.stderr and "does not exist" in r.stderr
    assert "Traceback" not in r.stderr


def test_no_credentials(s3, reference, tmp_path):
    opts = json.dumps({"client_kwargs": {"endpoint_url": s3.endpoint, "region_name": "us-east-1"}})
    r = invoke(*edit_args(reference["data_url"], reference["scores"], tmp_path / "e"), "--storage-options", opts)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert reference["data_url"] in r.stderr and "no credentials" in r.stderr
    assert not (tmp_path / "e").exists()


def test_access_denied_writes_nothing(s3, reference, data):
    denied = s3.options(s3.nobody)
    # reading
    out = f"s3://{BUCKET}/denied-read"
    r = invoke(*edit_args(reference["data_url"], reference["scores_url"], out), "--storage-options", denied)  # fmt: skip
    assert r.returncode == 2 and reference["data_url"] in r.stderr and "access denied" in r.stderr
    # writing (local input, an output the credentials may not write)
    out = f"s3://{BUCKET}/denied-write"
    r = invoke(*edit_args(data, reference["scores"], out), "--storage-options", denied)
    assert r.returncode == 2 and out in r.stderr and "access denied" in r.stderr, r.stderr
    assert s3.keys("denied-read") == [] and s3.keys("denied-write") == []


def test_endpoint_that_does_not_answer_times_out(tmp_path):
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        opts = json.dumps(
            {
                "key": "k",
                "secret": "s",
                "retries": 1,
                "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
                "config_kwargs": {"connect_timeout": 1, "read_timeout": 1, "retries": {"max_attempts": 1}},
            }
        )  # fmt: skip
        url = "s3://tok/data"
        t0 = time.time()
        r = invoke("report", url, "--out", str(tmp_path / "r"), "--storage-options", opts)
        elapsed = time.time() - t0
    assert r.returncode == 2 and url in r.stderr and "does not answer" in r.stderr, r.stderr
    assert elapsed < 30
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- hf:// through a stand-in


def test_hf_urls_through_a_local_stand_in_filesystem(reference, data, tmp_path, monkeypatch):
    """``hf://datasets/org/name/...`` goes through fsspec's registry like any URL; here the
    ``hf`` protocol is a local directory standing in for the Hub."""
    import shutil

    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    hub = tmp_path / "hub"
    shutil.copytree(data, hub / "datasets/org/corpus/data")

    class StandInHub(LocalFileSystem):
        protocol = ("hf",)
        root_marker = ""

        @classmethod
        def _strip_protocol(cls, path):
            path = str(path)
            if path.startswith("hf://"):
                path = path[len("hf://") :]
            if not path.startswith(str(hub)):
                path = f"{hub}/{path.lstrip('/')}"
            return path.rstrip("/")

    from fsspec.registry import _registry

    original = _registry.get("hf")
    fsspec.register_implementation("hf", StandInHub, clobber=True)
    try:
        url = "hf://datasets/org/corpus/data"
        r = invoke(*edit_args(url, reference["scores"], tmp_path / "edited"))
        assert r.returncode == 0, r.stderr
        assert local_hashes(tmp_path / "edited") == local_hashes(reference["edited"])
        assert read_manifest(tmp_path / "edited")["info"]["input"] == url
    finally:
        if original is not None:
            fsspec.register_implementation("hf", original, clobber=True)
        else:
            _registry.pop("hf", None)


# ---------------------------------------------------------------- Ray actors on the bucket


@pytest.fixture(scope="module")
def ray_one_cpu():
    """A local Ray instance with fewer CPUs than this machine has (1 of 2)."""
    pytest.importorskip("ray", reason="Ray is an optional extra")
    import ray

    ray.init(
        address="local",
        num_cpus=1,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
    )
    yield ray
    ray.shutdown()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_ray_actors_read_and_write_the_bucket(s3, reference, ray_one_cpu):
    opts = s3.options()
    out = f"s3://{BUCKET}/ray-edited"
    storage._PUBLISHED_SHA256.clear()
    r = invoke(
        *edit_args(reference["data_url"], reference["scores_url"], out, "--engine", "ray"),
        "--storage-options",
        opts,
    )
    assert r.returncode == 0, r.stderr
    assert_same_as_local(s3, "ray-edited", reference["edited"], opts)
    # The driver published manifest objects only: shard bytes went from actor to store.
    driver_published = [u for u in storage._PUBLISHED_SHA256 if "/.tokedit/" not in u]
    assert driver_published == []


# ---------------------------------------------------------------- train: DATA on the bucket


def test_train_reads_its_data_from_the_bucket(s3, reference, data, tiny_prior, tmp_path):
    args = ["--model", str(tiny_prior), "--max-steps", "2", "--block-size", "64", "--batch-size", "2", "-q"]  # fmt: skip
    local = invoke("train", str(data), "--out", str(tmp_path / "local"), *args)
    assert local.returncode == 0, local.stderr
    opts = s3.options()
    r = invoke("train", reference["data_url"], "--out", str(tmp_path / "s3"), *args, "--storage-options", opts)  # fmt: skip
    assert r.returncode == 0, r.stderr
    weights = sorted(p.name for p in (tmp_path / "local").glob("*.safetensors"))
    assert weights
    for name in weights:  # the same documents, the same seed: the same weights
        assert (tmp_path / "s3" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    refused = invoke("train", str(data), "--out", f"s3://{BUCKET}/model", *args)
    assert refused.returncode == 2 and "must be a local directory" in refused.stderr


def test_entries_of_other_options_are_refused_not_mixed(s3):
    """Two runs with different options racing into one new prefix: whichever header won,
    the other run's entry objects carry another options tag and a reader refuses them."""
    from tokedit.errors import OutputError
    from tokedit.io.manifest import Manifest, entry_path

    out = on_bucket(f"s3://{BUCKET}/mixed", s3.options())
    m = Manifest(out, "edit", {"seed": 0})
    m.mark_complete("a.parquet", {"outputs": []})
    assert read_manifest(out)["shards"] == {"a.parquet": {"outputs": []}}
    other = {"shard": "b.parquet", "entry": {"outputs": []}, "options_tag": "0" * 16}
    entry_path(out, "b.parquet").write_text(json.dumps(other))
    with pytest.raises(OutputError, match="written with other options"):
        read_manifest(out)
    with pytest.raises(OutputError, match="written with other options"):
        Manifest(out, "edit", {"seed": 0})
    Manifest(out, "edit", {"seed": 0}, overwrite=True)  # --overwrite clears it
    assert read_manifest(out)["shards"] == {}


def test_remote_shards_are_streamed_not_downloaded_first(s3, tmp_path, monkeypatch):
    """The first record batch of a ~19 MB compressed shard arrives after one 8 MiB block."""
    import gzip

    import tokedit.io.read as read_mod
    from tokedit.io.read import iter_batches
    from tokedit.io.shards import discover_shards

    rows = (json.dumps({"text": os.urandom(1024).hex()}) for _ in range(16_000))
    blob = gzip.compress(("\n".join(rows) + "\n").encode(), mtime=0)
    s3.fs.pipe_file(f"{BUCKET}/big/part.jsonl.gz", blob)
    opened = []

    def recording(path):
        f = storage.open_read(path)
        opened.append(f)
        return f

    monkeypatch.setattr(read_mod, "open_read", recording)
    (shard,) = discover_shards(on_bucket(f"s3://{BUCKET}/big", s3.options()))
    batches = iter_batches(shard, batch_rows=100)
    first = next(batches)
    assert len(first) == 100
    fetched = opened[0].cache.total_requested_bytes
    assert 0 < fetched < len(blob) / 2, (fetched, len(blob))
    assert sum(len(b) for b in batches) == 16_000 - 100


def test_every_input_format_reads_the_same_from_the_bucket(s3, data, tmp_path):
    """parquet, jsonl, jsonl.gz, jsonl.zst (the corpus) and a save_to_disk folder, beside a
    hidden folder and an underscore folder that are skipped, as on disk."""
    import shutil

    from datasets import Dataset

    from tokedit.io.read import iter_batches
    from tokedit.io.shards import discover_shards

    local = tmp_path / "formats"
    shutil.copytree(data, local)
    rows = [{"id": f"h{i}", "text": f"document {i}"} for i in range(10)]
    Dataset.from_list(rows).save_to_disk(str(local / "hf"), num_shards=2)
    (local / ".cache").mkdir()
    (local / ".cache" / "x.parquet").write_bytes(b"not data")
    (local / "_tmp").mkdir()
    (local / "_tmp" / "y.jsonl").write_text("{}\n")
    url = on_bucket(s3.upload(local, "formats"), s3.options())

    def content(root):
        shards = discover_shards(root)
        return [
            (s.rel, s.fmt, [b.column("text") for b in iter_batches(s, batch_rows=7)])
            for s in shards
        ]

    here, there = content(local), content(url)
    assert {fmt for _, fmt, _ in here} == {"parquet", "jsonl", "jsonl.gz", "jsonl.zst", "arrow"}
    assert there == here
