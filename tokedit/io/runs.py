"""The runs writing an output directory: one record per run, ``OUT/.tokedit/runs/<id>.json``
(docs/architecture.md, "Two runs, one output").

A run writes its record when it opens the manifest and deletes it when it ends, however it
ends but ``kill -9``. A record holds the run's host, pid and start time and a tag of its
command and options. Runs of the same command and options share a directory (the
``--num-shards`` tasks, a command started twice); a run whose options differ from a running
one's is refused, naming that run. A record left by a killed run is stale: on this host its
pid is gone (or is another process, started later), so the next run removes it and says so.
A record from another host cannot be checked from here: it counts as running until that run
ends, or until ``--overwrite`` takes over.

On an object store there is no lock to check and write under: a run writes its record first,
then lists the others, so of two runs with other options started at once, at least one sees
the other. The later one (by start time, then id) gives way, and an earlier one waits for it
to do so; so one goes on and the other is refused (see :func:`_remote_conflicts`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from tokedit.errors import OutputError, arg
from tokedit.io.storage import find, is_remote, read_bytes_or_none, storage_errors

logger = logging.getLogger(__name__)

RUNS_DIR = "runs"  # under OUT/.tokedit/
GIVE_WAY_S = 10.0  # object stores: how long a run waits for a later conflicting one to give way
_SLACK_S = 2.0  # a process's start time read from /proc is rounded to the clock tick


@dataclass(frozen=True)
class RunRecord:
    """One run writing an output directory."""

    host: str
    pid: int
    started: str  # UTC, ISO 8601, to the millisecond
    command: str
    options_tag: str

    @property
    def id(self) -> str:
        return f"{self.host}-{self.pid}"

    def describe(self) -> str:
        return (
            f"`tokedit {self.command}`, pid {self.pid} on host {self.host}, started {self.started}"
        )

    def started_s(self) -> float:
        return datetime.fromisoformat(self.started).timestamp()


def this_run(command: str, options_tag: str) -> RunRecord:
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    return RunRecord(socket.gethostname(), os.getpid(), now, command, options_tag)


def record_path(runs_dir, record: RunRecord):
    return runs_dir / f"{record.id}.json"


def write_record(runs_dir, record: RunRecord) -> None:
    """Write ``record`` under ``runs_dir`` (one PUT on an object store)."""
    path = record_path(runs_dir, record)
    with storage_errors(path):
        if not is_remote(path):
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(record), sort_keys=True) + "\n")


def remove_record(runs_dir, record: RunRecord) -> None:
    path = record_path(runs_dir, record)
    with storage_errors(path):
        path.unlink(missing_ok=True)


def read_records(runs_dir) -> list[RunRecord]:
    """The run records under ``runs_dir``; one that cannot be parsed is skipped (a record is
    a lock, not data: it never decides what is read back)."""
    records = []
    if is_remote(runs_dir):
        names = [n for n in find(runs_dir) if "/" not in n]
    else:
        names = sorted(p.name for p in runs_dir.glob("*")) if runs_dir.is_dir() else []
    for name in names:
        if not name.endswith(".json"):
            continue
        path = runs_dir / name
        if is_remote(path):
            raw = read_bytes_or_none(path)
        else:
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                raw = None
        if raw is None:  # its run ended since the listing
            continue
        try:
            records.append(RunRecord(**json.loads(raw)))
        except (ValueError, TypeError):
            logger.warning("%s: not a run record, ignored", runs_dir / name)
    return records


def state_of(record: RunRecord) -> str:
    """``"self"``, ``"running"`` (a live process on this host that started before the
    record), ``"killed"`` (its pid is gone on this host, or is a process started later), or
    ``"unknown"`` (another host)."""
    if record.host != socket.gethostname():
        return "unknown"
    if record.pid == os.getpid():
        return "self"
    if not pid_alive(record.pid):
        return "killed"
    started = process_start_s(record.pid)
    if started is not None and started > record.started_s() + _SLACK_S:
        return "killed"  # the pid was taken by a process started after the run
    return "running"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start_s(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from ``/proc``; ``None``
    where there is no ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def claim(runs_dir, me: RunRecord, *, where, overwrite: bool) -> None:
    """Record ``me`` as a run writing ``where`` (its ``runs_dir``), or refuse.

    Records of killed runs are removed, with a warning. A run of other options that may
    still be running is a conflict (with ``overwrite``: any run still running on this host;
    the others' records are taken over, with a warning). Call under the directory's lock on
    a local disk; on an object store see :func:`_remote_conflicts`."""
    remote = is_remote(runs_dir)
    if remote:
        write_record(runs_dir, me)
    conflicts = _conflicts(runs_dir, me, where, overwrite)
    if remote:
        conflicts = _remote_conflicts(runs_dir, me, conflicts)
    if conflicts:
        if remote:
            remove_record(runs_dir, me)
        raise _conflict(where, *conflicts[0], overwrite=overwrite)
    if not remote:
        write_record(runs_dir, me)


def _conflicts(runs_dir, me: RunRecord, where, overwrite: bool) -> list[tuple[RunRecord, str]]:
    conflicts = []
    for other in read_records(runs_dir):
        if other.id == me.id:
            continue
        state = state_of(other)
        if state == "killed" or (overwrite and state != "running"):
            why = "was killed" if state == "killed" else "is taken over to overwrite its output"
            logger.warning("%s: the run %s %s; its lock is removed", where, other.describe(), why)
            remove_record(runs_dir, other)
        elif overwrite or (other.command, other.options_tag) != (me.command, me.options_tag):
            conflicts.append((other, state))
    return conflicts


def _remote_conflicts(runs_dir, me: RunRecord, conflicts: list) -> list:
    """On an object store ``me`` was written before the others were listed, so a run that
    listed before ``me`` was written went on without seeing ``me``, and every run that lists
    later sees ``me``. Of two conflicting runs that both see each other, the later (by start
    time, then id) gives way: it removes its record and refuses. So a conflict that started
    before ``me`` refuses ``me``; one that started after ``me`` counts only if its record is
    still there after :data:`GIVE_WAY_S` (it went on without seeing ``me``)."""
    earlier = [(o, s) for o, s in conflicts if (o.started, o.id) < (me.started, me.id)]
    if earlier or not conflicts:
        return earlier
    deadline = time.monotonic() + GIVE_WAY_S
    while True:
        present = {r.id for r in read_records(runs_dir)}
        left = [(o, s) for o, s in conflicts if o.id in present]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _conflict(where, other: RunRecord, state: str, *, overwrite: bool) -> OutputError:
    running = (
        "it is still running"
        if state == "running"
        else "it runs on another host, so tokedit cannot tell whether it still runs"
    )
    if overwrite:
        return OutputError(
            f"{where}: {arg('overwrite', True)} would delete the output of a run that is still "
            f"writing it: {other.describe()}",
            remedy=f"stop that run first, or choose another {arg('out_dir')}",
        )
    return OutputError(
        f"{where}: another run with other options is writing here: {other.describe()}; {running}",
        remedy=f"wait for it to end, or choose another {arg('out_dir')}; if it is no longer "
        f"running, pass {arg('overwrite', True)} to replace its output",
    )
