"""The library wired for the experiments: the shared initial model, training runs,
regeneration, scoring and ToEdit editing of a generated corpus."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np

from tokedit.experiments.data import read_dataset, write_dataset
from tokedit.experiments.presets import ExperimentPreset

logger = logging.getLogger(__name__)


def make_init(out_dir: Path, tokenizer_texts: list[str], preset: ExperimentPreset, seed: int):
    """Train the shared tokenizer and save it with the shared initial weights to ``out_dir``."""
    from tokedit.training.prior import PRESETS as MODEL_PRESETS
    from tokedit.training.prior import build_model, train_tokenizer

    tokenizer = train_tokenizer(tokenizer_texts, preset.vocab_size)
    positions = max(preset.block_size, MODEL_PRESETS[preset.model]["max_position_embeddings"])
    overrides = {"max_position_embeddings": positions, **preset.model_overrides}
    model = build_model(tokenizer, preset.model, seed=seed, **overrides)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return tokenizer, sum(p.numel() for p in model.parameters())


def train_run(
    init_dir: Path,
    out_dir: Path,
    texts: list[str],
    preset: ExperimentPreset,
    seed: int,
    loss: str = "ce",
    gamma: float = 0.99,
    steps: int | None = None,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    warmup_steps: int | None = None,
) -> dict:
    """Train a copy of the model in ``init_dir`` on ``texts`` (no held-out split) and save it.

    The summary's ``initial_weights_sha`` is the fingerprint (``weights_sha``) of the weights
    the trainer loaded, taken before its first step."""
    from tokedit.training.trainer import TrainConfig, train_model

    config = TrainConfig(
        preset=preset.model,
        block_size=preset.block_size,
        batch_size=batch_size or preset.batch_size,
        learning_rate=learning_rate or preset.learning_rate,
        warmup_steps=preset.warmup_steps if warmup_steps is None else warmup_steps,
        max_steps=steps or preset.steps,
        eval_every_nth_doc=0,
        seed=seed,
        loss=loss,
        gamma=gamma,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # Trainer prints its logs without tqdm
        summary = train_model(
            None,
            str(out_dir),
            config=config,
            model_path=str(init_dir),
            texts=texts,
            progress=False,
            log=lambda m: None,
        )
    keys = ("steps", "train_tokens", "train_loss", "seconds", "initial_weights_sha")
    out = {k: summary[k] for k in keys}
    out["started_from"] = str(init_dir)
    shares = summary.get("tce_masked_share") or []  # TCE: share of masked tokens per log step
    out["tce_masked_share_last"] = shares[-1] if shares else None
    return out


def quiet_transformers() -> None:
    """No per-load progress bars: every generation loads a few models."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load(model_dir: Path):
    from tokedit.scoring.hf import load_causal_lm, load_tokenizer

    return load_causal_lm(str(model_dir)), load_tokenizer(str(model_dir))


def held_out_perplexity(model, tokenizer, texts: list[str], block_size: int) -> float:
    from tokedit.training.trainer import evaluate_perplexity, pack_texts

    return evaluate_perplexity(model, *pack_texts(tokenizer, texts, block_size))


def regenerate(model, tokenizer, texts: list[str], preset: ExperimentPreset, seed: int):
    """Each text's first ``prefix_tokens`` tokens, continued by ``model`` to its own length."""
    from tokedit.training.generate import GenerateOptions, generate_continuations

    options = GenerateOptions(
        prefix_tokens=preset.prefix_tokens,
        max_new_tokens=preset.doc_tokens - preset.prefix_tokens,
        temperature=preset.temperature,
        top_p=preset.top_p,
        batch_size=preset.generate_batch_size,
        seed=seed,
    )
    return generate_continuations(model, tokenizer, texts, options)


def beam_generate(model, tokenizer, texts: list[str], preset: ExperimentPreset) -> list[str]:
    """ForTIFAI's beam-searched synthetic data (``training.generate.generate_beam_corpus``)."""
    from tokedit.training.generate import BeamOptions, generate_beam_corpus

    options = BeamOptions(
        context_tokens=preset.context_tokens,
        new_tokens=preset.new_tokens,
        num_beams=preset.num_beams,
        repetition_penalty=preset.repetition_penalty,
        batch_size=max(1, preset.generate_batch_size // preset.num_beams),
    )
    return generate_beam_corpus(model, tokenizer, texts, options)


def prompted(model, tokenizer, prompts: list[str], length: int, preset, seed: int) -> list[str]:
    """Documents of ``length`` tokens sampled from ``model`` after each of ``prompts`` (a
    synthetic corpus that owes nothing to the human documents but the model)."""
    from tokedit.training.generate import GenerateOptions, generate_continuations

    options = GenerateOptions(
        prefix_tokens=length,
        max_new_tokens=length,
        temperature=preset.temperature,
        top_p=preset.top_p,
        batch_size=preset.generate_batch_size,
        seed=seed,
    )
    return generate_continuations(
        model, tokenizer, prompts, options, lengths=[length] * len(prompts)
    )


def resolve_base(
    out_dir: Path, base_texts: list[str], preset: ExperimentPreset, seed: int
) -> tuple[Path, dict]:
    """The pretrained model generation 0 fine-tunes. ``preset.base == "scratch"``: a tokenizer
    and a ``preset.model``-sized model pretrained on ``base_texts`` for ``base_steps``, made
    once and kept in ``out_dir`` (reused while ``base.json`` records the same recipe); a prior
    name (``tokedit prior fetch``), a directory, a GGUF file or a hub name otherwise."""
    import json

    if preset.base != "scratch":
        from tokedit.scoring.priors import PRIORS, prior_dir

        path = prior_dir(preset.base) if preset.base in PRIORS else Path(preset.base).expanduser()
        if preset.base in PRIORS and not (path / "config.json").is_file():
            from tokedit.errors import InputError

            raise InputError(
                f"the prior {preset.base!r} is not fetched ({path})",
                remedy=f"run `tokedit prior fetch {preset.base}` first",
            )
        where = str(path) if path.exists() else preset.base
        return Path(where), {"base": preset.base, "path": where, "pretrained_here": False}
    from tokedit.experiments.data import texts_sha

    recipe = {
        "base": "scratch",
        "model": preset.model,
        "vocab_size": preset.vocab_size,
        "steps": preset.base_steps,
        "learning_rate": preset.base_learning_rate,
        "seed": seed,
        "texts_sha": texts_sha(base_texts),
    }
    record = out_dir / "base.json"
    if record.is_file() and json.loads(record.read_text()).get("recipe") == recipe:
        logger.info("reusing the base model in %s", out_dir)
        return out_dir / "model", json.loads(record.read_text())
    init = out_dir / "init"
    make_init(init, base_texts, preset, seed)
    logger.info(
        "pretraining the base model (%d steps on %d documents)", preset.base_steps, len(base_texts)
    )
    train = train_run(
        init,
        out_dir / "model",
        base_texts,
        preset,
        seed,
        steps=preset.base_steps,
        learning_rate=preset.base_learning_rate,
    )
    info = {
        "recipe": recipe,
        "train": train,
        "path": str(out_dir / "model"),
        "pretrained_here": True,
    }
    record.write_text(json.dumps(info, indent=2) + "\n")
    return out_dir / "model", info


def score(data_dir: Path, scores_dir: Path, model_dir: Path, preset: ExperimentPreset) -> Path:
    from tokedit.scoring.options import ScoreOptions
    from tokedit.scoring.run import score_dataset

    options = ScoreOptions(
        max_length=max(preset.block_size, preset.doc_tokens + 1),
        overlap=16,
        batch_tokens=preset.score_batch_tokens,
        candidates_min_p=EDIT_MIN_P,
    )
    score_dataset(
        str(data_dir),
        str(scores_dir),
        model=str(model_dir),
        options=options,
        id_column="id",
        progress=False,
        overwrite=True,  # a rerun into the same OUT must not reuse stale scores
    )
    return scores_dir


EDIT_MIN_P = 0.05  # candidates are stored down to P = 0.05: small models are rarely confident


def toedit(
    texts: list[str], model_dir: Path, work: Path, preset: ExperimentPreset, seed: int
) -> tuple[list[str], dict]:
    """ToEdit: score ``texts`` with ``model_dir``, pick ``p`` so that ``target_edit_rate`` of the
    tokens have ``P > p``, and resample those tokens from the stored top-8 candidates
    (``edit_dataset`` defaults, conditioning on the original prefix)."""
    from tokedit.analysis.probs import accumulate_scores_dir
    from tokedit.editor import EditOptions, edit_dataset

    src = write_dataset(work / "to-edit", texts)
    scores = score(src, work / "to-edit-scores", model_dir, preset)
    p = accumulate_scores_dir(scores).suggest(preset.target_edit_rate)["p"]
    p = round(min(max(p, EDIT_MIN_P), 0.999), 4)
    result = edit_dataset(
        str(src),
        str(work / "edited"),
        scores_dir=str(scores),
        options=EditOptions(ps=(p,), seed=seed),
        id_column="id",
        progress=False,
        overwrite=True,
    )
    edited = read_dataset(work / "edited")
    totals = next(iter(result.totals.values()))
    stats = {"p": p}
    scored = totals.scored
    stats["scored_tokens"] = scored
    stats["above_share"] = totals.above_share if scored else None
    stats["changed_share"] = totals.changed_share if scored else None
    stats["changed_docs_share"] = float(
        np.mean([a != b for a, b in zip(texts, edited, strict=True)])
    )
    return edited, stats
