"""The resampling rule of Token-Level Editing, on arrays of candidates (no files, no model).

A position is *above threshold* when ``P(x_i | x_<i) > p``. Its replacement is drawn from
its candidates: the prior's ``top_k`` most probable tokens (all tokens when ``top_k`` is 0,
possible only with a model). Special tokens, ids the tokenizer does not know and, with
``exclude_original``, the token that is there are then removed; the rest get weights
``P^(1/T)``. ``topk`` draws in proportion to those weights; ``topp`` first keeps the nucleus:
the fewest most probable of them whose share of the (renormalised) weight reaches ``top_p``.
Candidates are put in one canonical order (probability descending, then id), so the same
uniform number draws the same token whatever order the candidates came in.

A position is *below the drop threshold* when ``P(x_i | x_<i) < drop_below``: its token is
deleted from the text (``drop_below`` 0: never). Both comparisons are the authors' own,
``exp(logprob) > p`` and ``exp(logprob) < q`` in float64 on the float32 log-prob, done as one
float32 comparison against a threshold chosen so that the two agree for every float32 value.

:data:`PRESETS` are the strategies of the authors' code (github Xuekai-Zhu/toedit,
``toedit_resampling.py``); see ``docs/fidelity.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

STRATEGIES = ("topk", "topp")


@dataclass(frozen=True)
class EditRule:
    """How a position above ``p`` is redrawn, and which positions are deleted.

    The defaults are the ``up-revise`` preset (the authors' "core implementation"):
    top-8 candidates, weights ``P^(1/1.5)``, no deletion.
    """

    strategy: str = "topk"
    top_k: int = 8  # 0: no truncation (the full distribution; needs a model)
    top_p: float = 0.9  # nucleus mass for "topp"
    temperature: float = 1.5  # the official beta of online_resampling_json_up_revise
    exclude_original: bool = False
    drop_below: float = 0.0  # delete tokens with P < drop_below (0: never)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if not self.temperature > 0:
            raise ValueError("temperature must be > 0")
        if not 0 <= self.drop_below < 1:
            raise ValueError("drop_below must be in [0, 1)")


# The authors' strategies (github Xuekai-Zhu/toedit, toedit_resampling.py), each value with
# where it comes from. "p" is the edit threshold (``up_threshold``); the rest is an EditRule.
PRESETS: dict[str, dict] = {
    "up-revise": {
        "p": 0.99,  # online_resampling_json_up_revise: up_threshold = 0.99
        "strategy": "topk",  # resampling(): np.random.choice over the prompt_logprobs dict
        "top_k": 8,  # parse_args: --n_of_candicant default=8 (prompt_logprobs=k)
        "temperature": 1.5,  # resampling(..., beta=1.5): softmax(logprob / beta)
        "exclude_original": False,  # the actual token stays in the dict
        "drop_below": 0.0,  # the low_threshold branch is commented out
    },
    "low-drop-up-revise": {
        "p": 0.99,  # online_resampling_json_low_drop_up_revise: up_threshold = 0.99
        "strategy": "topk",
        "top_k": 64,  # README usage example: --n_of_candicant 64 --strategy low_drop_up_revise
        "temperature": 1.0,  # resampling(..., beta=1)
        "exclude_original": False,
        "drop_below": 0.001,  # low_threshold = 0.001: `elif prob < low_threshold: continue`
    },
}
DEFAULT_PRESET = "up-revise"
RULE_FIELDS = ("strategy", "top_k", "top_p", "temperature", "exclude_original", "drop_below")


def resolve_preset(name: str | None = None, **explicit) -> tuple[float, EditRule, list[str]]:
    """``(p, rule, overridden)``: explicit values (those not None) > the preset > built-ins.

    ``explicit`` takes ``p`` and the :class:`EditRule` fields; ``overridden`` names the
    explicit values that differ from the preset's.
    """
    name = name or DEFAULT_PRESET
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: one of {', '.join(PRESETS)}")
    unknown = set(explicit) - {"p", *RULE_FIELDS}
    if unknown:
        raise TypeError(f"not a preset setting: {', '.join(sorted(unknown))}")
    preset = PRESETS[name]
    given = {k: v for k, v in explicit.items() if v is not None}
    values = {**preset, **given}
    builtin = {f: getattr(EditRule, f) for f in RULE_FIELDS}  # the dataclass defaults
    overridden = sorted(k for k, v in given.items() if preset.get(k, builtin.get(k)) != v)
    rule = EditRule(**{k: values[k] for k in RULE_FIELDS if k in values})
    return values["p"], rule, overridden


@lru_cache(maxsize=64)
def log_threshold(p: float) -> np.float32:
    """The float32 ``t`` with ``lp > t`` exactly where ``exp(float64(lp)) > p``.

    Log-probs are float32 and compare in float32 everywhere; ``t`` is ``log p`` moved by at
    most an ulp so that the comparison is the authors' ``np.exp(logprob) > p`` for every
    float32 value (``float32(log p)`` alone can disagree with it at one value).
    """
    t = np.float32(math.log(p))
    with np.errstate(over="ignore"):
        while np.exp(np.float64(t)) > p:  # t itself must not count as above
            t = np.nextafter(t, np.float32(-np.inf))
        while np.exp(np.float64(np.nextafter(t, np.float32(np.inf)))) <= p:
            t = np.nextafter(t, np.float32(np.inf))
    return t


@lru_cache(maxsize=64)
def log_drop_threshold(q: float) -> np.float32:
    """The float32 ``t`` with ``lp < t`` exactly where ``exp(float64(lp)) < q`` (q > 0)."""
    t = np.float32(math.log(q))
    while np.exp(np.float64(t)) < q:  # t itself must not count as below
        t = np.nextafter(t, np.float32(np.inf))
    while np.exp(np.float64(np.nextafter(t, np.float32(-np.inf)))) >= q:
        t = np.nextafter(t, np.float32(-np.inf))
    return t


def above_threshold(logprob: np.ndarray, p: float) -> np.ndarray:
    """``P > p`` for float32 log-probs (NaN, i.e. no context, is never above)."""
    return np.asarray(logprob, dtype=np.float32) > log_threshold(p)


def below_threshold(logprob: np.ndarray, q: float) -> np.ndarray:
    """``P < q`` for float32 log-probs (NaN, i.e. no context, is never below; ``q`` 0: none)."""
    lp = np.asarray(logprob, dtype=np.float32)
    if q <= 0:
        return np.zeros(lp.shape, dtype=bool)
    return lp < log_drop_threshold(q)


def banned_mask(tokenizer, extra_size: int = 0) -> np.ndarray:
    """Bool array over token ids: True for ids that are never drawn (special tokens)."""
    size = max(len(tokenizer), extra_size)
    banned = np.zeros(size, dtype=bool)
    special = set(tokenizer.all_special_ids)
    for tid, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False):
            special.add(tid)
    banned[[t for t in special if 0 <= t < size]] = True
    banned[len(tokenizer) :] = True  # rows of a padded LM head: no token behind them
    return banned


def is_banned(ids: np.ndarray, banned: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.size and 0 <= ids.min() and ids.max() < len(banned):
        return banned[ids]
    out_of_range = (ids < 0) | (ids >= len(banned))
    return out_of_range | banned[np.clip(ids, 0, len(banned) - 1)]


def canonical_order(ids: np.ndarray, lp: np.ndarray, valid: np.ndarray):
    """Sort each row's candidates by log-prob descending then id; invalid ones last.

    Rows already in that order (``torch.topk`` output almost always is) are left as they are;
    only the others are sorted.
    """
    if ids.shape[1] < 2:
        return ids, lp, valid
    a, b = lp[:, :-1], lp[:, 1:]
    if valid.all():
        out_of_order = a < b
        ties = a == b
        if ties.any():
            out_of_order |= ties & (ids[:, :-1] > ids[:, 1:])
    else:
        in_order = (a > b) | ((a == b) & (ids[:, :-1] < ids[:, 1:]))
        in_order |= ~valid[:, 1:]  # anything may precede an invalid entry ...
        in_order &= valid[:, :-1] | ~valid[:, 1:]  # ... but an invalid one no valid entry
        out_of_order = ~in_order
    rows = np.flatnonzero(out_of_order.any(axis=1))
    if len(rows) == 0:
        return ids, lp, valid
    neg = np.where(valid[rows], -lp[rows].astype(np.float64), np.inf)
    order = np.lexsort((ids[rows], neg), axis=-1)
    ids, lp, valid = ids.copy(), lp.copy(), valid.copy()
    ids[rows] = np.take_along_axis(ids[rows], order, -1)
    lp[rows] = np.take_along_axis(lp[rows], order, -1)
    valid[rows] = np.take_along_axis(valid[rows], order, -1)
    return ids, lp, valid


def rule_weights(
    ids: np.ndarray,
    lp: np.ndarray,
    valid: np.ndarray,
    orig: np.ndarray,
    rule: EditRule,
    banned: np.ndarray,
) -> np.ndarray:
    """Unnormalised float64 sampling weights ``[m, K]`` of candidates in canonical order.

    ``ids``/``lp``/``valid`` are ``[m, K]`` (already in canonical order), ``orig`` ``[m]``.
    A row of zeros means nothing can be drawn there.
    """
    m, k = ids.shape
    allowed = valid & ~is_banned(ids, banned)
    if rule.top_k and k > rule.top_k:
        allowed[:, rule.top_k :] = False  # canonical order: the first top_k valid are the top-k
    if rule.exclude_original:
        allowed &= ids != orig[:, None]
    # Shift by the row's largest allowed log-prob, exp in float32 (weights more than ~87 nats
    # below the top underflow to 0, a negligible share), sums in float64.
    shifted = np.where(allowed, lp.astype(np.float32, copy=False), np.float32(-np.inf))
    top = shifted.max(axis=1)
    top[~np.isfinite(top)] = 0
    shifted -= top[:, None]
    if rule.temperature != 1.0:
        shifted /= np.float32(rule.temperature)
    w = np.exp(shifted, out=shifted).astype(np.float64)  # exp(-inf) = 0 where not allowed
    if rule.strategy == "topp" and rule.top_p < 1:
        # Weights are already descending (canonical order, temperature is monotone).
        c = np.cumsum(w, axis=1)
        before = c - w
        w[before >= rule.top_p * c[:, -1:]] = 0.0
    return w


def draw(
    ids: np.ndarray,
    lp: np.ndarray,
    valid: np.ndarray,
    orig: np.ndarray,
    u: np.ndarray,
    rule: EditRule,
    banned: np.ndarray,
    *,
    ordered: bool = False,
) -> np.ndarray:
    """One replacement per row by inverse CDF with uniforms ``u``; -1 where nothing is allowed.

    ``ordered``: the caller guarantees the canonical order already (or, for a proportional
    draw over a whole vocabulary, a fixed one), so the per-row sort is skipped.
    """
    if ids.shape[0] == 0:
        return np.zeros(0, dtype=np.int32)
    if not ordered:
        ids, lp, valid = canonical_order(ids, lp, valid)
    w = rule_weights(ids, lp, valid, orig, rule, banned)
    c = np.cumsum(w, axis=1)
    total = c[:, -1]
    j = (c <= (u * total)[:, None]).sum(axis=1)
    # Guard against u * total rounding up to total: never pick past the last positive weight.
    last_positive = (c < total[:, None]).sum(axis=1)
    j = np.minimum(j, last_positive)
    picked = ids[np.arange(len(j)), j].astype(np.int32)
    picked[total <= 0] = -1
    return picked
