"""``tokedit edit`` on real scores of the tiny prior: byte-exact output, the change rate the
rule predicts, determinism across batch sizes and processes, formats, one-pass mode, errors.

The tiny prior is unconfident (about 9 % of tokens above P=0.1, 3 % above 0.5, none above 0.9),
so the tests edit at low thresholds; the rule is the same at any p.
"""

from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from scale_helpers import assert_edits_byte_exact, invoke

from tokedit.io.manifest import read_manifest
from tokedit.scoring.hf import load_tokenizer
from tokedit.scoring.options import ScoreOptions
from tokedit.scoring.run import score_dataset

NON_ASCII = [
    "Café crème, naïve façade — déjà vu à Noël. Übermäßig schöne Straße! The king is dead.",
    "東京は日本の首都です。北京欢迎你，你好世界。한국어 문장도 있습니다. And the queen.",
    "Emoji 🎉🎉 party 👩‍💻 coder, flags 🇫🇷🇯🇵 and ❤️ hearts; e\u0301 combining, the end.",
    "Русский текст и ελληνικά γράμματα; O, what a rogue and peasant slave am I!",
    "To be, or not to be, that is the question: 🎭 whether 'tis nobler in the mind.",
    "Mixed 東京 🎉 naïve text. My lord, I will speak to him. Ça va? Très bien, merci.",
]


def read_rows(path: Path) -> list[dict]:
    if path.name.endswith(".parquet"):
        return pq.read_table(path).to_pylist()
    if path.name.endswith(".arrow"):
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_stream(source).read_all().to_pylist()
    if path.name.endswith(".jsonl.gz"):
        return [json.loads(line) for line in gzip.open(path, "rt", encoding="utf-8")]
    return [json.loads(line) for line in path.open(encoding="utf-8")]


def data_files(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


@pytest.fixture(scope="module")
def tok(tiny_prior):
    return load_tokenizer(str(tiny_prior))


@pytest.fixture(scope="module")
def stored(tiny_scores) -> dict[str, dict]:
    """id -> the stored log-probs, token ids and candidates of that document (numpy)."""
    docs = {}
    for f in sorted(tiny_scores.glob("*.parquet")):
        t = pq.read_table(f).combine_chunks()
        row_off = t["token_ids"].chunk(0).offsets.to_numpy()
        tokens = pc.list_flatten(t["token_ids"]).to_numpy()
        lp = pc.list_flatten(t["logprob"]).to_numpy(zero_copy_only=False)
        kid = pc.list_flatten(t["topk_ids"]).combine_chunks()
        klp = pc.list_flatten(t["topk_logprobs"]).combine_chunks()
        koff, kid_v, klp_v = kid.offsets.to_numpy(), kid.values.to_numpy(), klp.values.to_numpy()
        for r, doc_id in enumerate(t["id"].to_pylist()):
            a, b = row_off[r], row_off[r + 1]
            docs[doc_id] = {
                "lp": lp[a:b],
                "tok": tokens[a:b],
                "koff": koff[a : b + 1],
                "kid": kid_v,
                "klp": klp_v,
            }
    return docs


def stored_candidates(doc: dict, i: int) -> list[tuple[float, int]]:
    a, b = doc["koff"][i], doc["koff"][i + 1]
    return [(float(v), int(c)) for v, c in zip(doc["klp"][a:b], doc["kid"][a:b], strict=True)]


def above_positions(doc: dict, p: float) -> np.ndarray:
    return np.flatnonzero(doc["lp"] > np.float32(math.log(p)))


# ------------------------------------------------------------------ on the fixture corpus


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, corpus_dir, tiny_scores):
    out = tmp_path_factory.mktemp("edited") / "sweep"
    r = invoke("edit", corpus_dir, "--scores", tiny_scores, "--out", out, "--p", "0.1,0.5", "-q")
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def test_sweep_is_byte_exact_keeps_rows_columns_and_formats(sweep, corpus_dir, tok):
    out, stdout = sweep
    manifest = read_manifest(out)
    for p in ("0.1", "0.5"):
        sub = out / f"p={p}"
        assert data_files(sub) == data_files(corpus_dir)  # same paths, same formats
        changed = 0
        for rel in data_files(corpus_dir):
            before, after = read_rows(corpus_dir / rel), read_rows(sub / rel)
            assert len(after) == len(before)  # one output row per input row
            for a, b in zip(before, after, strict=True):
                assert {k: b[k] for k in a if k != "text"} == {
                    k: v for k, v in a.items() if k != "text"
                }
                assert b["tokedit_n_changed"] == len(b["tokedit_edits"])
                assert b["tokedit_n_above"] >= b["tokedit_n_changed"] + b["tokedit_n_skipped"]
                assert_edits_byte_exact(tok, a["text"], b["text"], b["tokedit_edits"])
                changed += b["tokedit_n_changed"]
        totals = manifest["totals"]["p"][p]
        assert changed == totals["changed"] > 0
        share_above = 100 * totals["above"] / totals["scored"]
        share_changed = 100 * totals["changed"] / totals["scored"]
        assert f"p={p}: above threshold {share_above:.2f}% of scored tokens" in stdout
        assert f"changed {share_changed:.2f}%" in stdout
        assert totals["changed"] < totals["above"]  # most draws give back the original
    assert manifest["totals"]["p"]["0.5"]["above"] < manifest["totals"]["p"]["0.1"]["above"]


def test_sweep_thresholds_share_their_draws(sweep, corpus_dir):
    """A position's draw does not depend on p: edits at 0.5 are the edits at 0.1 above 0.5."""
    out, _ = sweep
    same = total = 0
    for rel in data_files(corpus_dir):
        for lo, hi in zip(
            read_rows(out / "p=0.1" / rel), read_rows(out / "p=0.5" / rel), strict=True
        ):
            lo_edits = {e["pos"]: e for e in lo["tokedit_edits"]}
            for e in hi["tokedit_edits"]:
                total += 1
                same += lo_edits.get(e["pos"]) == e
    assert total > 100 and same == total


def expected_change(stored: dict, p: float, temperature=1.0, top_k=8, top_p=None):
    """Expected number and variance of positions whose draw differs from the original,
    computed here from the stored candidates (specials <s>, </s>, <pad> are ids 0-2)."""
    mean = var = 0.0
    above = 0
    for doc in stored.values():
        for i in above_positions(doc, p):
            above += 1
            cands = sorted(stored_candidates(doc, i), key=lambda t: (-t[0], t[1]))
            cands = [(v, c) for v, c in cands[:top_k] if c > 2]
            w = [math.exp(v / temperature) for v, _ in cands]
            if top_p is not None:
                tot, acc, kept = sum(w), 0.0, []
                for x in w:
                    kept.append(x if acc < top_p * tot else 0.0)
                    acc += x
                w = kept
            orig = int(doc["tok"][i])
            q = sum(x for x, (_, c) in zip(w, cands, strict=True) if c == orig) / sum(w)
            mean += 1 - q
            var += q * (1 - q)
    return above, mean, var


@pytest.mark.parametrize(
    "args, kw",
    [
        ([], {"temperature": 1.5}),  # the default: --preset up-revise (top-8, T = 1.5)
        (["--temperature", "1"], {}),
        (["--temperature", "2", "--top-k", "4"], {"temperature": 2.0, "top_k": 4}),
        (["--strategy", "topp", "--top-p", "0.6"], {"top_p": 0.6, "temperature": 1.5}),
    ],
    ids=["up-revise", "topk8-T1", "T2-k4", "topp0.6"],
)
def test_change_rate_matches_the_rule(tmp_path, corpus_dir, tiny_scores, stored, args, kw):
    p = 0.1
    out = tmp_path / "e"
    r = invoke(
        "edit",
        corpus_dir,
        "--scores",
        tiny_scores,
        "--out",
        out,
        "--p",
        p,
        "--seed",
        7,
        "-q",
        *args,
    )
    assert r.returncode == 0, r.stderr
    c = read_manifest(out)["totals"]["p"][str(p)]
    above, mean, var = expected_change(stored, p, **kw)
    assert c["above"] == above
    drawn_other = c["above"] - c["drawn_original"] - c["skipped"]["no_candidate"]
    z = (drawn_other - mean) / math.sqrt(var)
    assert abs(z) < 4, (drawn_other, mean, math.sqrt(var))
    assert c["changed"] == drawn_other - c["skipped"]["span"] - c["skipped"]["render"]


def test_exclude_original_changes_every_token_above_p_unless_skipped(
    tmp_path, corpus_dir, tiny_scores, stored
):
    out = tmp_path / "x"
    r = invoke(
        "edit",
        corpus_dir,
        "--scores",
        tiny_scores,
        "--out",
        out,
        "--p",
        "0.3",
        "--exclude-original",
        "-q",
    )
    assert r.returncode == 0, r.stderr
    c = read_manifest(out)["totals"]["p"]["0.3"]
    assert c["drawn_original"] == 0 and c["changed"] > 1000
    for rel in data_files(corpus_dir):
        for row in read_rows(out / rel):
            above = set(above_positions(stored[row["id"]], 0.3).tolist())
            edited = {e["pos"] for e in row["tokedit_edits"]}
            assert edited <= above
            assert len(above - edited) == row["tokedit_n_skipped"]  # the rest were skipped
            assert all(e["new_id"] != e["orig_id"] for e in row["tokedit_edits"])


def test_output_independent_of_batch_size_and_processes(tmp_path, corpus_dir, tiny_scores):
    common = ["--scores", tiny_scores, "--p", "0.2", "--seed", 3, "-q"]
    assert (
        invoke("edit", corpus_dir, "--out", tmp_path / "one", "--batch-rows", 1, *common).returncode
        == 0
    )
    assert invoke("edit", corpus_dir, "--out", tmp_path / "many", *common).returncode == 0
    for i in range(2):
        r = invoke(
            "edit",
            corpus_dir,
            "--out",
            tmp_path / "split",
            "--num-shards",
            2,
            "--shard-index",
            i,
            *common,
        )
        assert r.returncode == 0, r.stderr
    files = data_files(corpus_dir)
    for rel in files:
        assert read_rows(tmp_path / "one" / rel) == read_rows(tmp_path / "many" / rel)
        assert (tmp_path / "many" / rel).read_bytes() == (tmp_path / "split" / rel).read_bytes()
    split = read_manifest(tmp_path / "split")
    many = read_manifest(tmp_path / "many")
    assert split["totals"] == many["totals"]


def test_rerun_resumes_and_other_options_are_refused(tmp_path, corpus_dir, tiny_scores):
    out = tmp_path / "r"
    args = ["edit", corpus_dir, "--scores", tiny_scores, "--out", out, "--p", "0.5", "-q"]
    assert invoke(*args).returncode == 0
    before = {f: (out / f).read_bytes() for f in data_files(out)}
    (out / "plays-01.jsonl.gz").unlink()
    again = invoke(*args)
    assert again.returncode == 0 and "3 shard(s) already done" in again.stdout
    assert {f: (out / f).read_bytes() for f in data_files(out)} == before
    other = invoke(*args, "--seed", 1)
    assert other.returncode == 2 and "other options (seed: 0 -> 1)" in other.stderr
    assert "--overwrite" in other.stderr


def test_output_column_and_no_provenance(tmp_path, corpus_dir, tiny_scores):
    out = tmp_path / "oc"
    r = invoke(
        "edit",
        corpus_dir,
        "--scores",
        tiny_scores,
        "--out",
        out,
        "--p",
        "0.3",
        "--output-column",
        "edited",
        "--no-provenance",
        "-q",
    )
    assert r.returncode == 0, r.stderr
    before = pq.read_table(corpus_dir / "plays-00.parquet")
    after = pq.read_table(out / "plays-00.parquet")
    assert after.column_names == before.column_names + ["edited"]
    assert after.column("text").equals(before.column("text"))
    assert (
        sum(
            a != b
            for a, b in zip(
                after.column("text").to_pylist(), after.column("edited").to_pylist(), strict=True
            )
        )
        > 10
    )
    taken = invoke(
        "edit",
        corpus_dir,
        "--scores",
        tiny_scores,
        "--out",
        tmp_path / "oc2",
        "--p",
        "0.3",
        "--output-column",
        "play",
        "-q",
    )
    assert taken.returncode == 2 and "already has a column 'play'" in taken.stderr


def test_presets_default_and_explicit_overrides(tmp_path, corpus_dir, tiny_scores):
    """The default is up-revise; low-drop-up-revise needs 64 stored candidates and says so;
    explicit flags override a preset's values and the manifest records both."""
    r = invoke("edit", corpus_dir, "--scores", tiny_scores, "--out", tmp_path / "d", "-q")
    assert r.returncode == 0, r.stderr
    m = read_manifest(tmp_path / "d")
    o = m["options"]
    assert (o["p"], o["top_k"], o["temperature"], o["drop_below"]) == ([0.99], 8, 1.5, 0.0)
    assert (m["info"]["preset"], m["info"]["overridden"]) == ("up-revise", [])

    low = ["edit", corpus_dir, "--scores", tiny_scores, "--preset", "low-drop-up-revise"]
    r = invoke(*low, "--out", tmp_path / "l")
    assert r.returncode == 2
    assert "--top-k 64 (from --preset low-drop-up-revise)" in r.stderr
    assert "store only 8 candidates" in r.stderr and "rescore with --top-k 64" in r.stderr
    _no_complete_output(tmp_path / "l")

    r = invoke(*low, "--out", tmp_path / "o", "--top-k", 8, "--p", 0.5, "-q")
    assert r.returncode == 0, r.stderr
    m = read_manifest(tmp_path / "o")
    o = m["options"]
    assert (o["p"], o["top_k"], o["temperature"], o["drop_below"]) == ([0.5], 8, 1.0, 0.001)
    assert (m["info"]["preset"], m["info"]["overridden"]) == ("low-drop-up-revise", ["p", "top_k"])
    assert m["totals"]["p"]["0.5"]["deleted"] > 0

    r = invoke(*low, "--out", tmp_path / "b", "--top-k", 8, "--p", 0.5, "--drop-below", 0.6)
    assert r.returncode == 2 and "--drop-below 0.6 is not below --p 0.5" in r.stderr


def test_drop_below_cuts_exactly_the_tokens_below_q(tmp_path, corpus_dir, tiny_scores, stored, tok):
    q = 0.01
    out = tmp_path / "del"
    r = invoke(
        "edit", corpus_dir, "--scores", tiny_scores, "--out", out, "--p", 0.5,
        "--drop-below", q, "-q",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    c = read_manifest(out)["totals"]["p"]["0.5"]
    below = changed = deleted = deleted_chars = 0
    for rel in data_files(corpus_dir):
        for a, b in zip(read_rows(corpus_dir / rel), read_rows(out / rel), strict=True):
            doc = stored[a["id"]]
            lp = doc["lp"].astype(np.float64)  # the official comparison: np.exp(lp) < q
            want = set(np.flatnonzero(np.exp(lp) < q).tolist())  # NaN (no context) never
            dels = [e for e in b["tokedit_edits"] if e["new_id"] == -1]
            got = {e["pos"] for e in dels}
            assert got <= want  # never a token at or above q, never one without a log-prob
            assert b["tokedit_n_deleted"] == len(dels)
            assert b["tokedit_n_changed"] + b["tokedit_n_deleted"] == len(b["tokedit_edits"])
            assert_edits_byte_exact(tok, a["text"], b["text"], b["tokedit_edits"])
            below += len(want)
            deleted += len(got)
            deleted_chars += sum(e["char_end"] - e["char_start"] for e in dels)
            changed += b["tokedit_n_changed"]
    assert c["below"] == below and c["deleted"] == deleted > 1000
    assert c["delete_skipped"] == below - deleted  # left in place only if not spliceable
    assert c["deleted_chars"] == deleted_chars and c["changed"] == changed > 0
    share = f"deleted {100 * deleted / c['scored']:.2f}% ({deleted}; P < {q}; "
    assert share in r.stdout and "redrawn as themselves" in r.stdout

    from tokedit.analysis.edits import EditAccumulator  # what the report reads

    acc = EditAccumulator()
    for rel in data_files(out):
        rows = read_rows(out / rel)
        acc.add(*([row[k] for row in rows] for k in ("tokedit_n_above", "tokedit_n_changed",
                                                      "tokedit_n_skipped", "tokedit_edits")))  # fmt: skip
    s = acc.summary(c["scored"], lambda ids: [str(i) for i in ids])
    assert (s["deleted"], s["changed"], s["recorded_edits"]) == (deleted, changed, changed)
    assert s["documents_changed"] == c["documents_changed"]


# ------------------------------------------------------------------ non-ASCII, all formats


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, tiny_prior, plays):
    """Non-ASCII documents (and some English) as parquet, jsonl and a datasets folder, scored."""
    from datasets import Dataset

    root = tmp_path_factory.mktemp("mixed")
    corpus = root / "corpus"
    corpus.mkdir()
    hamlet = plays["hamlet"][5000:9000]
    docs = [{"id": f"m{i}", "text": t} for i, t in enumerate(NON_ASCII)]
    docs.append({"id": "h0", "text": hamlet})
    pq.write_table(pa.Table.from_pylist(docs[:4]), corpus / "a.parquet")
    odd = [
        {"id": "n0", "text": None},
        {"id": "n1", "text": ""},
        {"id": "n2", "text": 12, "extra": [1]},
    ]
    with (corpus / "b.jsonl").open("w", encoding="utf-8") as f:
        for d in docs[4:6] + odd:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    Dataset.from_list(docs[6:] + docs[:2]).save_to_disk(str(corpus / "c"))
    scores = root / "scores"
    score_dataset(
        str(corpus),
        str(scores),
        model=str(tiny_prior),
        options=ScoreOptions(max_length=128, overlap=32, candidates_min_p=0.01),
        id_column="id",
        progress=False,
    )
    return corpus, scores


def test_non_ascii_all_formats_byte_exact_and_skips_counted(tmp_path, mixed, tok):
    from datasets import load_from_disk

    corpus, scores = mixed
    out = tmp_path / "e"
    r = invoke(
        "edit", corpus, "--scores", scores, "--out", out, "--p", "0.01", "--exclude-original", "-q"
    )
    assert r.returncode == 0, r.stderr
    assert data_files(out) == data_files(corpus)  # parquet, jsonl and the datasets folder
    c = read_manifest(out)["totals"]
    assert c["statuses"] == {"ok": 9, "null_text": 1, "empty": 1, "not_string": 1}
    assert c["p"]["0.01"]["changed"] > 100
    rows = read_rows(out / "a.parquet") + read_rows(out / "b.jsonl")
    rows += load_from_disk(str(out / "c")).to_list()
    originals = {
        d["id"]: d for d in read_rows(corpus / "a.parquet") + read_rows(corpus / "b.jsonl")
    }
    originals.update({d["id"]: d for d in load_from_disk(str(corpus / "c")).to_list()})
    assert len(rows) == 12
    for row in rows:
        orig = originals[row["id"]]
        if not isinstance(orig["text"], str) or not orig["text"]:
            assert row["text"] == orig["text"] and row["tokedit_n_above"] == 0  # kept as is
            continue
        assert_edits_byte_exact(tok, orig["text"], row["text"], row["tokedit_edits"])
        assert row["tokedit_n_above"] == row["tokedit_n_changed"] + row["tokedit_n_skipped"]
        for ch in "東京🎉é":  # whole characters only: none lost, none half-replaced
            if ch in orig["text"]:
                assert "\ufffd" not in row["text"]
    odd = [r for r in read_rows(out / "b.jsonl") if r["id"] == "n2"][0]
    assert odd["text"] == 12 and odd["extra"] == [1]


def test_every_position_above_p_stays_byte_exact_end_to_end(tmp_path, mixed, tok):
    """Doctored scores put every token at P=1 with partial-byte candidates, so the CLI must
    try to edit inside multi-byte characters: those are skipped and counted, never corrupted."""
    corpus, scores = mixed
    doctored = tmp_path / "scores"
    shutil.copytree(scores, doctored)
    cands = tok("🎉é", add_special_tokens=False)["input_ids"][:4]
    cands += [tok.convert_tokens_to_ids(t) for t in ("Ġthe", "a", "e", "Ġ")]
    assert len(cands) == 8 and tok.unk_token_id not in cands
    for f in doctored.glob("**/*.parquet"):
        t = pq.read_table(f)
        n = [len(x) for x in t["token_ids"].to_pylist()]
        lp = pa.array([[0.0] * k for k in n], pa.list_(pa.float32()))
        kid = pa.array([[cands] * k for k in n], pa.list_(pa.list_(pa.int32())))
        klp = pa.array([[[-2.0] * 8] * k for k in n], pa.list_(pa.list_(pa.float32())))
        for name, col in (("logprob", lp), ("topk_ids", kid), ("topk_logprobs", klp)):
            t = t.set_column(t.column_names.index(name), name, col)
        pq.write_table(t, f)
    out = tmp_path / "e"
    r = invoke(
        "edit", corpus, "--scores", doctored, "--out", out, "--p", "0.5", "--exclude-original", "-q"
    )
    assert r.returncode == 0, r.stderr
    c = read_manifest(out)["totals"]["p"]["0.5"]
    assert c["above"] == c["scored"] == c["tokens"]
    assert c["skipped"]["span"] > 100  # tokens inside a character (empty or partial spans)
    assert c["skipped"]["render"] > 100  # partial-byte replacements
    assert c["changed"] > 1000
    originals = {
        d["id"]: d["text"] for d in read_rows(corpus / "a.parquet") + read_rows(corpus / "b.jsonl")
    }
    for row in read_rows(out / "a.parquet") + read_rows(out / "b.jsonl"):
        if isinstance(originals[row["id"]], str) and originals[row["id"]]:
            assert_edits_byte_exact(tok, originals[row["id"]], row["text"], row["tokedit_edits"])
            assert "\ufffd" not in row["text"]
            assert row["tokedit_n_above"] == row["tokedit_n_changed"] + row["tokedit_n_skipped"]


def test_one_pass_model_mode_equals_scores_mode(tmp_path, mixed, tiny_prior, tok):
    corpus, scores = mixed
    common = ["--p", "0.05,0.3", "--id-column", "id", "-q"]
    a = invoke("edit", corpus, "--scores", scores, "--out", tmp_path / "s", "--p", "0.05,0.3", "-q")
    assert a.returncode == 0, a.stderr
    b = invoke(
        "edit",
        corpus,
        "--model",
        tiny_prior,
        "--out",
        tmp_path / "m",
        "--max-length",
        128,
        "--overlap",
        32,
        "--batch-rows",
        2,
        *common,
    )
    assert b.returncode == 0, b.stderr
    files = data_files(tmp_path / "s")
    assert files == data_files(tmp_path / "m")
    for rel in files:  # batch sizes differ (2 vs 512): same rows, not the same row groups
        if not rel.endswith(".json"):
            assert read_rows(tmp_path / "s" / rel) == read_rows(tmp_path / "m" / rel), rel
    dropped = [
        invoke(
            "edit", corpus, *src, "--out", tmp_path / name, "--p", "0.3", "--drop-below", "0.02",
            "--id-column", "id", "-q",
        )
        for name, src in (
            ("sd", ["--scores", scores]),
            ("md", ["--model", tiny_prior, "--max-length", 128, "--overlap", 32]),
        )
    ]  # fmt: skip
    assert [d.returncode for d in dropped] == [0, 0], [d.stderr for d in dropped]
    n_deleted = 0
    assert data_files(tmp_path / "sd") == data_files(tmp_path / "md")
    for rel in data_files(tmp_path / "sd"):
        if not rel.endswith(".json"):
            rows = read_rows(tmp_path / "sd" / rel)
            assert rows == read_rows(tmp_path / "md" / rel), rel
            n_deleted += sum(r.get("tokedit_n_deleted") or 0 for r in rows)
    assert n_deleted > 50
    full = invoke(
        "edit",
        corpus,
        "--model",
        tiny_prior,
        "--out",
        tmp_path / "f",
        "--top-k",
        0,
        "--strategy",
        "topp",
        "--top-p",
        0.95,
        "--max-length",
        128,
        "--overlap",
        32,
        *common,
    )
    assert full.returncode == 0, full.stderr
    for row in read_rows(tmp_path / "f" / "p=0.05" / "a.parquet"):
        orig = [d for d in read_rows(corpus / "a.parquet") if d["id"] == row["id"]][0]
        assert_edits_byte_exact(tok, orig["text"], row["text"], row["tokedit_edits"])


# ------------------------------------------------------------------ bad input


def _no_complete_output(out: Path) -> None:
    manifest = read_manifest(out)
    if manifest is not None:
        assert manifest["shards"] == {}
    assert not [p for p in out.rglob("*.tmp")] if out.exists() else True


@pytest.mark.parametrize(
    "p, message",
    [
        ("1", "outside (0, 1)"),
        ("0", "outside (0, 1)"),
        ("1.5", "outside (0, 1)"),
        ("0.9,abc", "is not a number"),
        ("0.01", "--candidates-min-p"),
    ],
)
def test_bad_thresholds(tmp_path, corpus_dir, tiny_scores, p, message):
    r = invoke("edit", corpus_dir, "--scores", tiny_scores, "--out", tmp_path / "o", "--p", p)
    assert r.returncode == 2 and message in r.stderr and "fix:" in r.stderr
    assert "Traceback" not in r.stderr
    _no_complete_output(tmp_path / "o")


def test_mismatched_scores_are_refused(tmp_path, corpus_dir, tiny_scores, mixed, tiny_prior):
    corpus, scores = mixed
    # another dataset's scores: different shard list
    r = invoke("edit", corpus_dir, "--scores", scores, "--out", tmp_path / "o1")
    assert r.returncode == 2 and "no complete scores for 4 of the 4 shards" in r.stderr
    _no_complete_output(tmp_path / "o1")

    # same shard names, one id changed in the third shard: the first two complete, not it
    bad = tmp_path / "bad"
    shutil.copytree(corpus_dir, bad)
    t = pq.read_table(bad / "plays-02.parquet")
    ids = t.column("id").to_pylist()
    ids[5] = "someone-else"
    pq.write_table(t.set_column(0, "id", pa.array(ids)), bad / "plays-02.parquet")
    r = invoke("edit", bad, "--scores", tiny_scores, "--out", tmp_path / "o2", "--p", "0.5")
    assert r.returncode == 2
    assert f"{bad / 'plays-02.parquet'} row 5: id 'someone-else'" in r.stderr
    done = read_manifest(tmp_path / "o2")["shards"]
    assert sorted(done) == ["plays-00.parquet", "plays-01.jsonl.gz"]
    assert not (tmp_path / "o2" / "plays-02.parquet").exists()
    assert not list((tmp_path / "o2").rglob("*.tmp"))

    # one row fewer than scored
    short = tmp_path / "short"
    shutil.copytree(corpus_dir, short)
    t = pq.read_table(short / "plays-00.parquet")
    pq.write_table(t.slice(0, t.num_rows - 1), short / "plays-00.parquet")
    r = invoke("edit", short, "--scores", tiny_scores, "--out", tmp_path / "o3", "--p", "0.5")
    assert r.returncode == 2 and f"has {t.num_rows - 1} rows but its scores" in r.stderr
    _no_complete_output(tmp_path / "o3")

    # another tokenizer than the scores'
    from tokedit.training.prior import train_tokenizer

    other = tmp_path / "tok"
    train_tokenizer(NON_ASCII * 5, vocab_size=300).save_pretrained(other)
    r = invoke(
        "edit", corpus_dir, "--scores", tiny_scores, "--out", tmp_path / "o4", "--tokenizer", other
    )
    assert r.returncode == 2 and "is not the one" in r.stderr and "hash" in r.stderr

    # k larger than stored, no source, two sources
    r = invoke("edit", corpus_dir, "--scores", tiny_scores, "--out", tmp_path / "o5", "--top-k", 9)
    assert r.returncode == 2 and "store only 8 candidates" in r.stderr
    r = invoke("edit", corpus_dir, "--out", tmp_path / "o6")
    assert r.returncode == 2 and "either --scores" in r.stderr
    r = invoke(
        "edit", corpus_dir, "--scores", tiny_scores, "--model", tiny_prior, "--out", tmp_path / "o7"
    )
    assert r.returncode == 2 and "either --scores" in r.stderr
    r = invoke("edit", corpus_dir, "--scores", tiny_scores, "--out", corpus_dir / "inside")
    assert r.returncode == 2 and "inside it" in r.stderr
