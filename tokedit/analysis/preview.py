"""Know before you edit: what an edit setting would do to a scored corpus, without editing.

For each setting (a ``p`` and an :class:`~tokedit.editor.rules.EditRule`) and from the stored
scores alone: the share of scored tokens above ``p``; the *expected* share changed, the sum
over positions above ``p`` of ``1 - w(original) / sum(w)`` with the rule's own weights over
the stored candidates (:func:`~tokedit.editor.rules.rule_weights`); the expected share
redrawn as itself; and the share deleted (``P < drop_below``). A real edit also skips a few
positions it cannot splice cleanly, so its changed share can be slightly lower.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tokedit.editor.rules import (
    PRESETS,
    EditRule,
    above_threshold,
    below_threshold,
    canonical_order,
    resolve_preset,
    rule_weights,
)
from tokedit.io.scores_dir import LOGPROB, TOKEN_IDS, TOPK_IDS, TOPK_LOGPROBS
from tokedit.io.storage import arrow_source, as_path

# What the preview reads of a scores shard.
COLUMNS = [TOKEN_IDS, LOGPROB, TOPK_IDS, TOPK_LOGPROBS]


@dataclass
class PreviewSetting:
    label: str
    p: float
    rule: EditRule


def default_settings(user: dict | None = None) -> list[PreviewSetting]:
    """Both presets, up-revise at T = 1, and the user's own values (``None`` values: the
    default preset's) when any is given."""
    settings = [PreviewSetting(name, *resolve_preset(name)[:2]) for name in PRESETS]
    p, rule, _ = resolve_preset("up-revise", temperature=1.0)
    settings.append(PreviewSetting("up-revise, T = 1", p, rule))
    given = {k: v for k, v in (user or {}).items() if v is not None}
    if given:
        p, rule, _ = resolve_preset(None, **given)
        label = "yours: " + ", ".join(f"{k} {v}" for k, v in sorted(given.items()))
        settings.append(PreviewSetting(label, p, rule))
    return settings


@dataclass
class _Counts:
    scored: int = 0
    above: int = 0
    expected_changed: float = 0.0
    expected_as_itself: float = 0.0
    deleted: int = 0
    above_without_candidates: int = 0


@dataclass
class EditPreview:
    settings: list[PreviewSetting]
    banned: np.ndarray | None = None  # token ids never drawn (special tokens)
    stored_k: int = 0
    counts: list[_Counts] = field(default_factory=list)

    def __post_init__(self):
        self.counts = [_Counts() for _ in self.settings]

    def add(self, table: pa.Table) -> None:
        """Count one batch of a scores table (columns :data:`COLUMNS`)."""
        lp_col = pc.list_flatten(table.column(LOGPROB))
        valid = ~np.asarray(lp_col.is_null().to_numpy(zero_copy_only=False))
        lp = np.asarray(lp_col.fill_null(np.nan).to_numpy(zero_copy_only=False), np.float32)
        orig = np.asarray(pc.list_flatten(table.column(TOKEN_IDS)).to_numpy(), np.int64)
        inner = pc.list_flatten(table.column(TOPK_IDS)).combine_chunks()
        inner_lp = pc.list_flatten(table.column(TOPK_LOGPROBS)).combine_chunks()
        sizes = np.asarray(pc.list_value_length(inner).to_numpy(zero_copy_only=False))
        k = int(sizes.max()) if len(sizes) else 0
        self.stored_k = max(self.stored_k, k)
        has = sizes == k if k else np.zeros(len(lp), bool)
        row_of = np.cumsum(has) - 1  # index among positions with candidates
        cand_ids = (
            np.asarray(pc.list_flatten(inner).to_numpy(), np.int64).reshape(-1, k) if k else None
        )
        cand_lp = (
            np.asarray(pc.list_flatten(inner_lp).to_numpy(), np.float32).reshape(-1, k)
            if k
            else None
        )
        for setting, c in zip(self.settings, self.counts, strict=True):
            c.scored += int(valid.sum())
            above = above_threshold(lp, setting.p) & valid
            c.above += int(above.sum())
            c.deleted += int((below_threshold(lp, setting.rule.drop_below) & valid).sum())
            with_cands = above & has
            c.above_without_candidates += int((above & ~has).sum())
            if not with_cands.any():
                continue
            rows = row_of[with_cands]
            ids, clp, ok = canonical_order(
                cand_ids[rows], cand_lp[rows], np.ones((len(rows), k), bool)
            )
            banned = self.banned if self.banned is not None else np.zeros(int(ids.max()) + 1, bool)
            w = rule_weights(ids, clp, ok, orig[with_cands], setting.rule, banned)
            total = w.sum(axis=1)
            own = np.where(ids == orig[with_cands][:, None], w, 0.0).sum(axis=1)
            drawable = total > 0
            keep = np.where(drawable, own / np.where(drawable, total, 1.0), 0.0)
            c.expected_as_itself += float(keep[drawable].sum())
            c.expected_changed += float((1.0 - keep)[drawable].sum())

    def summary(self) -> list[dict]:
        out = []
        for s, c in zip(self.settings, self.counts, strict=True):
            n = c.scored or 1
            out.append(
                {
                    "setting": s.label,
                    "p": s.p,
                    "top_k": s.rule.top_k,
                    "temperature": s.rule.temperature,
                    "strategy": s.rule.strategy,
                    "exclude_original": s.rule.exclude_original,
                    "drop_below": s.rule.drop_below,
                    "scored_tokens": c.scored,
                    "share_above": c.above / n,
                    "expected_share_changed": c.expected_changed / n,
                    "expected_share_as_itself": c.expected_as_itself / n,
                    "share_deleted": c.deleted / n,
                    "above_without_candidates": c.above_without_candidates,
                    "candidates_limited_by_stored_k": bool(
                        s.rule.top_k and self.stored_k and self.stored_k < s.rule.top_k
                    ),
                }
            )
        return out


def preview_scores_dir(
    scores_dir: str | Path, settings: list[PreviewSetting], banned: np.ndarray | None = None
) -> dict:
    """:class:`EditPreview` over every shard of a scores directory."""
    preview = EditPreview(settings, banned)
    for path in sorted(as_path(scores_dir).rglob("*.parquet")):
        if any(part.startswith(".") for part in path.relative_to(scores_dir).parts):
            continue
        for batch in pq.ParquetFile(arrow_source(path)).iter_batches(
            columns=COLUMNS, batch_size=1024
        ):
            preview.add(pa.Table.from_batches([batch]))
    return {"stored_k": preview.stored_k, "settings": preview.summary()}


def format_preview(preview: dict) -> str:
    """One line per setting, for the terminal."""
    lines = [
        f"  {'edit setting':<44} {'above p':>8} {'changed*':>9} {'as itself*':>10} {'deleted':>8}"
    ]
    for r in preview["settings"]:
        name = f"{r['setting']} (p {r['p']}, k {r['top_k']}, T {r['temperature']})"
        note = ""
        if r["candidates_limited_by_stored_k"]:
            note += f"  [only {preview['stored_k']} candidates stored]"
        if r["above_without_candidates"]:
            note += f"  [{r['above_without_candidates']} above p without stored candidates]"
        lines.append(
            f"  {name:<44} {100 * r['share_above']:7.2f}% {100 * r['expected_share_changed']:8.3f}% "
            f"{100 * r['expected_share_as_itself']:9.2f}% {100 * r['share_deleted']:7.2f}%{note}"
        )
    lines.append("  (* expected, from the stored candidates' weights; shares of scored tokens)")
    return "\n".join(lines)
