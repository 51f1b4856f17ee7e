"""What decides an edit's output: thresholds, the rule (from a preset and flags), the seed,
where the text goes; and, in one-pass mode, the scorer's options for the model."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from tokedit.editor.rules import EditRule
from tokedit.errors import InputError
from tokedit.io.edited_dir import p_label


@dataclass(frozen=True)
class EditOptions:
    """What decides the output bytes (recorded in the manifest)."""

    ps: tuple[float, ...] = (0.99,)
    rule: EditRule = field(default_factory=EditRule)  # the up-revise preset's rule
    seed: int = 0
    output_column: str | None = None
    provenance: bool = True
    output_format: str = "mirror"  # one of OUTPUT_FORMATS
    # The --preset the rule came from and the flags that overrode it: recorded in the
    # manifest's info and named in messages; the output depends on ``rule`` and ``ps`` only.
    preset: str | None = None
    overridden: tuple[str, ...] = ()

    def flag(self, name: str) -> str:
        """``--top-k 64 (from --preset low-drop-up-revise)`` for messages."""
        value = getattr(self.rule, name.replace("-", "_"))
        where = (
            f" (from --preset {self.preset})"
            if self.preset and name.replace("-", "_") not in self.overridden
            else ""
        )
        return f"--{name} {value}{where}"


@dataclass(frozen=True)
class ModelOptions:
    """One-pass mode: the scorer's options for the model read in the same pass."""

    max_len: int | None = None
    overlap: int | None = None
    batch_tokens: int = 16384
    # --bos: "auto" / "always" / "never" (see scoring.scorer.bos_prepended); None is "auto"
    # with --model and, with --scores, "whatever the scores were made with" (no check).
    bos: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    revision: str | None = None
    backend: str = "hf"  # "vllm": top-k candidates only (no --top-k 0); GPU or vLLM's CPU build


def parse_ps(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"0.9,0.99"`` -> ``(0.9, 0.99)``; each value must lie strictly between 0 and 1."""
    items = text.split(",") if isinstance(text, str) else list(text)
    ps: list[float] = []
    for item in items:
        try:
            p = float(item)
        except ValueError:
            raise InputError(
                f"--p {item!r} is not a number", remedy="e.g. --p 0.99 or --p 0.9,0.99,0.999"
            ) from None
        if not 0 < p < 1 or math.isnan(p):
            raise InputError(
                f"--p {p} is outside (0, 1)",
                remedy="a threshold is a probability strictly between 0 and 1, e.g. 0.99",
            )
        if p not in ps:
            ps.append(p)
    if not ps:
        raise InputError("--p is empty", remedy="e.g. --p 0.99")
    return tuple(ps)


def resolve_rule(options: EditOptions, stored_k: int | None, scores_mode: bool) -> EditRule:
    rule = options.rule
    if rule.drop_below >= min(options.ps):
        raise InputError(
            f"--drop-below {rule.drop_below} is not below --p {p_label(min(options.ps))}: a token "
            "cannot be both resampled (P > p) and deleted (P < drop-below)",
            remedy="pass a --drop-below below every --p, e.g. --drop-below 0.001",
        )
    if not scores_mode:
        return rule
    if not stored_k:
        raise InputError(
            "the scores hold no candidates (they were scored with --top-k 0)",
            remedy="rescore with --top-k 8, or edit in one pass with --model",
        )
    if rule.top_k == 0:
        raise InputError(
            "--top-k 0 (the full distribution) needs the model",
            remedy="pass --model instead of --scores, or --top-k between 1 and the scores' k",
        )
    if rule.top_k > stored_k:
        raise InputError(
            f"{options.flag('top-k')} but the scores store only {stored_k} candidates per position",
            remedy=f"rescore with `tokedit score --top-k {rule.top_k}`, or pass --top-k {stored_k} "
            "(fewer candidates than the strategy specifies)",
        )
    return rule


def resolve_model_rule(options: EditOptions, backend: str) -> EditRule:
    rule = resolve_rule(options, None, scores_mode=False)
    if backend not in ("hf", "vllm"):
        raise InputError(
            f"unknown backend {backend!r}", remedy="use --backend hf or --backend vllm"
        )
    if backend == "vllm" and rule.top_k == 0:
        raise InputError(
            "--top-k 0 (the full distribution) cannot be drawn with --backend vllm: vLLM "
            "returns at most max_logprobs candidates per position, not full rows",
            remedy="pass --top-k K (e.g. --top-k 8), or use --backend hf for --top-k 0",
        )
    return rule
