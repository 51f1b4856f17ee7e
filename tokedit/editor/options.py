"""What decides an edit's output: thresholds, the rule (from a preset and its overrides),
the seed, where the text goes; each default declared once, in :class:`EditOptions` and
:class:`~tokedit.editor.rules.EditRule`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from tokedit.editor.rules import DEFAULT_PRESET, PRESETS, RULE_FIELDS, EditRule, resolve_preset
from tokedit.errors import InputError, arg


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
    preset: str | None = DEFAULT_PRESET
    overridden: tuple[str, ...] = ()

    def flag(self, name: str) -> str:
        """``top_k=64 (from preset='low-drop-up-revise')`` (``--top-k 64 (from --preset
        low-drop-up-revise)`` on the command line) for messages."""
        name = name.replace("-", "_")
        where = (
            f" (from {arg('preset', self.preset)})"
            if self.preset and name not in self.overridden
            else ""
        )
        return f"{arg(name, getattr(self.rule, name))}{where}"


EDIT_OUTPUT_FIELDS = ("seed", "output_column", "provenance", "output_format")
# What edit options take by keyword: the preset, the threshold(s), the rule's fields, and
# the fields of EditOptions that are not the rule.
EDIT_KEYWORDS = ("preset", "p", *RULE_FIELDS, *EDIT_OUTPUT_FIELDS)


def build_edit_options(options: EditOptions | None, kwargs: dict) -> EditOptions:
    """Edit options from ``options`` and the keyword arguments of :data:`EDIT_KEYWORDS`
    (removed from ``kwargs``): values given > the preset's (``preset``, default up-revise,
    or the one ``options`` came from) > the built-ins. ``p`` is one threshold or several
    (a sweep). The flags of ``tokedit edit`` arrive here the same way."""
    given = {k: kwargs.pop(k) for k in EDIT_KEYWORDS if k in kwargs}
    preset = given.pop("preset", None)
    p = given.pop("p", None)
    rule_given = {k: given.pop(k) for k in RULE_FIELDS if k in given}
    if (
        options is not None
        and preset is None
        and p is None
        and not any(v is not None for v in rule_given.values())
    ):
        return replace(options, **given)
    if options is not None and preset is None:
        preset = options.preset
    try:
        preset_p, rule, overridden = resolve_preset(preset, **rule_given)
    except ValueError as e:
        raise InputError(
            str(e).replace("preset", arg("preset"), 1), remedy=f"one of {', '.join(PRESETS)}"
        ) from None
    ps = parse_ps(p if p is not None else (preset_p,))
    if ps != (preset_p,):
        overridden = sorted([*overridden, "p"])
    base = options if options is not None else EditOptions()
    return replace(
        base,
        ps=ps,
        rule=rule,
        preset=preset or DEFAULT_PRESET,
        overridden=tuple(overridden),
        **given,
    )


def parse_ps(text: str | float | Sequence[float]) -> tuple[float, ...]:
    """``"0.9,0.99"``, ``0.99`` or ``[0.9, 0.99]`` -> a tuple of thresholds, each strictly
    between 0 and 1, duplicates dropped."""
    if isinstance(text, str):
        items = text.split(",")
    elif isinstance(text, int | float):
        items = [text]
    else:
        items = list(text)
    ps: list[float] = []
    for item in items:
        try:
            p = float(item)
        except (TypeError, ValueError):
            raise InputError(
                f"{arg('p', item)} is not a number",
                remedy=f"e.g. {arg('p', 0.99)} or {arg('p', (0.9, 0.99, 0.999))}",
            ) from None
        if not 0 < p < 1 or math.isnan(p):
            raise InputError(
                f"{arg('p', p)} is outside (0, 1)",
                remedy=f"a threshold is a probability strictly between 0 and 1, e.g. {arg('p', 0.99)}",
            )
        if p not in ps:
            ps.append(p)
    if not ps:
        raise InputError(f"{arg('p')} is empty", remedy=f"e.g. {arg('p', 0.99)}")
    return tuple(ps)


def resolve_rule(options: EditOptions, stored_k: int | None, scores_mode: bool) -> EditRule:
    rule = options.rule
    if rule.drop_below >= min(options.ps):
        raise InputError(
            f"{arg('drop_below', rule.drop_below)} is not below {arg('p', min(options.ps))}: a "
            f"token cannot be both resampled (P > p) and deleted (P < {arg('drop_below')})",
            remedy=f"pass a {arg('drop_below')} below every {arg('p')}, e.g. {arg('drop_below', 0.001)}",
        )
    if not scores_mode:
        return rule
    if not stored_k:
        raise InputError(
            f"the scores hold no candidates (they were scored with {arg('top_k', 0)})",
            remedy=f"rescore with {arg('top_k', 8)}, or edit in one pass with {arg('model')}",
        )
    if rule.top_k == 0:
        raise InputError(
            f"{arg('top_k', 0)} (the full distribution) needs the model",
            remedy=f"pass {arg('model')} instead of {arg('scores_dir')}, or a {arg('top_k')} "
            "between 1 and the scores' k",
        )
    if rule.top_k > stored_k:
        raise InputError(
            f"{options.flag('top-k')} but the scores store only {stored_k} candidates per position",
            remedy=f"rescore with {arg('top_k', rule.top_k)}, or pass {arg('top_k', stored_k)} "
            "(fewer candidates than the strategy specifies)",
        )
    return rule


def resolve_model_rule(options: EditOptions, backend: str) -> EditRule:
    rule = resolve_rule(options, None, scores_mode=False)
    if backend not in ("hf", "vllm"):
        raise InputError(
            f"unknown backend {backend!r}",
            remedy=f"use {arg('backend', 'hf')} or {arg('backend', 'vllm')}",
        )
    if backend == "vllm" and rule.top_k == 0:
        raise InputError(
            f"{arg('top_k', 0)} (the full distribution) cannot be drawn with "
            f"{arg('backend', 'vllm')}: vLLM returns at most max_logprobs candidates per "
            "position, not full rows",
            remedy=f"pass a {arg('top_k')} above 0 (e.g. {arg('top_k', 8)}), or use "
            f"{arg('backend', 'hf')} for {arg('top_k', 0)}",
        )
    return rule
