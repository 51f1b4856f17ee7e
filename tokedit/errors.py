"""Errors a user can act on: each names the file (and row) and says what to do.

A message names the caller's settings with :func:`arg`: the Python API shows them as
parameters (``batch_rows=0``), the command line as its flags (``--batch-rows 0``), from one
mapping of parameter names to flags (``tokedit/cli/flags.py``)."""

from __future__ import annotations

import re
from collections.abc import Mapping

_MARK = "\x1f"  # around a parameter: MARK name SEP python-value SEP cli-value MARK
_SEP = "\x1e"
_ARG = re.compile(f"{_MARK}([^{_MARK}{_SEP}]+){_SEP}([^{_MARK}]*){_SEP}([^{_MARK}]*){_MARK}")
_NO_VALUE = object()


def arg(name: str, value=_NO_VALUE) -> str:
    """A parameter (and its value) in a message: ``name=value`` to a Python caller,
    ``--flag value`` on the command line. ``name`` is the Python parameter's name."""
    if value is _NO_VALUE:
        return f"{_MARK}{name}{_SEP}{_SEP}{_MARK}"
    py = repr(value) if isinstance(value, str) else str(value)
    cli = (
        value
        if isinstance(value, str)
        else (",".join(map(str, value)) if isinstance(value, tuple | list) else str(value))
    )
    return f"{_MARK}{name}{_SEP}={py}{_SEP} {cli}{_MARK}"


def render(text: str, flags: Mapping[str, str] | None = None) -> str:
    """``text`` with its parameters written for Python (``flags`` None) or as the flags of
    ``flags`` (a parameter it lacks becomes ``--name-with-dashes``)."""
    if flags is None:
        return _ARG.sub(lambda m: m[1] + m[2], text)
    return _ARG.sub(lambda m: flags.get(m[1], "--" + m[1].replace("_", "-")) + m[3], text)


class TokeditError(Exception):
    """Base class: the CLI prints ``message`` and ``remedy`` and exits with status 2."""

    def __init__(self, message: str, *, remedy: str | None = None):
        super().__init__(message)
        self.message = message
        self.remedy = remedy

    def render(self, flags: Mapping[str, str] | None = None) -> str:
        """The message and the fix, parameters as Python names or (``flags``) as flags."""
        text = self.message if not self.remedy else f"{self.message}\n  fix: {self.remedy}"
        return render(text, flags)

    def __str__(self) -> str:
        return self.render()


class InputError(TokeditError):
    """Bad input data or arguments (a file, a row, a column, an option)."""


class OutputError(TokeditError):
    """The output directory cannot be written, or holds a run with other options."""


def first_few(names: list[str], limit: int = 5) -> str:
    """``a, b, c ...``: the first ``limit`` names of a list an error message points to."""
    return ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")
