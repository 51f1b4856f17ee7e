"""Properties of whole runs, drawn by Hypothesis.

- However a corpus is cut into shards (how many, where, which formats and folders, empty
  shards included), written in whichever output format and run by however many processes
  (``num_shards`` / ``shard_index``), every shard's rows come back with their ids, in their
  order, with their counts, and each document's scores and edits are those of the
  one-shard run: the edit's random numbers follow the document id, not its place.
- The edited files and manifest entries do not depend on the rows per batch, the tokens
  per forward batch (in one pass) or the engine, byte for byte (edited parquet and Arrow
  shards hold row groups of a fixed number of rows, ``ROW_GROUP_ROWS``).
- The scores do not depend on the batching in anything but the float rounding of their
  log-probs (a forward pass over other rows rounds otherwise: their bytes do follow it).

Every byte outside an edit, and nothing changed with nothing above ``p``, are properties of
the edit core: ``tests/test_edit_core.py``.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scale_helpers import init_local_ray, manifest_shards, output_files, write_rows

import tokedit
from tokedit.io.manifest import read_manifest

WINDOW = {"max_length": 64, "overlap": 16}  # short windows: the long documents span several
PS = (0.3, 0.6)  # the tiny prior is rarely more confident: every run changes some tokens
EDIT = {"p": PS, "drop_below": 0.002}  # and deletes some
SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string())])
INPUT_FORMATS = ("parquet", "jsonl", "jsonl.gz", "jsonl.zst", "arrow")  # arrow: save_to_disk
OUTPUT_FORMATS = ("mirror", "parquet", "jsonl.gz")
SIDECARS = ("state.json", "dataset_info.json")  # of a save_to_disk folder: not data
# Where the scores may differ with the batching: float rounding. 1e-5 nats is the bound the
# other engine tests use; the rounding measured here stays below 2e-6 (ROUNDING: twice that).
LOGPROB_TOL = 1e-5
ROUNDING = 4e-6

PROPERTY = settings(
    deadline=None,
    derandomize=True,  # the same examples on every run and machine
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Quiet(list):
    """A list that Hypothesis's report of a failing example shows by its length only."""

    def __repr__(self) -> str:
        return f"<{len(self)} items>"


class QuietDict(dict):
    def __repr__(self) -> str:
        return f"<{len(self)} keys>"


@pytest.fixture(scope="module")
def docs(plays) -> list[dict]:
    """40 documents with ids: short ones, some of several windows, multi-byte text, CRLF, an
    empty one and a null one (kept with their status)."""
    lines = [ln.strip() for ln in plays["hamlet"].splitlines() if len(ln.strip()) > 20]
    lengths = [1, 2, 3, 1, 14, 2, 5, 1, 9]
    texts, at = [], 0
    for i in range(36):
        n = lengths[i % len(lengths)]
        texts.append(" ".join(lines[at : at + n]))
        at += n
    texts[5:5] = ["", None, "naïve café, 東京 — 😀 and so to bed.", "To be,\r\nor not to be."]
    return Quiet({"id": f"doc-{i:02d}", "text": t} for i, t in enumerate(texts))


@pytest.fixture(scope="module")
def engine_ready():
    """``ready(engine)``: "ray" starts one local Ray instance for the module the first time
    it is drawn (each run then starts only its actors; Ray is shut down at the end)."""
    started = []

    def ready(engine: str) -> str:
        if engine == "ray" and not started:
            started.append(init_local_ray())
        return engine

    yield ready
    if started:
        started[0].shutdown()


# ---------------------------------------------------------------- writing and reading shards


@dataclass(frozen=True)
class ShardSpec:
    name: str  # relative path without suffix (a folder for arrow)
    fmt: str  # one of INPUT_FORMATS
    start: int  # the documents [start, end) of the corpus
    end: int
    files: int = 1  # arrow: the save_to_disk folder's number of files


@dataclass(frozen=True)
class Layout:
    shards: tuple[ShardSpec, ...]
    processes: int = 1  # num_shards: each slice run by a call of its own
    order: tuple[int, ...] = (0,)  # the order the slices run in
    output_format: str = "mirror"


def write_layout(root, docs: list[dict], layout: Layout) -> None:
    for s in layout.shards:
        rows = docs[s.start : s.end]
        path = root / (s.name if s.fmt == "arrow" else f"{s.name}.{s.fmt}")
        path.parent.mkdir(parents=True, exist_ok=True)
        if s.fmt == "arrow":
            import datasets

            datasets.disable_progress_bars()
            features = datasets.Features.from_arrow_schema(SCHEMA)
            columns = {name: [r[name] for r in rows] for name in SCHEMA.names}
            ds = datasets.Dataset.from_dict(columns, features=features)
            ds.save_to_disk(str(path), num_shards=s.files)
        elif s.fmt == "parquet":
            pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
        else:
            write_rows(path, rows)


def read_rows(path) -> list[dict]:
    """The rows of one shard, read here without tokedit."""
    if path.name.endswith(".parquet"):
        return pq.read_table(path).to_pylist()
    if path.name.endswith(".arrow"):
        with pa.ipc.open_stream(path) as reader:
            return reader.read_all().to_pylist()
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    elif path.name.endswith(".zst"):
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return [json.loads(line) for line in data.split(b"\n") if line.strip()]


def shard_rows(root) -> dict[str, list[dict]]:
    """{relative path: rows} of every data file under ``root``, in shard order (sorted path)."""
    files = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.name not in SIDECARS
    )
    return {rel: read_rows(root / rel) for rel in files}


def stem(rel: str) -> str:
    for suffix in (".jsonl.gz", ".jsonl.zst", ".jsonl", ".parquet", ".arrow"):
        if rel.endswith(suffix):
            return rel[: -len(suffix)]
    raise AssertionError(rel)


def edited_rel(rel: str, output_format: str) -> str:
    if output_format == "mirror":
        return rel
    return f"{stem(rel)}.{output_format}"


def canonical(row: dict) -> str:
    """A row as text: equal texts for equal rows (NaN included), floats to the last bit."""
    return json.dumps(row, sort_keys=True, ensure_ascii=False)


def ids(rows: list[dict]) -> list[str]:
    return [r["id"] for r in rows]


# ---------------------------------------------------------------- runs


def run_layout(root, docs, layout: Layout, prior) -> tuple[dict, dict, dict]:
    """Write ``layout``, score it and edit it; the rows of the input, scores and edited
    directories. Scoring reads one row at a time, so that a document's forward pass does
    not depend on the documents beside it (see the batching properties below)."""
    data, scores, edited = root / "data", root / "scores", root / "edited"
    write_layout(data, docs, layout)
    for i in layout.order:
        tokedit.score_dataset(
            str(data), str(scores), model=str(prior), id_column="id", device="cpu",
            num_shards=layout.processes, shard_index=i, batch_rows=1, progress=False, **WINDOW,
        )  # fmt: skip
    for i in reversed(layout.order):
        tokedit.edit_dataset(
            str(data), str(edited), scores_dir=str(scores), output_format=layout.output_format,
            num_shards=layout.processes, shard_index=i, progress=False, **EDIT,
        )  # fmt: skip
    return shard_rows(data), shard_rows(scores), shard_rows(edited)


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory, docs, tiny_prior) -> list:
    """The one-shard run: each document's scores row and, per ``p``, its edited row."""
    layout = Layout((ShardSpec("all", "jsonl", 0, len(docs)),))
    _, scores, edited = run_layout(tmp_path_factory.mktemp("one-shard"), docs, layout, tiny_prior)
    by_id = {r["id"]: canonical(r) for r in scores["all.parquet"]}
    edits = {p: {r["id"]: r for r in edited[f"p={p}/all.jsonl"]} for p in PS}
    assert sum(r["tokedit_n_changed"] for r in edits[PS[0]].values()) > 5
    assert sum(r["tokedit_n_deleted"] for r in edits[PS[0]].values()) > 5
    return Quiet(
        [
            QuietDict(by_id),
            {p: {i: canonical(r) for i, r in rows.items()} for p, rows in edits.items()},
        ]
    )


@st.composite
def layouts(draw, n_docs: int) -> Layout:
    """How many shards, where the cuts fall (empty shards included), each shard's format and
    folder, the order of the names (shard order is the sorted path, not the cut order), the
    number of processes and the order they run in, the output format."""
    n = draw(st.integers(1, 5))
    cuts = sorted(draw(st.lists(st.integers(0, n_docs), min_size=n - 1, max_size=n - 1)))
    names = draw(st.permutations(range(n)))
    shards = []
    for k, (a, b) in enumerate(zip([0, *cuts], [*cuts, n_docs], strict=True)):
        fmt = draw(st.sampled_from(INPUT_FORMATS))
        if a == b and fmt == "jsonl":
            fmt = "jsonl.gz"  # a 0-byte .jsonl is refused (an upstream write failed)
        folder = draw(st.sampled_from(["", "a/", "a/b/", "b/"]))
        files = draw(st.integers(1, min(3, b - a))) if fmt == "arrow" and b > a else 1
        shards.append(ShardSpec(f"{folder}s{names[k]}", fmt, a, b, files))
    n_files = sum(s.files for s in shards)
    processes = draw(st.integers(1, min(3, n_files)))
    return Layout(
        tuple(shards),
        processes=processes,
        order=tuple(draw(st.permutations(range(processes)))),
        output_format=draw(st.sampled_from(OUTPUT_FORMATS)),
    )


# ---------------------------------------------------------------- the shard layout


@settings(PROPERTY, max_examples=30)
@given(data=st.data())
def test_rows_ids_scores_and_edits_survive_any_shard_layout(
    tmp_path_factory, docs, tiny_prior, one_shard, data
):
    """Every input shard gives one scores shard and one edited shard per ``p``, at its own
    path, holding its rows: the same ids in the same order, the same count; every row's
    scores and edited row (text, edited text, provenance) equal the one-shard run's, and the
    manifests count every shard's rows. Catches: a writer that sorts or drops rows, edits
    seeded by the row's place in its shard, a slice that skips or repeats a shard."""
    layout = data.draw(layouts(len(docs)), label="layout")
    event(f"{len(layout.shards)} shard(s), {layout.processes} process(es)")
    event(f"output {layout.output_format}")
    for s in layout.shards:
        event(f"a {s.fmt} shard" + (" without rows" if s.start == s.end else ""))
        event("in a folder" if "/" in s.name else "at the root")
    root = tmp_path_factory.mktemp("layout")
    inputs, scores, edited = run_layout(root, docs, layout, tiny_prior)
    ref_scores, ref_edits = one_shard

    assert sorted(r["id"] for rows in inputs.values() for r in rows) == ids(docs)
    assert {rel: ids(rows) for rel, rows in scores.items()} == {
        f"{stem(rel)}.parquet": ids(rows) for rel, rows in inputs.items()
    }
    for rel, rows in inputs.items():
        got = [canonical(r) for r in scores[f"{stem(rel)}.parquet"]]
        assert got == [ref_scores[r["id"]] for r in rows], f"the scores of {rel}"
    for p in PS:
        expected = {f"p={p}/{edited_rel(rel, layout.output_format)}": rows
                    for rel, rows in inputs.items()}  # fmt: skip
        assert {rel: ids(rows) for rel, rows in edited.items() if rel.startswith(f"p={p}/")} == {
            rel: ids(rows) for rel, rows in expected.items()
        }
        for rel, rows in expected.items():
            got = [canonical(r) for r in edited[rel]]
            assert got == [ref_edits[p][r["id"]] for r in rows], f"the edits of {rel}"
    for out in ("scores", "edited"):
        m = read_manifest(root / out)
        assert {rel: e["rows"] for rel, e in m["shards"].items()} == {
            rel: len(rows) for rel, rows in inputs.items()
        }, out
        assert sum(m["totals"]["statuses"].values()) == len(docs), out


# ---------------------------------------------------------------- batches and engines


BATCH_LAYOUT = Layout(
    (
        ShardSpec("a", "parquet", 0, 14),
        ShardSpec("b/c", "jsonl.gz", 14, 28),
        ShardSpec("d", "jsonl.zst", 28, 40),
    )  # fmt: skip
)


@pytest.fixture(scope="module")
def batch_data(tmp_path_factory, docs):
    data = tmp_path_factory.mktemp("batch-data")
    write_layout(data, docs, BATCH_LAYOUT)
    return data


@pytest.fixture(scope="module")
def defaults(tmp_path_factory, batch_data, tiny_prior) -> dict:
    """The runs with the default batches on the local engine: scores, an edit from them and
    an edit in one pass."""
    root = tmp_path_factory.mktemp("defaults")
    model = {"model": str(tiny_prior), "device": "cpu", "progress": False, **WINDOW}
    tokedit.score_dataset(str(batch_data), str(root / "scores"), id_column="id", **model)
    tokedit.edit_dataset(str(batch_data), str(root / "edited"), scores_dir=str(root / "scores"),
                         progress=False, **EDIT)  # fmt: skip
    tokedit.edit_dataset(str(batch_data), str(root / "one-pass"), id_column="id", **model, **EDIT)
    # the same draws from the same log-probs: one pass writes what scores-then-edit writes
    assert output_files(root / "one-pass") == output_files(root / "edited")
    # Out of the rounding's reach: no two candidates of a position, and no log-prob and the
    # log of a threshold, closer than 2 x ROUNDING (else the candidates' order, or an edit in
    # one pass, could follow the batching: docs/edit.md, Determinism). Measured: 8.6e-6
    # between candidates, 1.1e-5 to a threshold.
    gap, to_threshold = margins(root / "scores", (*PS, EDIT["drop_below"]))
    assert gap > 2 * ROUNDING and to_threshold > 2 * ROUNDING, (gap, to_threshold)
    return QuietDict({name: root / name for name in ("scores", "edited", "one-pass")})


def margins(scores, thresholds) -> tuple[float, float]:
    """The least distance between two candidates' log-probs at one position, and between a
    token's log-prob and the log of a threshold."""
    gap, to_threshold = np.inf, np.inf
    logs = np.log(np.array(thresholds))
    for rows in shard_rows(scores).values():
        for r in rows:
            for candidates in r["topk_logprobs"]:
                if len(candidates) > 1:
                    gap = min(gap, np.min(np.abs(np.diff(candidates))))
            lp = flat(r["logprob"])
            lp = lp[~np.isnan(lp)]
            if len(lp):
                to_threshold = min(to_threshold, np.min(np.abs(lp[:, None] - logs)))
    return float(gap), float(to_threshold)


def assert_same_output(out, ref) -> None:
    """The data files and manifest entries (with each file's sha256) of ``out`` are
    ``ref``'s, byte for byte."""
    assert output_files(out) == output_files(ref)
    assert manifest_shards(out) == manifest_shards(ref)


@settings(PROPERTY, max_examples=6)
@given(
    engine=st.sampled_from(["local", "ray"]),
    batch_rows=st.integers(1, 64),
    batch_tokens=st.integers(1, 20_000),
)
def test_edits_do_not_depend_on_batch_size_or_engine(
    tmp_path_factory, batch_data, tiny_prior, defaults, engine_ready, engine, batch_rows,
    batch_tokens,
):  # fmt: skip
    """An edit from the scores, and an edit in one pass with the model, write the files and
    manifest entries of the default run, whatever the rows per batch, the tokens per forward
    batch (one pass) and the engine, byte for byte. Catches: draws seeded by a document's place in its batch,
    provenance or counts carried across batches, an engine that writes otherwise, parquet
    row groups that follow the batches."""
    event(engine)
    root = tmp_path_factory.mktemp("batch-edit")
    run = {"engine": engine_ready(engine), "batch_rows": batch_rows, "progress": False}
    tokedit.edit_dataset(str(batch_data), str(root / "edited"), scores_dir=str(defaults["scores"]),
                         **run, **EDIT)  # fmt: skip
    assert_same_output(root / "edited", defaults["edited"])
    tokedit.edit_dataset(str(batch_data), str(root / "one-pass"), model=str(tiny_prior),
                         id_column="id", device="cpu", batch_tokens=batch_tokens, **run,
                         **WINDOW, **EDIT)  # fmt: skip
    assert_same_output(root / "one-pass", defaults["one-pass"])


EXACT_COLUMNS = ("id", "status", "n_tokens", "token_ids", "offsets", "topk_ids",
                 "text_fingerprint")  # fmt: skip
# What a shard's entry counts of the batches themselves (a forward pass over other rows pads
# otherwise), and the sha256 of the bytes the rounding moves.
BATCHING_ENTRIES = ("computed_positions", "padding_positions", "sha256")


def flat(values) -> np.ndarray:
    """A column of floats, lists of floats or lists of lists, flattened; null as NaN."""
    out = []
    for v in values:
        if isinstance(v, list):
            out.extend(flat(v))
        else:
            out.append(np.nan if v is None else v)
    return np.array(out, dtype=np.float64)


@settings(PROPERTY, max_examples=12)
@given(
    batch_rows=st.integers(1, 64),
    batch_tokens=st.integers(1, 20_000),
    prefetch=st.integers(0, 3),
)
def test_scores_depend_on_batch_size_only_in_their_float_rounding(
    tmp_path_factory, batch_data, tiny_prior, defaults, batch_rows, batch_tokens, prefetch
):
    """Scores made with other rows per batch, tokens per batch and read-ahead have the
    default run's files, rows, ids, statuses, tokens, offsets, candidates and counts
    exactly; the log-probs differ at most by float rounding (``LOGPROB_TOL``). Catches:
    windows of a packed row that attend to each other, rows or windows lost or reordered
    across batches, counts of one batch carried into the next."""
    out = tmp_path_factory.mktemp("batch-scores") / "scores"
    tokedit.score_dataset(
        str(batch_data), str(out), model=str(tiny_prior), id_column="id", device="cpu",
        batch_rows=batch_rows, batch_tokens=batch_tokens, prefetch=prefetch, progress=False,
        **WINDOW,
    )  # fmt: skip
    got, ref = output_files(out), output_files(defaults["scores"])
    assert got.keys() == ref.keys()
    for rel in ref:
        a, b = pq.read_table(out / rel), pq.read_table(defaults["scores"] / rel)
        assert a.schema.equals(b.schema, check_metadata=True), rel
        for column in EXACT_COLUMNS:
            assert a.column(column).to_pylist() == b.column(column).to_pylist(), (rel, column)
        for column in ("logprob", "topk_logprobs", "mean_logprob"):
            x, y = flat(a.column(column).to_pylist()), flat(b.column(column).to_pylist())
            np.testing.assert_array_equal(np.isnan(x), np.isnan(y))
            assert np.nanmax(np.abs(x - y)) <= LOGPROB_TOL, (rel, column)
    entries, ref_entries = manifest_shards(out), manifest_shards(defaults["scores"])
    assert entries.keys() == ref_entries.keys()
    for rel, entry in entries.items():
        ref_entry = ref_entries[rel]
        assert {k: v for k, v in entry.items() if k not in BATCHING_ENTRIES} == {
            k: v for k, v in ref_entry.items() if k not in BATCHING_ENTRIES
        }, rel
        assert (
            entry["computed_positions"] - entry["padding_positions"]
            == ref_entry["computed_positions"] - ref_entry["padding_positions"]
        ), rel


@settings(PROPERTY, max_examples=40)
@given(
    rows=st.integers(0, 70),
    cuts=st.lists(st.integers(0, 70), max_size=8),
    fmt=st.sampled_from(["parquet", "arrow"]),
)
def test_edited_row_groups_follow_the_rows_not_the_batches(tmp_path_factory, rows, cuts, fmt):
    """An edited parquet or Arrow shard written table by table has the bytes of the same
    rows written at once, however they were cut into tables (empty tables included): its row
    groups hold ``group_rows`` rows each. Catches a writer that writes each table it is
    given as one row group."""
    from tokedit.io.write import ArrowStreamShardWriter, ParquetShardWriter

    table = pa.table({"id": [str(i) for i in range(rows)], "n": list(range(rows))})
    bounds = [0, *sorted(min(c, rows) for c in cuts), rows]
    root = tmp_path_factory.mktemp("row-groups")
    cls = ParquetShardWriter if fmt == "parquet" else ArrowStreamShardWriter
    written = []
    for name, pieces in [("once", [table]), ("cut", [table.slice(a, b - a) for a, b in itertools.pairwise(bounds)])]:  # fmt: skip
        writer = cls(root / f"{name}.{fmt}", table.schema, 16)
        for piece in pieces:
            writer.write(piece)
        writer.close()
        written.append((root / f"{name}.{fmt}").read_bytes())
    assert written[0] == written[1]
    if fmt == "parquet":
        groups = pq.ParquetFile(root / "cut.parquet").metadata
        sizes = [groups.row_group(g).num_rows for g in range(groups.num_row_groups)]
        assert sizes == [16] * (rows // 16) + ([rows % 16] if rows % 16 or not rows else []), sizes
