"""The from-scratch prior: packing, tokenizer, training, save_pretrained round trip."""

from __future__ import annotations

import numpy as np
import pytest
from scale_helpers import write_rows
from transformers import AutoModelForCausalLM, AutoTokenizer

from tokedit.errors import InputError
from tokedit.training.trainer import (
    IGNORE_INDEX,
    TrainConfig,
    evaluate_perplexity,
    pack_blocks,
    pack_texts,
    split_held_out,
    train_model,
)


def test_pack_blocks_keeps_every_token_and_masks_padding():
    ids, labels = pack_blocks(
        [np.array([1, 2, 3]), np.array([4, 5])], block_size=4, eos_id=9, pad_id=0
    )
    assert ids.tolist() == [[1, 2, 3, 9], [4, 5, 9, 0]]
    assert labels.tolist() == [[1, 2, 3, 9], [4, 5, 9, IGNORE_INDEX]]


def test_pack_blocks_leads_every_block_with_the_bos_and_never_targets_it():
    """With a BOS every block starts with it, unlabelled, and the rest still holds every token
    of the stream in order. Catches: a BOS only on the first block, a BOS learned as a
    target, a token dropped to make room for it."""
    ids, labels = pack_blocks(
        [np.array([1, 2, 3]), np.array([4, 5])], block_size=4, eos_id=9, pad_id=0, bos_id=7
    )
    assert ids.tolist() == [[7, 1, 2, 3], [7, 9, 4, 5], [7, 9, 0, 0]]
    assert labels.tolist() == [
        [IGNORE_INDEX, 1, 2, 3],
        [IGNORE_INDEX, 9, 4, 5],
        [IGNORE_INDEX, 9, IGNORE_INDEX, IGNORE_INDEX],
    ]


def test_the_tokenizers_trained_here_get_no_block_bos(tiny_prior):
    """A byte-level tokenizer trained here does not prepend its <bos>, so its blocks have none
    (scratch training is unchanged by the BOS rule for real priors)."""
    from tokedit.training.trainer import block_bos_id

    tok = AutoTokenizer.from_pretrained(tiny_prior)
    assert tok.bos_token_id is not None and block_bos_id(tok) is None


def test_held_out_split_is_deterministic_and_disjoint():
    texts = [f"t{i}" for i in range(10)]
    train, held = split_held_out(texts, 5)
    assert held == ["t4", "t9"] and len(train) == 8 and not set(train) & set(held)


def test_trained_prior_loads_like_a_hub_model_and_learned(tiny_prior):
    tok = AutoTokenizer.from_pretrained(tiny_prior)
    model = AutoModelForCausalLM.from_pretrained(tiny_prior)
    assert (
        tok.is_fast
        and tok.bos_token == "<s>"
        and tok.eos_token == "</s>"
        and tok.pad_token == "<pad>"
    )
    assert model.config.vocab_size == len(tok) == 512
    # GPT-2 style byte-level BPE with trimmed offsets: the space before "be" is in no span.
    enc = tok("to be", add_special_tokens=False, return_offsets_mapping=True)
    assert enc["offset_mapping"][-1][0] == 3
    assert tok.decode(enc["input_ids"]) == "to be"
    summary = (tiny_prior / "tokedit_train.json").read_text()
    import json

    s = json.loads(summary)
    # Uniform guessing over 512 tokens has perplexity 512; the trained prior must do far better.
    assert s["held_out_ppl"] < 512 / 4
    assert s["steps"] == 300 and s["from_scratch"] is True


def test_continue_training_an_existing_model(tmp_path, tiny_prior):
    """Continued training moves the weights towards its data: the loss on the (repeated)
    training text falls. Catches: a learning rate of 0, or an optimizer that never steps."""
    text = "Double, double toil and trouble; fire burn and cauldron bubble. " * 6
    write_rows(tmp_path / "data" / "x.jsonl", [{"text": text}] * 40)  # held out: the same text
    config = TrainConfig(max_steps=5, batch_size=4, block_size=64, warmup_steps=0)
    s = train_model(
        str(tmp_path / "data"),
        str(tmp_path / "m"),
        model_path=str(tiny_prior),
        config=config,
        progress=False,
        log=lambda m: None,
    )
    assert s["steps"] == 5 and s["base_model"] == str(tiny_prior)
    assert (tmp_path / "m" / "config.json").is_file() and (
        tmp_path / "m" / "tokenizer.json"
    ).is_file()
    tok = AutoTokenizer.from_pretrained(tiny_prior)
    ids, labels = pack_texts(tok, [text], config.block_size)
    before = evaluate_perplexity(AutoModelForCausalLM.from_pretrained(tiny_prior), ids, labels)
    after = evaluate_perplexity(AutoModelForCausalLM.from_pretrained(tmp_path / "m"), ids, labels)
    assert after < 0.9 * before, f"training did not lower the loss: ppl {before:.2f} -> {after:.2f}"


def test_train_needs_exactly_one_of_model_and_from_scratch(tmp_path, corpus_dir):
    with pytest.raises(InputError, match="exactly one"):
        train_model(str(corpus_dir), str(tmp_path), progress=False)


def test_generation_keeps_prefixes_and_length_and_is_seeded(tiny_prior, plays):
    from tokedit.training.generate import GenerateOptions, generate_continuations

    tok = AutoTokenizer.from_pretrained(tiny_prior)
    model = AutoModelForCausalLM.from_pretrained(tiny_prior)
    texts = [plays["macbeth"][i * 500 : i * 500 + 400] for i in range(5)] + ["short"]
    opts = GenerateOptions(prefix_tokens=8, max_new_tokens=20, batch_size=4, seed=1)
    out = generate_continuations(model, tok, texts, opts)
    assert len(out) == len(texts) and out == generate_continuations(model, tok, texts, opts)
    for text, gen in zip(texts, out, strict=True):
        prefix = tok.decode(tok(text, add_special_tokens=False)["input_ids"][:8])
        assert gen.startswith(prefix)
        n_gen = len(tok(gen, add_special_tokens=False)["input_ids"])
        assert n_gen <= 8 + 20 + 8  # re-tokenizing decoded bytes may merge or split a little
    assert out[-1] == "short"  # documents no longer than the prefix are kept as they are
    assert out[:5] != texts[:5]


def test_tce_training_logs_the_masked_share(tmp_path, corpus_dir, tiny_prior):
    # gamma 0.05: this weak prior gives ~15 % of tokens P > 0.05, so some are masked.
    config = TrainConfig(max_steps=4, batch_size=4, block_size=64, loss="tce", gamma=0.05)
    s = train_model(
        str(corpus_dir),
        str(tmp_path / "m"),
        model_path=str(tiny_prior),
        config=config,
        progress=False,
        log=lambda m: None,
    )
    shares = s["tce_masked_share"]
    assert len(shares) >= 1 and all(0 < v < 0.6 for v in shares)
