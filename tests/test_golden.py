"""Goldens: committed inputs, committed outputs, compared on any CPU; the test never records.

``tests/golden/`` holds a small corpus (``data/``: 2 shards, 5 documents), a ~0.1M-parameter
prior (``prior/``: the test fixture's tiny Llama and its tokenizer, committed so no training is
involved) and the scores that prior gave the corpus (``scores/``: ``tokedit score``'s parquet
shards and ``.tokedit/manifest.json``). ``tests/golden.json`` holds the sha256 of every output
of the edits and the report made from those scores.

- Edits and report (exact, every CPU): from the committed scores, ``tokedit edit`` (a sweep of
  two thresholds; the ``low-drop-up-revise`` preset) and ``tokedit report``; every output file
  must hash as recorded. No float kernel decides these bytes (the log-probs are read, not
  computed); to show it, the same run is repeated in a subprocess with numpy's AVX2 and
  AVX-512 dispatch off and torch held to AVX2, and must hash the same.
- Scoring (within a stated tolerance): the committed prior scores the committed corpus again;
  token ids, offsets, statuses, fingerprints and the manifest must be equal, the log-probs of
  the tokens and candidates within ``LOGPROB_TOL`` of the committed ones, the candidate ids
  equal wherever they are not tied within it. The last bits of a log-prob depend on the CPU's
  kernels (torch's AVX-512, AVX2 and plain kernels differ by up to ~1e-5 here: see
  ``LOGPROB_TOL``), so this comparison is the only one that is not exact.

What the hash leaves out, because it changes from run to run and not with the code: keys
named ``version`` / ``seconds`` anywhere in a JSON file, and both in the HTML report's footer;
the directory the test runs in (``<ROOT>``); PNG text chunks (matplotlib writes its version).

When an intended change alters outputs, record again and say why in the commit:
``python tests/record_golden.py`` (edits and report from the committed scores;
``--rescore`` also rescores; ``--prior DIR`` replaces the committed prior; ``--help``). It
prints which files and hashes changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from scale_helpers import invoke

TESTS = Path(__file__).parent
INPUTS = TESTS / "golden"  # data/, prior/, scores/
GOLDEN = TESTS / "golden.json"
VOLATILE_KEYS = {"version", "seconds"}
PNG_TEXT_CHUNKS = {b"tEXt", b"iTXt", b"zTXt"}

SCORE_STEP = ["score", "data", "--model", "prior", "--out", "scores", "--max-length", "128",
              "--overlap", "32", "--candidates-min-p", "0.3", "--top-k", "8", "--id-column", "id"]  # fmt: skip
EDIT_STEPS = [
    ["edit", "data", "--scores", "scores", "--tokenizer", "prior", "--out", "edited",
     "--p", "0.5,0.8"],
    ["edit", "data", "--scores", "scores", "--tokenizer", "prior", "--out", "dropped",
     "--p", "0.5", "--preset", "low-drop-up-revise", "--top-k", "8", "--output-format", "parquet"],
    ["report", "data", "scores", "edited/p=0.5", "dropped", "--out", "report"],
]  # fmt: skip
OUTPUTS = ("edited", "dropped", "report")

# Measured on the AVX-512 machine that recorded the scores (torch 2.13 CPU), the largest
# difference of a rescore from the committed log-probs (tokens' and candidates'): 0 with 1 or
# 2 threads, 3.8e-6 with ATEN_CPU_CAPABILITY=avx2, 8.6e-6 with ATEN_CPU_CAPABILITY=default
# (no SIMD). 5e-5 is ~6 times the largest (about 50 float32 ulps at |log p| ~ 8), and far
# below what a real change does: --max-length 96 or --overlap 16 move log-probs by up to 1.4
# (median 0.016 per document).
LOGPROB_TOL = 5e-5
CANDIDATES_MIN_P = 0.3  # SCORE_STEP's: where P of the token is this, candidates may come or go

NO_SIMD_ENV = {  # numpy 2.4's dispatch targets above the X86_V2 baseline; torch's AVX2 kernels
    "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
    "ATEN_CPU_CAPABILITY": "avx2",
}


# ---------------------------------------------------------------- running the steps


def stage(root: Path, *names: str, weights: bool = False, inputs: Path = INPUTS) -> Path:
    """Copy the committed inputs into ``root`` (a run writes lock files beside its inputs);
    ``prior`` without its weights unless asked: the editor and the report need its tokenizer."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        skip = [] if weights or name != "prior" else ["model.safetensors"]
        shutil.copytree(inputs / name, root / name, ignore=lambda d, n, skip=skip: skip)
    return root


def run_steps(root: Path, steps) -> None:
    """Run CLI steps in this process, in ``root`` (the steps name relative paths)."""
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for args in steps:
            r = invoke(*args, "-q")
            assert r.returncode == 0, f"{args}: {r.stderr}"
    finally:
        os.chdir(cwd)


def edit_and_report(root: Path) -> dict[str, dict[str, str]]:
    """Edit and report from the scores in ``root``: {output: {file: sha256}}."""
    run_steps(root, EDIT_STEPS)
    return {name: digests(root / name, root) for name in OUTPUTS}


# ---------------------------------------------------------------- normalised hashes


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


def normalized(path: Path, root: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".png":
        return _png_without_text(data)
    if path.suffix in (".json", ".html"):
        text = data.decode()
        text = text.replace(str(root.resolve()), "<ROOT>").replace(str(root), "<ROOT>")
        if path.suffix == ".json":
            text = json.dumps(_drop_volatile(json.loads(text)), sort_keys=True)
        else:  # the HTML footer: "tokedit <version>; <run time> s."
            text = re.sub(r"tokedit [^;<]+; [0-9.]+ s\.", "tokedit <VERSION>; <SECONDS> s.", text)
        return text.encode()
    return data


def digests(out: Path, root: Path) -> dict[str, str]:
    """sha256 of every file under ``out`` (lock files aside), normalised as the module says."""
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(normalized(p, root)).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def changed_digests(got: dict, want: dict) -> list[str]:
    """``output/file`` for every hash that differs, is new or is gone."""
    names = sorted(set(got) | set(want))
    return [
        f"{name}/{f}"
        for name in names
        for f in sorted(set(got.get(name, {})) | set(want.get(name, {})))
        if got.get(name, {}).get(f) != want.get(name, {}).get(f)
    ]


# ---------------------------------------------------------------- scores within a tolerance


def comparable_manifest(manifest: dict) -> dict:
    """A scores manifest without what a rescore may change: versions, the input's absolute
    path, the shards' sha256 (their log-probs' last bits)."""
    m = _drop_volatile(manifest)
    m["info"].pop("input", None)
    for entry in m["shards"].values():
        entry.pop("sha256", None)
    return m


def compare_scores(got: Path, want: Path, tol: float = LOGPROB_TOL) -> dict:
    """Scores in ``got`` against ``want``: everything but the log-probs equal, the log-probs
    within ``tol``; candidates equal except where tied within ``tol`` or where P of the token
    is within ``tol`` of the candidates' threshold. Returns what it measured."""
    gm = json.loads((got / ".tokedit/manifest.json").read_text())
    wm = json.loads((want / ".tokedit/manifest.json").read_text())
    assert comparable_manifest(gm) == comparable_manifest(wm), "the scores manifests differ"
    edge = np.log(CANDIDATES_MIN_P)
    max_delta, compared, tied, summaries = 0.0, 0, 0, []
    for rel in sorted(wm["shards"]):
        for out in wm["shards"][rel]["outputs"]:
            a, b = pq.read_table(got / out).to_pydict(), pq.read_table(want / out).to_pydict()
            assert a.keys() == b.keys(), out
            for col in ("id", "status", "n_tokens", "token_ids", "offsets", "text_fingerprint"):
                assert a[col] == b[col], f"{out}: {col} differs"
            summaries.append((out, a["mean_logprob"], b["mean_logprob"], a["ppl"], b["ppl"]))
            rows = zip(a["logprob"], b["logprob"], a["topk_ids"], b["topk_ids"],
                       a["topk_logprobs"], b["topk_logprobs"], strict=True)  # fmt: skip
            for x, y, kx, ky, cx, cy in rows:
                assert [v is None for v in x] == [v is None for v in y], f"{out}: context"
                lx = np.array([np.nan if v is None else v for v in x], np.float64)
                ly = np.array([np.nan if v is None else v for v in y], np.float64)
                ok = ~np.isnan(ly)
                if ok.any():
                    max_delta = max(max_delta, float(np.abs(lx[ok] - ly[ok]).max()))
                for i, (ids_a, ids_b, lp_a, lp_b) in enumerate(zip(kx, ky, cx, cy, strict=True)):
                    if bool(ids_a) != bool(ids_b):  # candidates kept only where P >= min p
                        assert abs(ly[i] - edge) <= tol, f"{out}: candidates at {i}"
                        continue
                    if not ids_b:
                        continue
                    assert len(lp_a) == len(lp_b), f"{out}: candidates at {i}"
                    lp = np.array(lp_b, np.float64)
                    max_delta = max(max_delta, float(np.abs(np.array(lp_a) - lp).max()))
                    gaps = np.abs(np.diff(lp))
                    clear = np.ones(len(lp), bool)  # clear of both neighbours (the last: of
                    clear[:-1] &= gaps > 2 * tol  # the one before; the k+1-th is unknown)
                    clear[1:] &= gaps > 2 * tol
                    compared += int(clear.sum())
                    tied += int((~clear).sum())
                    assert np.array(ids_a)[clear].tolist() == np.array(ids_b)[clear].tolist(), (
                        f"{out}: candidate ids at {i}"
                    )
    assert max_delta <= tol, f"log-probs differ by {max_delta:.3g} > {tol:g}"
    for out, mean_a, mean_b, ppl_a, ppl_b in summaries:  # ppl = exp(-mean): relative
        np.testing.assert_allclose(mean_a, mean_b, rtol=0, atol=tol, err_msg=f"{out}: mean")
        np.testing.assert_allclose(ppl_a, ppl_b, rtol=tol, err_msg=f"{out}: ppl")
    assert compared > 0
    return {"max_delta": max_delta, "compared": compared, "tied": tied}


# ---------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def golden_run(tmp_path_factory) -> tuple[Path, dict]:
    root = stage(tmp_path_factory.mktemp("golden") / "run", "data", "scores", "prior")
    return root, edit_and_report(root)


def test_edits_and_report_match_the_committed_bytes(golden_run):
    _, got = golden_run
    want = json.loads(GOLDEN.read_text())
    assert set(want) == set(OUTPUTS) and all(got.values()), got
    changed = changed_digests(got, want)
    assert not changed, (
        f"these outputs changed: {changed}; if intended, record with "
        "`python tests/record_golden.py` and say why in the commit"
    )


def test_the_bytes_do_not_depend_on_simd(golden_run, tmp_path):
    """The same edits and report with numpy's AVX2/AVX-512 dispatch off and torch at AVX2."""
    _, got = golden_run
    root = stage(tmp_path / "run", "data", "scores", "prior")
    code = (
        "import json, sys; from pathlib import Path; sys.path.insert(0, 'tests')\n"
        "from numpy._core._multiarray_umath import __cpu_features__ as f; import torch\n"
        "from test_golden import edit_and_report\n"
        "print(json.dumps([f['X86_V3'], f['X86_V4'], torch.backends.cpu.get_cpu_capability(),"
        " edit_and_report(Path(sys.argv[1]))]))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(root)],
        cwd=TESTS.parent,
        env={**os.environ, **NO_SIMD_ENV},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    v3, v4, capability, other = json.loads(r.stdout.splitlines()[-1])
    assert not v3 and not v4 and capability in ("AVX2", "DEFAULT")  # the settings took
    assert not changed_digests(other, got), changed_digests(other, got)


def test_scoring_matches_the_committed_scores_within_the_tolerance(tmp_path):
    root = stage(tmp_path / "run", "data", "prior", weights=True)
    run_steps(root, [SCORE_STEP])
    measured = compare_scores(root / "scores", INPUTS / "scores")
    assert measured["max_delta"] <= LOGPROB_TOL


def test_the_edits_change_tokens(golden_run):
    """Golden bytes of a run that edits nothing would guard nothing."""
    root, _ = golden_run
    edited = json.loads((root / "edited/.tokedit/manifest.json").read_text())
    dropped = json.loads((root / "dropped/.tokedit/manifest.json").read_text())
    assert edited["totals"]["p"]["0.5"]["changed"] > 0
    assert edited["totals"]["p"]["0.8"]["above"] < edited["totals"]["p"]["0.5"]["above"]
    assert dropped["totals"]["p"]["0.5"]["deleted"] > 0
