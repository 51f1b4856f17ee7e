"""Odd and hostile inputs through ``score`` and ``edit``: what comes out is asserted, not only
the exit status.

CRLF line ends, a UTF-8 byte-order mark, NFD and NFC spellings of one text, NUL bytes, a
zero-row shard, list / struct / map columns, and an input column that collides with a
provenance column. Every byte outside an edit is the input's, rows and ids are kept in
order, and the other columns come out equal.
"""

from __future__ import annotations

import json
import unicodedata

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scale_helpers import assert_edits_byte_exact, invoke

from tokedit.scoring.hf import load_tokenizer

ACCENTS = "Café, naïve façade; the déjà-vu of a résumé. Ångström über Zoë. "


def hostile_texts(hamlet: str) -> dict[str, str]:
    """One document per oddity; each long enough that the edit changes some of its tokens."""
    lines = hamlet.splitlines()
    return {
        "crlf": "\r\n".join(lines) + "\r\n",
        "crlf-mixed": "\r\n".join(lines[:20]) + "\n" + "\n".join(lines[20:40]) + "\r\n\r\n",
        "bom": "\ufeff" + hamlet,
        "bom-inside": hamlet[:300] + "\ufeff" + hamlet[300:],
        "nfd": unicodedata.normalize("NFD", ACCENTS * 6) + hamlet[:600],
        "nfc": unicodedata.normalize("NFC", ACCENTS * 6) + hamlet[:600],
        "nul": hamlet[:500].replace(" ", "\x00", 12) + "\x00\x00" + hamlet[500:900],
        "cr-only": hamlet[:800].replace("\n", "\r"),
    }


# the other columns of every row: a list, a struct, a map (and a plain string)
def passthrough(i: int) -> dict:
    return {
        "tags": [i, i + 1, -i],
        "meta": {"source": f"s{i}", "score": i / 8},
        "counts": [("a", i), ("b", 2 * i)],
        "note": f"row {i}",
    }


SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("tags", pa.list_(pa.int64())),
        ("meta", pa.struct([("source", pa.string()), ("score", pa.float64())])),
        ("counts", pa.map_(pa.string(), pa.int64())),
        ("note", pa.string()),
    ]
)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, plays, tiny_prior):
    """A parquet shard of the odd texts with list/struct/map columns, the same texts as JSON
    lines, a zero-row parquet shard; scored by the tiny prior."""
    root = tmp_path_factory.mktemp("hostile")
    data = root / "data"
    data.mkdir()
    texts = hostile_texts(plays["hamlet"][10_000:13_000])
    rows = [{"id": k, "text": t, **passthrough(i)} for i, (k, t) in enumerate(texts.items())]
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), data / "a.parquet")
    pq.write_table(SCHEMA.empty_table(), data / "empty.parquet")
    with (data / "b.jsonl").open("w", encoding="utf-8", newline="") as f:
        for k, t in texts.items():
            f.write(json.dumps({"id": f"j-{k}", "text": t}) + "\n")
    scores = root / "scores"
    r = invoke("score", data, "--model", tiny_prior, "--out", scores, "--id-column", "id",
               "--max-length", "128", "--overlap", "32", "-q")  # fmt: skip
    assert r.returncode == 0, r.stderr
    return data, scores, texts


def read_jsonl(path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        return [json.loads(line) for line in f]


def test_odd_texts_are_edited_byte_exact_with_every_other_column_kept(
    tmp_path, hostile, tiny_prior
):
    data, scores, texts = hostile
    out = tmp_path / "e"
    r = invoke("edit", data, "--scores", scores, "--out", out, "--p", "0.05",
               "--exclude-original", "-q")  # fmt: skip
    assert r.returncode == 0, r.stderr
    tok = load_tokenizer(str(tiny_prior))
    original = pq.read_table(data / "a.parquet")
    edited = pq.read_table(out / "a.parquet")
    # the input columns first, with their types, then the provenance columns
    assert edited.schema.names[: len(SCHEMA)] == SCHEMA.names
    for name in ("id", "tags", "meta", "counts", "note"):
        assert edited.column(name).type == SCHEMA.field(name).type
        assert edited.column(name).to_pylist() == original.column(name).to_pylist()
    changed = 0
    for key, row in zip(texts, edited.to_pylist(), strict=True):
        assert row["id"] == key
        assert_edits_byte_exact(tok, texts[key], row["text"], row["tokedit_edits"])
        changed += row["tokedit_n_changed"]
        assert row["tokedit_n_changed"] > 0, key  # each oddity met the editor
    # what no edit touched is as it was: line ends, the mark, the spelling, the NULs
    by_id = {row["id"]: row for row in edited.to_pylist()}
    untouched = lambda key, start, end: all(  # noqa: E731
        e["char_end"] <= start or e["char_start"] >= end for e in by_id[key]["tokedit_edits"]
    )
    if untouched("bom", 0, 1):
        assert by_id["bom"]["text"].startswith("\ufeff")
    crlf = texts["crlf"]
    kept_pairs = [
        i for i in range(len(crlf) - 1) if crlf[i : i + 2] == "\r\n" and untouched("crlf", i, i + 2)
    ]
    assert kept_pairs and by_id["crlf"]["text"].count("\r\n") >= len(kept_pairs)
    nfd = by_id["nfd"]["text"]
    assert unicodedata.normalize("NFD", nfd) == nfd or any(
        e["char_end"] > 0 for e in by_id["nfd"]["tokedit_edits"]
    )
    # the JSON lines shard: the same texts, byte for byte outside the edits
    for row in read_jsonl(out / "b.jsonl"):
        key = row["id"].removeprefix("j-")
        assert_edits_byte_exact(tok, texts[key], row["text"], row["tokedit_edits"])
    # the zero-row shard gives a zero-row shard with the same columns
    empty = pq.read_table(out / "empty.parquet")
    assert empty.num_rows == 0 and empty.schema.names[: len(SCHEMA)] == SCHEMA.names
    assert changed > 50


def test_nfc_and_nfd_spellings_stay_apart(tmp_path, hostile):
    """tokedit never normalises: the NFD document keeps its combining marks wherever no edit
    replaced them, and its scores are of the NFD bytes (another tokenization than NFC's)."""
    data, scores, texts = hostile
    table = pq.read_table(scores / "a.parquet").to_pydict()
    ids = dict(zip(table["id"], table["token_ids"], strict=True))
    assert ids["nfd"] != ids["nfc"]
    out = tmp_path / "e"
    r = invoke("edit", data, "--scores", scores, "--out", out, "--p", "0.999999", "-q")
    assert r.returncode == 0, r.stderr
    rows = {row["id"]: row for row in pq.read_table(out / "a.parquet").to_pylist()}
    for key, text in texts.items():
        if rows[key]["tokedit_n_above"] == 0:
            assert rows[key]["text"] == text  # nothing above p: the input, byte for byte
    assert rows["nfd"]["tokedit_n_above"] == 0 and "\u0301" in rows["nfd"]["text"]


def test_an_input_column_named_like_a_provenance_column_is_refused(tmp_path, tiny_prior):
    """A column the editor would write (``tokedit_edits``) that the input already has, in a
    corpus tokedit did not edit, would be lost: the edit is refused and names it."""
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(
        pa.table({"text": ["To be, or not to be"], "tokedit_edits": ["the user's own"]}),
        data / "a.parquet",
    )
    scores = tmp_path / "scores"
    r = invoke("score", data, "--model", tiny_prior, "--out", scores, "-q")
    assert r.returncode == 0, r.stderr
    r = invoke("edit", data, "--scores", scores, "--out", tmp_path / "e", "--p", "0.5", "-q")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "a.parquet" in r.stderr and "tokedit_edits" in r.stderr and "fix:" in r.stderr
    assert not (tmp_path / "e" / "a.parquet").exists()
    # --no-provenance writes no tokedit_* column: nothing collides, the user's column stays
    r = invoke("edit", data, "--scores", scores, "--out", tmp_path / "n", "--p", "0.5",
               "--no-provenance", "-q")  # fmt: skip
    assert r.returncode == 0, r.stderr
    kept = pq.read_table(tmp_path / "n" / "a.parquet")
    assert kept.column("tokedit_edits").to_pylist() == ["the user's own"]
