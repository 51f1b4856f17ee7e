"""``tokedit experiment mixture``: ToEdit Table 1 style mixtures of human and synthetic data."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tokedit.experiments.data import held_out_and_train
from tokedit.experiments.metrics import corpus_metrics, unigram_tables
from tokedit.experiments.models import (
    held_out_perplexity,
    load,
    make_init,
    quiet_transformers,
    regenerate,
    toedit,
    train_run,
)
from tokedit.experiments.presets import ExperimentPreset
from tokedit.experiments.report import write_mixture_report


def run_mixture(
    data_dir: str,
    out_dir: str,
    preset: ExperimentPreset,
    *,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict:
    """A small-scale analogue of the ToEdit paper's non-iterative collapse (Table 1), not a
    reproduction: the synthetic data is this run's own prior's rewrite of the training
    documents, and perplexity is measured on held-out documents of the same corpus.

    A prior (the initial model trained on the real training documents for ``prior_steps``)
    rewrites every training document by prefix-conditioned sampling (``synthetic``) and edits
    it with ToEdit (``toedit``). Arms, all with the same documents count and lengths: human,
    ``f`` synthetic for each fraction (a seeded random ``f`` share of the documents replaced by
    their synthetic version), and toedit. Each arm trains the same initial model for ``steps``.
    """
    log = log or (lambda m: print(m, file=sys.stderr))
    quiet_transformers()
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    held_raw, train_raw = held_out_and_train(data_dir, preset, seed, preset.mixture_docs)
    init = out / "init"
    tokenizer, n_params = make_init(init, train_raw, preset, seed)
    from tokedit.io.texts import truncate_to_tokens

    held = truncate_to_tokens(held_raw, tokenizer, preset.doc_tokens)
    human = truncate_to_tokens(train_raw, tokenizer, preset.doc_tokens)
    log(
        f"mixture: {len(human)} training docs, {len(held)} held out; model {n_params / 1e6:.2f}M "
        f"parameters; training the prior ({preset.prior_steps} steps)"
    )
    prior_dir = out / "prior"
    prior_train = train_run(init, prior_dir, human, preset, seed, steps=preset.prior_steps)
    prior, tok = load(prior_dir)
    synthetic = regenerate(prior, tok, human, preset, seed)
    edited, edit_stats = toedit(human, prior_dir, out / "toedit-work", preset, seed)
    reference = unigram_tables(tokenizer, human + held)
    rank = np.argsort(np.random.default_rng(seed + 1).permutation(len(human)))
    datasets = {"human": human}
    for f in preset.fractions:
        k = round(f * len(human))
        datasets[f"synthetic-{round(100 * f)}%"] = [
            synthetic[i] if rank[i] < k else human[i] for i in range(len(human))
        ]
    datasets["toedit"] = edited
    result: dict = {
        "experiment": "mixture",
        "preset": asdict(preset),
        "seed": seed,
        "parameters": n_params,
        "prior": {
            **prior_train,
            "held_out_ppl": held_out_perplexity(prior, tok, held, preset.block_size),
        },
        "edit": edit_stats,
        "arms": {},
    }
    for name, texts in datasets.items():
        t0 = time.perf_counter()
        train = train_run(init, out / "arms" / name, texts, preset, seed)
        model, tok = load(out / "arms" / name)
        arm = {
            "synthetic_share": (
                0.0 if name in ("human", "toedit") else float(name.split("-")[1][:-1]) / 100
            ),
            "docs": len(texts),
            "train": train,
            "held_out_ppl": held_out_perplexity(model, tok, held, preset.block_size),
            "data": corpus_metrics(tokenizer, texts, reference),
            "seconds": time.perf_counter() - t0,
        }
        result["arms"][name] = arm
        log(
            f"  {name:>15}: held-out ppl {arm['held_out_ppl']:.2f} ({arm['train']['train_tokens']} "
            f"tokens, {arm['seconds']:.0f}s)"
        )
    result["seconds"] = time.perf_counter() - t_start
    write_mixture_report(result, out)
    return result
