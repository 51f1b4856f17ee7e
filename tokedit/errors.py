"""Errors a user can act on: each names the file (and row) and says what to do."""

from __future__ import annotations


class TokeditError(Exception):
    """Base class: the CLI prints ``message`` and ``remedy`` and exits with status 2."""

    def __init__(self, message: str, *, remedy: str | None = None):
        super().__init__(message)
        self.message = message
        self.remedy = remedy

    def __str__(self) -> str:
        return self.message if not self.remedy else f"{self.message}\n  fix: {self.remedy}"


class InputError(TokeditError):
    """Bad input data or arguments (a file, a row, a column, an option)."""


class OutputError(TokeditError):
    """The output directory cannot be written, or holds a run with other options."""


def first_few(names: list[str], limit: int = 5) -> str:
    """``a, b, c ...``: the first ``limit`` names of a list an error message points to."""
    return ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")
