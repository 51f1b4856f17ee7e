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


def document_group(doc_id: str) -> str:
    """The group of a document for a corpus split: the play of a demo-corpus id
    ("hamlet/003" -> "hamlet"), else the shard of a generated id ("shard.parquet:12")."""
    if "/" in doc_id:
        return doc_id.split("/")[0]
    return doc_id.rsplit(":", 1)[0]


def split_by_group(data_dir: str, preset: ExperimentPreset, seed: int, text_column="text"):
    """Documents (as :func:`real_documents`) of two corpora: the groups (plays) of rank
    ``i % other_every == other_every - 1`` in sorted order are the *other* corpus, the rest
    the *main* one. Returns ``(main_docs, other_docs, other_groups)``."""
    from tokedit.io.read import read_ok_texts
    from tokedit.io.texts import split_documents

    try:
        ids, texts = read_ok_texts(data_dir, text_column, "id")
    except Exception:  # no id column: documents are grouped by shard
        ids, texts = read_ok_texts(data_dir, text_column, None)
    groups = sorted({document_group(i) for i in ids})
    k = preset.other_every
    other = {g for r, g in enumerate(groups) if k > 1 and r % k == k - 1}
    main, rest = [], []
    for i, t in zip(ids, texts, strict=True):
        for piece in split_documents(t, preset.doc_chars):
            piece = piece.strip("\n")
            if len(piece.split()) >= 8:
                (rest if document_group(i) in other else main).append(piece)
    rng = np.random.default_rng(seed)
    main = [main[j] for j in rng.permutation(len(main))]
    rest = [rest[j] for j in rng.permutation(len(rest))]
    return main, rest, sorted(other)


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

    from tokedit.io.texts import DOCS_SHARD

    return pq.read_table(out_dir / DOCS_SHARD, columns=["text"]).column("text").to_pylist()
