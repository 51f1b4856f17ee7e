"""Object-store faults: throttling (503 SlowDown), server errors (500 InternalError) and
connections dropped before an answer or cut in the middle of one, injected by a proxy
(``tests/s3_faults.py``) between tokedit and the local S3 server, on reads (listings, the
input and scores shards, the scores manifest), on uploads (a shard's temporary key, the parts
of a multipart upload), on the publishing copy and on the manifest objects (entries, header).

A fault the retries absorb leaves the fault-free bytes and manifest; one they do not absorb
is exit 2 naming the URL and the remedy, leaves a manifest that names only shards that are
there with their final bytes, and the same command resumes once the store answers again.
"""

from __future__ import annotations

import hashlib
import os
import time

import pytest

pytest.importorskip("s3fs", reason="object storage is an optional extra: pip install 'tokedit[s3]'")
pytest.importorskip("moto.server", reason="the S3 test server: pip install 'moto[server]'")

from s3_faults import FaultProxy  # noqa: E402
from s3_server import (  # noqa: E402
    BUCKET,
    SCORE_EXTRA,
    assert_same_as_local,
    edit_args,
    local_hashes,
    moto_server,
    no_environment_credentials,
    on_bucket,
    remote_manifest,
)
from scale_helpers import invoke, mixed_corpus, score_args  # noqa: E402

from tokedit.errors import InputError  # noqa: E402
from tokedit.io.manifest import read_manifest  # noqa: E402
from tokedit.io.storage import spool_dir  # noqa: E402
from tokedit.io.write import atomic_path  # noqa: E402

pytestmark = pytest.mark.s3  # a real local S3 server (moto), started by a fixture

# Few tries, for the faults that outlast them: s3fs 2 tries of botocore's 2 (1 retry).
FEW_TRIES = {"retries": 2, "retries_config": {"max_attempts": 1}}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    yield from moto_server(tmp_path_factory)


@pytest.fixture(scope="module")
def proxy(s3):
    p = FaultProxy(s3.endpoint)
    yield p
    p.close()


@pytest.fixture(autouse=True)
def _clean(monkeypatch, proxy):
    no_environment_credentials(monkeypatch)
    proxy.reset()
    yield
    proxy.reset()


@pytest.fixture(scope="module")
def data(tmp_path_factory, plays):
    return mixed_corpus(tmp_path_factory.mktemp("faults-data"), plays, chars_per_shard=3_000)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data, tiny_prior, s3):
    """score -> edit on local disk (the fault-free bytes), and the input and scores put on
    the bucket (directly, not through the proxy)."""
    root = tmp_path_factory.mktemp("faults-ref")
    for args in (
        score_args(data, root / "scores", tiny_prior, *SCORE_EXTRA),
        edit_args(data, root / "scores", root / "edited"),
    ):
        r = invoke(*args)
        assert r.returncode == 0, r.stderr
    return {
        "edited": root / "edited",
        "data_url": s3.upload(data, "data"),
        "scores_url": s3.upload(root / "scores", "ref-scores"),
    }


def through(s3, proxy, retries: int | None = None, retries_config: dict | None = None) -> str:
    """``--storage-options`` that reach the server through the proxy; tokedit's retry
    defaults unless ``retries`` (s3fs's tries) or ``retries_config`` (botocore's) say."""
    config = {"retries": retries_config} if retries_config else None
    return s3.options(endpoint=proxy.endpoint, retries=retries, config=config)


def edit_on_bucket(reference, out: str, options: str):
    args = edit_args(reference["data_url"], reference["scores_url"], out)
    return invoke(*args, "--storage-options", options)


def retry_gaps(proxy, rule) -> list[float]:
    """Seconds from each fault of ``rule`` to the next request of the same operation and
    key (its retry)."""
    log = proxy.requests(rule.op, rule.key)
    return [b.t - a.t for a, b in zip(log, log[1:], strict=False) if a.did == rule.fault]


# Where a fault is injected during `edit DATA --scores SCORES --out OUT` (OUT's key: {out}).
READS = [
    ("ListObjects", "tok/data*"),  # the input's listing
    ("GetObject", "tok/ref-scores/.tokedit/manifest.json"),  # the scores' manifest
    ("GetObject", "tok/data/part-1*"),  # an input shard
    ("GetObject", "tok/ref-scores/part-2*"),  # a scores shard
]
WRITES = [
    ("PutObject", "{out}/.part-1*.tmp"),  # a shard's upload to its temporary key
    ("CopyObject", "{out}/part-2*"),  # its publishing copy
    ("PutObject", "{out}/.tokedit/shards/part-3*"),  # its manifest entry
    ("PutObject", "{out}/.tokedit/manifest.json"),  # the manifest header (the first write)
]


# Faults in a row at each point: aiohttp sends an idempotent request whose reused
# connection was closed once more at once, so it takes two to reach tokedit's retries.
IN_A_ROW = {"slowdown": 1, "internal": 1, "drop": 2, "cut": 2}


@pytest.mark.parametrize("fault", list(IN_A_ROW))
def test_transient_faults_are_retried_and_leave_the_fault_free_output(s3, proxy, reference, fault):
    """Faults of one kind at each of 8 points of one run: the run exits 0 with the bytes
    and manifest entries of the local fault-free run, and the log shows every fault
    injected and its request sent again, after a wait."""
    out = f"s3://{BUCKET}/transient-{fault}"
    key = out.removeprefix("s3://")
    n = IN_A_ROW[fault]
    rules = [proxy.fail(op, k.format(out=key), fault, n) for op, k in READS + WRITES]
    r = edit_on_bucket(reference, out, through(s3, proxy))
    assert r.returncode == 0, r.stderr
    assert_same_as_local(s3, f"transient-{fault}", reference["edited"], s3.options())
    for rule in rules:
        log = proxy.requests(rule.op, rule.key)
        faults = [i for i, req in enumerate(log) if req.did == fault]
        assert rule.hits == n and len(faults) == n, (rule, log)  # injected
        assert log[faults[-1] + 1].did == "pass", (rule, log)  # and retried
    # botocore waits a random time up to 1 s before its first retry, up to 2 s before its
    # second (full jitter), s3fs 0.1 s, then 0.17 s: 8 such waits or more add up to 0.3 s
    # but with odds of 1 in 10^8; retries without a wait (a round trip each, a few ms) fall
    # far short.
    gaps = [g for rule in rules for g in retry_gaps(proxy, rule)]
    assert sum(gaps) >= 0.3 and max(gaps) < 2 ** (n - 1) + 0.5, gaps
    print(f"{fault}: {n * len(rules)} faults injected at {len(rules)} points, all survived")


def test_retries_wait_longer_each_time(s3, proxy, reference):
    """s3fs's tries of a throttled request wait 0.1 s, then 1.7 times longer each time:
    with botocore's own retries off (its waits are random) they are the whole gap."""
    out = f"s3://{BUCKET}/backoff"
    header = f"{out.removeprefix('s3://')}/.tokedit/manifest.json"
    rule = proxy.fail("PutObject", header, "slowdown", 4)
    options = through(s3, proxy, retries=5, retries_config={"max_attempts": 0})
    r = edit_on_bucket(reference, out, options)
    assert r.returncode == 0, r.stderr
    assert_same_as_local(s3, "backoff", reference["edited"], s3.options())
    log = proxy.requests("PutObject", header)
    assert rule.hits == 4 and [req.did for req in log[:5]] == ["slowdown"] * 4 + ["pass"]
    gaps = [b.t - a.t for a, b in zip(log[:4], log[1:5], strict=True)]
    for i, gap in enumerate(gaps):
        assert 0.1 * 1.7**i - 0.005 <= gap < 0.1 * 1.7**i + 0.3, gaps
    assert gaps == sorted(gaps), gaps


# Where a fault persists (every try of the request gets it): (name, operation, key, fault,
# after: requests that pass first, shards complete when the run stops, the URL the
# message names). The fault is at the third of the 4 shards.
PERSISTENT = [
    ("read", "GetObject", "tok/data/part-2*", "slowdown", 0, 2, "s3://tok/data/part-2"),
    ("upload", "PutObject", "{out}/.part-2*.tmp", "slowdown", 0, 2, "{out}/part-2"),
    ("copy", "CopyObject", "{out}/part-2*", "internal", 0, 2, "{out}/part-2"),
    # The entry reaches the server, its answer is cut: the shard is complete.
    ("entry", "PutObject", "{out}/.tokedit/shards/part-2*", "cut", 0, 3, "{out}"),
    # The header's last write (the totals), after every shard's entry.
    ("header", "PutObject", "{out}/.tokedit/manifest.json", "drop", 1, 4, "{out}/.tokedit"),
]


@pytest.mark.parametrize(
    "where,op,key,fault,after,done,url", PERSISTENT, ids=[p[0] for p in PERSISTENT]
)
def test_persistent_faults_exit_2_and_the_rerun_resumes(
    s3, proxy, reference, where, op, key, fault, after, done, url
):
    """A fault at one point that every try gets: the run stops with a clear error and
    leaves only whole, recorded shards (and whole unrecorded ones); the rerun resumes."""
    out = f"s3://{BUCKET}/persistent-{where}"
    prefix = out.removeprefix(f"s3://{BUCKET}/")
    rule = proxy.fail(op, key.format(out=out.removeprefix("s3://")), fault, 1000, after=after)
    t0 = time.monotonic()
    r = edit_on_bucket(reference, out, through(s3, proxy, **FEW_TRIES))
    elapsed = time.monotonic() - t0
    # Every shard the manifest names is there with its final bytes; no other shard object
    # is partial; no temporary key is left.
    want = local_hashes(reference["edited"])
    named = remote_manifest(out, s3.options())["shards"]
    outputs = [rel for entry in named.values() for rel in entry["outputs"]]
    objects = s3.objects(prefix)
    assert {rel: objects.get(rel) for rel in outputs} == {rel: want[rel] for rel in outputs}
    assert all(want[rel] == sha for rel, sha in objects.items()), objects
    assert not [k for k in s3.keys(prefix) if k.endswith(".tmp")], s3.keys(prefix)
    assert len(named) == done, named
    # A clear error, after the few tries, in bounded time.
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert url.format(out=out) in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "gave up" in r.stderr and "fix: rerun the same command" in r.stderr, r.stderr
    assert "--storage-options" in r.stderr
    assert rule.hits >= 2 and elapsed < 20, (rule, elapsed)  # retried, then stopped
    # The store answers again: the same command completes the rest, and only the rest.
    proxy.reset()
    r = edit_on_bucket(reference, out, through(s3, proxy))
    assert r.returncode == 0, r.stderr
    assert f"{done} shard(s) already done" in r.stdout, r.stdout
    uploaded = {req.key.rsplit("/", 1)[-1] for req in proxy.requests("PutObject", "*.tmp")}
    assert len(uploaded) == 4 - done, uploaded
    assert_same_as_local(s3, prefix, reference["edited"], s3.options())
    totals = remote_manifest(out, s3.options()).get("totals")
    assert totals == read_manifest(reference["edited"])["totals"]
    print(f"{where}: {rule.hits} faults injected, the run stopped, the rerun resumed")


def test_multipart_upload_faults(s3, proxy):
    """A file of 100 MiB or more is uploaded in 50 MiB parts (s3fs's ``put_file``): a
    throttled part and a part whose answer is cut are sent again and the object is whole;
    a part that keeps failing is an error naming the URL, and the upload is aborted: no
    object, no temporary key, no multipart upload left open."""
    blob = os.urandom(1 << 20) * 101  # 101 MiB: 3 parts
    url = f"s3://{BUCKET}/multipart/big.bin"
    rules = [proxy.fail("UploadPart", "*/multipart/.big.bin.*", f, 1) for f in ("slowdown", "cut")]
    with atomic_path(on_bucket(url, through(s3, proxy))) as tmp:
        tmp.write_bytes(blob)
    assert [rule.hits for rule in rules] == [1, 1]
    parts = proxy.requests("UploadPart")
    assert len(parts) == 5 and sum(req.did == "pass" for req in parts) == 3, parts
    assert s3.objects("multipart") == {"big.bin": hashlib.sha256(blob).hexdigest()}
    assert s3.keys("multipart") == ["big.bin"]  # the temporary key is gone
    proxy.reset()
    rule = proxy.fail("UploadPart", "*/multipart-failed/*", "internal", 1000)
    url = f"s3://{BUCKET}/multipart-failed/big.bin"
    with pytest.raises(InputError, match="kept failing with server errors") as e:
        with atomic_path(on_bucket(url, through(s3, proxy, **FEW_TRIES))) as tmp:
            tmp.write_bytes(blob)
    assert url in str(e.value) and rule.hits >= 2
    print(f"multipart: 2 faults survived, {rule.hits} injected on the failed upload")
    assert proxy.requests("AbortMultipartUpload"), proxy.log
    assert s3.keys("multipart-failed") == []
    assert s3.fs.call_s3("list_multipart_uploads", Bucket=BUCKET).get("Uploads", []) == []
    assert not list(spool_dir().glob("*big.bin*"))  # nor a local spool file
