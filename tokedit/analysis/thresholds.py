"""What ``report --target-edit-rate`` suggests, and whether the scores can edit at it.

A suggested threshold ``p`` is useful only if the scores hold candidates wherever
``P > p`` (``--candidates-min-p <= p`` when scoring). Each suggestion gets the facts and the
exact command to run next: ``tokedit edit`` when these scores can edit at ``p``, else the
``tokedit score`` command that rescoring takes (same input, model and columns).
"""

from __future__ import annotations

import math
import shlex


def p_text(p: float) -> str:
    """``p`` as printed and passed on: 3 significant digits of ``p`` and of ``1 - p``
    (0.0233, 0.5, 0.999994)."""
    decimals = 3 - math.floor(math.log10(p)) if p > 0 else 3
    if p < 1:
        decimals = max(decimals, 2 - math.floor(math.log10(1 - p)))
    return f"{p:.{max(decimals, 1)}f}".rstrip("0").rstrip(".")


def advise(threshold: dict, source_path, manifest: dict | None) -> dict:
    """``threshold`` (a :func:`suggest_threshold` result) with ``p_text``,
    ``candidates_min_p``, ``scores_can_edit`` and ``command`` added."""
    out = dict(threshold)
    if threshold.get("p") is None:
        return out
    p = p_text(threshold["p"])
    opts = (manifest or {}).get("options", {}) or {}
    min_p = opts.get("candidates_min_p")
    text_col, id_col = opts.get("text_column"), opts.get("id_column")
    columns = []
    if text_col and text_col != "text":
        columns += ["--text-column", text_col]
    if id_col:
        columns += ["--id-column", id_col]
    data = ((manifest or {}).get("info") or {}).get("input") or "DATA"
    out["p_text"] = p
    out["candidates_min_p"] = min_p
    can = None if min_p is None else float(p) >= float(min_p) and bool(opts.get("top_k", 1))
    out["scores_can_edit"] = can
    edit = ["tokedit", "edit", data, "--scores", str(source_path), "--p", p, "--out", "EDITED"]
    if can is False and opts.get("model"):
        score = ["tokedit", "score", data, "--model", opts["model"], "--out", f"{source_path}-all"]
        score += ["--candidates-min-p", "0", "--top-k", str(opts.get("top_k") or 8)]
        for flag, key in (("--max-length", "max_length"), ("--overlap", "overlap")):
            if opts.get(key):
                score += [flag, str(opts[key])]
        bos = ((manifest or {}).get("info") or {}).get("bos")
        if bos and bos != "auto":
            score += ["--bos", bos]
        if opts.get("revision"):
            score += ["--revision", opts["revision"]]
        edit[4] = f"{source_path}-all"
        out["command"] = shlex.join(score + columns) + " && " + shlex.join(edit + columns)
    else:
        out["command"] = shlex.join(edit + columns)
    return out


def format_thresholds(label: str, thresholds: list[dict]) -> list[str]:
    """Terminal lines: each suggested p, whether the scores can edit at it, what to run."""
    lines = []
    for t in thresholds:
        if t.get("p") is None:
            continue
        head = (
            f"  {label}: --p {t['p_text']} puts {100 * t['estimated_rate']:.1f}% of tokens "
            f"above the threshold (target edit rate {100 * t['target_rate']:g}%)"
        )
        if t.get("scores_can_edit") is False:
            lines.append(
                f"{head}; these scores CANNOT edit at it: they hold candidates only where "
                f"P >= {t['candidates_min_p']} (--candidates-min-p). Rescore, then edit:"
            )
        elif t.get("scores_can_edit"):
            lines.append(f"{head}; these scores can edit at it:")
        else:
            lines.append(f"{head}:")
        lines.append(f"    {t['command']}")
    return lines
