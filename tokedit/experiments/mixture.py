"""``tokedit experiment mixture``: ToEdit Table 1 style mixtures of human data and an
independently generated synthetic corpus, evaluated on held-out documents and on a second
corpus the arms never trained on."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tokedit.experiments.data import split_by_group
from tokedit.experiments.metrics import corpus_metrics, unigram_tables
from tokedit.experiments.models import (
    held_out_perplexity,
    load,
    make_init,
    prompted,
    quiet_transformers,
    resolve_base,
    toedit,
    train_run,
)
from tokedit.experiments.presets import ExperimentPreset
from tokedit.experiments.report import write_mixture_report

logger = logging.getLogger(__name__)

# Generic openings for the synthetic corpus: no text of the human documents is a prompt.
GENERIC_PROMPTS = ("The", "And", "I", "It", "In", "But", "When", "There", "We", "A", "He", "What")


@dataclass
class _MixtureInputs:
    """The documents of a mixture run, truncated to ``doc_tokens`` with the initial model's
    tokenizer: the human training documents, the held-out ones and the other corpus."""

    init: Path
    tokenizer: object
    n_params: int
    human: list[str]
    held: list[str]
    other: list[str]
    other_groups: list[str]


def _mixture_inputs(data_dir: str, out: Path, preset: ExperimentPreset, seed: int):
    """Split the corpus by group, check it is big enough, and make the initial model."""
    main_docs, other_docs, other_groups = split_by_group(data_dir, preset, seed)
    need = preset.held_out_docs + preset.mixture_docs
    if len(main_docs) < need or not other_docs:
        from tokedit.errors import InputError

        raise InputError(
            f"{data_dir}: {len(main_docs)} documents in the training groups and "
            f"{len(other_docs)} in the other groups; the preset needs {need} and at least one",
            remedy="use a bigger corpus (several plays or shards) or a smaller preset",
        )
    held_raw, train_raw = main_docs[: preset.held_out_docs], main_docs[preset.held_out_docs : need]
    init = out / "init"
    tokenizer, n_params = make_init(init, train_raw, preset, seed)
    from tokedit.io.texts import truncate_to_tokens

    held = truncate_to_tokens(held_raw, tokenizer, preset.doc_tokens)
    other = truncate_to_tokens(other_docs[: preset.held_out_docs], tokenizer, preset.doc_tokens)
    human = truncate_to_tokens(train_raw, tokenizer, preset.doc_tokens)
    return _MixtureInputs(init, tokenizer, n_params, human, held, other, other_groups)


def _mixture_line(inputs: _MixtureInputs, preset: ExperimentPreset) -> str:
    """The run's opening stage line: the document counts, the model size and the prior."""
    return (
        f"mixture: {len(inputs.human)} training docs, {len(inputs.held)} held out, "
        f"{len(inputs.other)} of the other corpus ({', '.join(inputs.other_groups)}); model "
        f"{inputs.n_params / 1e6:.2f}M parameters; prior: "
        + (
            f"trained here ({preset.prior_steps} steps)"
            if preset.base == "scratch"
            else f"{preset.base} (pretrained)"
        )
    )


def _prior(out: Path, inputs: _MixtureInputs, preset: ExperimentPreset, seed: int):
    """The prior's directory and info: trained here on the human documents (``scratch``), else
    the pretrained base, as ToEdit's synthetic corpus comes from a strong LLM."""
    if preset.base == "scratch":
        prior_dir = out / "prior"
        train = train_run(
            inputs.init, prior_dir, inputs.human, preset, seed, steps=preset.prior_steps
        )
        return prior_dir, {"base": "scratch", **train}
    return resolve_base(out / "prior", [], preset, seed)


def _mixed_datasets(
    human: list[str], synthetic: list[str], edited: list[str], fractions, seed: int
) -> dict[str, list[str]]:
    """The arms' training sets: human; per fraction ``f``, a seeded random ``f`` share of the
    human documents replaced by synthetic ones (nested: a bigger share keeps the smaller's
    replacements); toedit."""
    rank = np.argsort(np.random.default_rng(seed + 1).permutation(len(human)))
    datasets = {"human": human}
    for f in fractions:
        k = round(f * len(human))
        datasets[f"synthetic-{round(100 * f)}%"] = [
            synthetic[i] if rank[i] < k else human[i] for i in range(len(human))
        ]
    datasets["toedit"] = edited
    return datasets


def _perplexities(model, tok, inputs: _MixtureInputs, preset: ExperimentPreset) -> dict:
    """A model's perplexity on the held-out documents and on the other corpus."""
    return {
        "held_out_ppl": held_out_perplexity(model, tok, inputs.held, preset.block_size),
        "other_corpus_ppl": held_out_perplexity(model, tok, inputs.other, preset.block_size),
    }


def _train_arm(
    name: str,
    texts: list[str],
    inputs: _MixtureInputs,
    reference,
    out: Path,
    preset: ExperimentPreset,
    seed: int,
) -> dict:
    """Train the initial model on one arm's texts; its perplexities and data metrics."""
    t0 = time.perf_counter()
    train = train_run(inputs.init, out / "arms" / name, texts, preset, seed)
    model, tok = load(out / "arms" / name)
    return {
        "synthetic_share": (
            0.0 if name in ("human", "toedit") else float(name.split("-")[1][:-1]) / 100
        ),
        "docs": len(texts),
        "train": train,
        **_perplexities(model, tok, inputs, preset),
        "data": corpus_metrics(inputs.tokenizer, texts, reference),
        "seconds": time.perf_counter() - t0,
    }


def _arm_line(name: str, arm: dict) -> str:
    """The stage line of one trained arm."""
    return (
        f"  {name:>15}: held-out ppl {arm['held_out_ppl']:.2f}, other corpus "
        f"{arm['other_corpus_ppl']:.2f} ({arm['train']['train_tokens']} "
        f"tokens, {arm['seconds']:.0f}s)"
    )


def run_mixture(
    data_dir: str,
    out_dir: str,
    preset: ExperimentPreset,
    *,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict:
    """A small-scale analogue of the ToEdit paper's non-iterative collapse (Table 1), not a
    reproduction (docs/training.md, docs/fidelity.md).

    The corpus is split by group (the demo corpus: by play, :func:`data.split_by_group`):
    the arms train on documents of the main plays, and perplexity is measured on held-out
    documents of those plays and on documents of the other plays (a second corpus). A prior
    (``preset.base``: a pretrained model such as Gemma 3 270M; ``scratch``: the initial model
    trained on the human training documents for ``prior_steps``) samples an independent
    synthetic corpus from generic one-word prompts (``GENERIC_PROMPTS``; no human document is
    a prompt) and ToEdit-edits the human documents. Arms, all with the same
    number of documents of ``doc_tokens`` tokens: human; for each fraction ``f``, a seeded
    random ``f`` share of the human documents replaced by synthetic ones; toedit. Each arm
    trains the same initial model for ``steps``.
    """
    log = log or logger.info  # a caller may still route the stage lines (log=)
    quiet_transformers()
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inputs = _mixture_inputs(data_dir, out, preset, seed)
    human = inputs.human
    log(_mixture_line(inputs, preset))
    prior_dir, prior_info = _prior(out, inputs, preset, seed)
    prior, tok = load(prior_dir)
    prompts = [GENERIC_PROMPTS[i % len(GENERIC_PROMPTS)] for i in range(len(human))]
    synthetic = prompted(prior, tok, prompts, preset.doc_tokens, preset, seed)
    edited, edit_stats = toedit(human, prior_dir, out / "toedit-work", preset, seed)
    reference = unigram_tables(inputs.tokenizer, human + inputs.held)
    datasets = _mixed_datasets(human, synthetic, edited, preset.fractions, seed)
    result: dict = {
        "experiment": "mixture",
        "preset": asdict(preset),
        "seed": seed,
        "parameters": inputs.n_params,
        "prior": {**prior_info, **_perplexities(prior, tok, inputs, preset)},
        "synthetic_corpus": {
            "prompts": list(GENERIC_PROMPTS),
            "docs": len(synthetic),
            "examples": synthetic[:3],
        },
        "other_corpus": {"groups": inputs.other_groups, "docs": len(inputs.other)},
        "edit": edit_stats,
        "arms": {},
    }
    for name, texts in datasets.items():
        result["arms"][name] = arm = _train_arm(name, texts, inputs, reference, out, preset, seed)
        log(_arm_line(name, arm))
    result["seconds"] = time.perf_counter() - t_start
    write_mixture_report(result, out)
    return result
