"""Edit statistics of an edited directory, from its ``tokedit_*`` provenance columns.

``tokedit_n_above`` (positions with P above the edit threshold), ``tokedit_n_changed``,
``tokedit_n_skipped`` and ``tokedit_edits`` (list of structs ``pos, char_start, char_end,
orig_id, new_id``). An entry with ``new_id`` -1 is a deletion (``--drop-below``): deletions
are counted from the entries, so directories written before ``tokedit_n_deleted`` existed
read the same. Replacement pairs are counted with the same uint64 key counter as the
n-grams (``orig_id << 32 | new_id``), so the cost does not depend on Python loops.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tokedit.analysis.ngrams import NgramCounter


def _ints(column) -> np.ndarray:
    arr = pa.array(column) if not isinstance(column, pa.Array | pa.ChunkedArray) else column
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)


class EditAccumulator:
    """Sums of the provenance counts and counts of (original, replacement) token pairs."""

    def __init__(self):
        self.documents = 0
        self.documents_changed = 0
        self.n_above = 0
        self.n_changed = 0
        self.n_skipped = 0
        self.recorded = 0  # replacement entries of tokedit_edits (new_id >= 0)
        self.deleted = 0  # deletion entries of tokedit_edits (new_id -1)
        self.same_token = 0  # entries whose new id equals the original
        self._pairs = NgramCounter(2, 32)
        self._orig = NgramCounter(1, 32)

    def add(self, n_above, n_changed, n_skipped, edits) -> None:
        """Columns of one batch (arrow arrays or Python lists, as read)."""
        above, changed, skipped = _ints(n_above), _ints(n_changed), _ints(n_skipped)
        self.documents += len(above)
        self.n_above += int(above.sum())
        self.n_changed += int(changed.sum())
        self.n_skipped += int(skipped.sum())
        if not isinstance(edits, pa.Array | pa.ChunkedArray):
            edits = pa.array(edits)
        if isinstance(edits, pa.ChunkedArray):
            edits = edits.combine_chunks()
        flat = edits.flatten()
        if len(flat) == 0:
            self.documents_changed += int((changed > 0).sum())
            return
        orig = _ints(flat.field("orig_id"))
        new = _ints(flat.field("new_id"))
        kept = new >= 0
        self.deleted += int((~kept).sum())
        touched = changed > 0  # a document is changed by a replacement or a deletion
        parents = pc.list_parent_indices(edits).to_numpy()
        touched[parents[~kept]] = True
        self.documents_changed += int(touched.sum())
        orig, new = orig[kept].astype(np.uint32), new[kept].astype(np.uint32)
        self.recorded += len(orig)
        diff = orig != new
        self.same_token += int((~diff).sum())
        orig, new = orig[diff], new[diff]
        if len(orig):
            self._pairs.add(np.stack([orig, new], axis=1).ravel(), np.full(len(orig), 2))
            self._orig.add(orig, np.ones(len(orig), np.int64))

    def summary(self, scored_tokens: int | None, decode, top: int = 20) -> dict:
        """Totals, shares of ``scored_tokens`` (when known) and the most frequent replacements.

        ``decode(ids) -> list[str]`` renders token ids (``<id>`` without a tokenizer).
        """
        pairs, origs = self._pairs.finish(), self._orig.finish()
        out = {
            "documents": self.documents,
            "documents_changed": self.documents_changed,
            "scored_tokens": scored_tokens,
            "above": self.n_above,
            "changed": self.n_changed,
            "skipped": self.n_skipped,
            "redrawn_original": self.n_above - self.n_changed - self.n_skipped,
            "deleted": self.deleted,
            "recorded_edits": self.recorded,
            "recorded_same_token": self.same_token,
            "above_share": self.n_above / scored_tokens if scored_tokens else None,
            "changed_share": self.n_changed / scored_tokens if scored_tokens else None,
            "skipped_share": self.n_skipped / scored_tokens if scored_tokens else None,
            "deleted_share": self.deleted / scored_tokens if scored_tokens else None,
            "changed_per_above": self.n_changed / self.n_above if self.n_above else None,
            "skipped_per_above": self.n_skipped / self.n_above if self.n_above else None,
        }
        replaced_total = pairs.total
        idx = origs.top(top)
        ids = origs.ids(idx)[:, 0] if len(idx) else np.empty(0, np.uint32)
        texts = decode(ids)
        out["top_replaced"] = [
            {"id": int(i), "text": t, "count": int(c), "share": int(c) / replaced_total}
            for i, t, c in zip(ids, texts, origs.counts[idx], strict=True)
        ]
        idx = pairs.top(top)
        rows = pairs.ids(idx) if len(idx) else np.empty((0, 2), np.uint32)
        o_txt, n_txt = decode(rows[:, 0]), decode(rows[:, 1])
        out["top_pairs"] = [
            {
                "orig_id": int(r[0]),
                "new_id": int(r[1]),
                "orig": a,
                "new": b,
                "count": int(c),
                "share": int(c) / replaced_total,
            }
            for r, a, b, c in zip(rows, o_txt, n_txt, pairs.counts[idx], strict=True)
        ]
        return out
