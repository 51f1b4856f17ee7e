"""``tokedit experiment recursive``: ForTIFAI-style recursive training, generation by
generation, with CE, TCE and ToEdit arms: generation 0 fine-tunes a pretrained base, each
later generation fine-tunes the previous generation's checkpoint on the data that checkpoint
wrote (beam search as ForTIFAI's ``generate.py`` by default) plus a fresh real slice."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tokedit.experiments.data import held_out_and_train, texts_sha, write_dataset
from tokedit.experiments.metrics import (
    KL_FLOOR,
    corpus_metrics,
    kl_nats_with_floor,
    knowledge_test,
    kt_accuracy_of,
    make_knowledge_test,
    make_probe,
    probability_histogram,
    probe_accuracy,
    time_to_failure,
    unigram_counts,
    unigram_tables,
)
from tokedit.experiments.models import (
    beam_generate,
    held_out_perplexity,
    load,
    quiet_transformers,
    regenerate,
    resolve_base,
    score,
    toedit,
    train_run,
)
from tokedit.experiments.presets import ExperimentPreset
from tokedit.experiments.report import write_recursive_report

logger = logging.getLogger(__name__)


def recursive_arms(gammas, with_toedit: bool) -> list[dict]:
    arms = [{"name": "ce", "loss": "ce", "gamma": None, "data": "regenerate"}]
    arms += [
        {"name": f"tce-{g:g}", "loss": "tce", "gamma": g, "data": "regenerate"} for g in gammas
    ]
    if with_toedit:
        arms.append({"name": "toedit", "loss": "ce", "gamma": None, "data": "toedit"})
    return arms


METRIC_DEFINITIONS = {
    "held_out_ppl": "tokedit: perplexity of the generation's model on held-out real documents",
    "probe_accuracy": "tokedit: share of held-out sentences scored above their one-word-swapped"
    " twin (fluency on unseen text, not retention)",
    "kt_accuracy": "ForTIFAI-style knowledge test (src/evaluate_utils.py question_answerer):"
    " items are sentences of the real training slices after their preceding sentence; share"
    " whose true variant has the higher mean log-prob on the answer span",
    "kt_accuracy_seen": "the knowledge test on the items of real slices 0..g (ForTIFAI's"
    " until_stage_g)",
    "generated.unigram_kl": "tokedit: KL(real || produced) of token unigrams, bits, add-0.5"
    " smoothing over the union of seen tokens (real = training slices and held-out)",
    "generated.kl_synthetic_to_real_nats": "ForTIFAI (src/kl-divregence.ipynb kl_divergence):"
    f" KL(produced || real training slices) of token unigrams, nats, zeros floored at {KL_FLOOR}",
    "*_ratio": "a metric over the arm's generation-0 value (failure lines)",
}


def metric_series(rows: list[dict], metric: str) -> list:
    """One metric of an arm, generation by generation (``*_ratio``: over generation 0's)."""
    if metric.endswith("_ratio"):
        values = metric_series(rows, metric[: -len("_ratio")])
        return [v / values[0] for v in values]
    if metric in ("kl_synthetic_to_real_nats", "unigram_kl"):
        return [r["generated"][metric] for r in rows]
    return [r[metric] for r in rows]


@dataclass
class _RecursiveInputs:
    """What every arm and generation of a recursive run share: the base, the real slices,
    the held-out documents, the reference tables, the probe and the knowledge test."""

    base_dir: Path
    base_info: dict
    tokenizer: object
    n_params: int
    held: list[str]
    real: list[str]
    slices: list[list[str]]
    reference: object
    real_counts: object
    probe: list
    kt: list[dict]


def _recursive_inputs(
    data_dir: str, out: Path, preset: ExperimentPreset, seed: int
) -> _RecursiveInputs:
    """Read and split the corpus, resolve the base and build the fixed evaluation sets."""
    G, N = preset.generations, preset.docs_per_slice
    n_base = preset.base_docs if preset.base == "scratch" else 0
    held_raw, rest_raw = held_out_and_train(data_dir, preset, seed, n_base + (G + 1) * N)
    base_raw, slices_raw = rest_raw[:n_base], rest_raw[n_base:]
    base_dir, base_info = resolve_base(out / "base", base_raw, preset, seed)
    base_model, tokenizer = load(base_dir)
    n_params = sum(p.numel() for p in base_model.parameters())
    from tokedit.io.texts import truncate_to_tokens
    from tokedit.training.trainer import weights_sha

    base_info["weights_sha"] = weights_sha(base_model)
    del base_model
    held = truncate_to_tokens(held_raw, tokenizer, preset.doc_tokens)
    real = truncate_to_tokens(slices_raw, tokenizer, preset.doc_tokens)
    slices = [real[k * N : (k + 1) * N] for k in range(G + 1)]
    reference = unigram_tables(tokenizer, real + held)
    real_counts = unigram_counts(tokenizer, real)
    probe = make_probe(held_raw, slices_raw, preset.probe_pairs, seed)
    kt = make_knowledge_test(real, real, preset.kt_items, seed)
    for item in kt:
        item["slice"] = item["doc"] // N
    return _RecursiveInputs(
        base_dir,
        base_info,
        tokenizer,
        n_params,
        held,
        real,
        slices,
        reference,
        real_counts,
        probe,
        kt,
    )


def _recursive_result(preset: ExperimentPreset, seed: int, inputs: _RecursiveInputs) -> dict:
    """The run's result before any arm: the setup, the real data's metrics, the test sets."""
    probe, kt = inputs.probe, inputs.kt
    return {
        "experiment": "recursive",
        "preset": asdict(preset),
        "seed": seed,
        "parameters": inputs.n_params,
        "base": inputs.base_info,
        "real": {
            **corpus_metrics(inputs.tokenizer, inputs.real, inputs.reference),
            "kl_synthetic_to_real_nats": kl_nats_with_floor(inputs.real_counts, inputs.real_counts),
        },
        "probe": {"pairs": len(probe), "examples": [list(p) for p in probe[:3]]},
        "knowledge_test": {"items": len(kt), "examples": kt[:3]},
        "metric_definitions": METRIC_DEFINITIONS,
        "arms": {},
    }


def _train_generation(
    arm: dict,
    g: int,
    start: Path,
    train_set: list[str],
    out: Path,
    result: dict,
    preset: ExperimentPreset,
    seed: int,
) -> tuple[Path, dict]:
    """Generation ``g``'s checkpoint of ``arm`` and its training summary: ``start`` fine-tuned
    on ``train_set``, or, for the toedit arm's generation 0, the CE arm's (same data, loss
    and seed)."""
    model_dir = out / arm["name"] / f"gen{g}" / "model"
    shared = out / "ce" / "gen0" / "model"
    if g == 0 and arm["name"] == "toedit" and (shared / "config.json").is_file():
        return shared, result["arms"]["ce"][0]["train"]
    train = train_run(
        start,
        model_dir,
        train_set,
        preset,
        seed,
        arm["loss"],
        arm["gamma"] or 0.99,
        steps=preset.finetune_steps,
        learning_rate=preset.finetune_learning_rate,
        batch_size=preset.finetune_batch_size,
        warmup_steps=preset.finetune_warmup_steps,
    )
    return model_dir, train


def _produce(
    arm: dict,
    model,
    tok,
    train_set: list[str],
    model_dir: Path,
    work: Path,
    preset: ExperimentPreset,
    seed: int,
) -> tuple[list[str], dict | None]:
    """The data a generation writes from its training set, and the edit stats (toedit arm)."""
    if arm["data"] == "toedit":
        return toedit(train_set, model_dir, work, preset, seed)
    if preset.generation == "beam":
        return beam_generate(model, tok, train_set, preset), None
    return regenerate(model, tok, train_set, preset, seed), None


def _generated_metrics(
    inputs: _RecursiveInputs,
    produced: list[str],
    work: Path,
    model_dir: Path,
    preset: ExperimentPreset,
) -> dict:
    """The produced data written under ``work``, and its metrics against the real data."""
    tokenizer = inputs.tokenizer
    data = write_dataset(work / "generated", produced)
    return {
        "docs": len(produced),
        **corpus_metrics(tokenizer, produced, inputs.reference),
        "kl_synthetic_to_real_nats": kl_nats_with_floor(
            unigram_counts(tokenizer, produced), inputs.real_counts
        ),
        "hist10": probability_histogram(score(data, work / "generated-scores", model_dir, preset)),
    }


def _run_generation(
    arm: dict,
    g: int,
    start: Path,
    train_set: list[str],
    inputs: _RecursiveInputs,
    out: Path,
    result: dict,
    preset: ExperimentPreset,
    seed: int,
) -> tuple[dict, list[str], Path]:
    """Train, evaluate and let generate one generation of an arm: its row, the data it
    produced and its checkpoint."""
    t0 = time.perf_counter()
    work = out / arm["name"] / f"gen{g}"
    model_dir, train = _train_generation(arm, g, start, train_set, out, result, preset, seed)
    model, tok = load(model_dir)
    kt = inputs.kt
    test = knowledge_test(model, tok, kt)
    seen = [s for it, s in zip(kt, test["scores"], strict=True) if it["slice"] <= g]
    row = {
        "generation": g,
        "model_dir": str(model_dir.relative_to(out)),
        "train_docs": len(train_set),
        "train_data_sha": texts_sha(train_set),
        "train": train,
        "held_out_ppl": held_out_perplexity(model, tok, inputs.held, preset.block_size),
        "probe_accuracy": probe_accuracy(inputs.probe, model_dir, work, preset),
        "kt_accuracy": test["accuracy"],
        "kt_accuracy_seen": kt_accuracy_of(seen),
    }
    produced, edit = _produce(arm, model, tok, train_set, model_dir, work, preset, seed + g)
    if arm["data"] == "toedit":
        row["edit"] = edit
    row["generated"] = _generated_metrics(inputs, produced, work, model_dir, preset)
    row["seconds"] = time.perf_counter() - t0
    return row, produced, model_dir


def _generation_line(name: str, g: int, row: dict) -> str:
    """The stage line of one generation of an arm."""
    masked = row["train"]["tce_masked_share_last"]
    return (
        f"  {name:>10} gen {g}: held-out ppl {row['held_out_ppl']:.2f}, KT "
        f"{row['kt_accuracy']:.3f}, probe {row['probe_accuracy']:.3f}, KL(syn||real) "
        f"{row['generated']['kl_synthetic_to_real_nats']:.4f} nats, distinct-2 "
        f"{row['generated']['distinct_2']:.4f}"
        + (f", TCE masked {masked:.3f}" if masked is not None else "")
        + f" ({row['seconds']:.0f}s)"
    )


def _run_arm(
    arm: dict,
    inputs: _RecursiveInputs,
    out: Path,
    result: dict,
    preset: ExperimentPreset,
    seed: int,
    log: Callable[[str], None],
) -> list[dict]:
    """All generations of one arm, each continuing the previous one's checkpoint on the data
    it produced plus the next real slice."""
    rows = []
    train_set = inputs.slices[0]
    start = inputs.base_dir
    for g in range(preset.generations + 1):
        row, produced, model_dir = _run_generation(
            arm, g, start, train_set, inputs, out, result, preset, seed
        )
        rows.append(row)
        log(_generation_line(arm["name"], g, row))
        if g < preset.generations:
            train_set = produced + inputs.slices[g + 1]
            start = model_dir  # the next generation continues from this checkpoint
    return rows


def _times_to_failure(arms: dict[str, list[dict]], failure_lines) -> dict:
    """For each arm and failure line, the generation at which the line is first crossed."""
    return {
        name: {m: time_to_failure(metric_series(rows, m), d, v) for m, d, v in failure_lines}
        for name, rows in arms.items()
    }


def run_recursive(
    data_dir: str,
    out_dir: str,
    preset: ExperimentPreset,
    *,
    seed: int = 0,
    with_toedit: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """ForTIFAI's recursive training at a chosen scale (``docs/training.md``).

    Generation 0 fine-tunes the pretrained base (``preset.base``) on real slice 0; generation
    ``g + 1`` fine-tunes generation ``g``'s checkpoint on the data generation ``g`` produced
    from its own training set (``preset.generation``: ``beam`` as ForTIFAI, ``sample``; the
    ``toedit`` arm edits instead) plus fresh real slice ``g + 1``. Metrics of generation ``g``:
    its model on held-out real text, the probe and the knowledge test, and the data it
    produced; then the generation at which each failure line is first crossed.
    """
    log = log or logger.info  # a caller may still route the stage lines (log=)
    quiet_transformers()
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inputs = _recursive_inputs(data_dir, out, preset, seed)
    arms = recursive_arms(preset.gammas, with_toedit)
    log(
        f"recursive: {preset.generations + 1} generations x {len(arms)} arms; "
        f"{preset.docs_per_slice} real docs per slice, "
        f"{len(inputs.held)} held out, {len(inputs.probe)} probe pairs, {len(inputs.kt)} "
        f"knowledge-test items; base {preset.base} ({inputs.n_params / 1e6:.2f}M parameters); "
        f"data by {preset.generation}"
    )
    result = _recursive_result(preset, seed, inputs)
    for arm in arms:
        result["arms"][arm["name"]] = _run_arm(arm, inputs, out, result, preset, seed, log)
    result["arm_definitions"] = arms
    result["failure_lines"] = [list(x) for x in preset.failure_lines]
    result["time_to_failure"] = _times_to_failure(result["arms"], preset.failure_lines)
    result["seconds"] = time.perf_counter() - t_start
    write_recursive_report(result, out)
    return result
