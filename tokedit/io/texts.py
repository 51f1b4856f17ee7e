"""Documents as plain text: cut long texts into documents, cut documents to a token budget,
write a list of texts as a one-shard dataset. Shared by the demo and the experiments."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tokedit.io.write import atomic_path

# A heading line starts a new document: "ACT II." / "Scene III. A room in the castle."
HEADING = re.compile(r"^(?:ACT|Act|SCENE|Scene) [IVXLC]+\b[^\n]*$", re.MULTILINE)


MAX_DOC_CHARS = 12_000


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


def truncate_to_tokens(texts: list[str], tokenizer, n_tokens: int) -> list[str]:
    """Each text cut before its token ``n_tokens`` (a byte-exact prefix of the text)."""
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return [
        t if len(offs) <= n_tokens else t[: offs[n_tokens][0]]
        for t, offs in zip(texts, enc["offset_mapping"], strict=True)
    ]


# The one shard :func:`write_texts` writes (its scores, mirroring it, have the same name).
DOCS_SHARD = "docs.parquet"


def write_texts(out_dir: Path, ids: list[str], texts: list[str]) -> Path:
    """``out_dir/docs.parquet``: columns ``id`` and ``text`` (the default column names)."""
    with atomic_path(out_dir / DOCS_SHARD) as tmp:
        pq.write_table(pa.table({"id": ids, "text": texts}), tmp)
    return out_dir
