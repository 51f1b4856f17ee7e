"""The Python API (tokedit.load_prior, Prior.score, tokedit.edit): equal to what the command
line stores and writes for the same texts, lists and streams alike, errors in parameter terms,
and an ``import tokedit`` that loads nothing heavy."""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from scale_helpers import invoke

import tokedit
from tokedit.cli import main

WINDOW = {"max_length": 64, "overlap": 16}  # short windows: documents span several
P = 0.4  # the tiny prior is rarely more confident: some tokens of every run are edited


@pytest.fixture(scope="module")
def texts(plays) -> list[str]:
    """Documents of 1 to 4 windows of 64 tokens, with an empty one and a missing one (kept
    with their status): windows, overlaps and batches all shape the result."""
    lines = [ln for ln in next(iter(plays.values())).splitlines() if len(ln) > 30][:120]
    docs = [" ".join(lines[i : i + 1 + i % 8]) for i in range(0, 120, 3)]
    return [*docs[:20], "", None, *docs[20:]]


@pytest.fixture(scope="module")
def ids(texts) -> list[str]:
    return [f"doc-{i}" for i in range(len(texts))]


@pytest.fixture(scope="module")
def data(tmp_path_factory, texts, ids):
    d = tmp_path_factory.mktemp("api-data")
    with open(d / "a.jsonl", "w") as f:
        for i, t in zip(ids, texts, strict=True):
            f.write(json.dumps({"id": i, "text": t}) + "\n")
    return d


@pytest.fixture(scope="module")
def prior(tiny_prior):
    return tokedit.load_prior(str(tiny_prior), device="cpu")


@pytest.fixture(scope="module")
def cli_scores(tmp_path_factory, data, tiny_prior):
    out = tmp_path_factory.mktemp("api-scores")
    r = invoke("score", data, "--model", tiny_prior, "--out", out, "--id-column", "id",
               "--max-length", 64, "--overlap", 16, "--device", "cpu", "-q")  # fmt: skip
    assert r.returncode == 0, r.stderr
    return out


def jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_scores_equal_the_stored_scores_of_tokedit_score(prior, texts, ids, cli_scores):
    scores = prior.score(texts, ids=ids, **WINDOW)
    stored = pq.read_table(cli_scores / "a.parquet")
    assert scores.to_arrow().equals(stored)
    assert len(scores) == len(texts) and [s.id for s in scores] == ids
    assert max(len(s.token_ids) for s in scores) > 2 * WINDOW["max_length"]  # 3 windows or more
    doc = scores[3]
    assert "".join(doc.spans(texts[3])) == texts[3]
    assert doc.status == "ok" and len(doc.token_ids) == len(doc.logprob) > 0
    assert [scores[20].status, scores[21].status] == ["empty", "null_text"]


def test_edits_from_scores_equal_tokedit_edit_bytes(tmp_path, prior, texts, ids, data, cli_scores):
    scores = prior.score(texts, ids=ids, **WINDOW)
    edits = tokedit.edit(texts, scores=scores, p=P, seed=3)
    r = invoke("edit", data, "--scores", cli_scores, "--out", tmp_path, "--p", P, "--seed", 3, "-q")
    assert r.returncode == 0, r.stderr
    rows = jsonl(tmp_path / "a.jsonl")
    assert edits.texts == [row["text"] for row in rows]
    table = edits.to_arrow()
    for column in ("id", "tokedit_n_above", "tokedit_n_changed", "tokedit_n_deleted"):
        assert table.column(column).to_pylist() == [row[column] for row in rows], column
    assert edits.counts.changed == sum(row["tokedit_n_changed"] for row in rows) > 0
    assert sum(e.changed for e in edits) == sum(a != b for a, b in zip(texts, edits.texts, strict=True))  # fmt: skip


def test_one_pass_edits_equal_tokedit_edit_with_a_model(tmp_path, prior, tiny_prior, texts, ids, data):  # fmt: skip
    edits = tokedit.edit(texts, prior=prior, ids=ids, p=P, preset="low-drop-up-revise",
                         drop_below=0.01, **WINDOW)  # fmt: skip
    r = invoke("edit", data, "--model", tiny_prior, "--out", tmp_path, "--id-column", "id",
               "--p", P, "--preset", "low-drop-up-revise", "--drop-below", 0.01,
               "--max-length", 64, "--overlap", 16, "--device", "cpu", "-q")  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = jsonl(tmp_path / "a.jsonl")
    assert edits.texts == [row["text"] for row in rows]
    assert edits.counts.changed > 0 and edits.counts.deleted > 0
    assert [e.n_deleted for e in edits] == [row["tokedit_n_deleted"] for row in rows]


def test_a_stream_gives_the_same_results_lazily(prior, texts, ids):
    listed = tokedit.edit(texts, prior=prior, ids=ids, p=P, **WINDOW)
    streamed = tokedit.edit(iter(texts), prior=prior, ids=iter(ids), p=P, batch_rows=7, **WINDOW)
    assert [e.text for e in streamed] == listed.texts
    scored = list(prior.score(iter(texts), ids=ids, batch_rows=5, **WINDOW))
    listed_scores = prior.score(texts, ids=ids, batch_rows=5, **WINDOW)
    assert [s.mean_logprob for s in scored] == [s.mean_logprob for s in listed_scores]
    # other batches pad and pack the windows otherwise: float rounding moves, nothing more
    other = prior.score(texts, ids=ids, **WINDOW)
    assert [s.mean_logprob for s in other] == pytest.approx([s.mean_logprob for s in scored], abs=1e-5, nan_ok=True)  # fmt: skip

    def endless():  # a corpus that does not fit in memory: results come batch by batch
        for i in itertools.count():
            yield texts[i % 20]

    first = list(itertools.islice(tokedit.edit(endless(), prior=prior, p=P, batch_rows=4), 6))
    assert [e.id for e in first] == [str(i) for i in range(6)]


def test_errors_name_parameters_in_python_and_flags_on_the_command_line(prior, texts, data, tmp_path):  # fmt: skip
    scores = prior.score(texts[:3])
    with pytest.raises(tokedit.InputError) as e:
        tokedit.edit(texts[:3], scores=scores, p=1.5)
    assert "p=1.5 is outside (0, 1)" in str(e.value) and "--" not in str(e.value)
    r = invoke("edit", data, "--scores", tmp_path / "none", "--out", tmp_path / "o", "--p", "1.5")
    assert r.returncode == 2 and "--p 1.5 is outside (0, 1)" in r.stderr
    with pytest.raises(tokedit.InputError, match=r"batch_rows=0 must be >= 1"):
        prior.score(texts, batch_rows=0)
    with pytest.raises(TypeError, match=r"'max_len'.*max_length"):
        prior.score(texts, max_len=64)
    with pytest.raises(tokedit.InputError, match=r"texts is one string"):
        prior.score("one text")
    with pytest.raises(tokedit.InputError, match=r"either scores .* or prior"):
        tokedit.edit(texts)
    sparse = prior.score(texts[:3], candidates_min_p=0.9)
    with pytest.raises(tokedit.InputError, match=r"object holds candidates only where P >= 0.9 \(candidates_min_p=0.9 when scoring\), so p=0.5"):  # fmt: skip
        tokedit.edit(texts[:3], scores=sparse, p=0.5)


def test_the_cli_defaults_are_the_option_objects_defaults():
    """Each flag that sets a field of an option object defaults to the field's default
    (or to None, standing for it): no default is written twice."""
    owners = [tokedit.ScoreOptions, tokedit.ModelOptions, tokedit.RunOptions, tokedit.EditOptions,
              tokedit.EditRule]  # fmt: skip
    defaults = {f.name: f.default for o in owners for f in dataclasses.fields(o)
                if f.default is not dataclasses.MISSING}  # fmt: skip
    checked = []
    for group in (main.commands["score"], main.commands["edit"]):
        for param in group.params:
            if param.name in defaults and not param.is_flag:
                assert param.default in (None, defaults[param.name]), (group.name, param.name)
                checked.append(param.name)
    assert {"batch_rows", "batch_tokens", "top_k", "seed", "engine", "device", "dtype"} <= set(checked)  # fmt: skip
    assert tokedit.ScoreOptions().batch_tokens == 16384 and tokedit.RunOptions().batch_rows == 512


def test_import_tokedit_and_the_command_line_load_no_model_library():
    """``import tokedit`` (and naming the API) and ``tokedit --help`` import neither torch nor
    transformers: they load when a prior does (docs/benchmarks.md times ``--help``)."""
    heavy = "print(sorted(m for m in ('torch', 'transformers', 'ray', 'vllm') if m in sys.modules))"
    for code in (
        "import sys, tokedit; tokedit.load_prior; tokedit.edit; tokedit.ScoreOptions; " + heavy,
        "import sys; from tokedit.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
        + heavy,
        "import sys; from tokedit.cli import main\ntry: main(['edit', '--help'])\nexcept SystemExit: pass\n"
        + heavy,
    ):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert r.stdout.strip().splitlines()[-1] == "[]", code


def test_no_cli_module_is_over_300_lines():
    from pathlib import Path

    import tokedit.cli

    sizes = {p.name: len(p.read_text().splitlines()) for p in Path(tokedit.cli.__file__).parent.glob("*.py")}  # fmt: skip
    assert sizes and max(sizes.values()) <= 300, sizes
