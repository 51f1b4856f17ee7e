"""Bad-input suite: every malformed input ends in a documented outcome.

Either a clear error naming the file (and line or row) with a fix, exit status 2 and no
traceback, or a kept row with a ``status``. No row is ever dropped silently. The outcomes
are listed in docs/formats.md ("What happens to bad input").
"""

from __future__ import annotations

import gzip
import io
import json
import random
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scale_helpers import invoke, write_rows

from tokedit.errors import InputError
from tokedit.io.read import iter_documents
from tokedit.io.shards import discover_shards
from tokedit.scoring.hf import load_tokenizer

EXTENSIONS = ["parquet", "jsonl", "jsonl.gz", "jsonl.zst"]


def read_all(root: Path) -> list:
    """Every document of a dataset directory, through the library."""
    return [d for s in discover_shards(root) for d in iter_documents(s)]


def score(tmp_path: Path, data: Path, prior: Path, *extra: str):
    out = tmp_path / "scores"
    r = invoke("score", str(data), "--model", str(prior), "--out", str(out), "-q", *extra)
    return r, out


def assert_clear_error(r, *fragments: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    for f in fragments:
        assert f in r.stderr, r.stderr
    assert "fix:" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- random and truncated bytes


def _zstd_frames(blob: bytes) -> bytes:
    """Every frame of a zstd file; EOFError if the last one is cut short."""
    out, rest = [], blob
    while rest:
        frame = zstandard.ZstdDecompressor().decompressobj()
        out.append(frame.decompress(rest))
        if not frame.eof:
            raise EOFError("truncated zstd frame")
        rest = frame.unused_data
    return b"".join(out)


def _status(value) -> tuple[str, str]:
    if value is None:
        return "", "null_text"
    if not isinstance(value, str):
        return "", "not_string"
    return value, "ok" if value else "empty"


def expected_rows(ext: str, blob: bytes) -> list[tuple[str, str]] | None:
    """What the documented contract makes of a shard of these bytes, found without tokedit:
    the ``(text, status)`` of every row, or None where reading it must be an error."""
    if not blob:
        return None  # a zero-byte file
    if ext == "parquet":
        try:
            table = pq.read_table(pa.BufferReader(blob))
        except (pa.ArrowException, OSError):
            return None
        if "text" not in table.column_names:
            return None
        return [_status(v) for v in table.column("text").to_pylist()]
    try:
        if ext == "jsonl.gz":
            blob = gzip.GzipFile(fileobj=io.BytesIO(blob)).read()
        elif ext == "jsonl.zst":
            blob = _zstd_frames(blob)
    except (OSError, EOFError, zlib.error, zstandard.ZstdError):
        return None
    records = []
    for line in blob.split(b"\n"):
        if not line.strip():
            continue  # blank lines are not rows
        try:
            value = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return None
        if not isinstance(value, dict):
            return None
        records.append(value)
    if records and not any("text" in r for r in records):
        return None  # no text column
    rows = [_status(r.get("text")) for r in records]
    if any(not text.isascii() and _has_surrogate(text) for text, _ in rows):
        return None
    return rows


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


JSON_LINES = [b'{"text": "a b"}', b'{"text": null}', b"{}", b'{"text": 5}', b'{"text": ""}',
              b"[1]", b"", b"  ", b'{"text": "\xc3\xa9"}', b"\xff", b'{"text": "\\ud800"}']  # fmt: skip


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ext=st.sampled_from(EXTENSIONS),
    blob=st.binary(min_size=1, max_size=600)
    | st.lists(st.sampled_from(JSON_LINES), min_size=1, max_size=6).map(b"\n".join),
    compress=st.booleans(),
)
def test_random_bytes_give_rows_or_an_error_naming_the_file(tmp_path_factory, ext, blob, compress):
    """Rows exactly as the bytes say, or an error naming the file: never rows from bytes
    that are not a valid shard, and never an error for one that is. Catches: malformed
    lines skipped or rows dropped in silence, wrong statuses."""
    if compress and ext == "jsonl.gz":
        blob = gzip.compress(blob, mtime=0)
    elif compress and ext == "jsonl.zst":
        blob = zstandard.compress(blob)
    root = tmp_path_factory.mktemp("rand")
    (root / f"x.{ext}").write_bytes(blob)
    expected = expected_rows(ext, blob)
    event("an error" if expected is None else "rows" if expected else "no rows")
    try:
        docs = read_all(root)
    except InputError as e:
        assert f"x.{ext}" in e.message and e.remedy
        assert expected is None, f"a readable shard was refused: {e.message}"
    else:
        got = [(t, s) for d in docs for t, s in zip(d.texts, d.statuses, strict=True)]
        assert expected is not None, f"bytes that are no valid shard were read as {got}"
        assert got == expected


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_random_bytes_shard_is_a_cli_error(tmp_path, tiny_prior, ext):
    data = tmp_path / "data"
    data.mkdir()
    (data / f"x.{ext}").write_bytes(bytes(range(256)) * 4)
    r, _ = score(tmp_path, data, tiny_prior)
    assert_clear_error(r, f"x.{ext}")


def test_random_bytes_in_a_save_to_disk_folder(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "data-00000-of-00001.arrow").write_bytes(random.Random(0).randbytes(512))
    (folder / "state.json").write_text(
        json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]})
    )
    (folder / "dataset_info.json").write_text("{}")
    with pytest.raises(InputError, match="data-00000-of-00001.arrow: not a readable Arrow stream"):
        read_all(folder)


def _lines(n: int) -> bytes:
    return b"".join(json.dumps({"text": f"line {i} " * 20}).encode() + b"\n" for i in range(n))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(fmt=st.sampled_from(["jsonl.gz", "jsonl.zst"]), cut=st.floats(0.01, 0.999))
def test_truncated_archives_are_never_read_silently(tmp_path_factory, fmt, cut):
    """Cut anywhere, even right after a complete line: an error, never fewer rows."""
    data = _lines(300)
    whole = gzip.compress(data, mtime=0) if fmt == "jsonl.gz" else zstandard.compress(data)
    root = tmp_path_factory.mktemp("trunc")
    (root / f"x.{fmt}").write_bytes(whole[: max(1, int(len(whole) * cut))])
    with pytest.raises(
        InputError, match=rf"x\.{fmt}: the (compressed|zstd) stream is corrupt or truncated"
    ):
        read_all(root)


def test_multi_frame_zstd_reads_every_frame(tmp_path):
    c = zstandard.ZstdCompressor()
    (tmp_path / "x.jsonl.zst").write_bytes(c.compress(_lines(3)) + c.compress(_lines(2)))
    assert sum(len(d) for d in read_all(tmp_path)) == 5


def test_corrupt_parquet_pages_are_an_error_or_rows_never_a_traceback(tmp_path):
    write_rows(tmp_path / "src.parquet", [{"text": f"row {i} " * 50} for i in range(400)])
    good = (tmp_path / "src.parquet").read_bytes()
    (tmp_path / "src.parquet").unlink()
    outcomes = set()
    rng = random.Random(0)  # seeded: the same damage, and the same outcomes, on every run
    for k, at in enumerate(range(8, len(good) - 200, max(1, (len(good) - 208) // 12))):
        root = tmp_path / f"c{k}"
        root.mkdir()
        bad = bytearray(good)
        bad[at : at + 16] = rng.randbytes(16)
        (root / "x.parquet").write_bytes(bytes(bad))
        try:
            docs = read_all(root)
            outcomes.add("rows")
            assert sum(len(d) for d in docs) == 400  # parquet knows its row count
        except InputError as e:
            assert "x.parquet" in e.message
            outcomes.add("error")
    assert "error" in outcomes


# ---------------------------------------------------------------- JSON lines


@pytest.mark.parametrize(
    "line,expected",
    [
        ("[1, 2]", "a JSON line must be an object, found list"),
        ("5", "a JSON line must be an object, found int"),
        ('"text"', "a JSON line must be an object, found str"),
        ("null", "a JSON line must be an object, found NoneType"),
        ('{"text": ' + "1" * 5000 + "}", "JSON value cannot be read"),
        ('{"text": "a", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}", "JSON nested too deeply"),
        ('{"text": "bad \\ud800 half a pair"}', "the text holds a lone surrogate (U+D800 at"),
        ('{"id": "\\udfff", "text": "ok"}', "the id holds a lone surrogate (U+DFFF at"),
    ],
)
def test_json_lines_that_are_errors(tmp_path, line, expected):
    (tmp_path / "x.jsonl").write_text('{"id": "1", "text": "fine"}\n' + line + "\n")
    with pytest.raises(InputError) as e:
        [d for s in discover_shards(tmp_path) for d in iter_documents(s, id_column="id")]
    assert f"x.jsonl:2: {expected}" in e.value.message and e.value.remedy


def test_json_values_of_wrong_types_are_kept_with_a_status(tmp_path, tiny_prior):
    rows = [
        {"text": {"nested": {"object": [1, 2]}}},
        {"text": [1, "two"]},
        {"text": 3.5},
        {"text": True},
        {"text": None},
        {"other": "no text key on this line"},
        {"text": ""},
        {"text": "Fair is foul, and foul is fair"},
    ]
    data = tmp_path / "data"
    write_rows(data / "x.jsonl", rows)
    r, out = score(tmp_path, data, tiny_prior)
    assert r.returncode == 0, r.stderr
    t = pq.read_table(out / "x.parquet").to_pydict()
    assert t["status"] == ["not_string"] * 4 + ["null_text", "null_text", "empty", "ok"]
    assert t["id"] == [f"x.jsonl:{i}" for i in range(8)]  # rows are positional: none lost
    assert t["n_tokens"][:7] == [0] * 7 and t["n_tokens"][7] > 0


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.lists(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3)
            ),
            max_leaves=8,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_any_json_value_as_text_is_a_kept_row(tmp_path_factory, values):
    root = tmp_path_factory.mktemp("types")
    lines = [json.dumps({"text": v}) for v in values]
    (root / "x.jsonl").write_text("\n".join(lines) + "\n")
    try:
        [docs] = read_all(root)
    except InputError as e:  # only lone surrogates in generated text are refused
        assert "lone surrogate" in e.message
        return
    assert len(docs) == len(values)
    for v, status, text in zip(values, docs.statuses, docs.texts, strict=True):
        if v is None:
            assert status == "null_text"
        elif not isinstance(v, str):
            assert status == "not_string" and text == ""
        else:
            assert text == v and status == ("ok" if v else "empty")


def test_lone_surrogate_is_a_cli_error_naming_the_line(tmp_path, tiny_prior):
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.jsonl").write_text('{"text": "ok"}\n{"text": "bad \\ud800"}\n')
    r, _ = score(tmp_path, data, tiny_prior)
    assert_clear_error(r, "x.jsonl:2: the text holds a lone surrogate")


def test_deeply_nested_json_is_a_cli_error(tmp_path, tiny_prior):
    data = tmp_path / "data"
    data.mkdir()
    deep = "[" * 200_000 + "]" * 200_000
    (data / "x.jsonl").write_text('{"text": "a"}\n{"text": "b", "meta": ' + deep + "}\n")
    r, _ = score(tmp_path, data, tiny_prior)
    assert_clear_error(r, "x.jsonl:2: JSON nested too deeply")


# ---------------------------------------------------------------- text content


def test_nul_characters_round_trip_byte_exact_through_score(tmp_path, tiny_prior):
    texts = ["a\x00b", "\x00", "line\x00\x00 two\n\x00", "déjà\x00vu 東京\x00"]
    data = tmp_path / "data"
    write_rows(data / "a.jsonl", [{"text": t} for t in texts])
    write_rows(data / "b.parquet", [{"text": t} for t in texts])
    r, out = score(tmp_path, data, tiny_prior)
    assert r.returncode == 0, r.stderr
    tok = load_tokenizer(str(tiny_prior))
    for name in ("a.parquet", "b.parquet"):
        t = pq.read_table(out / name).to_pydict()
        assert t["status"] == ["ok"] * len(texts)
        for text, ids, offs in zip(texts, t["token_ids"], t["offsets"], strict=True):
            assert tok.decode(ids) == text  # every byte, NULs included, is in the tokens
            assert offs[0] == 0 and offs == sorted(offs) and offs[-1] < len(text)
            assert len(ids) == len(tok(text, add_special_tokens=False)["input_ids"])


def test_million_character_document_is_scored_whole(tmp_path, tiny_prior, plays):
    whole = "\n\n".join(plays.values())
    text = (whole * (1_000_000 // len(whole) + 1))[:1_000_000]
    data = tmp_path / "data"
    write_rows(data / "big.parquet", [{"text": text}, {"text": "short"}])
    r, out = score(tmp_path, data, tiny_prior, "--max-length", "512", "--overlap", "64",
                   "--batch-tokens", "16384", "--bos", "always")  # fmt: skip
    assert r.returncode == 0, r.stderr
    t = pq.read_table(out / "big.parquet")
    tok = load_tokenizer(str(tiny_prior))
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    assert t.column("n_tokens").to_pylist()[0] == n
    row = t.slice(0, 1).to_pydict()
    assert len(row["token_ids"][0]) == len(row["logprob"][0]) == len(row["offsets"][0]) == n
    assert None not in row["logprob"][0]  # with BOS every token has a log-prob: no gap
    assert row["offsets"][0][-1] < len(text) and row["offsets"][0][-1] > len(text) - 50


# ---------------------------------------------------------------- ids, schemas, directories


def test_duplicate_ids_are_kept_positionally(tmp_path, tiny_prior):
    data = tmp_path / "data"
    write_rows(
        data / "x.jsonl", [{"id": "same", "text": "To be"}, {"id": "same", "text": "or not"}]
    )
    r, out = score(tmp_path, data, tiny_prior, "--id-column", "id")
    assert r.returncode == 0, r.stderr
    t = pq.read_table(out / "x.parquet").to_pydict()
    assert t["id"] == ["same", "same"] and all(n > 0 for n in t["n_tokens"])


def test_mixed_schemas_across_shards(tmp_path, tiny_prior):
    data = tmp_path / "data"
    write_rows(data / "a.parquet", [{"id": "a0", "text": "To be"}, {"id": "a1", "text": None}])
    write_rows(
        data / "b.jsonl", [{"text": "or not", "extra": {"k": [1, 2]}}, {"text": "to be", "n": 1}]
    )
    pq.write_table(pa.table({"text": pa.array([1, 2], pa.int64())}), data / "c.parquet")
    pq.write_table(
        pa.table({"text": pa.array(["that is"], pa.large_string()), "w": [1.5]}), data / "d.parquet"
    )
    pq.write_table(
        pa.table({"text": pa.array(["the", "question"]).dictionary_encode()}), data / "e.parquet"
    )
    r, out = score(tmp_path, data, tiny_prior)
    assert r.returncode == 0, r.stderr
    tables = {p.name: pq.read_table(p) for p in sorted(out.glob("*.parquet"))}
    assert len(tables) == 5 and len({t.schema for t in tables.values()}) == 1
    assert tables["a.parquet"].column("status").to_pylist() == ["ok", "null_text"]
    assert tables["b.parquet"].column("id").to_pylist() == ["b.jsonl:0", "b.jsonl:1"]
    assert tables["c.parquet"].column("status").to_pylist() == ["not_string"] * 2
    assert tables["d.parquet"].column("status").to_pylist() == ["ok"]
    assert tables["e.parquet"].column("status").to_pylist() == ["ok", "ok"]


def test_id_column_missing_in_one_shard_is_an_error_naming_it(tmp_path, tiny_prior):
    data = tmp_path / "data"
    write_rows(data / "a.jsonl", [{"id": "a", "text": "x"}])
    write_rows(data / "b.jsonl", [{"text": "y"}])
    r, _ = score(tmp_path, data, tiny_prior, "--id-column", "id")
    assert_clear_error(r, "b.jsonl: no id column 'id'")


def test_symlink_loops_are_walked_once(tmp_path, tiny_prior):
    data = tmp_path / "data"
    write_rows(data / "a.jsonl", [{"text": "To be"}])
    write_rows(data / "sub" / "b.jsonl", [{"text": "or not"}])
    (data / "loop").symlink_to(data)
    (data / "sub" / "up").symlink_to("..")
    (data / "sub" / "self").symlink_to(".")
    assert [s.rel for s in discover_shards(data)] == ["a.jsonl", "sub/b.jsonl"]
    r, out = score(tmp_path, data, tiny_prior)
    assert r.returncode == 0, r.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet")) == [
        "a.parquet",
        "sub/b.parquet",
    ]


def test_broken_symlink_is_an_error_naming_it(tmp_path, tiny_prior):
    data = tmp_path / "data"
    write_rows(data / "a.jsonl", [{"text": "To be"}])
    (data / "gone.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    r, _ = score(tmp_path, data, tiny_prior)
    assert_clear_error(r, "gone.jsonl: broken symlink")
