"""The documented flow for a newcomer (issue 16): each trap, reproduced with the command a new
user typed, and the behaviour that replaces it.

The corpus is the newcomer's: one parquet and one ``jsonl.gz`` shard with non-default column
names ``doc_id`` and ``content``; the prior is the tiny test prior.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scale_helpers import invoke, output_files, write_rows

from tokedit.demo import split_documents
from tokedit.io.manifest import read_manifest

N_DOCS = 12  # per shard: small enough for seconds, large enough for a few edits


@pytest.fixture(scope="module")
def newcomer_corpus(tmp_path_factory, plays) -> Path:
    """``part-0.parquet`` and ``part-1.jsonl.gz`` with columns ``doc_id`` and ``content``."""
    docs = [d for text in plays.values() for d in split_documents(text, max_chars=1500)]
    out = tmp_path_factory.mktemp("newcomer") / "data"
    for k, name in enumerate(("part-0.parquet", "part-1.jsonl.gz")):
        rows = [{"doc_id": f"d{k}-{i}", "content": docs[k * N_DOCS + i]} for i in range(N_DOCS)]
        write_rows(out / name, rows)
    return out


def score_cmd(data: Path, out: Path, prior: Path, *extra) -> list[str]:
    return [
        "score",
        str(data),
        "--model",
        str(prior),
        "--out",
        str(out),
        "--max-length",
        "128",
        "--overlap",
        "32",
        "-q",
        *map(str, extra),
    ]


COLUMNS = ("--text-column", "content", "--id-column", "doc_id")


def test_failed_score_run_does_not_block_the_corrected_command(
    tmp_path, newcomer_corpus, tiny_prior
):
    """Trap 2: the run that failed on the missing ``text`` column (and then the one with a
    wrong ``--id-column``) wrote no shard; the corrected command must run, not be refused as
    "written with other options". Catches: options compared although no shard is complete."""
    out = tmp_path / "scores"
    missing = invoke(*score_cmd(newcomer_corpus, out, tiny_prior))
    assert missing.returncode != 0 and "text" in missing.stderr
    assert "Traceback" not in missing.stderr
    wrong_id = invoke(
        *score_cmd(
            newcomer_corpus, out, tiny_prior, "--text-column", "content", "--id-column", "id"
        )
    )
    assert wrong_id.returncode != 0 and "other options" not in wrong_id.stderr
    assert "no id column 'id'" in wrong_id.stderr
    fixed = invoke(*score_cmd(newcomer_corpus, out, tiny_prior, *COLUMNS))
    assert fixed.returncode == 0, fixed.stderr
    manifest = read_manifest(out)
    assert manifest["options"]["text_column"] == "content"
    assert manifest["options"]["id_column"] == "doc_id"
    assert sorted(manifest["shards"]) == ["part-0.parquet", "part-1.jsonl.gz"]
    assert sorted(output_files(out)) == ["part-0.parquet", "part-1.parquet"]
    # Once a shard is complete the options bind: other options are refused as before.
    other = invoke(*score_cmd(newcomer_corpus, out, tiny_prior, *COLUMNS, "--top-k", "4"))
    assert other.returncode != 0 and "other options (top_k: 8 -> 4)" in other.stderr
