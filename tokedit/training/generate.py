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

from tokedit.training.trainer import pad_token_id


@dataclass(frozen=True)
class GenerateOptions:
    prefix_tokens: int = 32
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 32
    seed: int = 0


@torch.inference_mode()
def generate_continuations(
    model, tokenizer, texts: list[str], options: GenerateOptions | None = None, progress=None
) -> list[str]:
    """Return, for each text, its prefix followed by the model's continuation (as text)."""
    options = options or GenerateOptions()
    device = next(model.parameters()).device
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    pad = pad_token_id(tokenizer)
    outputs: list[str] = [""] * len(texts)
    # Similar lengths together: fewer wasted steps on finished rows.
    order = np.argsort(
        [-min(len(ids), options.prefix_tokens + options.max_new_tokens) for ids in encoded],
        kind="stable",
    )
    torch.manual_seed(options.seed)
    model.eval()
    for a in range(0, len(order), options.batch_size):
        idx = order[a : a + options.batch_size]
        prefixes = [bos + encoded[i][: options.prefix_tokens] for i in idx]
        budgets = [
            max(
                0,
                min(len(encoded[i]), options.prefix_tokens + options.max_new_tokens)
                - options.prefix_tokens,
            )
            for i in idx
        ]
        width = max(len(p) for p in prefixes)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, p in enumerate(prefixes):
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        new = max(budgets) if budgets else 0
        if new > 0:
            out = model.generate(
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
            )[:, width:].cpu()
        else:
            out = torch.zeros((len(idx), 0), dtype=torch.long)
        for r, i in enumerate(idx):
            continuation = out[r, : budgets[r]].tolist()
            outputs[i] = tokenizer.decode(
                encoded[i][: options.prefix_tokens] + continuation, skip_special_tokens=True
            )
        if progress is not None:
            progress(len(idx))
    return outputs
