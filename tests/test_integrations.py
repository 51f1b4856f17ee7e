"""tokedit inside other pipelines: ``datasets.map``, a datatrove pipeline and Ray Data's
``map_batches`` give the bytes ``tokedit edit --model`` writes for the same documents, ids,
seed, p and windows, whatever the batch sizes and processes."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from scale_helpers import invoke

import tokedit

pytestmark = pytest.mark.slow

# p low enough that the tiny prior is over-confident about some tokens in most documents;
# windows of 64 tokens with 16 of overlap, so the longer documents span several windows
OPTIONS = {"p": 0.4, "seed": 3, "max_length": 64, "overlap": 16}
COUNTS = ("tokedit_n_above", "tokedit_n_changed", "tokedit_n_skipped", "tokedit_n_deleted")


@pytest.fixture(scope="module")
def docs(plays) -> list[dict]:
    """40 short documents (speeches of Hamlet, at most 300 characters) with their own ids."""
    paragraphs = [p.strip() for p in plays["hamlet"].split("\n\n") if p.strip()]
    return [{"id": f"hamlet-{i:03d}", "text": p[:300]} for i, p in enumerate(paragraphs[:40])]


@pytest.fixture(scope="module")
def data(tmp_path_factory, docs) -> Path:
    out = tmp_path_factory.mktemp("integrations-data")
    (out / "a.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return out


@pytest.fixture(scope="module")
def cli(tmp_path_factory, data, tiny_prior) -> tuple[list[dict], dict]:
    """``tokedit edit --model`` of the same documents: its rows and its manifest's totals."""
    out = tmp_path_factory.mktemp("integrations-cli") / "out"
    flags = [x for k, v in OPTIONS.items() for x in (f"--{k.replace('_', '-')}", v)]
    r = invoke("edit", data, "--model", tiny_prior, "--out", out, "--id-column", "id",
               "--device", "cpu", "-q", *flags)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (out / "a.jsonl").read_text().splitlines()]
    totals = json.loads((out / ".tokedit" / "manifest.json").read_text())["totals"]["p"]["0.4"]
    assert totals["documents"] == 40 and totals["changed"] >= 10  # the edit does change text
    assert sum(r["text"] != d["text"] for r, d in zip(rows, _docs_of(data), strict=True)) >= 5
    return rows, totals


def _docs_of(data: Path) -> list[dict]:
    return [json.loads(line) for line in (data / "a.jsonl").read_text().splitlines()]


def provenance(rows) -> list[tuple]:
    """Per row: id, edited text and the four counts (what every integration must match)."""
    return [(r["id"], r["text"], *(r[c] for c in COUNTS)) for r in rows]


def test_datasets_map_any_batch_size_and_processes(docs, cli, tiny_prior):
    from datasets import Dataset

    from tokedit.integrations.datasets import edit_function

    rows, _ = cli
    fn = edit_function(str(tiny_prior), device="cpu", **OPTIONS)
    assert len(pickle.dumps(fn)) < 2000  # its configuration, never a loaded prior
    ds = Dataset.from_list(docs)
    for batch_size, num_proc in ((1, None), (7, None), (1000, None), (7, 2)):
        out = ds.map(fn, batched=True, batch_size=batch_size, num_proc=num_proc,
                     load_from_cache_file=False)  # fmt: skip
        assert provenance(out) == provenance(rows), (batch_size, num_proc)
    # the edits themselves, one document per batch (the first batches hold no edit at all)
    fn = edit_function(str(tiny_prior), device="cpu", edits=True, **OPTIONS)
    out = ds.map(fn, batched=True, batch_size=1, features=fn.features(ds.features),
                 load_from_cache_file=False)  # fmt: skip
    assert out["tokedit_edits"] == [r["tokedit_edits"] for r in rows]
    streamed = ds.to_iterable_dataset(num_shards=2).map(fn, batched=True, batch_size=7)
    assert provenance(streamed) == provenance(rows)


def test_datatrove_pipeline(tmp_path, data, cli, tiny_prior):
    pytest.importorskip("datatrove", reason="an optional extra: pip install 'tokedit[datatrove]'")
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from tokedit.integrations.datatrove import ToEditStep

    rows, totals = cli
    step = ToEditStep(str(tiny_prior), device="cpu", batch_rows=7, **OPTIONS)
    executor = LocalPipelineExecutor(
        pipeline=[
            JsonlReader(str(data)),
            step,
            JsonlWriter(str(tmp_path / "out"), compression=None),
        ],
        tasks=1,
        logging_dir=str(tmp_path / "logs"),
    )
    executor.run()
    written = [json.loads(line) for line in (tmp_path / "out" / "00000.jsonl").read_text().splitlines()]  # fmt: skip
    got = [{"id": w["id"], "text": w["text"], **w["metadata"]} for w in written]
    assert provenance(got) == provenance(rows)
    assert [g["tokedit_edits"] for g in got] == [r["tokedit_edits"] for r in rows]
    stats = json.loads((tmp_path / "logs" / "stats.json").read_text())
    mine = next(s for s in stats if s["name"] == str(step))["stats"]
    total = {k: v["total"] if isinstance(v, dict) else v for k, v in mine.items()}
    assert total["documents"] == totals["documents"] == 40
    assert total["documents_changed"] == totals["documents_changed"]
    assert total["tokens"] == totals["scored"]
    assert total["tokens_above_p"] == totals["above"]
    assert total["tokens_changed"] == totals["changed"]
    assert total["tokens_deleted"] == totals["deleted"]


def test_ray_data_map_batches(tmp_path, data, cli, tiny_prior):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'tokedit[ray]'")
    rows, _ = cli
    driver = Path(__file__).parent / "drivers" / "ray_data_edit.py"
    root = str(Path(tokedit.__file__).parents[1])  # this checkout's tokedit, in the actors too
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(
        [
            sys.executable,
            str(driver),
            str(data / "a.jsonl"),
            str(tiny_prior),
            str(tmp_path),
            json.dumps(OPTIONS),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0 and r.stdout.strip().endswith("done"), r.stdout + r.stderr[-3000:]
    for fmt in ("pyarrow", "numpy"):
        got = [json.loads(line) for line in (tmp_path / f"{fmt}.jsonl").read_text().splitlines()]
        assert provenance(got) == provenance(rows), fmt
        assert [g["tokedit_edits"] for g in got] == [r["tokedit_edits"] for r in rows], fmt
