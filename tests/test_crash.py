"""Crash suite: ``kill -9`` at random points, then the same command again, gives the bytes of
an uninterrupted run with no duplicate, missing, partial or temporary file; an output that
cannot be written is a clear error.

Kill points are drawn from seeded generators over the measured timeline of an
uninterrupted run (start-up, then the shards), so they land during start-up, mid-shard or
between shards; every case must end in the same bytes. A kill must land while shards remain
to be written: a run that finished (or recorded its last shard) first tested nothing, so it
is retried earlier and, if it never lands in time, the test fails.
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
    manifest_shards,
    mixed_corpus,
    output_files,
    pid_alive,
    run_cli,
    score_args,
    temp_files,
)

from tokedit.io.manifest import find_manifest
from tokedit.io.write import HOST_TAG, remove_stale_temp_files, temp_owner, temp_path_for

SCORE_EXTRA = ("--candidates-min-p", "0.3")  # candidates wherever an edit at p=0.5 needs them


def edit_cmd(data: Path, scores: Path, out: Path) -> list[str]:
    return edit_args(data, out, "--scores", scores, "--p", "0.5")


@pytest.fixture(scope="module")
def data(tmp_path_factory, plays):
    return mixed_corpus(tmp_path_factory.mktemp("crash-data"), plays, chars_per_shard=24_000)


def timed_run(args: list[str], out: Path) -> tuple[float, float]:
    """Run the CLI to the end; seconds until its manifest appeared and until it exited."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cli_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    started = None
    while proc.poll() is None:
        if started is None and find_manifest(out) is not None:
            started = time.perf_counter() - t0
        time.sleep(0.005)
    assert proc.returncode == 0, proc.stderr.read()
    return started, time.perf_counter() - t0


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data, tiny_prior):
    """Uninterrupted score and edit runs (separate processes), with their timelines."""
    root = tmp_path_factory.mktemp("crash-ref")
    score = timed_run(score_args(data, root / "scores", tiny_prior, *SCORE_EXTRA), root / "scores")
    edit = timed_run(edit_cmd(data, root / "scores", root / "edited"), root / "edited")
    assert manifest_shards(root / "edited")["part-0.parquet"]["p"]["0.5"]["changed"] > 0
    return {"scores": root / "scores", "edited": root / "edited", "score": score, "edit": edit}


def kill_point(seed: int) -> float:
    """A seeded point of a run: below 0, a share of the start-up before the manifest exists
    (-0.1: at 90 % of it); from 0, a share of the time from the manifest to the end."""
    return random.Random(seed).uniform(-0.15, 0.8)


def kill_after(args: list[str], out: Path, point: float, timeline, shards: int) -> str | None:
    """Start the CLI and ``kill -9`` it at ``point`` of the reference ``timeline`` (seconds
    until its manifest appeared, until it exited), the second part timed from this run's own
    manifest, so a slower start-up does not move the kill out of the run. Describe the state
    it left, or None when the kill came too late: the run had ended or recorded all
    ``shards``."""
    started, total = timeline
    proc = subprocess.Popen(
        cli_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        if point < 0:
            proc.wait(timeout=(1 + point) * started)
        else:
            deadline = time.time() + 120
            while find_manifest(out) is None and proc.poll() is None and time.time() < deadline:
                time.sleep(0.005)
            proc.wait(timeout=point * (total - started))
        return None  # finished before the kill
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    where = f"{point:+.2f} of the run"
    if find_manifest(out) is None:
        return f"killed at {where}, before the manifest existed"
    recorded = len(manifest_shards(out))
    if recorded >= shards:
        return None
    return (
        f"killed at {where} with {recorded} of {shards} shard(s) recorded and "
        f"{len(temp_files(out))} temp file(s) left"
    )


def kill_during_run(args: list[str], out: Path, seed: int, timeline, shards: int) -> str:
    """:func:`kill_after` at the seeded point, retried at half its time (the machine may run
    faster than when the reference was timed) until the kill lands while shards remain;
    fails after 4 tries."""
    point = kill_point(seed)
    for _ in range(4):
        state = kill_after(args, out, point, timeline, shards)
        if state is not None:
            return state
        shutil.rmtree(out)
        point = point / 2 if point > 0 else (1 + point) / 2 - 1  # half the time
    pytest.fail("every kill came after the run had written all its shards: nothing was tested")


def assert_same_as(out: Path, ref: Path) -> None:
    assert output_files(out) == output_files(ref)  # no missing, extra or partial shard
    assert manifest_shards(out) == manifest_shards(ref)  # one entry per shard, same hashes
    assert not temp_files(out)


@pytest.mark.parametrize("seed", [0, 1])
def test_kill_9_score_at_a_random_point_then_rerun(tmp_path, seed, data, reference, tiny_prior):
    out = tmp_path / "scores"
    args = score_args(data, out, tiny_prior, *SCORE_EXTRA)
    shards = len(manifest_shards(reference["scores"]))
    print(kill_during_run(args, out, seed, reference["score"], shards))
    r = invoke(*args)
    assert r.returncode == 0, r.stderr
    assert_same_as(out, reference["scores"])


@pytest.mark.parametrize("seed", [0, 1])
def test_kill_9_edit_at_a_random_point_then_rerun(tmp_path, seed, data, reference):
    out = tmp_path / "edited"
    args = edit_cmd(data, reference["scores"], out)
    shards = len(manifest_shards(reference["edited"]))
    print(kill_during_run(args, out, 100 + seed, reference["edit"], shards))
    r = invoke(*args)
    assert r.returncode == 0, r.stderr
    assert_same_as(out, reference["edited"])


def kill_after_first_shard(args: list[str], out: Path) -> int:
    """Start the CLI and ``kill -9`` it as soon as its manifest records a shard; the number
    of shards recorded then."""
    proc = subprocess.Popen(
        cli_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if find_manifest(out) is not None and manifest_shards(out):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(manifest_shards(out)) if find_manifest(out) is not None else 0


def test_kill_9_edit_between_shards(tmp_path, data, reference):
    out = tmp_path / "edited"
    args = edit_cmd(data, reference["scores"], out)
    shards = len(manifest_shards(reference["edited"]))
    for _ in range(4):  # the last shards can be recorded before the kill lands: try again
        recorded = kill_after_first_shard(args, out)
        if recorded < shards:
            break
        shutil.rmtree(out)
    print(f"killed with {recorded} of {shards} shard(s) recorded")
    assert 1 <= recorded < shards, f"killed with {recorded} of {shards} shards recorded"
    r = invoke(*args)
    assert r.returncode == 0, r.stderr
    assert_same_as(out, reference["edited"])


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
def test_kill_9_ray_driver_then_rerun(tmp_path, command, data, reference, tiny_prior, ray_cluster):
    address, env = ray_cluster
    out = tmp_path / command
    ray = ("--engine", "ray", "--ray-address", address)
    if command == "score":
        args = score_args(data, out, tiny_prior, *SCORE_EXTRA, *ray)
    else:
        args = [*edit_cmd(data, reference["scores"], out), *ray]
    # Within the first 60 % of the local run's length: a Ray run, started later, takes
    # about as long after its first shard began (measured: 1.5-8 s left for edit, 2 s for score).
    started, total = reference[command]
    delay = random.Random(7).uniform(0.0, 0.6) * (total - started)
    for attempt in range(3):  # halve the delay if the run ended first (the load fell since)
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.Popen(
            cli_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None and not started_writing(out):
            time.sleep(0.005)  # an actor has started writing a shard
        time.sleep(delay / 2**attempt)
        killed_while_running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Ray stops the dead driver's actors; wait until no writer of a temp file is alive.
        deadline = time.time() + 60
        while time.time() < deadline and any(pid_alive(temp_owner(p)[0]) for p in temp_files(out)):
            time.sleep(0.2)
        if killed_while_running:
            break
    assert killed_while_running, "the run ended before the kill: nothing was tested"
    r = run_cli(*args, env=env)
    assert r.returncode == 0, r.stderr
    assert_same_as(out, reference["scores" if command == "score" else "edited"])


def started_writing(out: Path) -> bool:
    """A shard is being written (a temp file) or already recorded in the manifest."""
    return bool(temp_files(out)) or (find_manifest(out) is not None and bool(manifest_shards(out)))


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
