"""Know before you edit: the report's edit preview against an independent count and a real edit."""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
from click.testing import CliRunner

from tokedit.analysis.preview import default_settings, preview_scores_dir
from tokedit.cli import main
from tokedit.editor.rules import banned_mask
from tokedit.scoring.hf import load_tokenizer

USER = {"p": 0.5, "top_k": 4, "temperature": 1.5, "drop_below": 0.01}


def independent_counts(scores_dir, tok, p, top_k, temperature, drop_below):
    """Plain-Python expectation over the stored candidates, written from the rule's text."""
    special = set(tok.all_special_ids)
    scored = above = deleted = 0
    changed = 0.0
    for path in sorted(scores_dir.rglob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            for i, lp in enumerate(row["logprob"]):
                if lp is None:
                    continue
                scored += 1
                deleted += math.exp(lp) < drop_below
                if not math.exp(lp) > p:
                    continue
                above += 1
                cands = sorted(
                    zip(row["topk_logprobs"][i], row["topk_ids"][i], strict=True),
                    key=lambda c: (-c[0], c[1]),
                )[:top_k]
                weights = {t: math.exp(c / temperature) for c, t in cands if t not in special}
                total = sum(weights.values())
                if total:
                    changed += 1 - weights.get(row["token_ids"][i], 0.0) / total
    return scored, above, changed, deleted


def test_preview_equals_an_independent_count(tiny_scores, tiny_prior):
    tok = load_tokenizer(str(tiny_prior))
    preview = preview_scores_dir(tiny_scores, default_settings(USER), banned=banned_mask(tok))
    yours = preview["settings"][-1]
    assert yours["setting"].startswith("yours") and yours["top_k"] == 4
    scored, above, changed, deleted = independent_counts(tiny_scores, tok, **USER)
    assert yours["scored_tokens"] == scored
    assert yours["share_above"] == above / scored and above > 1000
    assert math.isclose(yours["expected_share_changed"], changed / scored, rel_tol=1e-6)
    assert math.isclose(
        yours["expected_share_as_itself"] + yours["expected_share_changed"],
        above / scored,
        rel_tol=1e-6,
    )
    assert yours["share_deleted"] == deleted / scored and deleted > 0
    by_name = {r["setting"]: r for r in preview["settings"]}
    # Both presets read p = 0.99; low-drop also deletes, up-revise never does.
    assert by_name["up-revise"]["share_deleted"] == 0
    assert by_name["low-drop-up-revise"]["share_deleted"] > 0
    assert by_name["low-drop-up-revise"]["candidates_limited_by_stored_k"]  # 8 stored, 64 asked


def test_preview_predicts_a_real_edit(tmp_path, corpus_dir, tiny_scores, tiny_prior):
    tok = load_tokenizer(str(tiny_prior))
    preview = preview_scores_dir(tiny_scores, default_settings(USER), banned=banned_mask(tok))
    expected = preview["settings"][-1]
    out = tmp_path / "edited"
    r = CliRunner().invoke(
        main,
        [
            "edit",
            str(corpus_dir),
            "--scores",
            str(tiny_scores),
            "--out",
            str(out),
            "--p",
            "0.5",
            "--top-k",
            "4",
            "--temperature",
            "1.5",
            "--drop-below",
            "0.01",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    manifest = json.loads(next(out.rglob("manifest.json")).read_text())
    c = manifest["totals"]["p"]["0.5"]
    assert c["above"] == round(expected["share_above"] * c["scored"])
    assert c["deleted"] + c.get("delete_skipped", 0) == round(
        expected["share_deleted"] * c["scored"]
    )
    drawn_other = c["changed"] + sum(c["skipped"].values())
    predicted = expected["expected_share_changed"] * c["scored"]
    assert abs(drawn_other - predicted) < 4 * math.sqrt(predicted)  # a binomial's spread


def test_report_prints_the_preview(tmp_path, tiny_scores):
    r = CliRunner().invoke(
        main,
        ["report", str(tiny_scores), "--out", str(tmp_path / "r"), "--p", "0.5", "--examples", "0"],
    )
    assert r.exit_code == 0, r.output
    assert "what an edit would do" in r.output
    for name in ("up-revise (p 0.99", "low-drop-up-revise (p 0.99", "yours: p 0.5"):
        assert name in r.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    rows = report["corpora"][0]["edit_preview"]["settings"]
    assert [x["setting"] for x in rows][:3] == [
        "up-revise",
        "low-drop-up-revise",
        "up-revise, T = 1",
    ]
    assert "What an edit would do" in (tmp_path / "r" / "report.html").read_text()
