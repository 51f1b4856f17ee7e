"""The demo corpus: real Shakespeare, split into scenes, written as a sharded dataset."""

from __future__ import annotations

from tokedit.demo import write_demo_corpus
from tokedit.io.read import iter_documents
from tokedit.io.shards import discover_shards
from tokedit.io.texts import split_documents


def test_split_at_scene_headings_and_long_pieces():
    text = "Title\n\nACT I.\n\nScene I. A room.\n\nHello.\n\nScene II. Hall.\n\n" + "word " * 100
    docs = split_documents(text, max_chars=200)
    assert "".join(docs) == text  # nothing lost
    assert (
        docs[0] == "Title\n\n" and docs[1].startswith("ACT I.") and docs[2].startswith("Scene I.")
    )
    assert all(len(d) <= 200 for d in docs)


def test_demo_corpus_shards_hold_every_play_once(tmp_path, plays):
    info = write_demo_corpus(tmp_path, plays=plays, n_shards=4)
    shards = discover_shards(tmp_path)
    assert [s.fmt for s in shards] == ["parquet", "jsonl.gz", "parquet", "jsonl.gz"]
    ids, texts = [], {}
    for shard in shards:
        for docs in iter_documents(shard, id_column="id"):
            ids.extend(docs.ids)
            for i, t in zip(docs.ids, docs.texts, strict=True):
                texts.setdefault(i.split("/")[0], []).append(t)
    assert len(ids) == len(set(ids)) == info["documents"]
    assert {name: "".join(parts) for name, parts in texts.items()} == {
        n: t for n, t in plays.items() if t.strip()
    }
    assert "To be, or not to be" in "".join(texts["hamlet"])
