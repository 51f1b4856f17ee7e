"""Crash suite: ``kill -9`` mid-run, then the same command again, gives the bytes of an
uninterrupted run with no duplicate, missing, partial or temporary file; an output that
cannot be written is a clear error.

Kill points come from the run's own progress: a seeded point is "once k of the n shards are
recorded in the manifest" (1 <= k < n) plus a seeded delay up to the measured time of one
shard, so the kill lands between shards or within one. The run is stopped (SIGSTOP) at that
point and its manifest read: at least one shard must be recorded and one not, or the kill
tested nothing (the delay is halved and the run retried; after 3 tries the test fails).
Then ``kill -9``, the same command again, and the bytes compared with the uninterrupted run.
``tokedit report`` has no shards: its progress is the files it has written.
"""

from __future__ import annotations

import os
import random
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scale_helpers import (
    cli_command,
    edit_args,
    free_port,
    invoke,
    kill_mid_run,
    manifest_shards,
    mixed_corpus,
    output_files,
    pid_alive,
    progress_timeline,
    recorded_in,
    run_cli,
    score_args,
    seeded_point,
    temp_files,
)
from test_golden import normalized

from tokedit.io.manifest import META_DIR
from tokedit.io.runs import RUNS_DIR
from tokedit.io.write import HOST_TAG, remove_stale_temp_files, temp_owner, temp_path_for

SCORE_EXTRA = ("--candidates-min-p", "0.3")  # candidates wherever an edit at p=0.5 needs them


def edit_cmd(data: Path, scores: Path, out: Path) -> list[str]:
    return edit_args(data, out, "--scores", scores, "--p", "0.5")


@pytest.fixture(scope="module")
def data(tmp_path_factory, plays):
    return mixed_corpus(tmp_path_factory.mktemp("crash-data"), plays, chars_per_shard=24_000)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data, tiny_prior):
    """Uninterrupted score, edit and report runs (separate processes), with the times at
    which each shard (each report file) was done."""
    root = tmp_path_factory.mktemp("crash-ref")
    scores, edited, report = root / "scores", root / "edited", root / "report"
    score = progress_timeline(score_args(data, scores, tiny_prior, *SCORE_EXTRA), recorded_in(scores))  # fmt: skip
    edit = progress_timeline(edit_cmd(data, scores, edited), recorded_in(edited))
    assert manifest_shards(edited)["part-0.parquet"]["p"]["0.5"]["changed"] > 0
    report_times = progress_timeline(report_cmd(data, scores, edited, report), files_in(report))
    print("timelines: score", score, "edit", edit, "report", report_times)
    return {"scores": scores, "edited": edited, "report": report, "score": score, "edit": edit,
            "report_times": report_times}  # fmt: skip


def report_cmd(data: Path, scores: Path, edited: Path, out: Path) -> list[str]:
    return ["report", str(data), str(scores), str(edited), "--out", str(out), "-q"]


def files_in(out: Path):
    """A probe of a report's progress: the files it has written (no hidden or temp file)."""
    return lambda: {
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)
    }


def assert_same_as(out: Path, ref: Path) -> None:
    assert output_files(out) == output_files(ref)  # no missing, extra or partial shard
    assert manifest_shards(out) == manifest_shards(ref)  # one entry per shard, same hashes
    assert not temp_files(out)
    assert not list((out / META_DIR / RUNS_DIR).glob("*"))  # no run holds the output


def assert_whole(out: Path, ref: Path) -> None:
    """Every data file a killed run left is the uninterrupted run's (no partial shard)."""
    want = output_files(ref)
    left = output_files(out)
    assert {rel: left[rel] == want.get(rel) for rel in left} == dict.fromkeys(left, True)


def kill_then_rerun(args, out: Path, ref: Path, point) -> None:
    """``kill -9`` at ``point`` with shards recorded and others not, rerun, compare with ``ref``."""
    names = list(manifest_shards(ref))
    print(kill_mid_run(args, recorded_in(out), names, point, lambda: shutil.rmtree(out)))
    assert_whole(out, ref)
    recorded = len(manifest_shards(out))
    r = invoke(*args)
    assert r.returncode == 0, r.stderr
    assert f"{recorded} shard(s) already done" in r.stdout  # resumed, not redone
    assert "was killed; its lock is removed" in r.stderr  # the killed run's record, taken over
    assert_same_as(out, ref)


@pytest.mark.parametrize("seed", [0, 1])
def test_kill_9_score_after_a_seeded_shard_then_rerun(tmp_path, seed, data, reference, tiny_prior):
    out = tmp_path / "scores"
    args = score_args(data, out, tiny_prior, *SCORE_EXTRA)
    kill_then_rerun(args, out, reference["scores"], seeded_point(seed, reference["score"]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_edit_after_a_seeded_shard_then_rerun(tmp_path, seed, data, reference):
    out = tmp_path / "edited"
    args = edit_cmd(data, reference["scores"], out)
    kill_then_rerun(args, out, reference["edited"], seeded_point(100 + seed, reference["edit"]))


def report_files(out: Path) -> dict[str, bytes]:
    """The report's files; JSON and HTML without their run times and version (as the golden
    test compares them), PNGs as they are (one matplotlib here)."""
    return {
        rel: (out / rel).read_bytes() if rel.endswith(".png") else normalized(out / rel, out)
        for rel in sorted(files_in(out)())
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_kill_9_report_after_a_seeded_file_then_rerun(tmp_path, seed, data, reference):
    """``tokedit report`` has no shards: its progress is the files it has written
    (``report.json``, then each plot, then ``report.html``). Killed once ``k`` of them exist
    (k seeded; the next one may be half written), every file left is whole, and the rerun
    gives the uninterrupted run's files and no temp file."""
    out = tmp_path / "report"
    args = report_cmd(data, reference["scores"], reference["edited"], out)
    want = report_files(reference["report"])
    after = random.Random(seed).randint(1, len(want) - 1)
    state = kill_mid_run(args, files_in(out), list(want), (after, 0.0), lambda: shutil.rmtree(out))  # fmt: skip
    print(state)
    left = report_files(out)
    assert {rel: left[rel] == want[rel] for rel in left} == dict.fromkeys(left, True), state
    r = invoke(*args)
    assert r.returncode == 0, r.stderr
    assert report_files(out) == want
    assert not temp_files(out)


# ---------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A Ray head node in its own process (as on a cluster); stopped by its pid afterwards.

    Yields its address and the environment a driver needs to join it (Ray's token
    authentication with a token made for this test; drivers run as separate processes, as
    Ray keeps one token per process).
    """
    pytest.importorskip("ray", reason="Ray is an optional extra")
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}  # fmt: skip
    log = tmp_path_factory.mktemp("ray-head") / "head.log"
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            "--num-cpus",  # as tokedit sizes a local instance: one actor gets every core
            str((os.cpu_count() or 1) + 1),
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
            "--port",
            str(port),
        ],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.time() + 90
    while "--block" not in log.read_text() and time.time() < deadline:
        assert head.poll() is None, log.read_text()
        time.sleep(0.2)
    yield f"127.0.0.1:{port}", env
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        head.kill()
        head.wait()


@pytest.mark.parametrize("command", ["score", "edit"])
def test_kill_9_ray_driver_after_a_seeded_shard_then_rerun(
    tmp_path, command, data, reference, tiny_prior, ray_cluster
):
    """The driver records each shard as its actor returns it: killed (seeded point, as for
    the local engine) with shards recorded and others not, Ray stops its actors, and the
    rerun gives the local run's bytes."""
    address, env = ray_cluster
    out = tmp_path / command
    ray = ("--engine", "ray", "--ray-address", address)
    if command == "score":
        args = score_args(data, out, tiny_prior, *SCORE_EXTRA, *ray)
    else:
        args = [*edit_cmd(data, reference["scores"], out), *ray]
    ref = reference["scores" if command == "score" else "edited"]
    point = seeded_point(7, reference[command])
    reset = lambda: shutil.rmtree(out, ignore_errors=True)  # noqa: E731
    print(kill_mid_run(args, recorded_in(out), list(manifest_shards(ref)), point, reset, env=env))
    assert_whole(out, ref)
    # Ray stops the dead driver's actors; wait until no writer of a temp file is alive.
    deadline = time.time() + 60
    while time.time() < deadline and any(pid_alive(temp_owner(p)[0]) for p in temp_files(out)):
        time.sleep(0.2)
    r = run_cli(*args, env=env)
    assert r.returncode == 0, r.stderr
    assert "was killed; its lock is removed" in r.stderr  # the killed driver's record
    assert_same_as(out, ref)


# ---------------------------------------------------------------- unwritable output


def test_output_under_a_regular_file_is_a_clear_error(tmp_path, data, tiny_prior):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output directory should go")
    r = invoke(*score_args(data, blocker / "scores", tiny_prior))
    assert r.returncode == 2
    assert "cannot create or write the output directory" in r.stderr and "not-a-dir" in r.stderr
    assert "fix:" in r.stderr and "Traceback" not in r.stderr


def _file_size_limit(limit: int):
    def apply():  # like a full disk: writes beyond `limit` bytes fail (EFBIG)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_disk_is_a_clear_error_and_the_rerun_completes(tmp_path, data, reference, tiny_prior):
    out = tmp_path / "scores"
    args = score_args(data, out, tiny_prior, *SCORE_EXTRA)
    r = subprocess.run(
        cli_command(*args), capture_output=True, text=True, preexec_fn=_file_size_limit(32_000)
    )
    assert r.returncode == 2, r.stderr
    assert "cannot write" in r.stderr and "File too large" in r.stderr
    assert "fix:" in r.stderr and "Traceback" not in r.stderr
    assert not temp_files(out)
    done = manifest_shards(out)
    assert all((out / e["outputs"][0]).is_file() for e in done.values())
    assert len(output_files(out)) == len(done) < 4
    again = invoke(*args)
    assert again.returncode == 0, again.stderr
    assert_same_as(out, reference["scores"])


def _assert_clear_disk_full_error(r) -> None:
    assert r.returncode == 2, r.stderr
    assert "cannot write" in r.stderr and "File too large" in r.stderr, r.stderr
    assert "fix:" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_full_disk_during_edit_is_a_clear_error_and_the_rerun_completes(tmp_path, data, reference):
    """The largest edited shard cannot be written (a file-size limit one byte under it):
    exit 2 with the remedy, no temp file, only whole shards recorded, and the rerun gives
    the uninterrupted run's bytes. Catches: an edited shard published before it is whole,
    a traceback instead of the message."""
    out = tmp_path / "edited"
    args = edit_cmd(data, reference["scores"], out)
    limit = max(len(b) for b in output_files(reference["edited"]).values()) - 1
    r = subprocess.run(cli_command(*args), capture_output=True, text=True, preexec_fn=_file_size_limit(limit))  # fmt: skip
    _assert_clear_disk_full_error(r)
    assert not temp_files(out)
    done = manifest_shards(out)
    assert len(output_files(out)) == len(done) < len(manifest_shards(reference["edited"]))
    again = invoke(*args)
    assert again.returncode == 0, again.stderr
    assert_same_as(out, reference["edited"])


def test_full_disk_during_report_is_a_clear_error_and_publishes_no_partial_file(tmp_path, data, reference):  # fmt: skip
    """The report's largest file (``report.json``, written first) cannot be written: exit 2 with the remedy, no temp file,
    every file left whole (equal to the uninterrupted run's), and the rerun gives the
    uninterrupted run's files. Catches: a page or plot written in place (half a file left),
    a traceback instead of the message."""
    out = tmp_path / "report"
    args = report_cmd(data, reference["scores"], reference["edited"], out)
    limit = (reference["report"] / "report.json").stat().st_size // 2  # its largest file
    r = subprocess.run(cli_command(*args), capture_output=True, text=True, preexec_fn=_file_size_limit(limit))  # fmt: skip
    _assert_clear_disk_full_error(r)
    assert not temp_files(out)
    want = report_files(reference["report"])
    left = report_files(out) if out.is_dir() else {}
    assert len(left) < len(want)
    assert {rel: left[rel] == want[rel] for rel in left} == dict.fromkeys(left, True)
    again = invoke(*args)
    assert again.returncode == 0, again.stderr
    assert report_files(out) == want


# ---------------------------------------------------------------- temp files of other machines


def test_stale_temp_files_are_removed_only_for_dead_writers_of_this_host(tmp_path):
    dead = 2**22 + 12345  # above the default pid_max: no such process
    mine = temp_path_for(tmp_path / "a.parquet")
    assert temp_owner(mine) == (os.getpid(), HOST_TAG)
    files = {
        "dead here": tmp_path / f".b.parquet.{dead}-{HOST_TAG}.tmp",
        "dead, old name": tmp_path / f".c.parquet.{dead}.tmp",
        "other host": tmp_path / f".d.parquet.{dead}-0badc0de.tmp",
        "alive here": mine,
    }
    for f in files.values():
        f.write_bytes(b"partial")
    assert remove_stale_temp_files(tmp_path) == 2
    assert {k for k, f in files.items() if f.exists()} == {"other host", "alive here"}
