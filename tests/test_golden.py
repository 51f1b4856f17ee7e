"""Golden bytes: score, edit (two thresholds) and report a fixed small corpus, and compare the
sha256 of every output file and manifest with values recorded on this kind of machine.

It guards refactors: the package may be reshaped, its outputs may not change. What the
comparison leaves out, because it changes from run to run and not with the code:
- keys named ``version`` / ``seconds`` (tokedit's version, a report's run time) anywhere in a
  JSON file, and both in the HTML report's footer; the directory the test runs in (``<ROOT>``) and the tiny prior's cache
  directory, whose name hashes the training code (``<PRIOR>``), and so an edit manifest's
  fingerprint of its scores (``options.scores``, a hash that covers that path);
- PNG text chunks (matplotlib writes its version into them).

Scores hold float log-probs, whose last bits depend on the CPU's kernels; the recorded values
are keyed by torch's version, the CPU capability and the thread count. Elsewhere the test
skips and says how to record (``TOKEDIT_RECORD_GOLDEN=1 pytest tests/test_golden.py``).
When an intended change alters outputs, record again and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from pathlib import Path

import pytest
from scale_helpers import invoke

from tokedit.demo import write_demo_corpus

GOLDEN = Path(__file__).with_name("golden.json")
VOLATILE_KEYS = {"version", "seconds"}
PNG_TEXT_CHUNKS = {b"tEXt", b"iTXt", b"zTXt"}


def environment_key() -> str:
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    return f"torch {torch.__version__}, cpu {capability}, threads {torch.get_num_threads()}"


def _drop_volatile(value):
    if isinstance(value, dict):
        return {k: _drop_volatile(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_drop_volatile(v) for v in value]
    return value


def _png_without_text(data: bytes) -> bytes:
    out, pos = [data[:8]], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunk = data[pos : pos + 12 + length]
        if chunk[4:8] not in PNG_TEXT_CHUNKS:
            out.append(chunk)
        pos += 12 + length
    return b"".join(out)


def normalized(path: Path, root: Path, prior: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".png":
        return _png_without_text(data)
    if path.suffix in (".json", ".html"):
        text = data.decode()
        for where, name in ((prior, "<PRIOR>"), (root, "<ROOT>")):
            text = text.replace(str(where.resolve()), name).replace(str(where), name)
        if path.suffix == ".json":
            data = _drop_volatile(json.loads(text))
            if path.name == "manifest.json" and data.get("command") == "edit":
                # a hash over the scores manifest, whose model path is the prior's cache
                # directory: the scores manifest and shards are compared themselves
                data["options"].pop("scores")
            text = json.dumps(data, sort_keys=True)
        else:  # the HTML footer: "tokedit <version>; <run time> s."
            text = re.sub(r"tokedit [^;<]+; [0-9.]+ s\.", "tokedit <VERSION>; <SECONDS> s.", text)
        return text.encode()
    return data


def digests(out: Path, root: Path, prior: Path) -> dict[str, str]:
    """sha256 of every file under ``out`` (lock files aside), normalised as the module says."""
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(normalized(p, root, prior)).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


@pytest.fixture(scope="module")
def golden_run(tmp_path_factory, plays, tiny_prior) -> Path:
    root = tmp_path_factory.mktemp("golden")
    texts = {name: plays[name][:6_000] for name in ("hamlet", "sonnets", "tempest")}
    write_demo_corpus(root / "data", plays=texts, n_shards=2)
    steps = [
        ["score", "data", "--model", str(tiny_prior), "--out", "scores", "--max-length", "128",
         "--overlap", "32", "--candidates-min-p", "0.3", "--top-k", "8", "--id-column", "id"],
        ["edit", "data", "--scores", "scores", "--out", "edited", "--p", "0.5,0.8"],
        ["edit", "data", "--scores", "scores", "--out", "dropped", "--p", "0.5",
         "--preset", "low-drop-up-revise", "--top-k", "8", "--output-format", "parquet"],
        ["report", "data", "scores", "edited/p=0.5", "dropped", "--out", "report"],
    ]  # fmt: skip
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for args in steps:
            r = invoke(*args, "-q")
            assert r.returncode == 0, f"{args}: {r.stderr}"
    finally:
        os.chdir(cwd)
    return root


def test_outputs_match_the_recorded_bytes(golden_run, tiny_prior):
    got = {
        name: digests(golden_run / name, golden_run, tiny_prior)
        for name in ("scores", "edited", "dropped", "report")
    }
    assert all(got.values()), got
    key = environment_key()
    recorded = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    if os.environ.get("TOKEDIT_RECORD_GOLDEN") == "1":
        recorded[key] = got
        GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    if key not in recorded:
        pytest.skip(
            f"golden outputs were recorded on {sorted(recorded)}, not on {key!r}; record them "
            "here with TOKEDIT_RECORD_GOLDEN=1 pytest tests/test_golden.py"
        )
    want = recorded[key]
    for name in want:
        assert set(got[name]) == set(want[name]), f"{name}: files differ"
        changed = [f for f in want[name] if got[name][f] != want[name][f]]
        assert not changed, f"{name}: these outputs changed: {changed}"


def test_the_edits_change_tokens(golden_run):
    """Golden bytes of a run that edits nothing would guard nothing."""
    edited = json.loads((golden_run / "edited/.tokedit/manifest.json").read_text())
    dropped = json.loads((golden_run / "dropped/.tokedit/manifest.json").read_text())
    assert edited["totals"]["p"]["0.5"]["changed"] > 0
    assert edited["totals"]["p"]["0.8"]["above"] < edited["totals"]["p"]["0.5"]["above"]
    assert dropped["totals"]["p"]["0.5"]["deleted"] > 0
