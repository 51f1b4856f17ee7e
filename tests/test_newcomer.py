"""The documented flow for a newcomer (issue 16): each trap, reproduced with the command a new
user typed, and the behaviour that replaces it.

The corpus is the newcomer's: one parquet and one ``jsonl.gz`` shard with non-default column
names ``doc_id`` and ``content``; the prior is the tiny test prior.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scale_helpers import invoke, output_files, run_cli, score_args, write_rows

from tokedit.io.manifest import read_manifest
from tokedit.io.scores_dir import text_fingerprint
from tokedit.io.texts import split_documents

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
    return score_args(data, out, prior, *extra, id_column=None)


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


@pytest.fixture(scope="module")
def newcomer_scores(tmp_path_factory, newcomer_corpus, tiny_prior) -> Path:
    """``tokedit score`` of the newcomer corpus, with its column names (default options)."""
    out = tmp_path_factory.mktemp("newcomer-scores") / "scores"
    r = invoke(*score_cmd(newcomer_corpus, out, tiny_prior, *COLUMNS))
    assert r.returncode == 0, r.stderr
    return out


def prefixed_copy(data: Path, dest: Path, prefix: str) -> Path:
    """The corpus with every parquet text prefixed by ``prefix``, ids kept (the stale case)."""
    shutil.copytree(data, dest)
    table = pq.read_table(dest / "part-0.parquet")
    texts = [prefix + t for t in table.column("content").to_pylist()]
    table = table.set_column(1, "content", pa.array(texts, pa.string()))
    pq.write_table(table, dest / "part-0.parquet")
    return dest


def test_stale_scores_are_refused_naming_file_and_row(tmp_path, newcomer_corpus, newcomer_scores):
    """Trap 3: every parquet text prefixed by 14 characters, ids kept. Before, ``edit`` exited
    0 with spans skipped; now it refuses, naming the first stale row and the remedy. Catches:
    a check of ids and lengths only (the prefixed texts are longer, the ids equal)."""
    fingerprints = pq.read_table(newcomer_scores / "part-0.parquet").column("text_fingerprint")
    first = pq.read_table(newcomer_corpus / "part-0.parquet").column("content")[0].as_py()
    assert fingerprints[0].as_py() == text_fingerprint(first)
    assert fingerprints[0].as_py().startswith(f"{len(first)}:")
    modified = prefixed_copy(newcomer_corpus, tmp_path / "data-mod", "[edited 2024] ")
    r = invoke(
        "edit", modified, "--scores", newcomer_scores, "--out", tmp_path / "ed", *COLUMNS, "-q"
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"{modified / 'part-0.parquet'} row 0: the text differs" in r.stderr
    assert f"({len(first) + 14} characters now, {len(first)} when scored)" in r.stderr
    assert "rerun `tokedit score`" in r.stderr
    assert not output_files(tmp_path / "ed")


def test_scores_without_fingerprints_still_edit(tmp_path, newcomer_corpus, newcomer_scores):
    """Scores written before the fingerprint column (the column dropped) edit as before,
    with the byte-identical output of the same scores with fingerprints. Catches: the column
    made mandatory."""
    old = tmp_path / "old-scores"
    shutil.copytree(newcomer_scores, old)
    for shard in old.glob("*.parquet"):
        table = pq.read_table(shard)
        pq.write_table(table.drop_columns(["text_fingerprint"]), shard)
    common = ["--p", "0.3", *COLUMNS, "-q"]
    new_run = invoke(
        "edit", newcomer_corpus, "--scores", newcomer_scores, "--out", tmp_path / "a", *common
    )
    old_run = invoke("edit", newcomer_corpus, "--scores", old, "--out", tmp_path / "b", *common)
    assert new_run.returncode == 0 and old_run.returncode == 0, old_run.stderr
    assert output_files(tmp_path / "a") == output_files(tmp_path / "b")


def test_one_scoring_pass_edits_at_the_threshold_report_suggests(
    tmp_path, newcomer_corpus, newcomer_scores
):
    """Trap 1: ``report --target-edit-rate 0.1,0.05`` prints each suggested p on the terminal
    with the command to run; with the default scores (candidates at every position) that is
    an edit, which changes tokens at that p on the first scoring pass. Catches: the suggestion
    only in report.json/html, the old default --candidates-min-p 0.9 (edit refused at p < 0.9)."""
    manifest = read_manifest(newcomer_scores)
    assert manifest["options"]["candidates_min_p"] == 0.0
    r = invoke(
        "report", newcomer_scores, "--out", tmp_path / "rep", "--target-edit-rate", "0.1,0.05",
        "-q", "--examples", "0",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    heads = [i for i, line in enumerate(lines) if "these scores can edit at it" in line]
    assert len(heads) == 2 and "(target edit rate 10%)" in lines[heads[0]]
    command = lines[heads[0] + 1].split()
    assert command[:2] == ["tokedit", "edit"] and command[-4:] == list(COLUMNS)
    p = float(command[command.index("--p") + 1])
    assert 0 < p < 0.9
    command[command.index("EDITED")] = str(tmp_path / "ed")
    edited = invoke(*command[1:], "-q")
    assert edited.returncode == 0, edited.stderr
    totals = read_manifest(tmp_path / "ed")["totals"]["p"][f"{p!r}"]
    assert totals["above"] / totals["scored"] == pytest.approx(0.1, abs=0.03)
    assert totals["changed"] > 0


def test_report_on_min_p_scores_says_they_cannot_edit_and_what_to_run(
    tmp_path, newcomer_corpus, tiny_prior
):
    """Scores made with --candidates-min-p 0.9 (the old default): the report says they
    cannot edit at the suggested p and prints the rescoring command; run literally, it edits.
    Catches: a suggestion below candidates_min_p printed without a word (the newcomer's rerun),
    a rescoring command that forgets the columns."""
    old = tmp_path / "scores"
    r = invoke(*score_cmd(newcomer_corpus, old, tiny_prior, *COLUMNS, "--candidates-min-p", "0.9"))
    assert r.returncode == 0, r.stderr
    rep = invoke("report", old, "--out", tmp_path / "rep", "-q", "--examples", "0")
    lines = rep.stdout.splitlines()
    i = next(i for i, line in enumerate(lines) if "CANNOT edit" in line)
    assert "P >= 0.9" in lines[i]
    score, edit = (shlex.split(c) for c in lines[i + 1].strip().split(" && "))
    assert score[:2] == ["tokedit", "score"] and "--candidates-min-p" in score
    assert invoke(*score[1:], "-q").returncode == 0
    edit[edit.index("EDITED")] = str(tmp_path / "ed")
    edited = invoke(*edit[1:], "-q")
    assert edited.returncode == 0, edited.stderr
    p = float(edit[edit.index("--p") + 1])
    assert read_manifest(tmp_path / "ed")["totals"]["p"][f"{p!r}"]["changed"] > 0


def test_quiet_prints_no_progress_bar(tmp_path, newcomer_corpus, tiny_prior):
    """Trap 5: ``score -q`` in a fresh process prints no bar, transformers' "Loading weights"
    included. Catches: -q passed to tokedit's own bar only."""
    r = run_cli(*score_cmd(newcomer_corpus, tmp_path / "s", tiny_prior, *COLUMNS))
    assert r.returncode == 0, r.stderr
    assert "Loading weights" not in r.stderr and "it/s" not in r.stderr, r.stderr


def test_out_into_a_directory_of_other_files_is_refused(tmp_path, newcomer_corpus, newcomer_scores):
    """Trap 5: ``--out`` pointing at a directory of the user's own files. Before, the output
    was mixed into it; now nothing is written and the message names what is there. Catches:
    no check, or a check that also refuses a directory tokedit wrote (the resume below)."""
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("my file\n")
    r = invoke("edit", newcomer_corpus, "--scores", newcomer_scores, "--out", mine, "-q")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "is not empty (todo.txt)" in r.stderr and "new or empty directory as --out" in r.stderr
    assert sorted(p.name for p in mine.iterdir() if not p.name.startswith(".")) == ["todo.txt"]
    assert read_manifest(mine) is None
    fresh = tmp_path / "fresh"
    assert (
        invoke(
            "edit", newcomer_corpus, "--scores", newcomer_scores, "--out", fresh, "-q"
        ).returncode
        == 0
    )
    again = invoke("edit", newcomer_corpus, "--scores", newcomer_scores, "--out", fresh, "-q")
    assert again.returncode == 0 and "2 shard(s) already done" in again.stdout


def test_overwrite_removes_what_the_earlier_run_wrote(tmp_path, newcomer_corpus, newcomer_scores):
    """Trap 5: ``--overwrite`` with other ``--p`` values left the old ``p=`` directories
    behind. Catches: removing the files but not the directories they leave empty."""
    out = tmp_path / "e"
    sweep = invoke(
        "edit", newcomer_corpus, "--scores", newcomer_scores, "--out", out, "--p", "0.5,0.9", "-q"
    )
    assert sweep.returncode == 0, sweep.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) == [
        "p=0.5",
        "p=0.9",
    ]
    r = invoke(
        "edit",
        newcomer_corpus,
        "--scores",
        newcomer_scores,
        "--out",
        out,
        "--p",
        "0.7",
        "--overwrite",
        "-q",
    )
    assert r.returncode == 0, r.stderr
    assert sorted(output_files(out)) == ["part-0.parquet", "part-1.jsonl.gz"]
    assert not [p for p in out.iterdir() if p.name.startswith("p=")]


NO_TORCH_PROBE = """
import sys
from tokedit.cli import main
try:
    main({args!r}, standalone_mode=False)
finally:
    print("TORCH_IMPORTED" if "torch" in sys.modules else "NO_TORCH")
"""


def run_probe(*args) -> subprocess.CompletedProcess:
    """The CLI in a fresh process that says at exit whether torch was imported."""
    code = NO_TORCH_PROBE.format(args=[str(a) for a in args])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_resumed_edit_from_scores_loads_no_tokenizer_and_no_torch(
    tmp_path, newcomer_corpus, newcomer_scores
):
    """Trap 5: a no-op resume of ``edit --scores`` took ~8 s, loading transformers and the
    tokenizer for nothing. Now nothing is imported that a finished run does not need.
    Catches: the tokenizer (and with it torch) loaded before knowing whether a shard is left."""
    args = ["edit", newcomer_corpus, "--scores", newcomer_scores, "--out", tmp_path / "ed", "-q"]
    first = run_probe(*args)
    assert first.returncode == 0, first.stderr
    assert "TORCH_IMPORTED" in first.stdout  # editing a shard renders with the tokenizer
    again = run_probe(*args)
    assert again.returncode == 0, again.stderr
    assert "2 shard(s) already done" in again.stdout and "NO_TORCH" in again.stdout


def test_a_changed_prior_tokenizer_is_refused_when_a_shard_is_edited(
    tmp_path, newcomer_corpus, tiny_prior
):
    """The tokenizer check moved from start-up to the first shard; it must still refuse a
    prior whose tokenizer changed on disk since scoring (no --tokenizer given), and write
    nothing. Catches: the scores' recorded hash trusted without loading the tokenizer."""
    from tokedit.training.prior import train_tokenizer

    prior = tmp_path / "prior"
    shutil.copytree(tiny_prior, prior)
    scores = tmp_path / "scores"
    assert invoke(*score_cmd(newcomer_corpus, scores, prior, *COLUMNS)).returncode == 0
    train_tokenizer("a changed tokenizer " * 50, vocab_size=300).save_pretrained(prior)
    r = invoke("edit", newcomer_corpus, "--scores", scores, "--out", tmp_path / "ed", "-q")
    assert r.returncode == 2 and "is not the one" in r.stderr and "rescore" in r.stderr
    assert not output_files(tmp_path / "ed")


def test_report_reads_the_text_column_from_an_edited_manifest(
    tmp_path, newcomer_corpus, newcomer_scores
):
    """Trap 5: ``report`` on an edited directory of a ``content`` corpus asked for
    ``--text-column``. Now the manifest's column is used. Catches: the ``text`` default
    applied to tokedit's own outputs."""
    ed = tmp_path / "ed"
    assert (
        invoke("edit", newcomer_corpus, "--scores", newcomer_scores, "--out", ed, "-q").returncode
        == 0
    )
    r = invoke("report", ed, "--out", tmp_path / "rep", "--units", "words", "--examples", "0", "-q")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    (corpus,) = report["corpora"]
    assert corpus["documents"]["used"] == 2 * N_DOCS and corpus["text_column"] == "content"
    human = invoke("report", newcomer_corpus, "--out", tmp_path / "rep2", "-q")
    assert human.returncode == 2 and "--text-column" in human.stderr
    # word n-grams of a text corpus need no tokenizer: nothing loads one (nor imports torch)
    words = run_probe(
        "report", newcomer_corpus, "--out", tmp_path / "rep3", "--text-column", "content",
        "--units", "words", "-q",
    )  # fmt: skip
    assert words.returncode == 0 and "NO_TORCH" in words.stdout, words.stderr
