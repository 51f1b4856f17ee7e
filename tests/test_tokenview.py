"""The report's token view: segments, windows and edit overlays (pure), then the examples of
a real scores directory and a real `tokedit edit` output, checked against the files."""

from __future__ import annotations

import json
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokedit.analysis.report import ReportOptions, build_report, run_report
from tokedit.analysis.tokenview import (
    apply_edits,
    choose_rows,
    reconstruct_original,
    token_groups,
    view_segments,
)
from tokedit.io.manifest import manifest_path, read_manifest
from tokedit.io.write import write_json


def _joined(view: dict) -> str:
    return "".join(s["text"] for s in view["segments"])


def test_spans_group_shared_starts_and_keep_every_character():
    # "é" is two byte tokens sharing start 3 (the first has an empty span); the space before
    # "x" is trimmed out of its token (starts 5 -> 6), so it goes to the token before it.
    text = "> ab\u00e9 x\U0001f600!"
    offsets = [2, 3, 3, 6, 7, 8]
    lps = [None, math.log(0.5), math.log(0.2), math.log(0.9), math.log(0.3), math.log(0.7)]
    starts, ends, probs, sizes, first = token_groups(offsets, lps, len(text))
    assert starts.tolist() == [2, 3, 6, 7, 8] and ends.tolist() == [3, 6, 7, 8, 9]
    assert sizes.tolist() == [1, 2, 1, 1, 1] and first.tolist() == [0, 1, 3, 4, 5]
    assert math.isnan(probs[0]) and probs[1] == pytest.approx(0.5 * 0.2)
    view = view_segments(text, offsets, lps, (), max_chars=100)
    segs = view["segments"]
    assert _joined(view) == text and not view["truncated"]
    assert [(s["text"], s["tokens"]) for s in segs] == [
        ("> ", 0),  # before the first token: no token, no probability
        ("a", 1),
        ("b\u00e9 ", 2),
        ("x", 1),
        ("\U0001f600", 1),
        ("!", 1),
    ]
    assert [s["p"] for s in segs] == [None, None, 0.1, 0.9, 0.3, 0.7]


def test_edits_overlay_window_and_deletions():
    words = [f"w{i:03d} " for i in range(400)]  # 2,000 characters, one token per word
    text = "".join(words)
    offsets = [5 * i for i in range(400)]
    lps = [math.log(0.01 + i / 1000) for i in range(400)]
    edits = [
        {
            "pos": 300,
            "char_start": 1500,
            "char_end": 1505,
            "orig_id": 7,
            "new_id": 9,
            "new": "NEW ",
        },
        {
            "pos": 302,
            "char_start": 1510,
            "char_end": 1515,
            "orig_id": 8,
            "new_id": -1,
            "new": "",
            "deleted": True,
        },
        {
            "pos": 9,
            "char_start": 1512,
            "char_end": 1530,
            "orig_id": 1,
            "new_id": 2,
            "new": "x",
        },  # overlaps
    ]
    view = view_segments(text, offsets, lps, edits, max_chars=400)
    # the first edit (at 1500) is beyond the 400-char window: it starts about 80 chars before it
    assert view["window"]["start"] == 1420 and view["window"]["end"] <= 1420 + 400
    assert view["window"]["end"] == 1820  # segments are whole tokens: never cut
    assert _joined(view) == text[1420:1820] and view["truncated"]
    assert (view["edits_valid"], view["edits_invalid"], view["edits_shown"]) == (2, 1, 2)
    marked = [s for s in view["segments"] if s["edit"]]
    assert [(s["text"], s["edit"]["new"], s["edit"]["deleted"]) for s in marked] == [
        ("w300 ", "NEW ", False),
        ("w302 ", "", True),
    ]
    # an edit's probability is its token's, from the scores row
    assert marked[0]["p"] == pytest.approx(0.01 + 300 / 1000, abs=1e-6)
    # the window from the start when the first edit fits in it
    assert view_segments(text, offsets, lps, edits[:1], max_chars=1900)["window"]["start"] == 0


def test_choose_rows_is_deterministic():
    assert choose_rows([0, 5, 2, 5, 0], [True] * 5, 3) == [1, 3, 2]
    assert choose_rows([0, 5, 2, 5, 0], [True, False, True, True, True], 2) == [3, 2]
    assert choose_rows([0, 0, 0, 0], [False, True, True, True], 2) == [1, 2]
    assert choose_rows([1, 2], [True, True], 0) == []


def test_apply_and_reconstruct_round_trip():
    original = "abc <def> ghi & j\u00fcrgen \U0001f469\u200d\U0001f467"
    edits = [
        {"char_start": 3, "char_end": 9, "orig": " <def>", "new": " XY"},
        {"char_start": 9, "char_end": 13, "orig": " ghi", "new": "", "deleted": True},
        {"char_start": 15, "char_end": 22, "orig": " j\u00fcrgen", "new": " J\u00fcrgen!!"},
    ]
    edited = apply_edits(original, edits)
    assert edited == "abc XY & J\u00fcrgen!! \U0001f469\u200d\U0001f467"
    assert reconstruct_original(edited, edits) == original
    # a replacement that is not where the shifted span says: refused, not guessed
    bad = [dict(edits[0], new=" XZ"), *edits[1:]]
    assert reconstruct_original(edited, bad) is None
    assert apply_edits(original, [dict(edits[0], new=None)]) is None


def _rows(directory: Path, columns: list[str]) -> list[dict]:
    rows = []
    for path in sorted(directory.rglob("*")):
        if path.name.endswith(".parquet"):
            rows += pq.read_table(path, columns=columns).to_pylist()
        elif path.name.endswith(".jsonl.gz"):
            import gzip

            with gzip.open(path, "rt") as f:
                rows += [{c: json.loads(line).get(c) for c in columns} for line in f]
    return rows


def _check_shading(ex: dict, text: str, srow: dict) -> None:
    """Segments are the text window; each single-token segment has exp(its logprob)."""
    w = ex["window"]
    assert "".join(s["text"] for s in ex["segments"]) == text[w["start"] : w["end"]]
    assert w["end"] - w["start"] <= 1500 and w["end"] > w["start"]
    starts = srow["offsets"]
    pos, checked = 0, 0
    at = w["start"]
    for seg in ex["segments"]:
        if seg["tokens"] == 1 and seg["edit"] is None and at in starts:
            i = starts.index(at)
            lp = srow["logprob"][i]
            if lp is not None and starts.count(at) == 1:
                assert seg["p"] == pytest.approx(math.exp(lp), abs=1e-6)
                checked += 1
        at += len(seg["text"])
        pos += 1
    singles = [s for s in ex["segments"] if s["tokens"] == 1 and not s["edit"] and s["p"]]
    assert checked > 0 and checked >= 0.9 * len(singles)


def test_examples_of_real_scores_and_edit(tmp_path, corpus_dir, tiny_scores, tiny_edited):
    edited = tiny_edited
    r = build_report(
        [str(corpus_dir), str(tiny_scores), str(edited)],
        ReportOptions(labels=["human", "scores", "edited"], examples=2),
    )
    human, scores, ed = r["corpora"]
    assert human["examples"] is None
    texts = [x["text"] for x in _rows(corpus_dir, ["text"])]
    srows = _rows(tiny_scores, ["id", "status", "n_tokens", "token_ids", "offsets", "logprob"])
    # scores: the first two rows with status ok and tokens, their input text, exp(logprob)
    first = [i for i, s in enumerate(srows) if s["status"] == "ok" and s["n_tokens"] > 0][:2]
    assert [e["row"] for e in scores["examples"]] == first
    for ex in scores["examples"]:
        assert ex["text_source"] == "input" and ex["id"] == srows[ex["row"]]["id"]
        assert ex["tokens"] == srows[ex["row"]]["n_tokens"] and ex["chars"] == len(texts[ex["row"]])
        _check_shading(ex, texts[ex["row"]], srows[ex["row"]])
    # edited: the two rows with the most edits, original text with the edits overlaid
    erows = _rows(edited, ["text", "tokedit_edits"])
    n_edits = [len(e["tokedit_edits"]) for e in erows]
    best = sorted(range(len(n_edits)), key=lambda i: (-n_edits[i], i))[:2]
    assert [e["row"] for e in ed["examples"]] == best and n_edits[best[0]] > 0
    for ex in ed["examples"]:
        row = ex["row"]
        assert ex["text_source"] == "input" and ex["verified"] is True
        assert ex["scores"] == str(tiny_scores.resolve()) and ex["edits"] == n_edits[row]
        _check_shading(ex, texts[row], srows[row])
        marked = [s for s in ex["segments"] if s["edit"]]
        assert len(marked) == ex["edits_shown"] > 0
        by_pos = {e["pos"]: e for e in erows[row]["tokedit_edits"]}
        for seg in marked:
            e = by_pos[seg["edit"]["pos"]]
            assert seg["text"] == texts[row][e["char_start"] : e["char_end"]]
            assert seg["edit"]["new_id"] == e["new_id"] != seg["edit"]["orig_id"]
            assert seg["p"] > 0.5  # edited because P > p = 0.5
    # without the input dataset: the edited text is rebuilt, the scores are decoded
    moved = tmp_path / "moved"
    shutil.copytree(corpus_dir, moved)
    for d, src in ((tmp_path / "scores", tiny_scores), (tmp_path / "edited", tiny_edited)):
        shutil.copytree(src, d)
        m = read_manifest(d)
        m["info"]["input"] = str(tmp_path / "gone")
        if "scores" in m["info"]:
            m["info"]["scores"] = str(tmp_path / "scores")
        write_json(manifest_path(d), m)
    r2 = build_report(
        [str(tmp_path / "scores"), str(tmp_path / "edited")],
        ReportOptions(examples=2),
    )
    s2, e2 = r2["corpora"]
    assert {x["text_source"] for x in s2["examples"]} == {"decoded"}
    assert {x["text_source"] for x in e2["examples"]} == {"reconstructed"}
    for a, b in zip(
        scores["examples"] + ed["examples"], s2["examples"] + e2["examples"], strict=True
    ):
        assert a["segments"] == b["segments"] and a["window"] == b["window"]


class _TokenView(HTMLParser):
    """Text inside the token view's documents, with <del>/<ins> marked."""

    def __init__(self):
        super().__init__()
        self.depth, self.docs, self.stack, self.scripts = 0, [], [], 0

    def handle_starttag(self, tag, attrs):
        cls = dict(attrs).get("class", "")
        if tag == "script":
            self.scripts += 1
        if tag == "div" and cls == "tv":
            self.docs.append([])
            self.depth = 1
        elif self.depth and tag == "div":
            self.depth += 1
        if self.depth:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if self.depth:
            self.stack.pop()
            if tag == "div":
                self.depth -= 1

    def handle_data(self, data):
        if self.depth:
            where = "del" if "del" in self.stack else "ins" if "ins" in self.stack else "text"
            self.docs[-1].append((where, data))


NASTY = (
    "<script>undefinedFunctionFromTheCorpus()</script> Tom & Jerry "
    "caf\u00e9 na\u00efve \u4e2d\u6587 \U0001f469\u200d\U0001f469\u200d\U0001f467 \"quoted\" 'x' end"
)


@pytest.fixture(scope="module")
def nasty_edited(tmp_path_factory, tiny_prior):
    """An edited directory (--output-column) whose text needs escaping, with a replacement
    and a deletion rendered by the real prior's tokenizer."""
    from transformers import AutoTokenizer

    from tokedit.editor.splice import Renderer

    tok = AutoTokenizer.from_pretrained(str(tiny_prior))
    renderer = Renderer(tok)
    enc = tok(NASTY, add_special_tokens=False, return_offsets_mapping=True)
    ids, spans = enc["input_ids"], enc["offset_mapping"]

    def whole(i):  # the token's text in context is at its start (what the editor splices)
        piece = renderer.render(ids[i])
        return bool(piece) and NASTY.startswith(piece, spans[i][0])

    amp = next(i for i, (s, e) in enumerate(spans) if "&" in NASTY[s:e] and whole(i))
    cafe = next(i for i in range(amp + 2, len(ids)) if whole(i))  # deleted
    new_id = next(  # a replacement that needs escaping too
        i for i in tok(" <b>", add_special_tokens=False)["input_ids"] if "<" in renderer.render(i)
    )
    new_text = renderer.render(new_id)
    edits = []
    for pos, nid in ((amp, new_id), (cafe, -1)):
        s = spans[pos][0]
        e = s + len(renderer.render(ids[pos]))
        edits.append(
            {"pos": pos, "char_start": s, "char_end": e, "orig_id": ids[pos], "new_id": nid}
        )
    pieces = [
        dict(x, new=new_text if x["new_id"] >= 0 else "", deleted=x["new_id"] < 0) for x in edits
    ]
    edited_text = apply_edits(NASTY, pieces)
    out = tmp_path_factory.mktemp("nasty") / "edited"
    out.mkdir()
    edits_type = pa.list_(
        pa.struct([(k, pa.int32()) for k in ("pos", "char_start", "char_end", "orig_id", "new_id")])
    )
    pq.write_table(
        pa.table(
            {
                "id": ["nasty"],
                "text": [NASTY],
                "edited": [edited_text],
                "tokedit_n_above": pa.array([2], pa.int32()),
                "tokedit_n_changed": pa.array([1], pa.int32()),
                "tokedit_n_skipped": pa.array([0], pa.int32()),
                "tokedit_edits": pa.array([edits], edits_type),
            }
        ),
        out / "docs.parquet",
    )
    manifest = {
        "command": "edit",
        "options": {
            "model": str(tiny_prior),
            "text_column": "text",
            "output_column": "edited",
            "id_column": "id",
            "p": [0.99],
        },
        "info": {},
        "shards": {},
    }
    write_json(manifest_path(out), manifest)
    return out, edited_text, new_text, [NASTY[x["char_start"] : x["char_end"]] for x in edits]


def test_html_escapes_text_and_marks_edits(tmp_path, tiny_scores, nasty_edited):
    edited, edited_text, new_text, originals = nasty_edited
    out = tmp_path / "R"
    result = run_report(
        [str(tiny_scores), str(edited)], str(out), ReportOptions(labels=["s", "e<&>"], examples=1)
    )
    (ex,) = result["report"]["corpora"][1]["examples"]
    assert (ex["text_source"], ex["verified"], ex["edits_shown"], ex["id"]) == (
        "output_column",
        True,
        2,
        "nasty",
    )
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;undefinedFunctionFromTheCorpus" in page
    assert "e&lt;&amp;&gt;" in page  # the label too
    parser = _TokenView()
    parser.feed(page)
    assert parser.scripts == 0
    doc = parser.docs[-1]  # the edited corpus's document, after the scores' one
    # the original text comes back exactly from the page; the replacement sits in <ins>
    assert "".join(t for w, t in doc if w in ("text", "del")) == NASTY
    assert [t for w, t in doc if w == "ins"] == [new_text]
    assert [t for w, t in doc if w == "del"] == originals
    # every token carries its probability in a title
    assert page.count('title="P = ') > 50
    # --examples 0: no section, no examples
    r0 = build_report([str(edited)], ReportOptions(examples=0))
    assert r0["corpora"][0]["examples"] is None
    run_report([str(edited)], str(tmp_path / "R0"), ReportOptions(examples=0))
    assert "token-view" not in (tmp_path / "R0" / "report.html").read_text()
