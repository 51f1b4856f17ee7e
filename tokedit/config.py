"""Option objects built from keyword arguments: the one way the Python API turns
``score_dataset(..., max_length=256, progress=False)`` into the frozen dataclasses that
declare each default (``ScoreOptions``, ``ModelOptions``, ``RunOptions``, ``EditOptions``)."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any


def field_names(cls) -> set[str]:
    return {f.name for f in fields(cls)}


def take(kwargs: dict[str, Any], cls, given=None, *, exclude: tuple[str, ...] = ()):
    """``given`` (or ``cls()``) with the fields of ``cls`` named in ``kwargs`` replaced; those
    keys are removed from ``kwargs``, so what is left at the end was not an option."""
    names = field_names(cls) - set(exclude)
    mine = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
    base = given if given is not None else cls()
    return replace(base, **mine) if mine else base


def refuse_unknown(kwargs: dict[str, Any], function: str, *classes, extra: tuple[str, ...] = ()):
    """A ``TypeError`` naming the keyword arguments no option object of ``function`` has."""
    if not kwargs:
        return
    known = sorted(set().union(*(field_names(c) for c in classes), extra))
    raise TypeError(
        f"{function}() got unexpected keyword argument(s) {', '.join(map(repr, sorted(kwargs)))}; "
        f"its options are: {', '.join(known)}"
    )
