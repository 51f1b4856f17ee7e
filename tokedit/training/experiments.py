"""Model-collapse experiments at small scale: ``recursive`` and ``mixture``.

They are small-scale *analogues* of the papers' experiments, not reproductions: ``recursive``
follows the structure of ForTIFAI's recursive training and ``mixture`` that of ToEdit's
Table 1, with a tiny Llama-style model trained from scratch on a few hundred documents.
ForTIFAI continues fine-tuning a pretrained 1B-class model from stage to stage on
beam-searched continuations; ToEdit's Table 1 mixes an independent synthetic corpus and
measures perplexity on other corpora. docs/fidelity.md lists the differences.

Both experiments reuse the library: the trainer (``train_model``), prefix-conditioned
generation (``generate_continuations``), the scorer (``score_dataset``), the editor
(``edit_dataset``) and the analysis accumulators (n-gram tables, the 10-bin probability
histogram). Nothing here re-implements scoring, editing or IO; it only wires them together.

Common setup (both experiments):

* Real documents are read from a dataset directory, cut into pieces of at most
  ``doc_chars`` characters (at paragraph breaks, ``demo.split_documents``), shuffled with the
  seed and, once a byte-level BPE tokenizer has been trained on the first training slice,
  truncated to their first ``doc_tokens`` tokens (a byte-exact prefix). A held-out set of real
  documents is never trained on.
* One tokenizer and one initial model (``build_model``, fixed seed) are made once and saved to
  ``OUT/init``; every training run of every arm and generation starts from these same
  weights, so the runs differ only in their data and loss.
* Every training run has the same number of optimizer steps (``steps``), batch and block
  size: the same compute whatever the amount of data.
* Held-out perplexity is plain cross entropy (whatever the training loss) on the held-out
  real documents packed into blocks.

See ``the README (experiments)`` for the arms, the metrics and the presets.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from tokedit.analysis.html import new_figure
from tokedit.analysis.report import json_safe

# ----------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class ExperimentPreset:
    """Sizes of one experiment run (recursive and mixture read the fields they need)."""

    model: str = "tiny"  # a tokedit.training.prior.PRESETS name ...
    model_overrides: dict = field(default_factory=dict)  # ... with these fields replaced
    vocab_size: int = 512
    doc_chars: int = 2000  # real documents cut into pieces of at most this many characters
    doc_tokens: int = 128  # ... then truncated to this many tokens
    prefix_tokens: int = 16  # generation keeps this many real tokens and samples the rest
    temperature: float = 1.0
    top_p: float = 1.0
    held_out_docs: int = 64
    # recursive
    generations: int = 3  # G: generations 0..G, real slices 0..G
    docs_per_slice: int = 64
    gammas: tuple[float, ...] = (0.9,)
    probe_pairs: int = 64
    # mixture
    mixture_docs: int = 256
    prior_steps: int = 200
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    # ToEdit arms
    target_edit_rate: float = 0.10
    # training (every run)
    steps: int = 100
    batch_size: int = 16
    block_size: int = 128
    learning_rate: float = 3e-3
    warmup_steps: int = 10
    generate_batch_size: int = 32
    score_batch_tokens: int = 16384


PRESETS: dict[str, ExperimentPreset] = {
    # seconds-sized: the test suite
    "test": ExperimentPreset(
        model="tiny",
        vocab_size=300,
        doc_chars=600,
        doc_tokens=48,
        prefix_tokens=8,
        held_out_docs=8,
        generations=1,
        docs_per_slice=12,
        probe_pairs=8,
        mixture_docs=16,
        prior_steps=4,
        fractions=(0.5, 1.0),
        steps=3,
        batch_size=4,
        block_size=48,
        warmup_steps=1,
    ),
    # the demo corpus on 2 CPU cores, within ~20 minutes per experiment
    "tiny": ExperimentPreset(
        model="tiny",
        model_overrides=dict(hidden_size=128, intermediate_size=344, num_hidden_layers=2),
        vocab_size=1024,
        doc_chars=2000,
        doc_tokens=96,
        prefix_tokens=16,
        held_out_docs=96,
        generations=3,
        docs_per_slice=96,
        # A 0.5M-parameter model gives no token P > 0.9 (measured: TCE-0.9 equalled CE);
        # about 5 % of its tokens are above 0.5, so gamma 0.5 is where TCE acts at this size.
        gammas=(0.5,),
        probe_pairs=200,
        mixture_docs=512,
        prior_steps=200,
        steps=100,
        batch_size=16,
        block_size=128,
        generate_batch_size=128,
    ),
    # documented for a GPU, not run here: a ~1B-parameter Llama-shaped model (the
    # Llama-3.2-1B / TinyLlama-1.1B class: hidden 2048, 16 layers, 32 heads, MLP 8192)
    # trained from scratch; use with a corpus of a few billion tokens.
    "gpu-1b": ExperimentPreset(
        model="base",
        model_overrides=dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            max_position_embeddings=2048,
        ),
        vocab_size=32000,
        doc_chars=16000,
        doc_tokens=1024,
        prefix_tokens=64,
        held_out_docs=2000,
        generations=5,
        docs_per_slice=200_000,
        gammas=(0.9, 0.99),
        probe_pairs=2000,
        mixture_docs=1_000_000,
        prior_steps=20000,
        steps=20000,
        batch_size=32,
        block_size=1024,
        learning_rate=3e-4,
        warmup_steps=500,
        generate_batch_size=256,
        score_batch_tokens=262144,
    ),
}


def get_preset(name: str, **overrides) -> ExperimentPreset:
    from tokedit.errors import InputError

    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}", remedy=f"choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


# ----------------------------------------------------------------------------- data


def real_documents(data_dir: str, preset: ExperimentPreset, seed: int, text_column="text"):
    """The real documents: pieces of at most ``doc_chars`` characters, shuffled by ``seed``."""
    from tokedit.demo import split_documents
    from tokedit.training.trainer import read_texts

    pieces = [
        p.strip("\n")
        for t in read_texts(data_dir, text_column)
        for p in split_documents(t, preset.doc_chars)
    ]
    pieces = [p for p in pieces if len(p.split()) >= 8]
    order = np.random.default_rng(seed).permutation(len(pieces))
    return [pieces[i] for i in order]


def texts_sha(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def write_dataset(out_dir: Path, texts: list[str], prefix: str = "doc") -> Path:
    from tokedit.demo import write_texts

    out_dir.mkdir(parents=True, exist_ok=True)
    return write_texts(out_dir, [f"{prefix}-{i:06d}" for i in range(len(texts))], texts)


def read_dataset(out_dir: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(out_dir / "docs.parquet", columns=["text"]).column("text").to_pylist()


# ----------------------------------------------------------------------------- models


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
) -> dict:
    """Train a copy of the initial model on ``texts`` (no held-out split) and save it."""
    from tokedit.training.trainer import TrainConfig, train_model

    config = TrainConfig(
        preset=preset.model,
        block_size=preset.block_size,
        batch_size=preset.batch_size,
        learning_rate=preset.learning_rate,
        warmup_steps=preset.warmup_steps,
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
    out = {k: summary[k] for k in ("steps", "train_tokens", "train_loss", "seconds")}
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


# ----------------------------------------------------------------------------- scoring & editing


def score(data_dir: Path, scores_dir: Path, model_dir: Path, preset: ExperimentPreset) -> Path:
    from tokedit.scoring.run import score_dataset
    from tokedit.scoring.scorer import ScoreOptions

    options = ScoreOptions(
        max_len=max(preset.block_size, preset.doc_tokens + 1),
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


def probability_histogram(scores_dir: Path) -> dict:
    """The 10-bin histogram of ``P(token)`` over a scores directory (``ProbabilityAccumulator``)."""
    from tokedit.analysis.probs import accumulate_scores_dir

    s = accumulate_scores_dir(scores_dir).summary()
    return {"shares": s["hist10"]["shares"], "mean_logprob": s["mean_logprob"]}


def mean_logprobs(scores_dir: Path) -> list[float]:
    import pyarrow.parquet as pq

    return (
        pq.read_table(scores_dir / "docs.parquet", columns=["mean_logprob"]).column(0).to_pylist()
    )


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
    totals = next(iter(result["totals"]["p"].values()), {}) if result.get("totals") else {}
    stats = {"p": p}
    scored = totals.get("scored", 0)
    stats["scored_tokens"] = scored
    stats["above_share"] = totals.get("above", 0) / scored if scored else None
    stats["changed_share"] = totals.get("changed", 0) / scored if scored else None
    stats["changed_docs_share"] = float(
        np.mean([a != b for a, b in zip(texts, edited, strict=True)])
    )
    return edited, stats


# ----------------------------------------------------------------------------- metrics


def unigram_tables(tokenizer, texts: list[str], max_n: int = 2):
    from tokedit.analysis.ngrams import NgramCounterSet
    from tokedit.training.trainer import tokenize_texts

    docs = tokenize_texts(tokenizer, texts)
    counter = NgramCounterSet(id_limit=len(tokenizer), max_n=max_n)
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    counter.add(np.concatenate(docs).astype(np.uint64) if docs else np.zeros(0, np.uint64), lengths)
    return counter.finish()


def corpus_metrics(tokenizer, texts: list[str], reference) -> dict:
    """Unigram KL(real || texts) in bits (add-0.5 smoothing) and distinct-1 / distinct-2."""
    from tokedit.analysis.ngrams import compare, concentration

    tables = unigram_tables(tokenizer, texts)
    kl = compare(reference[1], tables[1], rare_max_count=2, alpha=0.5)["kl_ref_to_corpus"]
    return {
        "unigram_kl": kl,
        "distinct_1": concentration(tables[1])["distinct_ratio"],
        "distinct_2": concentration(tables[2])["distinct_ratio"],
    }


# --- the knowledge-retention probe


SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
WORD = re.compile(r"[A-Za-z]+")


def _content_words(sentence: str) -> list[re.Match]:
    return [m for m in WORD.finditer(sentence) if len(m.group()) >= 4 and m.group().islower()]


def make_probe(texts: list[str], vocabulary_texts: list[str], n_pairs: int, seed: int):
    """Pairs ``(true, corrupted)``: a real held-out sentence and the same sentence with one
    lower-case content word (>= 4 letters) replaced by a different word drawn uniformly from
    the content-word vocabulary of ``vocabulary_texts``. All other characters are kept."""
    rng = np.random.default_rng(seed)
    vocab = sorted({m.group() for t in vocabulary_texts for m in _content_words(t)})
    sentences = []
    for t in texts:
        for s in SENTENCE_END.split(t):
            s = " ".join(s.split())
            if 6 <= len(s.split()) <= 40 and _content_words(s):
                sentences.append(s)
    pairs = []
    for i in rng.permutation(len(sentences))[:n_pairs]:
        s = sentences[i]
        words = _content_words(s)
        m = words[rng.integers(len(words))]
        new = m.group()
        while new == m.group() and len(vocab) > 1:
            new = vocab[rng.integers(len(vocab))]
        corrupted = s[: m.start()] + new + s[m.end() :]
        if corrupted != s:
            pairs.append((s, corrupted))
    return pairs


def probe_accuracy(pairs, model_dir: Path, work: Path, preset: ExperimentPreset) -> float:
    """Share of pairs whose true sentence has the higher mean log-prob per token (scorer)."""
    data = write_dataset(work / "probe", [t for pair in pairs for t in pair])
    lp = mean_logprobs(score(data, work / "probe-scores", model_dir, preset))
    wins = [lp[2 * i] > lp[2 * i + 1] for i in range(len(pairs))]
    return float(np.mean(wins)) if wins else float("nan")


# ----------------------------------------------------------------------------- recursive


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
    ``the README (experiments)``; not a reproduction).

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
    docs = real_documents(data_dir, preset, seed)
    need = preset.held_out_docs + (G + 1) * N
    if len(docs) < need:
        from tokedit.errors import InputError

        raise InputError(
            f"{data_dir}: {len(docs)} documents, the preset needs {need}",
            remedy="use a bigger corpus or a smaller preset",
        )
    held_raw, slices_raw = docs[: preset.held_out_docs], docs[preset.held_out_docs : need]
    init = out / "init"
    tokenizer, n_params = make_init(init, slices_raw[:N], preset, seed)
    from tokedit.demo import truncate_to_tokens

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


# ----------------------------------------------------------------------------- mixture


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
    docs = real_documents(data_dir, preset, seed)
    need = preset.held_out_docs + preset.mixture_docs
    if len(docs) < need:
        from tokedit.errors import InputError

        raise InputError(
            f"{data_dir}: {len(docs)} documents, the preset needs {need}",
            remedy="use a bigger corpus or a smaller preset",
        )
    held_raw, train_raw = docs[: preset.held_out_docs], docs[preset.held_out_docs : need]
    init = out / "init"
    tokenizer, n_params = make_init(init, train_raw, preset, seed)
    from tokedit.demo import truncate_to_tokens

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


# ----------------------------------------------------------------------------- reports


RECURSIVE_PLOTS = {
    "held_out_ppl": ("held-out perplexity (real text)", lambda r: r["held_out_ppl"]),
    "probe_accuracy": ("knowledge-probe accuracy", lambda r: r["probe_accuracy"]),
    "unigram_kl": ("unigram KL(real || generated), bits", lambda r: r["generated"]["unigram_kl"]),
    "distinct_2": ("distinct-2 of generated data", lambda r: r["generated"]["distinct_2"]),
}


def plot_recursive(result: dict, out: Path) -> dict[str, str]:
    files = {}
    for key, (title, get) in RECURSIVE_PLOTS.items():
        fig, (ax,) = new_figure(5, 3.5)
        for name, rows in result["arms"].items():
            ax.plot([r["generation"] for r in rows], [get(r) for r in rows], marker="o", label=name)
        ax.set_xlabel("generation")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        files[key] = f"recursive_{key}.png"
        fig.savefig(out / files[key], dpi=100)
    names = list(result["arms"])
    fig, axes = new_figure(4 * len(names), 3.2, len(names))
    for ax, name in zip(axes, names, strict=True):
        for r in result["arms"][name]:
            shares = [s or 0.0 for s in r["generated"]["hist10"]["shares"]]
            ax.plot(np.arange(0.05, 1, 0.1), shares, marker=".", label=f"gen {r['generation']}")
        ax.set_yscale("symlog", linthresh=1e-3)  # the high-probability bins are small
        ax.set_ylabel("share of tokens")
        ax.set_title(f"{name}: P(token) of generated data")
        ax.set_xlabel("probability bin")
        ax.legend(fontsize=7)
    fig.tight_layout()
    files["hist10"] = "recursive_hist10.png"
    fig.savefig(out / files["hist10"], dpi=100)
    return files


def _html(title: str, intro: str, table: str, images: dict[str, str]) -> str:
    imgs = "".join(f'<img src="{f}" alt="{k}">' for k, f in images.items())
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>"
        "body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:right}"
        "img{margin:4px;border:1px solid #ccc}</style></head><body>"
        f"<h1>{title}</h1><p>{intro}</p>{table}<div>{imgs}</div></body></html>"
    )


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4g}"


def write_recursive_report(result: dict, out: Path) -> None:
    result["plots"] = plot_recursive(result, out)
    head = "<tr><th>arm</th><th>gen</th><th>held-out ppl</th><th>probe acc</th><th>unigram KL</th><th>distinct-2</th><th>P&gt;0.9 share</th></tr>"
    body = "".join(
        f"<tr><td>{name}</td><td>{r['generation']}</td><td>{_fmt(r['held_out_ppl'])}</td>"
        f"<td>{_fmt(r['probe_accuracy'])}</td><td>{_fmt(r['generated']['unigram_kl'])}</td>"
        f"<td>{_fmt(r['generated']['distinct_2'])}</td><td>{_fmt(r['generated']['hist10']['shares'][-1])}</td></tr>"
        for name, rows in result["arms"].items()
        for r in rows
    )
    intro = (
        f"Recursive training, preset {result['preset']['model']} model "
        f"({result['parameters'] / 1e6:.2f}M parameters), seed {result['seed']}. "
        "Small-scale results; see the README (experiments) for definitions."
    )
    (out / "recursive.json").write_text(json.dumps(json_safe(result), indent=2) + "\n")
    (out / "recursive.html").write_text(
        _html("tokedit: recursive training", intro, f"<table>{head}{body}</table>", result["plots"])
    )


def plot_mixture(result: dict, out: Path) -> dict[str, str]:
    names = list(result["arms"])
    fig, (ax,) = new_figure(6, 3.5)
    ax.bar(names, [result["arms"][n]["held_out_ppl"] for n in names], color="#4a7")
    ax.set_ylabel("held-out perplexity (real text)")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(out / "mixture_ppl.png", dpi=100)
    return {"held_out_ppl": "mixture_ppl.png"}


def write_mixture_report(result: dict, out: Path) -> None:
    result["plots"] = plot_mixture(result, out)
    head = "<tr><th>arm</th><th>synthetic share</th><th>held-out ppl</th><th>train tokens</th><th>unigram KL</th><th>distinct-2</th></tr>"
    body = "".join(
        f"<tr><td>{n}</td><td>{_fmt(a['synthetic_share'])}</td><td>{_fmt(a['held_out_ppl'])}</td>"
        f"<td>{a['train']['train_tokens']}</td><td>{_fmt(a['data']['unigram_kl'])}</td>"
        f"<td>{_fmt(a['data']['distinct_2'])}</td></tr>"
        for n, a in result["arms"].items()
    )
    intro = (
        f"Human vs synthetic mixtures vs ToEdit-edited data; prior held-out ppl "
        f"{_fmt(result['prior']['held_out_ppl'])}; edit threshold p = {result['edit']['p']}. "
        "Small-scale results; see the README (experiments)."
    )
    (out / "mixture.json").write_text(json.dumps(json_safe(result), indent=2) + "\n")
    (out / "mixture.html").write_text(
        _html(
            "tokedit: synthetic-data mixtures",
            intro,
            f"<table>{head}{body}</table>",
            result["plots"],
        )
    )


def format_summary(result: dict) -> str:
    """A Markdown table of a recursive or mixture result (what the CLI prints)."""
    if result["experiment"] == "recursive":
        lines = [
            "| arm | gen | held-out ppl | probe acc | unigram KL (bits) | distinct-2 | P>0.9 share |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, rows in result["arms"].items():
            for r in rows:
                g = r["generated"]
                lines.append(
                    f"| {name} | {r['generation']} | {_fmt(r['held_out_ppl'])} | "
                    f"{_fmt(r['probe_accuracy'])} | {_fmt(g['unigram_kl'])} | "
                    f"{_fmt(g['distinct_2'])} | {_fmt(g['hist10']['shares'][-1])} |"
                )
        return "\n".join(lines)
    lines = [
        "| arm | synthetic share | held-out ppl | train tokens | unigram KL (bits) | distinct-2 |",
        "|---|---|---|---|---|---|",
    ]
    for name, a in result["arms"].items():
        lines.append(
            f"| {name} | {_fmt(a['synthetic_share'])} | {_fmt(a['held_out_ppl'])} | "
            f"{a['train']['train_tokens']} | {_fmt(a['data']['unigram_kl'])} | "
            f"{_fmt(a['data']['distinct_2'])} |"
        )
    return "\n".join(lines)
