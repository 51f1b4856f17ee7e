"""Shared fixtures: real Shakespeare text, a real tiny prior trained here, real scores.

Everything is made once per test session; the tiny prior is also cached on disk under
``$TOKEDIT_CACHE/fixtures`` keyed by the hash of the code that trains it, so reruns on the
same machine skip the ~10 s of training.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest

import tokedit
from tokedit.demo import cache_dir, read_plays, write_demo_corpus


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: without xdist it is not called
def pytest_handlecrashitem(crashitem, report, sched):
    """A test process that dies (pytest-xdist reports it as a failed test and starts a new
    one) shows the end of the Ray driver logs written in the last minutes: a driver killed
    by Ray says why there, and nowhere else (its stderr dies with it)."""
    recent = [
        p
        for p in glob.glob("/tmp/ray/session_*/logs/python-core-driver-*.log")
        if time.time() - os.path.getmtime(p) < 300
    ]
    for path in sorted(recent, key=os.path.getmtime)[-2:]:
        tail = Path(path).read_text(errors="replace").splitlines()[-30:]
        report.sections.append((f"Ray driver log {path} (last 30 lines)", "\n".join(tail)))


# A small slice of the corpus keeps fixtures to seconds: 6 plays, ~700 kB of text.
FIXTURE_PLAYS = ["hamlet", "macbeth", "tempest", "sonnets", "julius_caesar", "twelfth_night"]


@pytest.fixture(scope="session")
def plays() -> dict[str, str]:
    all_plays = read_plays()
    return {name: all_plays[name] for name in FIXTURE_PLAYS}


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory, plays) -> Path:
    """A dataset directory of the fixture plays: 2 parquet + 2 jsonl.gz shards, ``id`` column."""
    out = tmp_path_factory.mktemp("corpus")
    write_demo_corpus(out, plays=plays, n_shards=4)
    return out


def code_key(config, package: Path = Path(tokedit.__file__).parent) -> str:
    """The cache key of a fixture prior: its configuration and every source file of the
    package (tokenizer training, readers, the trainer and the model code all shape it; a
    change anywhere retrains, ~10 s, rather than leave a stale prior in the cache)."""
    h = hashlib.sha256(repr(config).encode())
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


@pytest.fixture(scope="session")
def tiny_prior(tmp_path_factory, corpus_dir) -> Path:
    """A ~0.1M-parameter Llama prior with a byte-level BPE-512 tokenizer, trained on the fixture plays."""
    from tokedit.training.trainer import TrainConfig, train_model

    config = TrainConfig(
        preset="tiny", block_size=128, batch_size=16, max_steps=300, learning_rate=3e-3, seed=0
    )
    cached = cache_dir() / "fixtures" / f"tiny-prior-{code_key(config)}"
    if not (cached / "config.json").is_file():
        tmp = cached.with_name(f"{cached.name}.partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        train_model(
            str(corpus_dir),
            str(tmp),
            config=config,
            from_scratch=True,
            progress=False,
            log=lambda m: None,
        )
        if not (cached / "config.json").is_file():  # a concurrent session may have finished first
            shutil.rmtree(cached, ignore_errors=True)
            tmp.rename(cached)
        shutil.rmtree(tmp, ignore_errors=True)
    return cached


@pytest.fixture(scope="session")
def tiny_scores(tmp_path_factory, corpus_dir, tiny_prior) -> Path:
    """Scores of ``corpus_dir`` by ``tiny_prior``, with candidates wherever P >= 0.05."""
    from tokedit.scoring.options import ScoreOptions
    from tokedit.scoring.run import score_dataset

    out = tmp_path_factory.mktemp("scores")
    score_dataset(
        str(corpus_dir),
        str(out),
        model=str(tiny_prior),
        options=ScoreOptions(max_length=256, overlap=64, batch_tokens=8192, candidates_min_p=0.05),
        id_column="id",
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def tiny_edited(tmp_path_factory, corpus_dir, tiny_scores) -> Path:
    """``tokedit edit`` of ``corpus_dir`` with ``tiny_scores`` at p = 0.5, a changed token forced."""
    from tokedit.editor import EditOptions, edit_dataset
    from tokedit.editor.rules import EditRule

    out = tmp_path_factory.mktemp("edited") / "out"
    edit_dataset(
        str(corpus_dir),
        str(out),
        scores_dir=str(tiny_scores),
        options=EditOptions(ps=(0.5,), rule=EditRule(exclude_original=True)),
        progress=False,
    )
    return out
