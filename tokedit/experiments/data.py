"""The real documents of an experiment and the one-shard datasets its arms train on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from tokedit.experiments.presets import ExperimentPreset


def real_documents(data_dir: str, preset: ExperimentPreset, seed: int, text_column="text"):
    """The real documents: pieces of at most ``doc_chars`` characters, shuffled by ``seed``."""
    from tokedit.io.texts import split_documents
    from tokedit.training.trainer import read_texts

    pieces = [
        p.strip("\n")
        for t in read_texts(data_dir, text_column)
        for p in split_documents(t, preset.doc_chars)
    ]
    pieces = [p for p in pieces if len(p.split()) >= 8]
    order = np.random.default_rng(seed).permutation(len(pieces))
    return [pieces[i] for i in order]


def held_out_and_train(data_dir: str, preset: ExperimentPreset, seed: int, n_train: int):
    """The held-out real documents (``preset.held_out_docs``) and the next ``n_train``,
    refused with a remedy when the corpus has fewer."""
    docs = real_documents(data_dir, preset, seed)
    need = preset.held_out_docs + n_train
    if len(docs) < need:
        from tokedit.errors import InputError

        raise InputError(
            f"{data_dir}: {len(docs)} documents, the preset needs {need}",
            remedy="use a bigger corpus or a smaller preset",
        )
    return docs[: preset.held_out_docs], docs[preset.held_out_docs : need]


def texts_sha(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def write_dataset(out_dir: Path, texts: list[str], prefix: str = "doc") -> Path:
    from tokedit.io.texts import write_texts

    out_dir.mkdir(parents=True, exist_ok=True)
    return write_texts(out_dir, [f"{prefix}-{i:06d}" for i in range(len(texts))], texts)


def read_dataset(out_dir: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(out_dir / "docs.parquet", columns=["text"]).column("text").to_pylist()
