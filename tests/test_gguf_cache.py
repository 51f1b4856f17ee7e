"""A converted GGUF prior cannot go stale: the conversion is keyed by the file's sha256, so a
changed file is converted again and an unchanged one is not.

The GGUF here is tiny (a 1-layer Llama with random weights and a byte-level vocabulary of
~260 tokens, written with the ``gguf`` package, 113 kB): converting it takes a second.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="reading GGUF files needs the 'gguf' package")

from tokedit.scoring.gguf import PRIOR_INFO, read_prior_info, resolve_model  # noqa: E402

HIDDEN, FFN, HEADS = 32, 64, 2


def write_tiny_gguf(path: Path, seed: int) -> None:
    """A 1-layer Llama GGUF (float32) with random weights drawn from ``seed``: files of two
    seeds have the same size and differ in their tensor bytes only."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    rng = np.random.default_rng(seed)
    merges = ["Ġ t", "h e", "Ġt he", "Ġ a"]
    tokens = [*bytes_to_unicode().values(), *(m.replace(" ", "") for m in merges), "<|endoftext|>"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(1)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.NORMAL] * (len(tokens) - 1) + [gguf.TokenType.CONTROL])
    w.add_token_merges(merges)
    w.add_bos_token_id(len(tokens) - 1)
    w.add_eos_token_id(len(tokens) - 1)
    shapes = {
        "token_embd.weight": (len(tokens), HIDDEN),
        "blk.0.attn_q.weight": (HIDDEN, HIDDEN),
        "blk.0.attn_k.weight": (HIDDEN, HIDDEN),
        "blk.0.attn_v.weight": (HIDDEN, HIDDEN),
        "blk.0.attn_output.weight": (HIDDEN, HIDDEN),
        "blk.0.ffn_gate.weight": (FFN, HIDDEN),
        "blk.0.ffn_up.weight": (FFN, HIDDEN),
        "blk.0.ffn_down.weight": (HIDDEN, FFN),
        "output.weight": (len(tokens), HIDDEN),
    }
    for name, shape in shapes.items():
        w.add_tensor(name, rng.normal(0, 0.05, shape).astype(np.float32))
    for name in ("blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "output_norm.weight"):
        w.add_tensor(name, np.ones(HIDDEN, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKEDIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def resolve(model: Path, caplog) -> tuple[Path, list[str]]:
    """The directory ``model`` resolves to, and the conversions logged on the way."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tokedit.scoring.gguf"):
        resolved = Path(resolve_model(str(model)))
    return resolved, [r.getMessage() for r in caplog.records if "converting" in r.getMessage()]


def test_a_changed_gguf_is_converted_again_and_an_unchanged_one_is_not(tmp_path, cache, caplog):
    model = tmp_path / "models" / "tiny.gguf"
    model.parent.mkdir()
    write_tiny_gguf(model, seed=0)
    first, logged = resolve(model, caplog)
    assert len(logged) == 1 and first.is_relative_to(cache)
    assert read_prior_info(first)["gguf_sha256"] == sha256(model)
    converted_at = (first / PRIOR_INFO).stat().st_mtime_ns

    again, logged = resolve(model, caplog)  # unchanged: the conversion is reused
    assert again == first and logged == []
    assert (first / PRIOR_INFO).stat().st_mtime_ns == converted_at

    write_tiny_gguf(model, seed=1)  # other weights, same size, a new mtime
    changed, logged = resolve(model, caplog)
    assert len(logged) == 1, "the changed file was not converted again"
    assert read_prior_info(changed)["gguf_sha256"] == sha256(model) != read_prior_info(first)["gguf_sha256"]  # fmt: skip
    weights = "model.safetensors"
    assert (changed / weights).read_bytes() != (first / weights).read_bytes()


def test_other_bytes_of_the_same_size_and_mtime_are_seen_in_the_same_process(
    tmp_path, cache, caplog
):
    """The sha256 of a file is computed once per process and file state. Bytes rewritten in
    place with the old size and mtime put back (``os.utime``, as ``cp -p`` or ``rsync -a``
    of another file would) are still a change: the state includes the inode's ctime, which
    every write and every ``utime`` moves."""
    model = tmp_path / "tiny.gguf"
    write_tiny_gguf(model, seed=0)
    first, _ = resolve(model, caplog)
    before = os.stat(model)
    write_tiny_gguf(model, seed=1)
    os.utime(model, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(model)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    changed, logged = resolve(model, caplog)
    assert read_prior_info(changed)["gguf_sha256"] == sha256(model), "a stale conversion"
    assert len(logged) == 1 and changed != first
