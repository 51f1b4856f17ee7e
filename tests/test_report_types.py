"""The typed report (tokedit/analysis/sections.py) and the page its templates render.

- A report built on the fixtures (a dataset counted in words; scores and edited directories
  counted in tokens) is written, read back into the dataclasses, and must be equal to the
  built one; its JSON dumped again must be the bytes of report.json.
- report.json that is not a report (a key unknown or missing) is refused, naming the key.
- User text (documents, document ids, corpus directory names and labels) reaches the page
  only escaped: markup in a corpus never becomes markup of the page.
- The templates are package data of the wheel (pyproject.toml's package-data patterns).
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokedit.analysis.report import (
    ReportOptions,
    compute_report,
    load_report,
    run_report,
    write_report,
)
from tokedit.analysis.sections import (
    Divergences,
    Example,
    Report,
    TailCoverage,
    ThresholdAdvice,
    from_json,
)
from tokedit.errors import InputError
from tokedit.io.manifest import manifest_path
from tokedit.io.write import write_json

ROOT = Path(__file__).resolve().parent.parent


def _dump(data: dict) -> str:  # as tokedit.io.write.write_json writes report.json
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _round_trip(report: Report, out: Path) -> Report:
    write_report(report, out)
    loaded = load_report(out)
    assert loaded == report
    assert _dump(loaded.to_json()) == (out / "report.json").read_text(encoding="utf-8")
    return loaded


def test_token_report_round_trips(tmp_path, tiny_scores, tiny_edited):
    report = compute_report(
        [str(tiny_scores), str(tiny_edited)],
        ReportOptions(labels=["scores", "edited"], examples=2, example_chars=300),
    )
    loaded = _round_trip(report, tmp_path / "R")
    scores, edited = loaded.corpora
    # every optional part of the JSON is exercised, present and absent
    assert loaded.units.tokens is not None and loaded.units.words is None
    assert all(isinstance(c.tail[n].divergences, Divergences) for c in loaded.corpora for n in "12")
    assert all(c.tail[n].divergences is None for c in loaded.corpora for n in "34")
    assert scores.ngrams["2"].top[0].ids is not None and len(scores.ngrams["2"].top[0].ids) == 2
    assert isinstance(scores.thresholds[0].advice, ThresholdAdvice)
    assert scores.probability.hist10.shares is not None
    assert scores.perplexity.log10_hist.shares is None
    assert scores.edit_preview.settings and edited.edit_preview is None
    assert edited.edits.changed > 0 and edited.probability is None
    assert [type(e) for e in scores.examples + edited.examples] == [Example] * 4
    assert sum(s.edit is not None for e in edited.examples for s in e.view.segments) > 0
    # the JSON keeps the flattened groups in their parent object, as docs/report.md says
    js = json.loads((tmp_path / "R" / "report.json").read_text())
    assert {"kl_ref_to_corpus", "js", "support"} <= js["corpora"][0]["tail"]["1"].keys()
    assert "divergences" not in js["corpora"][0]["tail"]["1"]
    assert "js" not in js["corpora"][0]["tail"]["3"] and "ids" not in js["units"]
    assert {"p_text", "command"} <= js["corpora"][0]["thresholds"][0].keys()
    assert {"segments", "window"} <= js["corpora"][1]["examples"][0].keys()


def test_word_report_round_trips(tmp_path, corpus_dir):
    report = compute_report([str(corpus_dir)], ReportOptions(units="words", max_docs=5))
    loaded = _round_trip(report, tmp_path / "R")
    assert loaded.units.words is not None and loaded.units.tokens is None
    assert loaded.corpora[0].ngrams["1"].top[0].ids is None
    assert loaded.corpora[0].examples is None and loaded.corpora[0].probability is None
    assert loaded.options.target_edit_rates == (0.1,) and loaded.options.max_docs == 5


def test_a_json_that_is_not_a_report_is_refused(tmp_path, corpus_dir):
    good = compute_report([str(corpus_dir)], ReportOptions(units="words", max_docs=2)).to_json()
    extra = json.loads(json.dumps(good))
    extra["corpora"][0]["tail"]["2"]["surprise"] = 1
    with pytest.raises(InputError, match=r"report\.json\.corpora\[0\]\.tail\.2: unknown key"):
        Report.from_json(extra)
    missing = json.loads(json.dumps(good))
    del missing["corpora"][0]["documents"]["used"]
    with pytest.raises(InputError, match=r"corpora\[0\]\.documents: missing key 'used'"):
        Report.from_json(missing)
    # a flattened group is all there or all absent
    part = {k: v for k, v in good["corpora"][0]["tail"]["1"].items() if k != "js"}
    with pytest.raises(InputError, match="missing key 'js'"):
        from_json(TailCoverage, part)


NASTY_TEXT = (
    "<script>alert(1)</script> says \"quotes\" and 'single' &amp; more </textarea><b>bold</b> "
    "the end of the document"
)
NASTY_DIR = '<svg onload="alert(2)">\'&amp;'  # a directory name: the default label, the path
NASTY_SHARD = "x'<b>\"&amp;.parquet"  # gives the documents' ids "{shard}:{row}"
NASTY_LABEL = "<script>alert('label')</script>&amp;"
ALLOWED_TAGS = {
    "!doctype", "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "b",
    "code", "table", "thead", "tbody", "tr", "th", "td", "figure", "img", "details", "summary",
    "section", "div", "span", "del", "ins", "small",
}  # fmt: skip


def _nasty_edited(root: Path) -> Path:
    """An edited directory (provenance columns, no edits, no prior) full of markup."""
    out = root / NASTY_DIR
    out.mkdir(parents=True)
    edit = pa.struct([(k, pa.int32()) for k in ("pos", "char_start", "char_end", "orig_id", "new_id")])  # fmt: skip
    texts = [NASTY_TEXT, NASTY_TEXT.upper(), "plain words & <em>one</em> more"]
    pq.write_table(
        pa.table(
            {
                "text": texts,
                "tokedit_n_above": pa.array([0] * 3, pa.int32()),
                "tokedit_n_changed": pa.array([0] * 3, pa.int32()),
                "tokedit_n_skipped": pa.array([0] * 3, pa.int32()),
                "tokedit_edits": pa.array([[]] * 3, pa.list_(edit)),
            }
        ),
        out / NASTY_SHARD,
    )
    write_json(manifest_path(out), {"command": "edit", "options": {"text_column": "text"}})
    return out


def test_user_text_reaches_the_page_escaped(tmp_path):
    nasty = _nasty_edited(tmp_path / "in")
    out = tmp_path / "R"
    run_report([str(nasty)], str(out), ReportOptions(units="words", examples=3))
    run_report(
        [str(nasty)],
        str(tmp_path / "R2"),
        ReportOptions(units="words", examples=1, labels=[NASTY_LABEL]),
    )
    page = (out / "report.html").read_text(encoding="utf-8")
    labelled = (tmp_path / "R2" / "report.html").read_text(encoding="utf-8")
    for html in (page, labelled):
        tags = {m.lower() for m in re.findall(r"</?([!a-zA-Z][a-zA-Z0-9]*)", html)}
        assert tags <= ALLOWED_TAGS, tags - ALLOWED_TAGS  # no <script>, <svg>, <em>, </textarea>
        assert "<script" not in html.lower() and "alert(1)</" not in html
        assert "<textarea" not in html.lower() and "</textarea" not in html.lower()
    # the token view: the document's text, escaped once (its own "&amp;" shows as "&amp;")
    assert (
        "&lt;script&gt;alert(1)&lt;/script&gt; says &#34;quotes&#34; and &#39;single&#39; "
        "&amp;amp; more &lt;/textarea&gt;&lt;b&gt;bold&lt;/b&gt;"
    ) in page
    # the document ids ({shard}:{row}) and the directory: label (h3, table heads) and path
    assert "<code>x&#39;&lt;b&gt;&#34;&amp;amp;.parquet:0</code>" in page
    label = "&lt;svg onload=&#34;alert(2)&#34;&gt;&#39;&amp;amp;"
    assert f"<h3>{label} <small>[edited]</small></h3>" in page
    assert f"<th>{label}</th>" in page and f"<td>{tmp_path / 'in'}/{label}</td>" in page
    # the tables: most frequent n-grams (words "<", "script", ">", "&", "amp", ";")
    assert "<code>&#39;&lt;&#39;</code>" in page and "<code>&#39;&amp;&#39;</code>" in page
    # a label given with --labels
    escaped = "&lt;script&gt;alert(&#39;label&#39;)&lt;/script&gt;&amp;amp;"
    assert f"<th>{escaped}</th>" in labelled and f"<h3>{escaped} <small>" in labelled


def test_templates_are_package_data():
    # the entry of [tool.setuptools.package-data] (tomllib is Python 3.11+)
    entry = re.search(
        r'^\[tool\.setuptools\.package-data\]\n"tokedit\.analysis" = (\[.*?\])',
        (ROOT / "pyproject.toml").read_text(),
        flags=re.M,
    )
    assert entry, "pyproject.toml declares no package data for tokedit.analysis"
    patterns = json.loads(entry.group(1))
    templates = sorted((ROOT / "tokedit/analysis/templates").iterdir())
    assert templates, "no templates"
    for path in templates:
        rel = path.relative_to(ROOT / "tokedit/analysis").as_posix()
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), f"{rel} would not be installed"
