"""The scorer's speed rules, checked on CPU where they cannot be timed reliably.

- One device-to-host copy per batch: log-probs and top-k candidates stay on the device until
  the batch is done. tokedit's own host reads (``.cpu()``, ``.numpy()``, ``.item()``,
  ``.tolist()``, truth tests of tensors, ``.to("cpu")``) are counted with a torch function
  mode while a batch is scored with LM-head chunks of 4 positions (many chunks per batch).
- LM-head chunks sized to the device, and the size recorded in the manifest.
"""

from __future__ import annotations

import collections
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_model_zoo import FAMILIES, _build, _configs
from torch.overrides import TorchFunctionMode

from tokedit.io.manifest import read_manifest
from tokedit.io.read import STATUS_OK
from tokedit.io.storage import file_sha256
from tokedit.scoring import hf
from tokedit.scoring.hf import HFBackend, load_tokenizer
from tokedit.scoring.options import ScoreOptions
from tokedit.scoring.run import score_dataset
from tokedit.scoring.windows import batch_layout, padding_stats, plan_batches, plan_windows

HOST_READS = {"cpu", "numpy", "item", "tolist", "__bool__", "__int__", "__float__", "__index__"}


class HostReads(TorchFunctionMode):
    """Counts host reads of tensors issued from tokedit's own code (not from transformers')."""

    def __init__(self):
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        to_cpu = name == "to" and any(
            str(a) == "cpu" for a in (*args[1:], kwargs.get("device")) if a is not None
        )
        if name in HOST_READS or to_cpu:
            caller = sys._getframe(1)
            while caller is not None and caller.f_globals.get("__name__", "").startswith("torch"):
                caller = caller.f_back
            if caller is not None and caller.f_globals.get("__name__", "").startswith("tokedit"):
                self.calls[name] += 1
        return func(*args, **kwargs)


def _batch(tokenizer, text: str):
    ids = np.asarray(tokenizer(text[:3000], add_special_tokens=False)["input_ids"], np.int32)
    seqs = [ids[a : a + n] for a, n in ((0, 40), (100, 70), (300, 25))]
    windows = [w for j, s in enumerate(seqs) for w in plan_windows(len(s), 32, 8, doc=j)]
    return seqs, windows


@pytest.mark.parametrize("min_p", [0.0, 0.3])
def test_one_host_copy_per_batch(tiny_prior, plays, min_p):
    backend = HFBackend(str(tiny_prior), device="cpu", dtype="float32", logit_chunk=4)
    seqs, windows = _batch(load_tokenizer(str(tiny_prior)), plays["hamlet"])
    positions = sum(w.end - w.score_from for w in windows)
    assert positions > 10 * backend.logit_chunk  # many chunks per batch
    reads = HostReads()
    with reads:
        first = backend.score_batch(seqs, windows, top_k=4, min_p=min_p)
    assert sum(reads.calls.values()) == 1, reads.calls
    with reads:  # a second batch: one more copy
        backend.score_batch(seqs, windows[:3], top_k=4, min_p=min_p)
    assert sum(reads.calls.values()) == 2, reads.calls
    # the chunked results equal one chunk of every position
    whole = HFBackend(str(tiny_prior), device="cpu", dtype="float32", logit_chunk=10_000)
    for a, b in zip(first, whole.score_batch(seqs, windows, top_k=4, min_p=min_p), strict=True):
        np.testing.assert_array_equal(a.logprob, b.logprob)
        np.testing.assert_array_equal(a.topk_ids, b.topk_ids)
        np.testing.assert_array_equal(a.topk_logprobs, b.topk_logprobs)
        np.testing.assert_array_equal(a.has_topk, b.has_topk)
    if min_p > 0:
        assert 0 < sum(r.has_topk.sum() for r in first) < positions
        assert all((r.topk_ids[~r.has_topk] == 0).all() for r in first)


def test_chunk_sizes_follow_the_device_budget():
    vocab = 262_144
    assert hf.chunk_positions(vocab, "cpu") == hf.CPU_LOGIT_CHUNK_BYTES // (4 * vocab) == 64
    assert hf.chunk_positions(512, "cpu") == hf.MAX_CHUNK_POSITIONS  # capped
    free = 40 << 30  # a GPU with 40 GiB free
    expected = int(free * hf.CUDA_FREE_SHARE) // (hf.CUDA_BYTES_PER_LOGIT * vocab)
    assert hf.positions_for_free_memory(free, vocab) == expected == 3413
    assert hf.positions_for_free_memory(0, vocab) == 1


def test_manifest_records_the_chunk_size(tmp_path, corpus_dir, tiny_prior):
    out = tmp_path / "scores"
    score_dataset(
        str(corpus_dir),
        str(out),
        model=str(tiny_prior),
        options=ScoreOptions(max_length=128, overlap=16),
        device="cpu",
        dtype="float32",
        num_shards=4,
        shard_index=0,
        progress=False,
    )
    info = read_manifest(out)["info"]
    assert info["logit_chunk_positions"] == hf.chunk_positions(512, "cpu")  # a BPE-512 prior
    totals = read_manifest(out)["totals"]
    overhead = totals["compute_overhead"]
    scored = (
        totals["computed_positions"] - totals["padding_positions"] - totals["context_positions"]
    )
    # every token is scored, but a document's first one where no BOS is prepended
    no_bos = not read_manifest(out)["options"]["add_bos"]
    assert scored == totals["tokens"] - no_bos * totals["statuses"][STATUS_OK]
    assert overhead["context_per_scored"] == totals["context_positions"] / scored > 0
    assert overhead["padding_per_scored"] == totals["padding_positions"] / scored
    assert overhead["computed_per_scored"] == pytest.approx(
        1 + overhead["context_per_scored"] + overhead["padding_per_scored"], abs=1e-12
    )


# Families whose mask ignores the position ids (they fall back to padded rows).
PADDED_FAMILIES = {"opt", "falcon"}


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_rows_equal_padded_rows(family):
    """Windows of several documents packed into one row score as they do one per padded
    row (float32, 1e-4 nats), for every family of the model zoo: sliding-window (Gemma 3's
    16-token window inside 48-token windows) and soft-capped ones included."""
    model = _build(_configs(330)[family])
    rng = np.random.default_rng(0)
    seqs = [rng.integers(3, 330, n).astype(np.int32) for n in (130, 30, 45, 7, 90, 12, 60, 2)]
    windows = [w for j, s in enumerate(seqs) for w in plan_windows(len(s), 48, 8, doc=j)]
    got = {}
    for pack in (False, True):
        backend = HFBackend.from_model(model, device="cpu", pack=pack)
        assert backend.packs == (pack and family not in PADDED_FAMILIES)
        batches = plan_batches(windows, 200, pack=backend.packs)
        for batch in batches:
            scores = backend.score_batch(seqs, batch, top_k=4, min_p=0.0)
            for w, r in zip(batch, scores, strict=True):
                got[pack, w.doc, w.start] = r
        if pack:
            _, padding, _ = padding_stats(batches, pack=backend.packs)
            if backend.packs:  # fewer rows than windows, less padding than unpacked
                assert sum(batch_layout(b, pack=True).n_rows for b in batches) < len(windows)
                assert padding < padding_stats(plan_batches(windows, 200), pack=False)[1]
    for w in windows:
        a, b = got[False, w.doc, w.start], got[True, w.doc, w.start]
        np.testing.assert_allclose(a.logprob, b.logprob, atol=1e-4, rtol=0)
        np.testing.assert_allclose(a.topk_logprobs, b.topk_logprobs, atol=1e-4, rtol=0)
        np.testing.assert_array_equal(a.topk_ids, b.topk_ids)


def test_bytes_do_not_depend_on_prefetch(tmp_path, plays, tiny_prior):
    """Reading, tokenizing, assembling and writing overlapped with the model (prefetch 1
    and 3, several batches of rows per shard) write the bytes of the sequential run."""
    text = plays["tempest"]
    rows = [{"text": text[i * 97 : i * 97 + 60 + 7 * (i % 13)]} for i in range(120)]
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "a.parquet")
    digests = {}
    for prefetch in (0, 1, 3):
        out = tmp_path / f"p{prefetch}"
        score_dataset(
            str(tmp_path / "data"),
            str(out),
            model=str(tiny_prior),
            options=ScoreOptions(max_length=128, overlap=16, batch_tokens=2048),
            device="cpu",
            dtype="float32",
            batch_rows=16,  # many batches of documents per shard
            prefetch=prefetch,
            progress=False,
        )
        digests[prefetch] = {p.name: file_sha256(p) for p in sorted(out.glob("*.parquet"))}
        totals = read_manifest(out)["totals"]
        assert totals["documents"] > 3 * 16
    assert digests[0] and digests[1] == digests[0] and digests[3] == digests[0]


def test_a_failing_batch_stops_the_pipeline(tiny_prior, plays):
    """An error in the model stage ends the overlapped run with that error (no hang), and one
    in the reading stage surfaces too."""
    from tokedit.io.read import Documents
    from tokedit.scoring.scorer import Scorer, scored_tables

    backend = HFBackend(str(tiny_prior), device="cpu", dtype="float32")
    scorer = Scorer(backend, load_tokenizer(str(tiny_prior)), ScoreOptions(128, 16))
    texts = [plays["hamlet"][i * 500 : (i + 1) * 500] for i in range(8)]

    def docs(fail_at=None):
        for i, t in enumerate(texts):
            if i == fail_at:
                raise ValueError("unreadable row")
            yield Documents(None, [str(i)], [t], [STATUS_OK])

    calls = []

    def on_tokens(n):
        calls.append(n)
        if len(calls) == 3:
            raise RuntimeError("device lost")

    with pytest.raises(RuntimeError, match="device lost"):
        list(scored_tables(scorer, docs(), prefetch=2, on_tokens=on_tokens))
    with pytest.raises(ValueError, match="unreadable row"):
        list(scored_tables(scorer, docs(fail_at=5), prefetch=2))
    assert len(list(scored_tables(scorer, docs(), prefetch=2))) == len(texts)
