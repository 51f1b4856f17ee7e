"""Errors a user can act on: each names the file (and row) and says what to do.

A message names the caller's settings with :func:`arg`: the Python API shows them as
parameters (``batch_rows=0``), the command line as its flags (``--batch-rows 0``), from one
mapping of parameter names to flags (``tokedit/cli/flags.py``)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

_MARK = "\x1f"  # around a parameter: MARK name SEP py-value SEP flag-key SEP cli-value MARK
_SEP = "\x1e"
_FIELD = f"([^{_MARK}{_SEP}]*)"
_ARG = re.compile(f"{_MARK}{_FIELD}{_SEP}{_FIELD}{_SEP}{_FIELD}{_SEP}{_FIELD}{_MARK}")
_NO_VALUE = object()


def arg(name: str, value=_NO_VALUE) -> str:
    """A parameter (and its value) in a message: ``name=value`` to a Python caller,
    ``--flag value`` on the command line (the value quoted for a shell where it needs
    quotes). ``name`` is the Python parameter's name.

    A bool is a switch on the command line: ``True`` is the flag of ``name`` alone
    (``overwrite=True``: ``--overwrite``), ``False`` the flag of ``no_<name>``
    (``provenance=False``: ``--no-provenance``)."""
    if value is _NO_VALUE:
        py, key, cli = "", name, ""
    elif isinstance(value, bool):
        py, key, cli = f"={value}", name if value else f"no_{name}", ""
    else:
        shown = repr(value) if isinstance(value, str) else str(value)
        listed = isinstance(value, tuple | list) and not isinstance(value, str)
        py, key = f"={shown}", name
        cli = " " + shlex.quote(",".join(map(str, value)) if listed else str(value))
    return f"{_MARK}{name}{_SEP}{py}{_SEP}{key}{_SEP}{cli}{_MARK}"


def render(text: str, flags: Mapping[str, str] | None = None) -> str:
    """``text`` with its parameters written for Python (``flags`` None) or as the flags of
    ``flags`` (a parameter it lacks becomes ``--name-with-dashes``)."""
    if flags is None:
        return _ARG.sub(lambda m: m[1] + m[2], text)
    return _ARG.sub(lambda m: flags.get(m[3], "--" + m[3].replace("_", "-")) + m[4], text)


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
