"""`tokedit report` on real text and real scores, against straightforward Counter computations;
the HTML (every image resolves and decodes), the documented JSON keys, and the CLI."""

from __future__ import annotations

import gzip
import json
import math
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from tokedit.analysis.report import ReportOptions, build_report, run_report
from tokedit.analysis.units import WORD_PATTERN
from tokedit.cli import main
from tokedit.io.manifest import manifest_path
from tokedit.io.write import write_json

REPORT_DOC = Path(__file__).resolve().parent.parent / "docs" / "report.md"


def _read_texts(directory: Path) -> list[str]:
    """Texts of a dataset directory in shard order, read without tokedit's readers."""
    texts = []
    for path in sorted(directory.iterdir()):
        if path.name.endswith(".parquet"):
            texts += pq.read_table(path).column("text").to_pylist()
        elif path.name.endswith(".jsonl.gz"):
            with gzip.open(path, "rt") as f:
                texts += [json.loads(line)["text"] for line in f if line.strip()]
    return texts


def _counter(docs: list[list], n: int) -> Counter:
    c = Counter()
    for d in docs:
        c.update(zip(*[d[k:] for k in range(n)], strict=False))
    return c


def _entropy(c: Counter) -> float:
    total = sum(c.values())
    return -sum(v / total * math.log2(v / total) for v in c.values())


def _check_concentration(got: dict, c: Counter) -> None:
    total, distinct = sum(c.values()), len(c)
    counts = sorted(c.values(), reverse=True)
    assert (got["total"], got["distinct"]) == (total, distinct)
    assert got["distinct_ratio"] == pytest.approx(distinct / total)
    assert got["entropy_bits"] == pytest.approx(_entropy(c), rel=1e-9)
    k = math.ceil(distinct / 100)
    assert got["top1pct_count"] == k
    assert got["top1pct_share"] == pytest.approx(sum(counts[:k]) / total)
    assert got["top100_share"] == pytest.approx(sum(counts[:100]) / total)
    assert got["singleton_share"] == pytest.approx(sum(v == 1 for v in c.values()) / distinct)
    assert [t["count"] for t in got["top"]] == counts[: len(got["top"])]


def _words(text: str) -> list[str]:
    return re.findall(WORD_PATTERN, text.lower())


@pytest.fixture(scope="module")
def split_dirs(tmp_path_factory, plays):
    """Two real corpora: hamlet + macbeth, and tempest + sonnets (jsonl, one scene per line)."""
    root = tmp_path_factory.mktemp("split")
    out = {}
    for name, members in {"a": ["hamlet", "macbeth"], "b": ["tempest", "sonnets"]}.items():
        d = root / name
        d.mkdir()
        docs = [p for m in members for p in plays[m].split("\n\n\n") if p.strip()]
        (d / "x.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
        out[name] = (d, docs)
    return out


def test_word_ngrams_and_tail_match_counter_on_real_text(split_dirs):
    (da, docs_a), (db, docs_b) = split_dirs["a"], split_dirs["b"]
    r = build_report(
        [str(da), str(db)], ReportOptions(units="words", rare_max_count=2, smoothing_alpha=0.5)
    )
    assert r["units"]["kind"] == "words"
    wa, wb = [_words(t) for t in docs_a], [_words(t) for t in docs_b]
    ra, rb = r["corpora"]
    assert ra["units"] == sum(map(len, wa)) and rb["units"] == sum(map(len, wb))
    for n in range(1, 5):
        ca, cb = _counter(wa, n), _counter(wb, n)
        _check_concentration(ra["ngrams"][str(n)], ca)
        _check_concentration(rb["ngrams"][str(n)], cb)
        for item in rb["ngrams"][str(n)]["top"]:
            assert cb[tuple(item["units"])] == item["count"]
            assert item["text"] == " ".join(item["units"])
        # tail coverage of b against the reference a, computed with dicts
        rare = {g for g, v in ca.items() if v <= 2}
        tb, ta = sum(cb.values()), sum(ca.values())
        t = rb["tail"][str(n)]
        assert t["reference_rare"] == len(rare)
        assert t["rare_coverage"] == pytest.approx(sum(g in cb for g in rare) / len(rare))
        assert t["tail_mass"] == pytest.approx(sum(v for g, v in cb.items() if g in rare) / tb)
        assert t["reference_tail_mass"] == pytest.approx(sum(ca[g] for g in rare) / ta)
        assert t["distinct_coverage"] == pytest.approx(sum(g in cb for g in ca) / len(ca))
        assert t["reference_mass_covered"] == pytest.approx(
            sum(v for g, v in ca.items() if g in cb) / ta
        )
        assert t["novel_mass"] == pytest.approx(sum(v for g, v in cb.items() if g not in ca) / tb)
        if n <= 2:
            union = set(ca) | set(cb)
            alpha = 0.5
            ps = {g: (ca[g] + alpha) / (ta + alpha * len(union)) for g in union}
            qs = {g: (cb[g] + alpha) / (tb + alpha * len(union)) for g in union}
            assert t["support"] == len(union)
            assert t["kl_ref_to_corpus"] == pytest.approx(
                sum(ps[g] * math.log2(ps[g] / qs[g]) for g in union), rel=1e-9
            )
            assert t["kl_corpus_to_ref"] == pytest.approx(
                sum(qs[g] * math.log2(qs[g] / ps[g]) for g in union), rel=1e-9
            )
            js = 0.0
            for g in union:
                p, q = ca[g] / ta, cb[g] / tb
                m = (p + q) / 2
                js += 0.5 * (p * math.log2(p / m) if p else 0) + 0.5 * (
                    q * math.log2(q / m) if q else 0
                )
            assert t["js"] == pytest.approx(js, rel=1e-9)


def _scores_rows(scores_dir: Path) -> dict[str, list]:
    tables = [pq.read_table(p) for p in sorted(scores_dir.glob("*.parquet"))]
    return {
        k: [v for t in tables for v in t.column(k).to_pylist()]
        for k in ("token_ids", "logprob", "ppl", "status", "n_tokens")
    }


def test_token_report_matches_counter_and_scores(corpus_dir, tiny_scores):
    r = build_report([str(corpus_dir), str(tiny_scores)], ReportOptions(labels=["text", "scores"]))
    assert r["units"]["kind"] == "tokens" and r["units"]["key_encoding"] == {
        str(n): "packed" for n in range(1, 5)
    }
    text, scores = r["corpora"]
    assert (text["kind"], scores["kind"]) == ("dataset", "scores")
    rows = _scores_rows(tiny_scores)
    for n in range(1, 5):
        c = _counter(rows["token_ids"], n)
        _check_concentration(scores["ngrams"][str(n)], c)
        # the text, tokenized here, counts the very n-grams that were scored
        assert text["ngrams"][str(n)] == scores["ngrams"][str(n)]
        t = scores["tail"][str(n)]
        assert (t["rare_coverage"], t["novel_mass"], t["distinct_coverage"]) == (1.0, 0.0, 1.0)
        if n <= 2:
            assert (t["kl_ref_to_corpus"], t["js"]) == (0.0, 0.0)
    # probabilities, straight from the logprob lists
    lps = [x for doc in rows["logprob"] for x in doc if x is not None]
    nulls = sum(x is None for doc in rows["logprob"] for x in doc)
    p = [math.exp(x) for x in lps]
    prob = scores["probability"]
    assert (prob["scored_tokens"], prob["no_context_tokens"]) == (len(p), nulls)
    assert prob["hist10"]["counts"] == [sum(min(int(x * 10), 9) == b for x in p) for b in range(10)]
    for thr, share in prob["share_above"].items():
        assert share == pytest.approx(sum(x > float(thr) for x in p) / len(p))
    assert prob["token_perplexity"] == pytest.approx(math.exp(-sum(lps) / len(lps)), rel=1e-9)
    assert text["probability"] is None and text["perplexity"] is None
    ppl = [
        v
        for v, s, n in zip(rows["ppl"], rows["status"], rows["n_tokens"], strict=True)
        if s == "ok" and n > 0
    ]
    pct = scores["perplexity"]["percentiles"]
    for q in (5, 25, 50, 75, 95):
        assert pct[str(q)] == pytest.approx(float(np.percentile(ppl, q)))
    (sug,) = scores["thresholds"]
    assert sug["target_rate"] == 0.1
    assert sum(x > sug["p"] for x in p) / len(p) == pytest.approx(0.1, abs=2e-3)
    # top n-grams decode with the prior's tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(r["units"]["tokenizer"]))
    top = scores["ngrams"]["2"]["top"][0]
    assert top["text"] == tok.decode(top["ids"]) and len(top["units"]) == 2


@pytest.fixture(scope="module")
def edited_dir(tmp_path_factory, corpus_dir, tiny_prior):
    """An edited-like directory (issue 3's contract): text changed, tokedit_* provenance, manifest."""
    out = tmp_path_factory.mktemp("edited")
    edits_type = pa.list_(
        pa.struct([(k, pa.int32()) for k in ("pos", "char_start", "char_end", "orig_id", "new_id")])
    )
    texts = _read_texts(corpus_dir)
    rng = np.random.default_rng(0)
    n_above, n_changed, n_skipped, edits = [], [], [], []
    for i in range(len(texts)):
        k = int(rng.integers(0, 4))
        n_above.append(k + 2)
        n_changed.append(k)
        n_skipped.append(1 if i % 3 == 0 else 0)
        edits.append(
            [
                {
                    "pos": j,
                    "char_start": j,
                    "char_end": j + 1,
                    "orig_id": 30 + j % 2,
                    "new_id": 40 + j,
                }
                for j in range(k)
            ]
        )
    texts = [t.replace(" the ", " thy ") for t in texts]
    pq.write_table(
        pa.table(
            {
                "text": texts,
                "tokedit_n_above": pa.array(n_above, pa.int32()),
                "tokedit_n_changed": pa.array(n_changed, pa.int32()),
                "tokedit_n_skipped": pa.array(n_skipped, pa.int32()),
                "tokedit_edits": pa.array(edits, edits_type),
            }
        ),
        out / "plays.parquet",
    )
    manifest = {
        "command": "edit",
        "options": {"model": str(tiny_prior), "text_column": "text", "p": [0.99]},
        "shards": {},
        "totals": {
            "shards": 1,
            "p": {
                "0.99": {"scored": 123456, "skipped": {"span": 5, "render": 2, "no_candidate": 0}}
            },
        },
    }
    write_json(manifest_path(out), manifest)
    return out, {
        "above": sum(n_above),
        "changed": sum(n_changed),
        "skipped": sum(n_skipped),
        "edits": edits,
    }


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def _documented_keys() -> set[str]:
    """The ``- `key` `` definitions of ``docs/report.md`` (the report's page)."""
    text = REPORT_DOC.read_text()
    section = text[text.index("## `report.json`") : text.index("## `report.html`")]
    return set(re.findall(r"^- `([^`]+)`", section, flags=re.MULTILINE))


PLACEHOLDERS = {
    "ngrams": "<n>",
    "tail": "<n>",
    "key_encoding": "<n>",
    "share_above": "<p>",
    "percentiles": "<q>",
    "statuses": "<status>",
    "skipped_reasons": "<reason>",
}


def _report_keys(value, prefix="", parent="") -> set[str]:
    keys = set()
    if isinstance(value, dict):
        for k, v in value.items():
            name = PLACEHOLDERS.get(parent, k)
            path = f"{prefix}.{name}" if prefix else name
            keys.add(path)
            keys |= _report_keys(v, path, k)
    elif isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
        for x in value:
            keys |= _report_keys(x, prefix + "[]", "")
    return keys


def test_full_report_html_json_and_docs(
    tmp_path, corpus_dir, tiny_scores, edited_dir, split_dirs, tiny_edited
):
    edited, truth = edited_dir
    out = tmp_path / "R"
    result = run_report(
        [str(corpus_dir), str(tiny_scores), str(edited)],
        str(out),
        ReportOptions(labels=["human", "scores", "edited"], target_edit_rates=(0.05, 0.1)),
    )
    r = json.loads((out / "report.json").read_text())
    assert r == json.loads(json.dumps(result["report"]))
    e = r["corpora"][2]["edits"]
    assert (e["above"], e["changed"], e["skipped"]) == (
        truth["above"],
        truth["changed"],
        truth["skipped"],
    )
    assert e["scored_tokens"] == 123456 and e["scored_tokens_basis"] == "manifest"
    assert e["threshold"] == 0.99 and e["skipped_reasons"] == {
        "span": 5,
        "render": 2,
        "no_candidate": 0,
    }
    assert e["redrawn_original"] == truth["above"] - truth["changed"] - truth["skipped"]
    assert e["changed_share"] == pytest.approx(truth["changed"] / 123456)
    pairs = Counter((x["orig_id"], x["new_id"]) for doc in truth["edits"] for x in doc)
    assert [(p["orig_id"], p["new_id"], p["count"]) for p in e["top_pairs"]][:3] == [
        (o, n, c) for (o, n), c in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    ]
    assert e["top_pairs"][0]["orig"] != "<30>"  # decoded with the prior named in the manifest
    # the edited text is close to the human text, not identical
    t2 = r["corpora"][2]["tail"]["2"]
    assert 0 < t2["js"] < 0.1 and t2["rare_coverage"] > 0.9
    assert [c["thresholds"] and len(c["thresholds"]) for c in r["corpora"]] == [None, 2, None]
    # html: every image resolves and decodes
    html = (out / "report.html").read_text()
    parser = _Images()
    parser.feed(html)
    assert len(parser.srcs) >= 7
    for src in parser.srcs:
        assert not src.startswith(("/", "http")), src
        img = matplotlib.image.imread(out / src)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    for label in ("human", "scores", "edited"):
        assert label in html
    # json: every key is documented in docs/report.md, and every documented key is there
    # (in this token report or in a word report)
    words = build_report([str(split_dirs["a"][0])], ReportOptions(units="words", max_docs=5))
    # (and the token view's edit keys, from a real edit)
    real_edit = build_report([str(tiny_edited)], ReportOptions(examples=1))
    documented = _documented_keys()
    present = _report_keys(r) | _report_keys(words) | _report_keys(real_edit)
    assert present - documented == set(), "undocumented keys"
    assert documented - present == set(), "documented keys missing from the report"


def test_cli_report_and_errors(tmp_path, split_dirs):
    (da, _), (db, _) = split_dirs["a"], split_dirs["b"]
    out = tmp_path / "R"
    res = CliRunner().invoke(
        main,
        [
            "report",
            str(da),
            str(db),
            "--labels",
            "x,y",
            "--units",
            "words",
            "--max-docs",
            "20",
            "--target-edit-rate",
            "0.05,0.2",
            "--out",
            str(out),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "x [dataset]" in res.output and "(sampled)" in res.output
    r = json.loads((out / "report.json").read_text())
    assert r["sampled"] and r["options"]["target_edit_rates"] == [0.05, 0.2]
    assert "Sampled:" in (out / "report.html").read_text()
    res = CliRunner().invoke(main, ["report", str(da), "--labels", "x,y", "--out", str(out)])
    assert res.exit_code == 2 and "--labels has 2 name(s) for 1" in res.output
    res = CliRunner().invoke(main, ["report", str(tmp_path / "nope"), "--out", str(out)])
    assert res.exit_code == 2 and "no such dataset directory" in res.output


def test_report_of_a_real_edit(tmp_path, corpus_dir, tiny_scores):
    """`tokedit edit` output (a sweep): the report's edit numbers are the editor's totals."""
    from tokedit.editor import EditOptions, edit_dataset
    from tokedit.editor.rules import EditRule

    edited = tmp_path / "edited"
    summary = edit_dataset(
        str(corpus_dir),
        str(edited),
        scores_dir=str(tiny_scores),
        options=EditOptions(ps=(0.3, 0.5), rule=EditRule(exclude_original=True)),
        progress=False,
    )
    with pytest.raises(Exception, match="one edited dataset per threshold"):
        build_report([str(edited)], ReportOptions())
    r = build_report(
        [str(tiny_scores), str(edited / "p=0.5")], ReportOptions(labels=["human", "edited"])
    )
    e = r["corpora"][1]["edits"]
    t = summary.totals["0.5"]
    assert r["corpora"][1]["kind"] == "edited" and e["threshold"] == 0.5
    assert (e["scored_tokens"], e["above"], e["changed"]) == (t.scored, t.above, t.changed)
    assert e["skipped"] == sum(t.skipped.values()) and e["skipped_reasons"] == t.skipped
    assert (
        e["changed"] > 0 and e["recorded_edits"] == e["changed"] and e["recorded_same_token"] == 0
    )
    # the share above 0.5 in the scores is the editor's share above threshold
    above = r["corpora"][0]["probability"]
    assert e["above_share"] == pytest.approx(
        sum(above["hist_fine"]["counts"][50:]) / above["scored_tokens"], abs=1e-3
    )
    tail = r["corpora"][1]["tail"]["2"]
    assert tail["js"] > 0 and tail["rare_coverage"] > 0.9
