"""Token text in context and the byte-exact splice (pure string functions, no files).

A lone token does not always decode to the text it stands for: SentencePiece-style
tokenizers drop the leading "▁" space when a token is decoded alone (it would be the start
of the text), and byte-level tokens holding part of a multi-byte character decode to U+FFFD.
:class:`Renderer` decodes a token after an *anchor* token and strips the anchor's text, which
gives the token's text as it appears inside a document; at the very start of a document
(token position 0) the token is decoded alone, as the tokenizer decodes the start of a text.
A token whose text is empty or not whole characters renders as ``None``: never spliced.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ANCHOR_CANDIDATES = ("a", "x", "0", "the", ".")
REPLACEMENT_CHAR = "\ufffd"


def _whole_characters(text: str) -> bool:
    if not text or REPLACEMENT_CHAR in text:
        return False
    try:
        text.encode("utf-8")  # lone surrogates cannot be written as UTF-8
    except UnicodeEncodeError:
        return False
    return True


class Renderer:
    """The text each token id stands for, in context; cached per id."""

    def __init__(self, tokenizer):
        # A transformers fast tokenizer or a bare ``tokenizers.Tokenizer``. Decoding goes
        # straight to ``tokenizers`` so transformers' clean_up_tokenization_spaces never runs.
        self.backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        self.anchor, self.anchor_text = self._pick_anchor()
        self._mid: dict[int, str | None] = {}
        self._start: dict[int, str | None] = {}

    def _decode(self, ids: list[int]) -> str | None:
        try:
            return self.backend.decode(ids, skip_special_tokens=False)
        except Exception:  # an id outside the vocabulary
            return None

    def _pick_anchor(self) -> tuple[int | None, str]:
        for s in ANCHOR_CANDIDATES:
            ids = self.backend.encode(s, add_special_tokens=False).ids
            if not ids:
                continue
            a = ids[-1]
            text = self._decode([a])
            twice = self._decode([a, a])
            if text and _whole_characters(text) and twice and twice.startswith(text):
                return a, text
        return None, ""

    def render(self, token_id: int, at_start: bool = False) -> str | None:
        """Text of ``token_id`` inside a document (at its start if ``at_start``), or None."""
        cache = self._start if at_start else self._mid
        if token_id in cache:
            return cache[token_id]
        token_id = int(token_id)
        text: str | None
        if token_id < 0 or self.backend.id_to_token(token_id) is None:
            text = None
        elif at_start or self.anchor is None:
            text = self._decode([token_id])
        else:
            full = self._decode([self.anchor, token_id])
            text = (
                full[len(self.anchor_text) :]
                if full is not None and full.startswith(self.anchor_text)
                else None
            )
        if text is not None and not _whole_characters(text):
            text = None
        cache[token_id] = text
        return text

    def render_many(self, ids, at_start) -> list[str | None]:
        """``render`` of many ids at once (one call per distinct id and start flag)."""
        ids = np.asarray(ids)
        at_start = np.asarray(at_start, dtype=bool)
        out = np.empty(len(ids), dtype=object)
        for flag in (False, True):
            sel = np.flatnonzero(at_start == flag)
            if len(sel):
                uniq, inverse = np.unique(ids[sel], return_inverse=True)
                table = np.empty(len(uniq), dtype=object)
                table[:] = [self.render(int(t), flag) for t in uniq]
                out[sel] = table[inverse]
        return out.tolist()


def align_span(text: str, start: int, end: int, token_text: str) -> tuple[int, int] | None:
    """The span of ``text`` holding ``token_text``, near the partition span ``[start, end)``.

    Usually ``text[start:end] == token_text``. Tokenizers that trim spaces out of offsets
    (``trim_offsets``) can give a run of spaces to the wrong token of the run: then the two
    differ only by whitespace at one end, and the span is moved to where ``token_text`` is.
    Anything else returns ``None`` (not spliceable).
    """
    if not 0 <= start <= end <= len(text):
        return None
    if text[start:end] == token_text:
        return (start, end) if start < end else None
    n = len(token_text)
    if n < end - start:
        if text.startswith(token_text, start) and text[start + n : end].isspace():
            return start, start + n
        if text.startswith(token_text, end - n) and text[start : end - n].isspace():
            return end - n, end
    elif n > end - start:
        if (
            end - n >= 0
            and text.startswith(token_text, end - n)
            and text[end - n : start].isspace()
        ):
            return end - n, end
        if (
            start + n <= len(text)
            and text.startswith(token_text, start)
            and text[end : start + n].isspace()
        ):
            return start, start + n
    return None


def splice(text: str, starts: Sequence[int], ends: Sequence[int], pieces: Sequence[str]) -> str:
    """``text`` with ``text[starts[j]:ends[j]]`` replaced by ``pieces[j]``.

    Spans must be sorted and disjoint; every character outside them is copied unchanged.
    """
    out: list[str] = []
    last = 0
    for s, e, piece in zip(starts, ends, pieces, strict=True):
        if s < last or e < s:
            raise ValueError(f"spans must be sorted and disjoint: [{s}, {e}) after {last}")
        out.append(text[last:s])
        out.append(piece)
        last = e
    out.append(text[last:])
    return "".join(out)
