"""Prefix-conditioned generation: the "fully synthetic" counterpart of a human corpus.

Each document's first ``prefix_tokens`` tokens are kept and the model writes the rest, up to
the document's own length (capped by ``max_new_tokens``), by ancestral sampling with a
temperature and nucleus ``top_p``. Documents are generated in batches with left padding and
a KV cache; the seed makes the output reproducible for a given batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tokedit.training.trainer import block_bos_id, pad_token_id


@dataclass(frozen=True)
class GenerateOptions:
    prefix_tokens: int = 32
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 32
    seed: int = 0


def _token_budgets(
    encoded: list[list[int]], own: list[int], idx, options: GenerateOptions
) -> list[int]:
    """How many tokens each document of the batch ``idx`` gets after its prefix: up to its
    own length, capped by ``prefix_tokens + max_new_tokens``."""
    cap = options.prefix_tokens + options.max_new_tokens
    return [max(0, min(own[i], cap) - min(len(encoded[i]), options.prefix_tokens)) for i in idx]


def _left_padded(prefixes: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The prefixes as one left-padded ``[rows, width]`` id tensor and its attention mask."""
    width = max(len(p) for p in prefixes)
    ids = torch.full((len(prefixes), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prefixes), width), dtype=torch.long)
    for r, p in enumerate(prefixes):
        ids[r, width - len(p) :] = torch.tensor(p)
        mask[r, width - len(p) :] = 1
    return ids, mask


def _sample_tokens(
    model, ids: torch.Tensor, mask: torch.Tensor, new: int, pad: int, options: GenerateOptions
) -> torch.Tensor:
    """Exactly ``new`` sampled tokens after each row (no EOS stop), on the CPU."""
    if new <= 0:
        return torch.zeros((ids.shape[0], 0), dtype=torch.long)
    device = next(model.parameters()).device
    return model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        do_sample=True,
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=0,
        max_new_tokens=new,
        min_new_tokens=new,
        pad_token_id=pad,
        eos_token_id=None,
    )[:, ids.shape[1] :].cpu()


@torch.inference_mode()
def generate_continuations(
    model,
    tokenizer,
    texts: list[str],
    options: GenerateOptions | None = None,
    progress=None,
    lengths: list[int] | None = None,
) -> list[str]:
    """Return, for each text, its prefix followed by the model's continuation (as text).

    A text is continued up to its own token length, or to ``lengths[i]`` tokens when given
    (so a short prompt can be continued into a whole document); ``max_new_tokens`` caps both.
    """
    options = options or GenerateOptions()
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    own = [len(ids) for ids in encoded] if lengths is None else list(lengths)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    pad = pad_token_id(tokenizer)
    outputs: list[str] = [""] * len(texts)
    # Similar lengths together: fewer wasted steps on finished rows.
    order = np.argsort(
        [-min(n, options.prefix_tokens + options.max_new_tokens) for n in own],
        kind="stable",
    )
    torch.manual_seed(options.seed)
    model.eval()
    for a in range(0, len(order), options.batch_size):
        idx = order[a : a + options.batch_size]
        budgets = _token_budgets(encoded, own, idx, options)
        ids, mask = _left_padded([bos + encoded[i][: options.prefix_tokens] for i in idx], pad)
        out = _sample_tokens(model, ids, mask, max(budgets) if budgets else 0, pad, options)
        for r, i in enumerate(idx):
            continuation = out[r, : budgets[r]].tolist()
            outputs[i] = tokenizer.decode(
                encoded[i][: options.prefix_tokens] + continuation, skip_special_tokens=True
            )
        if progress is not None:
            progress(len(idx))
    return outputs


@dataclass(frozen=True)
class BeamOptions:
    """ForTIFAI's generation (``src/generate.py``, ``generate_dataset``): the training text is
    one token stream cut into blocks of ``new_tokens``; window ``i`` is the
    ``context_tokens // new_tokens`` blocks starting at block ``i`` (stride one block), and the
    model writes exactly ``new_tokens`` tokens after it by beam search."""

    context_tokens: int = 512
    new_tokens: int = 32
    num_beams: int = 5
    repetition_penalty: float = 3.0
    batch_size: int = 16


def beam_windows(ids: list[int], context_tokens: int, new_tokens: int) -> list[list[int]]:
    """The contexts of :class:`BeamOptions`: ``ids`` cut into ``new_tokens`` blocks (the
    remainder dropped), windows of ``context_tokens // new_tokens`` blocks at stride one block
    (ForTIFAI's ``DatasetForGeneration``: ``len(blocks) - blocks_before`` windows)."""
    n_blocks = len(ids) // new_tokens
    per = max(1, context_tokens // new_tokens)
    span = per * new_tokens
    return [ids[i * new_tokens : i * new_tokens + span] for i in range(max(0, n_blocks - per))]


@torch.inference_mode()
def generate_beam_corpus(
    model, tokenizer, texts: list[str], options: BeamOptions | None = None
) -> list[str]:
    """ForTIFAI-style synthetic data: ``texts`` joined with EOS into one stream, every window of
    :func:`beam_windows` continued by ``new_tokens`` tokens (``num_beams`` beams,
    ``repetition_penalty``, ``min_new_tokens = max_new_tokens``); one text per window, the
    continuation only (the context is not repeated), as ForTIFAI writes its stage file. Each
    window is led by the tokenizer's BOS where it uses one (``trainer.block_bos_id``), as the
    training blocks are: Gemma continues a context without BOS at position 0 poorly."""
    options = options or BeamOptions()
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream += ids + ([eos] if eos is not None else [])
    bos = block_bos_id(tokenizer)
    lead = [] if bos is None else [bos]
    windows = [lead + w for w in beam_windows(stream, options.context_tokens, options.new_tokens)]
    pad = pad_token_id(tokenizer)
    model.eval()
    out: list[str] = []
    for a in range(0, len(windows), options.batch_size):
        batch = torch.tensor(windows[a : a + options.batch_size], dtype=torch.long, device=device)
        generated = model.generate(
            input_ids=batch,
            attention_mask=torch.ones_like(batch),
            do_sample=False,
            num_beams=options.num_beams,
            repetition_penalty=options.repetition_penalty,
            max_new_tokens=options.new_tokens,
            min_new_tokens=options.new_tokens,
            pad_token_id=pad,
        )[:, batch.shape[1] :].cpu()
        out += [tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in generated]
    return out
