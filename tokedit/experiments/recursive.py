"""``tokedit experiment recursive``: ForTIFAI-style recursive training, generation by
generation, with CE, TCE and ToEdit arms."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from tokedit.experiments.data import held_out_and_train, texts_sha, write_dataset
from tokedit.experiments.metrics import (
    corpus_metrics,
    make_probe,
    probability_histogram,
    probe_accuracy,
    unigram_tables,
)
from tokedit.experiments.models import (
    held_out_perplexity,
    load,
    make_init,
    quiet_transformers,
    regenerate,
    score,
    toedit,
    train_run,
)
from tokedit.experiments.presets import ExperimentPreset
from tokedit.experiments.report import write_recursive_report


def recursive_arms(gammas, with_toedit: bool) -> list[dict]:
    arms = [{"name": "ce", "loss": "ce", "gamma": None, "data": "regenerate"}]
    arms += [
        {"name": f"tce-{g:g}", "loss": "tce", "gamma": g, "data": "regenerate"} for g in gammas
    ]
    if with_toedit:
        arms.append({"name": "toedit", "loss": "ce", "gamma": None, "data": "toedit"})
    return arms


def run_recursive(
    data_dir: str,
    out_dir: str,
    preset: ExperimentPreset,
    *,
    seed: int = 0,
    with_toedit: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """A small-scale analogue of ForTIFAI's recursive training (see the module docstring and
    ``docs/training.md``; not a reproduction).

    Generation 0 trains on real slice 0. After training generation ``g``, its model rewrites
    its whole training set (``regenerate``: prefix-conditioned sampling; ``toedit``: ToEdit
    edits at the target edit rate); generation ``g + 1`` trains on that plus real slice
    ``g + 1``. Metrics of generation ``g``: its model on held-out real text and the probe, and
    the data it produced (scored by that same model).
    """
    log = log or (lambda m: print(m, file=sys.stderr))
    quiet_transformers()
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    G, N = preset.generations, preset.docs_per_slice
    held_raw, slices_raw = held_out_and_train(data_dir, preset, seed, (G + 1) * N)
    init = out / "init"
    tokenizer, n_params = make_init(init, slices_raw[:N], preset, seed)
    from tokedit.io.texts import truncate_to_tokens

    held = truncate_to_tokens(held_raw, tokenizer, preset.doc_tokens)
    real = truncate_to_tokens(slices_raw, tokenizer, preset.doc_tokens)
    slices = [real[k * N : (k + 1) * N] for k in range(G + 1)]
    reference = unigram_tables(tokenizer, real + held)
    probe = make_probe(held_raw, slices_raw, preset.probe_pairs, seed)
    arms = recursive_arms(preset.gammas, with_toedit)
    log(
        f"recursive: {G + 1} generations x {len(arms)} arms; {N} real docs per slice, "
        f"{len(held)} held out, {len(probe)} probe pairs; model {n_params / 1e6:.2f}M parameters"
    )
    result: dict = {
        "experiment": "recursive",
        "preset": asdict(preset),
        "seed": seed,
        "parameters": n_params,
        "real": corpus_metrics(tokenizer, real, reference),
        "probe": {"pairs": len(probe), "examples": [list(p) for p in probe[:3]]},
        "arms": {},
    }
    for arm in arms:
        rows = []
        train_set = slices[0]
        for g in range(G + 1):
            t0 = time.perf_counter()
            work = out / arm["name"] / f"gen{g}"
            model_dir = work / "model"
            shared = out / "ce" / "gen0" / "model"
            if g == 0 and arm["name"] == "toedit" and (shared / "config.json").is_file():
                # generation 0 of the toedit arm is the CE arm's (same data, loss and seed)
                model_dir, train = shared, result["arms"]["ce"][0]["train"]
            else:
                train = train_run(
                    init, model_dir, train_set, preset, seed, arm["loss"], arm["gamma"] or 0.99
                )
            model, tok = load(model_dir)
            row = {
                "generation": g,
                "train_docs": len(train_set),
                "train_data_sha": texts_sha(train_set),
                "train": train,
                "held_out_ppl": held_out_perplexity(model, tok, held, preset.block_size),
                "probe_accuracy": probe_accuracy(probe, model_dir, work, preset),
            }
            if arm["data"] == "toedit":
                produced, row["edit"] = toedit(train_set, model_dir, work, preset, seed + g)
            else:
                produced = regenerate(model, tok, train_set, preset, seed + g)
            data = write_dataset(work / "generated", produced)
            row["generated"] = {
                **corpus_metrics(tokenizer, produced, reference),
                "hist10": probability_histogram(
                    score(data, work / "generated-scores", model_dir, preset)
                ),
            }
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            log(
                f"  {arm['name']:>10} gen {g}: held-out ppl {row['held_out_ppl']:.2f}, probe "
                f"{row['probe_accuracy']:.3f}, unigram KL {row['generated']['unigram_kl']:.4f}, "
                f"distinct-2 {row['generated']['distinct_2']:.4f} ({row['seconds']:.0f}s)"
            )
            if g < G:
                train_set = produced + slices[g + 1]
        result["arms"][arm["name"]] = rows
    result["arm_definitions"] = arms
    result["seconds"] = time.perf_counter() - t_start
    write_recursive_report(result, out)
    return result
