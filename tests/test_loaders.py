"""tokedit's outputs read by the loaders people train from, as they are.

``datasets.load_dataset("parquet" | "json", data_dir=OUT)``, ``polars.scan_parquet`` and a
few ``transformers.Trainer`` steps on scores and edited directories: the manifest, its lock
and every temporary file are hidden (``OUT/.tokedit/``, ``.NAME.PID-HOST.tmp``), so a loader
reads shards only, also while a run is writing and after it was killed with ``kill -9``.
"""

from __future__ import annotations

import gzip
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import datasets
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scale_helpers import cli_command, invoke, mixed_corpus, run_cli, temp_files

from tokedit.io.manifest import find_manifest, legacy_manifest_path, manifest_path, read_manifest
from tokedit.scoring.options import ScoreOptions
from tokedit.scoring.run import score_dataset

PROVENANCE = [
    "tokedit_n_above",
    "tokedit_n_changed",
    "tokedit_n_skipped",
    "tokedit_n_deleted",
    "tokedit_edits",
]
INT64_EDITS = pa.list_(
    pa.struct([(f, pa.int64()) for f in ("pos", "char_start", "char_end", "orig_id", "new_id")])
)


@pytest.fixture(autouse=True)
def _offline_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)


def load(builder: str, path: Path, tmp_path: Path, **kw) -> datasets.Dataset:
    return datasets.load_dataset(
        builder, data_dir=str(path), split="train", cache_dir=str(tmp_path / "hf-cache"), **kw
    )


def data_files(root: Path, suffix: str = "") -> list[Path]:
    """What a loader may read: files with no hidden part in their path."""
    return sorted(
        p
        for p in root.rglob(f"*{suffix}")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def read_any(path: Path) -> list[dict]:
    if path.name.endswith(".parquet"):
        return pq.read_table(path).to_pylist()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def edit(corpus: Path, scores: Path, out: Path, *extra) -> subprocess.CompletedProcess:
    args = ["edit", str(corpus), "--scores", str(scores), "--out", str(out), "-q"]
    r = run_cli(*args, "--p", "0.5", "--exclude-original", *map(str, extra))
    assert r.returncode == 0, r.stderr
    return r


# ----------------------------------------------------------------------------- layout


def test_metadata_is_hidden_and_found_by_one_function(tiny_scores, tiny_edited):
    for out in (tiny_scores, tiny_edited):
        assert find_manifest(out) == manifest_path(out) == out / ".tokedit" / "manifest.json"
        assert not legacy_manifest_path(out).exists()
        # every file a loader sees is a shard; the rest is under .tokedit/
        assert all(p.name.endswith((".parquet", ".jsonl.gz")) for p in data_files(out))
        others = {p for p in out.rglob("*") if p.is_file()} - set(data_files(out))
        assert {p.relative_to(out).as_posix() for p in others} == {
            ".tokedit/manifest.json",
            ".tokedit/manifest.lock",
        }
    # No reader of the package opens OUT/manifest.json itself: all go through find_manifest.
    src = Path(__file__).resolve().parents[1] / "tokedit"
    direct = [
        str(p.relative_to(src))
        for p in src.rglob("*.py")
        if p.name != "manifest.py" and '"manifest.json"' in p.read_text()
    ]
    assert direct == []


def test_old_style_manifest_is_read_in_place_and_moved_by_a_resume(
    tmp_path, corpus_dir, tiny_prior, tiny_scores, tiny_edited
):
    """Directories written before ``.tokedit/``: ``edit --scores`` reads the root manifest
    without touching the scores; rerunning the edit that made a directory resumes it
    (nothing is redone) and moves its manifest out of the loaders' way."""

    def old_style(src: Path, dest: Path) -> Path:
        shutil.copytree(src, dest)
        manifest_path(dest).rename(legacy_manifest_path(dest))
        shutil.rmtree(dest / ".tokedit")
        return dest

    scores = old_style(tiny_scores, tmp_path / "scores")
    assert find_manifest(scores) == legacy_manifest_path(scores)
    with pytest.raises(pa.ArrowInvalid, match="magic bytes"):
        load("parquet", scores, tmp_path)  # what the issue reported: manifest.json read as data
    edit(corpus_dir, scores, tmp_path / "fresh")
    assert legacy_manifest_path(scores).is_file() and not (scores / ".tokedit").exists()

    edited = old_style(tiny_edited, tmp_path / "edited")
    before = read_manifest(edited)
    r = edit(corpus_dir, tiny_scores, edited)
    assert "4 shard(s) already done" in r.stdout
    assert not legacy_manifest_path(edited).exists()
    assert read_manifest(edited)["shards"] == before["shards"]
    assert find_manifest(edited) == manifest_path(edited)
    for p in data_files(tiny_edited):  # resumed, not rewritten
        assert (edited / p.relative_to(tiny_edited)).read_bytes() == p.read_bytes()

    # Rerunning the score that made the old scores directory moves its manifest too, and
    # the directory then loads as it is.
    rerun = score_dataset(  # the options of the tiny_scores fixture
        str(corpus_dir),
        str(scores),
        model=str(tiny_prior),
        options=ScoreOptions(max_length=256, overlap=64, batch_tokens=8192, candidates_min_p=0.05),
        id_column="id",
        progress=False,
    )
    assert rerun.skipped == 4 and not legacy_manifest_path(scores).exists()
    assert len(load("parquet", scores, tmp_path)) == sum(
        e["rows"] for e in read_manifest(scores)["shards"].values()
    )


# ----------------------------------------------------------------------------- scores


def test_scores_dir_loads_with_datasets_and_polars(tmp_path, tiny_scores):
    rows = sum(e["rows"] for e in read_manifest(tiny_scores)["shards"].values())
    ds = load("parquet", tiny_scores, tmp_path)
    assert len(ds) == rows
    assert {"id", "token_ids", "offsets", "logprob", "topk_ids"} <= set(ds.column_names)
    lf = pl.scan_parquet(f"{tiny_scores}/**/*.parquet")
    assert lf.select(pl.len()).collect().item() == rows
    assert sorted(ds["id"]) == sorted(lf.select("id").collect()["id"].to_list())


# ----------------------------------------------------------------------------- edited


def test_mirror_output_of_mixed_formats_has_one_schema(tmp_path, tiny_edited):
    """The fixture corpus mixes parquet and jsonl.gz: its mirrored edit does too. Each part
    loads with its builder and the parts concatenate (datasets and polars), because every
    provenance column has one type in both formats (int64: what JSON reads back as)."""
    parquet = load("parquet", tiny_edited, tmp_path, data_files=["*.parquet"])
    jsonl = load("json", tiny_edited, tmp_path, data_files=["*.jsonl.gz"])
    assert parquet.features == jsonl.features
    assert parquet.features["tokedit_n_changed"] == datasets.Value("int64")
    both = datasets.concatenate_datasets([parquet, jsonl])
    assert len(both) == len(parquet) + len(jsonl) > 0
    assert sum(both["tokedit_n_changed"]) > 0

    frames = [pl.read_parquet(p) for p in data_files(tiny_edited, ".parquet")] + [
        pl.read_ndjson(gzip.decompress(p.read_bytes())).select(frame_columns)
        for p in data_files(tiny_edited, ".jsonl.gz")
        for frame_columns in [pl.read_parquet(data_files(tiny_edited, ".parquet")[0]).columns]
    ]
    assert len(pl.concat(frames, how="vertical")) == len(both)
    assert pq.read_schema(data_files(tiny_edited, ".parquet")[0]).field("tokedit_edits").type == (
        INT64_EDITS
    )


@pytest.mark.parametrize("fmt", ["parquet", "jsonl.gz"])
def test_output_format_converts_every_shard_and_sweep(
    tmp_path, fmt, corpus_dir, tiny_scores, tiny_edited
):
    """``--output-format``: every shard in one format at ``stem.<fmt>``, one builder loads
    a threshold of the sweep (``OUT/p=0.5``) with every input column and the provenance;
    the rows are those of the mirrored edit (same edits, other container)."""
    out = tmp_path / "out"
    edit(corpus_dir, tiny_scores, out, "--p", "0.5,0.9", "--output-format", fmt)
    sub = out / "p=0.5"
    stems = sorted(p.relative_to(sub).as_posix() for p in data_files(sub))
    assert stems == [f"plays-{g:02d}.{fmt}" for g in range(4)]
    builder = "parquet" if fmt == "parquet" else "json"
    ds = load(builder, sub, tmp_path)
    assert ds.column_names == ["id", "play", "text", *PROVENANCE]
    assert ds.features["text"] == datasets.Value("string")
    assert ds.features["tokedit_n_above"] == datasets.Value("int64")
    mirrored = {
        r["id"]: r for p in data_files(tiny_edited) for r in read_any(p)
    }  # p = 0.5, exclude-original, seed 0: the same edits
    assert len(ds) == len(mirrored)
    for row in ds:
        assert row == mirrored[row["id"]]
    # the other threshold is its own dataset; the sweep root mixes both
    assert len(load(builder, out / "p=0.9", tmp_path)) == len(ds)
    assert sum(load(builder, out / "p=0.9", tmp_path)["tokedit_n_changed"]) < sum(
        ds["tokedit_n_changed"]
    )
    if fmt == "parquet":
        lf = pl.scan_parquet(f"{sub}/**/*.parquet")
        assert lf.select(pl.len()).collect().item() == len(ds)
        assert lf.collect_schema()["tokedit_n_changed"] == pl.Int64
        # parquet -> parquet keeps the text column's type; jsonl -> parquet infers it
        assert pq.read_schema(sub / "plays-00.parquet") == pq.read_schema(sub / "plays-01.parquet")


def test_output_format_rejects_colliding_shards(tmp_path, tiny_scores, corpus_dir):
    data = tmp_path / "data"
    shutil.copytree(corpus_dir, data)
    shutil.copy(data / "plays-00.parquet", data / "plays-01.parquet")  # plays-01.jsonl.gz too
    r = run_cli(
        "edit", str(data), "--scores", str(tiny_scores), "--out", str(tmp_path / "o"),
        "--output-format", "parquet",
    )  # fmt: skip
    assert r.returncode == 2
    assert "plays-01.jsonl.gz and plays-01.parquet would both write plays-01.parquet" in r.stderr


def test_an_empty_json_lines_shard_converts_to_parquet_with_its_siblings_columns(
    tmp_path, tiny_prior
):
    """A JSON lines shard without rows (an upstream filter kept none) edited with
    ``--output-format parquet`` gives a zero-row parquet with the columns of the other
    shards, so a loader reads the directory as one table. Catches: the empty shard's schema made
    without the id column (the edit then refused the shard: "no id column 'id'")."""
    data, scores, out = tmp_path / "data", tmp_path / "scores", tmp_path / "out"
    data.mkdir()
    (data / "a.jsonl").write_text(json.dumps({"id": "x", "text": "To be, or not to be."}) + "\n")
    (data / "b.jsonl.gz").write_bytes(gzip.compress(b"", mtime=0))
    score_dataset(str(data), str(scores), model=str(tiny_prior), id_column="id", progress=False)
    r = invoke("edit", data, "--scores", scores, "--out", out, "--p", "0.5", "--output-format", "parquet", "-q")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert pq.read_table(out / "b.parquet").num_rows == 0
    assert pq.read_schema(out / "b.parquet") == pq.read_schema(out / "a.parquet")
    assert pl.scan_parquet(f"{out}/*.parquet").collect()["id"].to_list() == ["x"]


# ----------------------------------------------------------------------------- killed run


@pytest.fixture(scope="module")
def crash_data(tmp_path_factory, plays):
    return mixed_corpus(tmp_path_factory.mktemp("loader-crash"), plays, chars_per_shard=30_000)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl.gz"])
def test_a_killed_run_shows_loaders_only_complete_shards(tmp_path, fmt, crash_data, tiny_prior):
    """``kill -9`` while a shard is half-written (its temporary file exists): the loader
    reads exactly the complete shards, each equal to the uninterrupted run's; the rerun
    completes the directory and the loader then reads every row."""
    args = ["edit", str(crash_data), "--model", str(tiny_prior), "--p", "0.5", "-q"]
    args += ["--max-length", "128", "--output-format", fmt]
    builder = "parquet" if fmt == "parquet" else "json"
    ref = tmp_path / "ref"
    assert run_cli(*args, "--out", str(ref)).returncode == 0
    out = tmp_path / "out"
    # The kill must land while a shard's temp file exists; a shard written in one batch may
    # be renamed between the check and the kill, so a kill that missed is tried again (at
    # most 5 times) on a fresh output.
    for _ in range(5):
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.Popen(
            cli_command(*args, "--out", str(out)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if (read_manifest(out) or {}).get("shards") and temp_files(out):
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        half_written = temp_files(out)
        if half_written:
            break
    assert half_written, "the kill did not land while a shard was being written (5 tries)"
    complete = data_files(out)
    assert 1 <= len(complete) < 4
    ds = load(builder, out, tmp_path / "a")
    assert len(ds) == sum(len(read_any(p)) for p in complete)
    for p in complete:
        assert p.read_bytes() == (ref / p.relative_to(out)).read_bytes()

    assert run_cli(*args, "--out", str(out)).returncode == 0
    assert not temp_files(out)
    assert len(load(builder, out, tmp_path / "b")) == len(load(builder, ref, tmp_path / "c"))


# ----------------------------------------------------------------------------- training


def test_trainer_runs_on_an_edited_corpus_loaded_by_datasets(tmp_path, tiny_prior, tiny_edited):
    """A few ``transformers.Trainer`` steps on CPU on the edited text as ``datasets`` loads it."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    ds = load("parquet", tiny_edited, tmp_path, data_files=["*.parquet"])
    tok = AutoTokenizer.from_pretrained(tiny_prior)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    train = ds.map(
        lambda b: tok(b["text"], truncation=True, max_length=64),
        batched=True,
        remove_columns=ds.column_names,
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_prior)
    before = [p.detach().clone() for p in model.parameters()]
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
    )
    result = trainer.train()
    assert result.global_step == 3
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(0 < x < 20 for x in losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
