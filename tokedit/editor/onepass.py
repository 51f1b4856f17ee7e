"""One-pass editing with a model (``tokedit edit --model``): score and draw in the same forward.

The scorer's tokenization, windows, batches and ``hf`` backend are used unchanged; the
backend hands the full log-prob rows of the positions above the threshold to
:class:`DrawingBackend`, which draws replacements there with the same rule and the same
per-document random numbers as the editor from a scores directory.
"""

from __future__ import annotations

import numpy as np
import torch

from tokedit.editor.batch import Draws, ScoreBatch
from tokedit.editor.rng import doc_keys, position_uniforms
from tokedit.editor.rules import EditRule, above_threshold, draw
from tokedit.io.read import STATUS_OK, Documents

ROW_CHUNK = 256  # full-vocabulary rows moved to numpy at a time


def draw_from_rows(
    rows: torch.Tensor, orig: np.ndarray, u: np.ndarray, rule: EditRule, banned: np.ndarray
) -> np.ndarray:
    """Draw from full log-prob rows ``[m, vocab]``: the top-k of each row, or all of it (k=0)."""
    m, vocab = rows.shape
    if rule.top_k:
        values, idx = torch.topk(rows, min(rule.top_k, vocab), dim=-1)
        ids = idx.to(torch.int32).cpu().numpy()
        return draw(ids, values.cpu().numpy(), np.ones(ids.shape, bool), orig, u, rule, banned)
    out = np.empty(m, dtype=np.int32)
    for a in range(0, m, ROW_CHUNK):
        chunk = rows[a : a + ROW_CHUNK]
        if rule.strategy == "topp":  # the nucleus needs the canonical order: prob desc, then id
            chunk, idx = torch.sort(chunk, dim=-1, descending=True, stable=True)
            ids = idx.to(torch.int32).cpu().numpy()
        else:  # order does not change a proportional draw
            ids = np.broadcast_to(np.arange(vocab, dtype=np.int32), chunk.shape)
        lp = chunk.cpu().numpy()
        b = a + len(lp)
        out[a:b] = draw(
            ids, lp, np.ones(lp.shape, bool), orig[a:b], u[a:b], rule, banned, ordered=True
        )
    return out


class DrawingBackend:
    """Wraps a scoring backend; draws replacements from the full rows while it scores."""

    def __init__(
        self, inner, rule: EditRule, banned: np.ndarray, p_min: float, bos: int, seed: int
    ):
        self.inner = inner
        self.rule = rule
        self.banned = banned
        self.p_min = p_min
        # A hair below p_min so that float rounding in torch never loses a row; the editor
        # keeps only the positions above its own (float32) threshold.
        self.rows_above = p_min * (1 - 1e-5)
        self.bos = bos
        self.seed = seed
        self._keys = np.zeros(0, np.uint64)
        self._found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def __getattr__(self, name):  # device, dtype, revision ... of the wrapped backend
        return getattr(self.inner, name)

    def begin(self, docs: Documents) -> list[int]:
        """Prepare for scoring ``docs``; returns the rows the scorer will tokenize."""
        ok = [i for i, s in enumerate(docs.statuses) if s == STATUS_OK]
        self._keys = doc_keys(self.seed, [docs.ids[i] for i in ok])
        self._found = []
        return ok

    def score_batch(self, seqs, windows, *, top_k, min_p):
        def on_rows(doc, position, target, lp_rows):
            tokpos = position - self.bos
            u = position_uniforms(self._keys[doc], tokpos)
            new = draw_from_rows(lp_rows, target.astype(np.int32), u, self.rule, self.banned)
            self._found.append((doc, tokpos, new))

        return self.inner.score_batch(
            seqs, windows, top_k=top_k, min_p=min_p, rows_above=self.rows_above, on_rows=on_rows
        )

    def draws(self, sb: ScoreBatch, ok: list[int]) -> Draws:
        """The draws at the positions of ``sb`` above ``p_min`` (``ok``: from :meth:`begin`)."""
        pos = np.flatnonzero(above_threshold(sb.logprob, self.p_min))
        if not self._found:
            if len(pos):
                raise RuntimeError("the backend reported no rows above the threshold")
            return Draws(pos, np.zeros(0, np.int32))
        doc = np.concatenate([f[0] for f in self._found])
        tokpos = np.concatenate([f[1] for f in self._found])
        new = np.concatenate([f[2] for f in self._found])
        where = sb.row_offsets[np.asarray(ok, dtype=np.int64)[doc]] + tokpos
        order = np.argsort(where, kind="stable")
        where, new = where[order], new[order]
        at = np.searchsorted(where, pos)
        if len(pos) and (at.max() >= len(where) or not np.array_equal(where[at], pos)):
            raise RuntimeError("a position above the threshold was not drawn by the backend")
        return Draws(pos, new[at])
