"""A caller's own Ray driver, as a notebook or a pipeline would hold one.

``python ray_failed_edit.py DATA SCORES OUT ROUNDS``: ROUNDS times, start a local Ray
instance, run ``tokedit edit --engine ray`` in this process on an input that changed since
scoring (a shard step raises; the command exits 2), list the threads the run left behind,
and call ``ray.shutdown()`` at once. Then stay alive for 3 s and print ``alive``. A thread
that touches Ray after ``ray.shutdown()`` ends the whole process, so the exit status and the
last line say whether the caller's process survived.
"""

import sys
import threading
import time

import ray
from click.testing import CliRunner

from tokedit.cli import main

data, scores, out, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
for i in range(rounds):
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
    )
    before = set(threading.enumerate())
    args = ["edit", data, "--scores", scores, "--out", f"{out}/{i}", "-q", "--p", "0.9",
            "--engine", "ray"]  # fmt: skip
    r = CliRunner().invoke(main, args)
    # not tqdm's monitor: one per process, started with the first progress bar; no Ray in it
    left = sorted(
        t.name
        for t in threading.enumerate()
        if t not in before and t.is_alive() and t.name != "tqdm_monitor"
    )
    ray.shutdown()
    print(f"round {i}: exit {r.exit_code}, threads left {left}", flush=True)
    if r.exit_code != 2 or "shorter than the text scored" not in r.stderr:
        print(r.stdout, r.stderr, r.exception, flush=True)
        sys.exit(3)
time.sleep(3)
print("alive", flush=True)
