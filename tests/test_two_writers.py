"""Two runs of one command started at once on one local output directory: both finish, and
the output is the bytes and manifest of one run alone; never a mix of the two."""

from __future__ import annotations

import subprocess

from scale_helpers import cli_command, invoke, output_files

from tokedit.io.manifest import read_manifest


def test_two_identical_edits_at_once_give_the_bytes_of_one(tmp_path, corpus_dir, tiny_scores):
    args = ("edit", str(corpus_dir), "--scores", str(tiny_scores), "--p", "0.3,0.6",
            "--exclude-original", "-q")  # fmt: skip
    alone = tmp_path / "alone"
    r = invoke(*args, "--out", alone)
    assert r.returncode == 0, r.stderr
    shared = tmp_path / "shared"
    procs = [
        subprocess.Popen(cli_command(*args, "--out", str(shared)), stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=600), p.stderr.read().decode()) for p in procs]
    assert [rc for rc, _ in results] == [0, 0], results
    assert output_files(shared) == output_files(alone)
    want, got = read_manifest(alone), read_manifest(shared)
    assert got["shards"] == want["shards"] and got["options"] == want["options"]
    assert sum(e["p"]["0.3"]["changed"] for e in got["shards"].values()) > 0
    assert not [p for p in shared.rglob("*") if p.name.endswith(".tmp")]
