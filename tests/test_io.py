"""Shard discovery, streaming reads, atomic writes and manifests on real files."""

from __future__ import annotations

import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokedit.engines.runner import run_shards
from tokedit.errors import InputError, OutputError
from tokedit.io.manifest import Manifest, read_manifest
from tokedit.io.read import iter_batches, iter_documents
from tokedit.io.shards import discover_shards
from tokedit.io.write import JsonlShardWriter, atomic_path, remove_stale_temp_files


def write_jsonl(path, rows, compress=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    if compress == "gz":
        data = gzip.compress(data)
    elif compress == "zst":
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)


@pytest.fixture
def mixed_dir(tmp_path):
    rows = [{"text": f"doc {i}", "n": i} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    write_jsonl(tmp_path / "sub" / "b.jsonl", rows)
    write_jsonl(tmp_path / "sub" / "c.jsonl.gz", rows, "gz")
    write_jsonl(tmp_path / "d.jsonl.zst", rows, "zst")
    return tmp_path


def test_discovers_every_format_in_sorted_order(mixed_dir):
    shards = discover_shards(mixed_dir)
    assert [(s.rel, s.fmt) for s in shards] == [
        ("a.parquet", "parquet"),
        ("d.jsonl.zst", "jsonl.zst"),
        ("sub/b.jsonl", "jsonl"),
        ("sub/c.jsonl.gz", "jsonl.gz"),
    ]
    assert shards[3].with_suffix(".parquet") == "sub/c.parquet"


def test_every_format_reads_the_same_rows(mixed_dir):
    for shard in discover_shards(mixed_dir):
        docs = [d for d in iter_documents(shard, batch_rows=2)]
        assert [len(d) for d in docs] == [2, 2, 1]
        assert [t for d in docs for t in d.texts] == [f"doc {i}" for i in range(5)]
        assert [i for d in docs for i in d.ids] == [f"{shard.rel}:{i}" for i in range(5)]


def test_shard_slices_partition_the_shards(mixed_dir):
    slices = [discover_shards(mixed_dir, num_shards=3, shard_index=i) for i in range(3)]
    assert sorted(s.rel for sl in slices for s in sl) == [s.rel for s in discover_shards(mixed_dir)]
    with pytest.raises(InputError, match=r"^shard_index=2 is not in \[0, num_shards=2\)"):
        discover_shards(mixed_dir, num_shards=2, shard_index=2)


def test_save_to_disk_folder_is_read(tmp_path):
    import datasets

    datasets.Dataset.from_dict(
        {"text": [f"t{i}" for i in range(7)], "id": [f"x{i}" for i in range(7)]}
    ).save_to_disk(str(tmp_path / "hf"), num_shards=2)
    shards = discover_shards(tmp_path)
    assert [s.fmt for s in shards] == ["arrow", "arrow"]
    texts = [
        t for s in shards for d in iter_documents(s, id_column="id", batch_rows=3) for t in d.texts
    ]
    assert texts == [f"t{i}" for i in range(7)]


def test_unknown_file_type_is_named(mixed_dir):
    (mixed_dir / "notes.csv").write_text("a,b\n")
    with pytest.raises(InputError, match=r"notes\.csv") as e:
        discover_shards(mixed_dir)
    assert "move other files" in str(e.value)


def test_missing_and_empty_directories(tmp_path):
    with pytest.raises(InputError, match="no such dataset directory"):
        discover_shards(tmp_path / "nope")
    with pytest.raises(InputError, match="no shards found"):
        discover_shards(tmp_path)


def test_symlink_loop_is_walked_once(mixed_dir):
    os.symlink(mixed_dir, mixed_dir / "sub" / "loop")
    assert len(discover_shards(mixed_dir)) == 4


def test_malformed_json_line_names_file_and_line(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"text": "ok"}\n{"text": broken}\n')
    with pytest.raises(InputError, match=r"x\.jsonl:2: malformed JSON"):
        list(iter_batches(discover_shards(tmp_path)[0]))


def test_invalid_utf8_names_line(tmp_path):
    (tmp_path / "x.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"x\.jsonl:2: invalid UTF-8") as e:
        list(iter_batches(discover_shards(tmp_path)[0]))
    assert "iconv" in str(e.value)


def test_zero_byte_and_truncated_files(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b"")
    with pytest.raises(InputError, match=r"a\.jsonl: file is empty"):
        list(iter_batches(discover_shards(tmp_path)[0]))
    (tmp_path / "a.jsonl").unlink()
    data = gzip.compress(b"".join(b'{"text": "line %d"}\n' % i for i in range(2000)))
    (tmp_path / "b.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt or truncated"):
        list(iter_batches(discover_shards(tmp_path)[0]))


def test_missing_text_column_lists_columns(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [{"body": "hi"}])
    with pytest.raises(InputError, match=r"no column 'text' \(columns: body\)"):
        list(iter_documents(discover_shards(tmp_path)[0]))


def test_unprocessable_rows_are_kept_with_a_status(tmp_path):
    write_jsonl(
        tmp_path / "x.jsonl",
        [{"text": "a"}, {"text": ""}, {"text": None}, {"text": 3}, {"other": 1}],
    )
    (docs,) = iter_documents(discover_shards(tmp_path)[0])
    assert docs.statuses == ["ok", "empty", "null_text", "not_string", "null_text"]
    assert len(docs) == 5


def test_ids_from_column_with_fallback(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [{"text": "a", "id": 7}, {"text": "b", "id": None}])
    (docs,) = iter_documents(discover_shards(tmp_path)[0], id_column="id")
    assert docs.ids == ["7", "x.jsonl:1"]


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_jsonl_gz_writer_is_deterministic(tmp_path):
    for name in ("a", "b"):
        w = JsonlShardWriter(tmp_path / f"{name}.jsonl.gz", "jsonl.gz")
        w.write_records([{"text": "héllo ✓"}])
        w.close()
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
    assert (
        gzip.decompress((tmp_path / "a.jsonl.gz").read_bytes()).decode() == '{"text": "héllo ✓"}\n'
    )


def test_manifest_resume_refuse_and_overwrite(tmp_path, mixed_dir):
    shards = discover_shards(mixed_dir)
    calls = []

    def process(shard):
        calls.append(shard.rel)
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "out" / shard.with_suffix(".txt").replace("/", "_")).write_text(shard.rel)
        return {"outputs": [shard.with_suffix(".txt").replace("/", "_")], "rows": 5}

    m = Manifest(tmp_path / "out", "score", {"k": 1})
    assert run_shards(shards[:2], m, process) == {"processed": 2, "skipped": 0}
    m = Manifest(tmp_path / "out", "score", {"k": 1})
    assert run_shards(shards, m, process) == {"processed": 2, "skipped": 2}
    assert calls == [s.rel for s in shards]
    assert sorted(read_manifest(tmp_path / "out")["shards"]) == [s.rel for s in shards]
    with pytest.raises(OutputError, match=r"other options \(k: 1 -> 2\)"):
        Manifest(tmp_path / "out", "score", {"k": 2})
    m = Manifest(tmp_path / "out", "score", {"k": 2}, overwrite=True)
    assert m.shards == {} and not any((tmp_path / "out").glob("*.txt"))


def test_missing_output_file_makes_shard_incomplete(tmp_path, mixed_dir):
    out = tmp_path / "out"  # not the input's directory: tokedit refuses to mix with it
    m = Manifest(out, "score", {})
    m.mark_complete("a.parquet", {"outputs": ["a.out"]})
    assert not m.is_complete("a.parquet")
    (out / "a.out").write_text("x")
    assert m.is_complete("a.parquet")


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / ".a.parquet.999999999.tmp"
    live = tmp_path / f".b.parquet.{os.getpid()}.tmp"
    dead.write_text("x")
    live.write_text("x")
    assert remove_stale_temp_files(tmp_path) == 1
    assert not dead.exists() and live.exists()
