"""``tokedit score`` on a real tiny prior: exact log-probs, windows, rows, resume, errors."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scale_helpers import invoke, run_cli, score_args
from transformers import AutoModelForCausalLM, AutoTokenizer

from tokedit.demo import write_demo_corpus
from tokedit.io.manifest import read_manifest
from tokedit.scoring.options import ScoreOptions
from tokedit.scoring.run import score_dataset
from tokedit.scoring.windows import partition_starts, plan_batches, plan_windows

# ---------------------------------------------------------------- pure planning


@given(st.integers(0, 400), st.integers(2, 64), st.data())
def test_windows_score_every_position_once_with_overlap_context(seq_len, max_len, data):
    overlap = data.draw(st.integers(1, max_len - 1))
    windows = plan_windows(seq_len, max_len, overlap)
    scored = [p for w in windows for p in range(w.score_from, w.end)]
    assert scored == list(range(1, seq_len))
    for k, w in enumerate(windows):
        assert w.length <= max_len
        if k > 0:
            assert w.score_from - w.start == overlap  # every scored token sees >= overlap context


@given(st.lists(st.integers(2, 300), min_size=1, max_size=40), st.integers(64, 2048))
def test_batches_hold_every_window_within_budget(lengths, budget):
    windows = [w for i, n in enumerate(lengths) for w in plan_windows(n, 256, 32, doc=i)]
    batches = plan_batches(windows, budget)
    assert sorted((w.doc, w.start) for b in batches for w in b) == sorted(
        (w.doc, w.start) for w in windows
    )
    for b in batches:
        assert len(b) == 1 or len(b) * max(w.length for w in b) <= budget


def test_partition_starts_assign_trimmed_spaces_and_shared_bytes():
    # "hi wörld": byte-level tokens "hi", "Ġw" (trimmed to (3,4)), "ö" split in two bytes sharing (4,5), "rld"
    pairs = np.array([[0, 2], [3, 4], [4, 5], [4, 5], [5, 8]])
    assert partition_starts(pairs).tolist() == [0, 2, 4, 5, 5]


# ---------------------------------------------------------------- against the model


def reference_logprobs(model, seq: np.ndarray, max_len: int, overlap: int) -> np.ndarray:
    """Independent computation: for position p, the context starts at the window start a
    stride-based formula gives; one plain forward + float64 log_softmax per window start."""
    stride = max_len - overlap
    n = len(seq)
    starts = np.array(
        [0 if p < max_len else math.ceil((p - max_len + 1) / stride) * stride for p in range(n)]
    )
    out = np.full(n, np.nan)
    for start in np.unique(starts[1:]):
        ids = torch.tensor(seq[start : start + max_len], dtype=torch.long)[None]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
        for p in np.nonzero(starts == start)[0]:
            if p >= 1:
                out[p] = logp[p - start - 1, seq[p]].item()
    return out


@pytest.fixture(scope="module")
def long_doc_dir(tmp_path_factory, plays):
    d = tmp_path_factory.mktemp("docs")
    texts = [
        plays["hamlet"][:3000],
        plays["tempest"][5000:5400],
        "",
        None,
        "x",
        "Ça fait déjà 3 € — 東京 🎭 naïve",
    ]
    pq.write_table(
        pa.Table.from_pylist([{"text": t, "id": f"d{i}"} for i, t in enumerate(texts)]),
        d / "a.parquet",
    )
    return d, texts


@pytest.mark.parametrize("max_len,overlap", [(64, 16), (512, 1)])
def test_logprobs_equal_independent_forward(tmp_path, long_doc_dir, tiny_prior, max_len, overlap):
    data_dir, texts = long_doc_dir
    score_dataset(
        str(data_dir),
        str(tmp_path),
        model=str(tiny_prior),
        options=ScoreOptions(
            max_length=max_len,
            overlap=overlap,
            batch_tokens=700,
            candidates_min_p=0.05,
            bos="always",
        ),
        id_column="id",
        progress=False,
    )
    table = pq.read_table(tmp_path / "a.parquet")
    assert table.num_rows == len(texts)
    assert table.column("id").to_pylist() == [f"d{i}" for i in range(len(texts))]
    assert table.column("status").to_pylist() == ["ok", "ok", "empty", "null_text", "ok", "ok"]
    model = AutoModelForCausalLM.from_pretrained(tiny_prior).eval()
    tok = AutoTokenizer.from_pretrained(tiny_prior)
    checked_boundary = False
    for row, text in zip(table.to_pylist(), texts, strict=True):
        if not text:
            assert row["n_tokens"] == 0 and row["logprob"] == [] and row["mean_logprob"] is None
            continue
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert row["token_ids"] == ids and row["n_tokens"] == len(ids)
        seq = np.array([tok.bos_token_id] + ids)
        ref = reference_logprobs(model, seq, max_len, overlap)[1:]
        np.testing.assert_allclose(np.array(row["logprob"]), ref, atol=1e-4, rtol=0)
        assert row["mean_logprob"] == pytest.approx(float(np.mean(row["logprob"])), abs=1e-6)
        assert row["ppl"] == pytest.approx(math.exp(-row["mean_logprob"]))
        checked_boundary |= len(seq) > max_len
        # Candidates exist exactly where P(actual) >= 0.05, and are the model's top-k.
        has = np.array([len(k) > 0 for k in row["topk_ids"]])
        np.testing.assert_array_equal(has, np.exp(np.array(row["logprob"])) >= 0.05)
        for k_ids, k_lps, lp in zip(
            row["topk_ids"], row["topk_logprobs"], row["logprob"], strict=True
        ):
            if k_ids:
                assert (
                    len(k_ids) == 8
                    and k_lps == sorted(k_lps, reverse=True)
                    and k_lps[0] >= lp - 1e-6
                )
    assert checked_boundary  # the 3000-character document spans several windows in both cases


def test_offsets_partition_text_even_with_multibyte_characters(tmp_path, long_doc_dir, tiny_prior):
    data_dir, texts = long_doc_dir
    score_dataset(
        str(data_dir),
        str(tmp_path),
        model=str(tiny_prior),
        options=ScoreOptions(max_length=128, overlap=32),
        id_column="id",
        progress=False,
    )
    tok = AutoTokenizer.from_pretrained(tiny_prior)
    row = pq.read_table(tmp_path / "a.parquet").to_pylist()[5]
    text, starts = texts[5], row["offsets"]
    spans = [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)], strict=True)]
    assert "".join(spans) == text
    # Where a token decodes to whole characters, its partition span is exactly that text.
    whole = [
        (s, tok.decode([t]))
        for s, t in zip(spans, row["token_ids"], strict=True)
        if "\ufffd" not in tok.decode([t])
    ]
    assert whole and all(s == d for s, d in whole)


@pytest.mark.parametrize("bos", ["never", "auto"])  # auto: the scratch prior adds no BOS
def test_no_bos_leaves_first_logprob_null(tmp_path, long_doc_dir, tiny_prior, bos):
    data_dir, _ = long_doc_dir
    score_dataset(
        str(data_dir),
        str(tmp_path),
        model=str(tiny_prior),
        options=ScoreOptions(max_length=128, overlap=32, bos=bos),
        progress=False,
    )
    row = pq.read_table(tmp_path / "a.parquet").to_pylist()[1]
    assert row["logprob"][0] is None and all(v is not None for v in row["logprob"][1:])
    assert row["mean_logprob"] == pytest.approx(float(np.mean(row["logprob"][1:])), abs=1e-6)


def test_batch_budget_does_not_change_scores(tmp_path, small_corpus, tiny_prior):
    tables = []
    for budget in (300, 20000):
        out = tmp_path / str(budget)
        score_dataset(
            str(small_corpus),
            str(out),
            model=str(tiny_prior),
            options=ScoreOptions(max_length=128, overlap=32, batch_tokens=budget),
            num_shards=4,
            shard_index=1,
            progress=False,
        )
        tables.append(pq.read_table(next(out.glob("*.parquet"))))
    a, b = (np.concatenate(t.column("logprob").to_pylist()).astype(float) for t in tables)
    np.testing.assert_allclose(a, b, atol=1e-5)  # null (no BOS: first tokens) as NaN, equal


# ---------------------------------------------------------------- processes, resume, CLI


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, plays):
    """8 shards of ~12k characters each: enough for process tests, cheap to score."""
    out = tmp_path_factory.mktemp("small")
    parts = {
        f"{name}-{k}": text[k * 12000 : (k + 1) * 12000]
        for name, text in list(plays.items())[:4]
        for k in range(2)
    }
    write_demo_corpus(out, plays=parts, n_shards=8)
    return out


def shard_bytes(out):
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.parquet"))}


def test_split_across_processes_equals_one_process(tmp_path, small_corpus, tiny_prior):
    one = tmp_path / "one"
    assert run_cli(*score_args(small_corpus, one, tiny_prior)).returncode == 0
    split = tmp_path / "split"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tokedit.cli",
                *score_args(small_corpus, split, tiny_prior),
                "--num-shards",
                "2",
                "--shard-index",
                str(i),
            ]
        )
        for i in range(2)
    ]
    assert [p.wait() for p in procs] == [0, 0]
    assert shard_bytes(split) == shard_bytes(one)
    assert read_manifest(split)["totals"]["documents"] == read_manifest(one)["totals"]["documents"]


def test_cli_summary_and_option_change_refusal(tmp_path, small_corpus, tiny_prior):
    out = tmp_path / "s"
    first = invoke(*score_args(small_corpus, out, tiny_prior))
    assert first.returncode == 0, first.stderr
    assert "padding" in first.stdout and "tokens/s" in first.stdout
    changed = invoke(*score_args(small_corpus, out, tiny_prior), "--top-k", "4")
    assert changed.returncode == 2
    assert (
        "other options (top_k: 8 -> 4)" in changed.stderr
        and "--overwrite" in changed.stderr
        and "Traceback" not in changed.stderr
    )
    assert (
        invoke(*score_args(small_corpus, out, tiny_prior), "--top-k", "4", "--overwrite").returncode
        == 0
    )


@pytest.mark.parametrize(
    "setup,expected",
    [
        (
            lambda d: (d / "x.jsonl").write_text('{"text": "a"}\n{oops\n'),
            r"x.jsonl:2: malformed JSON",
        ),
        (lambda d: (d / "x.jsonl").write_bytes(b'{"text": "\xff"}\n'), r"x.jsonl:1: invalid UTF-8"),
        (lambda d: (d / "x.jsonl").write_text('{"body": "a"}\n'), r"no column 'text'"),
        (lambda d: (d / "x.jsonl").write_bytes(b""), r"x.jsonl: file is empty"),
        (
            lambda d: (
                (d / "x.jsonl").write_text('{"text": "a"}\n'),
                (d / "y.txt").write_text("z"),
            ),
            r"unknown type: y.txt",
        ),
    ],
)
def test_bad_input_messages(tmp_path, tiny_prior, setup, expected):
    data = tmp_path / "data"
    data.mkdir()
    setup(data)
    r = invoke("score", str(data), "--model", str(tiny_prior), "--out", str(tmp_path / "out"), "-q")
    assert r.returncode == 2
    assert expected in r.stderr and "fix:" in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.glob("out/*.parquet"))


def test_missing_model_path(tmp_path, corpus_dir):
    r = invoke(
        "score",
        str(corpus_dir),
        "--model",
        str(tmp_path / "no-model"),
        "--out",
        str(tmp_path / "o"),
        "-q",
    )
    assert r.returncode == 2 and "does not exist" in r.stderr and "save_pretrained" in r.stderr


def test_non_string_and_empty_rows_are_kept_and_counted(tmp_path, tiny_prior):
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.jsonl").write_text('{"text": "To be"}\n{"text": 5}\n{"text": ""}\n{"text": null}\n')
    r = invoke("score", str(data), "--model", str(tiny_prior), "--out", str(tmp_path / "o"), "-q")
    assert r.returncode == 0, r.stderr
    assert "empty=1, not_string=1, null_text=1" in r.stdout
    t = pq.read_table(tmp_path / "o" / "x.parquet")
    assert t.column("status").to_pylist() == ["ok", "not_string", "empty", "null_text"]
    assert t.column("n_tokens").to_pylist()[1:] == [0, 0, 0]


def test_max_length_beyond_model_positions_is_refused(tmp_path, corpus_dir, tiny_prior):
    r = invoke(
        "score",
        str(corpus_dir),
        "--model",
        str(tiny_prior),
        "--out",
        str(tmp_path / "o"),
        "--max-length",
        "4096",
        "-q",
    )
    assert r.returncode == 2 and "exceeds the model's 512 positions" in r.stderr


def test_record_batch_without_scorable_rows(tmp_path, tiny_prior):
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.jsonl").write_text('{"text": ""}\n{"text": null}\n{"text": "hello"}\n')
    score_dataset(
        str(data), str(tmp_path / "o"), model=str(tiny_prior), batch_rows=2, progress=False
    )
    t = pq.read_table(tmp_path / "o" / "x.parquet")
    assert t.column("status").to_pylist() == ["empty", "null_text", "ok"]
    assert t.column("n_tokens").to_pylist()[:2] == [0, 0] and t.column("n_tokens")[2].as_py() > 0
