"""``--engine ray`` on a local Ray instance: same bytes, manifest and resume rules as local."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'tokedit[ray]'")

from scale_helpers import (  # noqa: E402
    edit_args,
    free_port,
    init_local_ray,
    invoke,
    manifest_shards,
    mixed_corpus,
    output_files,
    score_args,
    temp_files,
)

from tokedit.editor.options import EditOptions  # noqa: E402
from tokedit.editor.step import ShardEditor  # noqa: E402
from tokedit.engines.ray_engine import (  # noqa: E402
    check_reachable,
    default_resources,
    import_ray,
)
from tokedit.errors import InputError  # noqa: E402
from tokedit.io.manifest import read_manifest  # noqa: E402
from tokedit.scoring.options import ScoreOptions  # noqa: E402
from tokedit.scoring.run import ShardScorer  # noqa: E402


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for the module, sized as tokedit sizes its own (cores + 1 CPUs)."""
    ray = init_local_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory, plays):
    return mixed_corpus(tmp_path_factory.mktemp("ray-data"), plays, chars_per_shard=12_000)


@pytest.fixture(scope="module")
def local_out(tmp_path_factory, data, tiny_prior):
    out = tmp_path_factory.mktemp("ray-local") / "scores"
    r = invoke(*score_args(data, out, tiny_prior))
    assert r.returncode == 0, r.stderr
    return out


def test_ray_output_is_byte_identical_to_local(tmp_path, ray_local, data, local_out, tiny_prior):
    out = tmp_path / "scores"
    r = invoke(*score_args(data, out, tiny_prior, "--engine", "ray"))
    assert r.returncode == 0, r.stderr
    assert "0 shard(s) already done" in r.stdout
    assert output_files(out) == output_files(local_out)
    assert len(output_files(out)) == 4
    assert manifest_shards(out) == manifest_shards(local_out)
    ray_manifest = read_manifest(out)
    local_manifest = read_manifest(local_out)
    assert ray_manifest["options"] == local_manifest["options"]
    assert ray_manifest["totals"] == local_manifest["totals"]
    assert ray_manifest["info"]["device"] == "cpu"  # reported by the actor that scored
    assert not temp_files(out)


def test_two_actors_writing_concurrently(tmp_path, ray_local, data, local_out, tiny_prior):
    """Two 1-CPU actors: every shard once, same rows and tokens; log-probs computed with
    one torch thread may differ from the 2-thread local run in the last bit (documented)."""
    out = tmp_path / "scores"
    r = invoke(*score_args(data, out, tiny_prior, "--engine", "ray", "--ray-actors", "2"))
    assert r.returncode == 0, r.stderr
    assert manifest_shards(out).keys() == manifest_shards(local_out).keys()
    assert not temp_files(out)
    for name in output_files(local_out):
        a, b = (pq.read_table(d / name).to_pydict() for d in (out, local_out))
        for col in ("id", "status", "n_tokens", "token_ids", "offsets"):
            assert a[col] == b[col]
        for x, y in zip(a["logprob"], b["logprob"], strict=True):
            np.testing.assert_allclose(np.array(x, float), np.array(y, float), atol=1e-5)


def without_quiet(args: list[str]) -> list[str]:
    return [a for a in args if a != "-q"]


def test_engines_resume_each_other(tmp_path, ray_local, data, local_out, tiny_prior):
    out = tmp_path / "scores"
    half = invoke(*score_args(data, out, tiny_prior, "--num-shards", "2", "--shard-index", "0"))
    assert half.returncode == 0, half.stderr
    assert len(manifest_shards(out)) == 2
    # Without -q: -q leaves warnings only, and the "resumed" stage message is INFO.
    rest = invoke(*without_quiet(score_args(data, out, tiny_prior, "--engine", "ray")))
    assert rest.returncode == 0, rest.stderr
    assert "resumed: 2 shard(s) already complete" in rest.stderr
    assert "2 shard(s) already done" in rest.stdout
    assert output_files(out) == output_files(local_out)
    assert manifest_shards(out) == manifest_shards(local_out)
    again = invoke(*score_args(data, out, tiny_prior, "--engine", "ray"))
    assert again.returncode == 0 and "scored 0 documents" in again.stdout
    refused = invoke(*score_args(data, out, tiny_prior, "--engine", "ray", "--top-k", "4"))
    assert refused.returncode == 2
    assert "other options (top_k: 8 -> 4)" in refused.stderr and "Traceback" not in refused.stderr


def test_actor_errors_read_like_local_errors(tmp_path, ray_local, tiny_prior):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text('{"id": "a", "text": "To be, or not to be"}\n')
    (data / "b.jsonl").write_text('{"id": "b", "text": "ok"}\n{"id": oops}\n')
    out = tmp_path / "out"
    local = invoke(*score_args(data, tmp_path / "local", tiny_prior))
    ray = invoke(*score_args(data, out, tiny_prior, "--engine", "ray"))
    assert local.returncode == ray.returncode == 2
    for r in (local, ray):
        assert "b.jsonl:2: malformed JSON" in r.stderr and "fix:" in r.stderr
        assert "Traceback" not in r.stderr
    assert "b.jsonl" not in manifest_shards(out)
    assert not (out / "b.parquet").exists() and not temp_files(out)


def test_missing_ray_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InputError) as e:
        import_ray()
    assert "pip install 'tokedit[ray]'" in str(e.value)


def test_unreachable_cluster_fails_fast():
    started = time.perf_counter()
    with pytest.raises(InputError, match=r"cannot reach a Ray cluster at 127\.0\.0\.1:\d+"):
        check_reachable(f"127.0.0.1:{free_port()}")
    assert time.perf_counter() - started < 5


def test_bad_actor_count_is_refused(tmp_path, data, tiny_prior):
    r = invoke(
        *score_args(data, tmp_path / "o", tiny_prior, "--engine", "ray", "--ray-actors", "0")
    )
    assert r.returncode == 2 and "--ray-actors 0 must be >= 1" in r.stderr


def test_default_pool_leaves_a_cpu_and_matches_local_threads():
    # the local instance on 2 cores: 3 CPUs -> one actor, 2 CPUs, 2 torch threads
    assert default_resources({"CPU": 3.0}, None, threads=2, max_node_cpus=3) == (
        1,
        {"num_cpus": 2},
        2,
    )
    # a cluster of 16-CPU nodes, driver with 8 threads: 8 CPUs per actor, one CPU kept free
    assert default_resources({"CPU": 32.0}, None, threads=8, max_node_cpus=16)[:2] == (
        3,
        {"num_cpus": 8},
    )
    # threads capped by the largest node; explicit pool sizes shrink the CPUs per actor
    assert default_resources({"CPU": 8.0}, None, threads=32, max_node_cpus=4)[1:] == (
        {"num_cpus": 3},
        3,
    )
    assert default_resources({"CPU": 3.0}, 2, threads=2, max_node_cpus=3) == (
        2,
        {"num_cpus": 1},
        1,
    )
    assert default_resources({"CPU": 2.0}, None, threads=2, max_node_cpus=2) == (
        1,
        {"num_cpus": 1},
        1,
    )
    gpu = default_resources({"CPU": 64.0, "GPU": 8.0}, None, threads=16, max_node_cpus=64)
    assert gpu == (8, {"num_cpus": 1, "num_gpus": 1}, None)


def test_shard_scorer_pickles_its_configuration_only(tmp_path, tiny_prior):
    s = ShardScorer(str(tmp_path), str(tiny_prior), ScoreOptions().resolved(128)).load()
    s.on_tokens = print
    blob = pickle.dumps(s)
    assert len(blob) < 2000  # no model, no tokenizer, no callback
    copy = pickle.loads(blob)
    assert copy == s and copy._scorer is None and copy.on_tokens is None


# ---------------------------------------------------------------- tokedit edit --engine ray


@pytest.fixture(scope="module")
def local_edit(tmp_path_factory, data, local_out):
    """A local two-threshold sweep from the local scores (candidates where P >= 0.9)."""
    out = tmp_path_factory.mktemp("ray-local-edit") / "edited"
    r = invoke(*edit_args(data, out, "--scores", str(local_out), "--p", "0.9,0.95"))
    assert r.returncode == 0, r.stderr
    assert sum(e["p"]["0.9"]["changed"] for e in manifest_shards(out).values()) > 0
    return out


def summary_counts(stdout: str) -> list[str]:
    """The edit summary without its first line (timings)."""
    return stdout.strip().splitlines()[1:]


def test_ray_edit_is_byte_identical_to_local(tmp_path, ray_local, data, local_out, local_edit):
    out = tmp_path / "edited"
    r = invoke(*edit_args(data, out, "--scores", str(local_out), "--p", "0.9,0.95", "--engine", "ray"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "0 shard(s) already done" in r.stdout
    assert len(output_files(out)) == 8  # 4 shards x 2 thresholds
    assert output_files(out) == output_files(local_edit)
    assert manifest_shards(out) == manifest_shards(local_edit)
    ray_manifest = read_manifest(out)
    local_manifest = read_manifest(local_edit)
    assert ray_manifest["options"] == local_manifest["options"]
    assert ray_manifest["totals"] == local_manifest["totals"]
    local_again = invoke(*edit_args(data, tmp_path / "again", "--scores", str(local_out), "--p", "0.9,0.95"))  # fmt: skip
    assert summary_counts(r.stdout) == [
        line.replace(str(tmp_path / "again"), str(out))
        for line in summary_counts(local_again.stdout)
    ]  # this run's counts come back from the actors


def edit_on_both_engines(tmp_path, data, *args):
    """``tokedit edit`` with ``args`` on the local engine and on Ray; both must succeed and
    write the same bytes and manifest entries."""
    local = invoke(*edit_args(data, tmp_path / "local", *args))
    ray = invoke(*edit_args(data, tmp_path / "ray", *args, "--engine", "ray"))
    assert local.returncode == 0, local.stderr
    assert ray.returncode == 0, ray.stderr
    assert output_files(tmp_path / "ray") == output_files(tmp_path / "local")
    assert manifest_shards(tmp_path / "ray") == manifest_shards(tmp_path / "local")
    return local, ray


def test_ray_deletions_are_byte_identical_to_local(tmp_path, ray_local, data, local_out):
    """--drop-below (and the default up-revise preset) write the same bytes on both engines."""
    args = ("--scores", str(local_out), "--p", "0.9", "--drop-below", "0.01")
    local, ray = edit_on_both_engines(tmp_path, data, *args)
    deleted = sum(e["p"]["0.9"]["deleted"] for e in manifest_shards(tmp_path / "ray").values())
    assert deleted > 100
    assert summary_counts(ray.stdout) == [
        line.replace(str(tmp_path / "local"), str(tmp_path / "ray"))
        for line in summary_counts(local.stdout)
    ]


def test_ray_one_pass_edit_is_byte_identical_to_local(tmp_path, ray_local, data, tiny_prior):
    args = ("--model", str(tiny_prior), "--id-column", "id", "--p", "0.5",
            "--max-length", "128", "--overlap", "32")  # fmt: skip
    local, ray = edit_on_both_engines(tmp_path, data, *args)
    changed = sum(e["p"]["0.5"]["changed"] for e in manifest_shards(tmp_path / "ray").values())
    assert changed > 0
    info = read_manifest(tmp_path / "ray")["info"]
    assert info["device"] == "cpu"  # reported by the actor that loaded the model


def test_edit_engines_resume_each_other(tmp_path, ray_local, data, local_out, local_edit):
    out = tmp_path / "edited"
    args = ("--scores", str(local_out), "--p", "0.9,0.95")
    half = invoke(*edit_args(data, out, *args, "--num-shards", "2", "--shard-index", "1"))
    assert half.returncode == 0, half.stderr
    assert len(manifest_shards(out)) == 2
    rest = invoke(*without_quiet(edit_args(data, out, *args, "--engine", "ray")))
    assert rest.returncode == 0, rest.stderr
    assert "resumed: 2 shard(s) already complete" in rest.stderr
    assert output_files(out) == output_files(local_edit)
    assert manifest_shards(out) == manifest_shards(local_edit)
    refused = invoke(*edit_args(data, out, *args, "--seed", "1", "--engine", "ray"))
    assert refused.returncode == 2
    assert "other options (seed: 0 -> 1)" in refused.stderr and "Traceback" not in refused.stderr


def changed_since_scoring(data, dest):
    """A copy of ``data`` whose ``part-1.jsonl`` has its last text cut to 5 characters: an
    edit from the original's scores refuses that shard in its step. Returns (dest, rows)."""
    shutil.copytree(data, dest)
    rows = [json.loads(line) for line in (dest / "part-1.jsonl").read_text().splitlines()]
    rows[-1]["text"] = rows[-1]["text"][:5]
    (dest / "part-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dest, rows


def test_ray_edit_errors_read_like_local_errors(tmp_path, ray_local, data, local_out):
    """An input that changed since scoring is refused inside the actor, as it is locally."""
    changed, rows = changed_since_scoring(data, tmp_path / "data")
    args = ("--scores", str(local_out), "--p", "0.9")
    local = invoke(*edit_args(changed, tmp_path / "local", *args))
    ray = invoke(*edit_args(changed, tmp_path / "ray", *args, "--engine", "ray"))
    assert local.returncode == ray.returncode == 2
    for r in (local, ray):
        assert f"part-1.jsonl:{len(rows)}: the text is shorter than the text scored" in r.stderr
        assert "fix: rerun `tokedit score`" in r.stderr and "Traceback" not in r.stderr
    assert "part-1.jsonl" not in manifest_shards(tmp_path / "ray")
    assert not (tmp_path / "ray" / "part-1.jsonl").exists() and not temp_files(tmp_path / "ray")


def new_threads(before: set) -> list[str]:
    """Threads started since ``before`` and still running; not tqdm's monitor (one per
    process, started with the first progress bar; it never touches Ray)."""
    return sorted(
        t.name
        for t in threading.enumerate()
        if t not in before and t.is_alive() and t.name != "tqdm_monitor"
    )


def test_a_failed_ray_run_leaves_no_thread_in_the_driver(tmp_path, ray_local, data, local_out):
    """When --engine ray returns by an error, nothing it started runs on in the caller's
    process: ray.shutdown() right after it is safe (a thread left touching Ray would end the
    process). Two actors, so that a shard is still running when the other one fails."""
    changed, _ = changed_since_scoring(data, tmp_path / "data")
    before = set(threading.enumerate())
    r = invoke(*edit_args(changed, tmp_path / "ray", "--scores", local_out, "--p", "0.9",
                          "--engine", "ray", "--ray-actors", "2"))  # fmt: skip
    assert r.returncode == 2 and "shorter than the text scored" in r.stderr
    assert new_threads(before) == []
    # part-0 ran beside the refused part-1: it finished and is recorded; nothing else is
    # recorded but shards whose outputs are there, and nothing half-written is left
    recorded = manifest_shards(tmp_path / "ray")
    assert "part-0.parquet" in recorded and "part-1.jsonl" not in recorded
    assert set(output_files(tmp_path / "ray")) == set(recorded)
    assert not temp_files(tmp_path / "ray")
    ok = invoke(*edit_args(data, tmp_path / "ok", "--scores", local_out, "--p", "0.9",
                           "--engine", "ray"))  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert new_threads(before) == []


def test_a_callers_driver_survives_ray_shutdown_after_a_failed_run(tmp_path, data, local_out):
    """A caller's own driver process (tests/drivers/ray_failed_edit.py) runs a Ray edit whose
    shard step raises, calls ray.shutdown() at once, and lives on: several rounds, with
    a busy process competing for the cores meanwhile (load widens any race). The thread
    list catches a leftover thread in every round, whether or not it kills the driver."""
    changed, _ = changed_since_scoring(data, tmp_path / "data")
    driver = Path(__file__).parent / "drivers" / "ray_failed_edit.py"
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(1)]
    try:
        r = subprocess.run(
            [
                sys.executable,
                str(driver),
                str(changed),
                str(local_out),
                str(tmp_path / "o"),
                str(DRIVER_ROUNDS),
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        for b in burners:
            b.kill()
            b.wait()
    log = f"stdout:\n{r.stdout}\nstderr (tail):\n{r.stderr[-3000:]}"
    assert r.returncode == 0, log
    lines = r.stdout.splitlines()
    assert lines[-1] == "alive", log
    assert lines[:-1] == [f"round {i}: exit 2, threads left []" for i in range(DRIVER_ROUNDS)], log


# Rounds of the driver test. Ray Data's iterator left its threads in every round: each round
# alone fails a leaking engine; a second round checks a fresh ray.init after a shutdown.
DRIVER_ROUNDS = 2


def test_shard_editor_pickles_its_configuration_only(tmp_path, local_out, tiny_prior):
    rows = {rel: e["rows"] for rel, e in manifest_shards(local_out).items()}
    e = ShardEditor(
        str(tmp_path), EditOptions(ps=(0.9,)), "text", "id", 512, str(tiny_prior),
        scores_dir=str(local_out), scores_rows=rows,
    ).load()  # fmt: skip
    e.on_tokens = print
    blob = pickle.dumps(e)
    assert len(blob) < 2000  # no tokenizer, renderer or scores reader, no callback
    copy = pickle.loads(blob)
    assert copy == e and copy._source is None and copy.on_tokens is None
