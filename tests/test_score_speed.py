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
import pytest
from torch.overrides import TorchFunctionMode

from tokedit.io.manifest import read_manifest
from tokedit.io.read import STATUS_OK
from tokedit.scoring import hf
from tokedit.scoring.hf import HFBackend, load_tokenizer
from tokedit.scoring.run import score_dataset
from tokedit.scoring.scorer import ScoreOptions
from tokedit.scoring.windows import plan_windows

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
        options=ScoreOptions(max_len=128, overlap=16),
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
