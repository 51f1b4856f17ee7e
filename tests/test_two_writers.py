"""Two runs started at once on one output directory: runs of the same options both finish,
with the bytes and manifest of one run alone, never a mix of the two; a run of other options
is refused, naming the run that writes there (host, pid, start time); the lock a killed run
leaves is taken over, with a message (``tokedit/io/runs.py``)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest
from scale_helpers import cli_command, invoke, output_files

from tokedit.io.manifest import LOCK_NAME, META_DIR, read_manifest
from tokedit.io.runs import RUNS_DIR

P = ("--p", "0.3,0.6", "--exclude-original")
OTHER_P = ("--p", "0.9")


def edit_args(corpus_dir, tiny_scores, *p) -> tuple:
    return ("edit", str(corpus_dir), "--scores", str(tiny_scores), *p, "-q")


@pytest.fixture(scope="module")
def alone(tmp_path_factory, corpus_dir, tiny_scores):
    out = tmp_path_factory.mktemp("alone") / "out"
    r = invoke(*edit_args(corpus_dir, tiny_scores, *P), "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def records(out) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / META_DIR / RUNS_DIR).glob("*.json"))]


def assert_same_as(out, alone) -> None:
    assert output_files(out) == output_files(alone)
    want, got = read_manifest(alone), read_manifest(out)
    assert got["shards"] == want["shards"] and got["options"] == want["options"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert records(out) == []  # every run that ended removed its record


def start_until_recorded(args, out) -> subprocess.Popen:
    """Start ``tokedit args --out out`` and return once its run record exists."""
    proc = subprocess.Popen(cli_command(*args, "--out", str(out)), stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not records(out):
        assert proc.poll() is None, f"ended before its record was seen: {proc.stderr.read()}"
        assert time.time() < deadline
        time.sleep(0.005)
    return proc


def holds_lock(pid: int, lock) -> bool:
    """Whether process ``pid`` holds a ``flock`` on the file ``lock`` (``/proc/locks``)."""
    inode = os.stat(lock).st_ino
    with open("/proc/locks") as f:
        return any(
            line.split()[4] == str(pid) and line.split()[5].rsplit(":", 1)[-1] == str(inode)
            for line in f
            if len(line.split()) > 5
        )


def stop_outside_the_lock(proc: subprocess.Popen, out) -> None:
    """SIGSTOP ``proc``, at a moment it does not hold the manifest's lock (a process stopped
    inside it would block every other run of the directory until it goes on)."""
    lock = out / META_DIR / LOCK_NAME
    while True:
        os.kill(proc.pid, signal.SIGSTOP)
        if not lock.exists() or not holds_lock(proc.pid, lock):
            return
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.001)


def test_two_identical_edits_at_once_give_the_bytes_of_one(
    tmp_path, corpus_dir, tiny_scores, alone
):
    args = edit_args(corpus_dir, tiny_scores, *P)
    shared = tmp_path / "shared"
    procs = [
        subprocess.Popen(cli_command(*args, "--out", str(shared)), stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=600), p.stderr.read().decode()) for p in procs]
    assert [rc for rc, _ in results] == [0, 0], results
    assert_same_as(shared, alone)
    assert sum(e["p"]["0.3"]["changed"] for e in read_manifest(shared)["shards"].values()) > 0


def test_a_run_of_other_options_is_refused_naming_the_run_that_writes(tmp_path, corpus_dir, tiny_scores, alone):  # fmt: skip
    out = tmp_path / "out"
    first = start_until_recorded(edit_args(corpus_dir, tiny_scores, *P), out)
    stop_outside_the_lock(first, out)  # held mid-run: alive, its record in place
    try:
        (record,) = records(out)
        second = invoke(*edit_args(corpus_dir, tiny_scores, *OTHER_P), "--out", out)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 2, second.stderr
    named = f"`tokedit edit`, pid {first.pid} on host {socket.gethostname()}, started {record['started']}"
    assert (
        f"another run with other options is writing here: {named}; it is still running"
        in second.stderr
    )
    assert "--overwrite" in second.stderr and "Traceback" not in second.stderr
    overwrite = invoke(*edit_args(corpus_dir, tiny_scores, *OTHER_P), "--out", out, "--overwrite")
    assert (
        overwrite.returncode == 2
        and "--overwrite would delete the output of a run" in overwrite.stderr
    )
    assert first.wait(timeout=600) == 0, first.stderr.read()
    assert_same_as(out, alone)  # the refused runs wrote nothing


def test_a_killed_runs_lock_is_taken_over_with_a_message(tmp_path, corpus_dir, tiny_scores, alone):
    out = tmp_path / "out"
    args = edit_args(corpus_dir, tiny_scores, *P)
    killed = start_until_recorded(args, out)
    killed.kill()
    killed.wait()
    rerun = invoke(*args, "--out", out)
    assert rerun.returncode == 0, rerun.stderr
    host = socket.gethostname()
    assert f"the run `tokedit edit`, pid {killed.pid} on host {host}, started " in rerun.stderr
    assert "was killed; its lock is removed" in rerun.stderr
    assert_same_as(out, alone)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def stale_record(out, pid: int, started: datetime, options_tag: str = "0" * 16) -> None:
    runs = out / META_DIR / RUNS_DIR
    runs.mkdir(parents=True, exist_ok=True)
    record = {"host": socket.gethostname(), "pid": pid, "command": "edit",
              "started": started.isoformat(timespec="milliseconds"), "options_tag": options_tag}  # fmt: skip
    (runs / f"{record['host']}-{pid}.json").write_text(json.dumps(record))


def test_a_stale_lock_of_other_options_is_taken_over_and_a_live_pids_is_not(tmp_path, corpus_dir, tiny_scores, alone):  # fmt: skip
    """A record whose pid is gone, or is a process that started after the record (the pid
    was reused), is a killed run's: taken over. One whose pid is a process that started
    before it is a run that may still write: refused."""
    args = (*edit_args(corpus_dir, tiny_scores, *P), "--out")
    now = datetime.now(UTC)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        for name, pid, started, taken in [
            ("gone", dead_pid(), now, True),
            ("reused", sleeper.pid, now - timedelta(hours=1), True),
            ("live", sleeper.pid, now + timedelta(minutes=1), False),
        ]:
            out = tmp_path / name
            stale_record(out, pid, started)
            r = invoke(*args, out)
            assert (r.returncode == 0) == taken, (name, r.stderr)
            assert (f"pid {pid} on host" in r.stderr) and ("was killed" in r.stderr) == taken, name
            if taken:
                assert_same_as(out, alone)
            else:
                assert "it is still running" in r.stderr and output_files(out) == {}
    finally:
        sleeper.kill()
