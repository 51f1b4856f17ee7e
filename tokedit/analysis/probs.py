"""Token-probability and per-document perplexity statistics of a scores directory.

``P = exp(logprob)`` (float64) of the token that is there, for every position that has a
log-prob (position 0 without BOS has none and is counted apart). All accumulators are
histograms of fixed size, so memory does not grow with the number of tokens; only the
per-document perplexities (one float per document) are kept.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tokedit.io.scores_dir import LOGPROB
from tokedit.io.storage import arrow_source, as_path

THRESHOLDS = (0.9, 0.99, 0.999)
COARSE_BINS = 10  # the ToEdit paper's table: [0, .1), [.1, .2), ..., [.9, 1]
FINE_BINS = 100
# Quantiles near P = 1 come from a histogram of log10(1 - P) on [LOGQ_MIN, 0] in steps of
# LOGQ_STEP (relative resolution 0.23 % of 1 - p); 1 - P below 10**LOGQ_MIN is one bin.
LOGQ_MIN = -9.0
LOGQ_STEP = 1e-3
LOGQ_BINS = int(round(-LOGQ_MIN / LOGQ_STEP))
PERCENTILES = (5, 25, 50, 75, 95)
PPL_HIST_STEP = 0.05  # width of the log10(perplexity) bins of the plot


def _equal_bins(p: np.ndarray, bins: int) -> np.ndarray:
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    return np.bincount(idx, minlength=bins)


class ProbabilityAccumulator:
    """Histograms of ``P`` over all scored positions, fed one batch of log-probs at a time."""

    def __init__(self):
        self.n = 0
        self.n_no_context = 0
        self.sum_logprob = 0.0
        self.coarse = np.zeros(COARSE_BINS, np.int64)
        self.fine = np.zeros(FINE_BINS, np.int64)
        self.above = np.zeros(len(THRESHOLDS), np.int64)
        self.logq = np.zeros(LOGQ_BINS, np.int64)
        self.logq_under = 0  # 1 - P < 10**LOGQ_MIN (P within 1e-9 of 1, or exactly 1)

    def add(self, logprob: np.ndarray, n_no_context: int = 0) -> None:
        """Add the log-probs of scored positions (nulls already removed)."""
        lp = np.minimum(np.asarray(logprob, dtype=np.float64), 0.0)
        self.n_no_context += int(n_no_context)
        if len(lp) == 0:
            return
        p = np.exp(lp)
        self.n += len(lp)
        self.sum_logprob += float(lp.sum())
        self.coarse += _equal_bins(p, COARSE_BINS)
        self.fine += _equal_bins(p, FINE_BINS)
        for i, t in enumerate(THRESHOLDS):
            self.above[i] += int((p > t).sum())
        q = -np.expm1(lp)  # 1 - P, accurate near P = 1
        small = q < 10.0**LOGQ_MIN
        self.logq_under += int(small.sum())
        idx = np.floor((np.log10(q[~small]) - LOGQ_MIN) / LOGQ_STEP).astype(np.int64)
        self.logq += np.bincount(np.clip(idx, 0, LOGQ_BINS - 1), minlength=LOGQ_BINS)

    def suggest(self, target: float) -> dict:
        """The p whose share of tokens with ``P > p`` is ``target`` (from the log10(1-P) histogram)."""
        return suggest_threshold(self.logq, self.logq_under, self.n, target)

    def summary(self) -> dict:
        n = self.n
        share = (lambda c: (c / n).tolist()) if n else (lambda c: [None] * len(c))
        return {
            "scored_tokens": n,
            "no_context_tokens": self.n_no_context,
            "mean_logprob": self.sum_logprob / n if n else None,
            "token_perplexity": math.exp(-self.sum_logprob / n) if n else None,
            "hist10": {
                "edges": np.linspace(0, 1, COARSE_BINS + 1).round(6).tolist(),
                "counts": self.coarse.tolist(),
                "shares": share(self.coarse),
            },
            "hist_fine": {
                "edges": np.linspace(0, 1, FINE_BINS + 1).round(6).tolist(),
                "counts": self.fine.tolist(),
                "shares": share(self.fine),
            },
            "share_above": {
                str(t): (int(c) / n if n else None)
                for t, c in zip(THRESHOLDS, self.above, strict=True)
            },
        }


def accumulate_scores_dir(scores_dir: Path) -> ProbabilityAccumulator:
    """A :class:`ProbabilityAccumulator` over every scored token of a scores directory."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    acc = ProbabilityAccumulator()
    for path in sorted(as_path(scores_dir).rglob("*.parquet")):
        lp = pc.list_flatten(
            pq.read_table(arrow_source(path), columns=[LOGPROB]).column(LOGPROB)
        ).drop_null()
        acc.add(lp.to_numpy())
    return acc


def suggest_threshold(logq: np.ndarray, under: int, n: int, target: float) -> dict:
    """Invert the cumulative histogram of ``log10(1 - P)`` at ``target * n`` tokens.

    Tokens with ``P > p`` are those with ``1 - P < 1 - p``, i.e. the lowest values of
    ``1 - P``: walk the histogram up from the smallest bin, interpolate linearly in
    ``log10(1 - P)`` inside the bin where the count reaches ``target * n``.
    """
    if n == 0 or not 0 < target < 1:
        return {
            "target_rate": target,
            "p": None,
            "estimated_rate": None,
            "at_resolution_limit": False,
        }
    want = target * n
    if want <= under:
        p = 1.0 - 10.0**LOGQ_MIN
        return {
            "target_rate": target,
            "p": p,
            "estimated_rate": under / n,
            "at_resolution_limit": True,
        }
    cum = under + np.cumsum(logq)
    b = int(np.searchsorted(cum, want))  # first bin where the cumulative count reaches want
    b = min(b, LOGQ_BINS - 1)
    before = cum[b] - logq[b]
    frac = (want - before) / logq[b] if logq[b] else 1.0
    log_q = LOGQ_MIN + LOGQ_STEP * (b + frac)
    p = 1.0 - 10.0**log_q
    return {
        "target_rate": target,
        "p": p,
        "estimated_rate": float(want / n),
        "at_resolution_limit": False,
    }


class PerplexityAccumulator:
    """Per-document perplexities (``ppl`` of the scores rows with ``status == ok``)."""

    def __init__(self):
        self._parts: list[np.ndarray] = []

    def add(self, ppl: np.ndarray) -> None:
        ppl = np.asarray(ppl, dtype=np.float64)
        self._parts.append(ppl[np.isfinite(ppl) & (ppl > 0)])

    def values(self) -> np.ndarray:
        return np.concatenate(self._parts) if self._parts else np.empty(0)

    def summary(self) -> dict:
        v = self.values()
        if len(v) == 0:
            return {"documents": 0, "percentiles": None, "mean": None, "log10_hist": None}
        pct = np.percentile(v, PERCENTILES)
        logv = np.log10(v)
        lo = math.floor(logv.min() / PPL_HIST_STEP) * PPL_HIST_STEP
        hi = math.ceil(logv.max() / PPL_HIST_STEP) * PPL_HIST_STEP
        edges = lo + PPL_HIST_STEP * np.arange(max(1, round((hi - lo) / PPL_HIST_STEP)) + 1)
        edges[0], edges[-1] = min(edges[0], logv.min()), max(edges[-1], logv.max())  # rounding
        counts, _ = np.histogram(logv, bins=edges)
        return {
            "documents": len(v),
            "percentiles": {str(q): float(x) for q, x in zip(PERCENTILES, pct, strict=True)},
            "mean": float(v.mean()),
            "log10_hist": {"edges": edges.round(6).tolist(), "counts": counts.tolist()},
        }
