"""tokedit: token-level editing of training corpora against model collapse.

The Python API (docs/python.md)::

    import tokedit

    prior = tokedit.load_prior("gemma-3-270m")
    edits = tokedit.edit(texts, prior=prior, p=0.99)

Everything named in ``__all__`` is imported on first use, so ``import tokedit`` stays light
(no torch until a prior is loaded). Stage messages ("resumed: ...") are logged under the
``tokedit`` logger, which has only a ``NullHandler`` until you configure logging.
"""

import logging

__version__ = "0.1.0"

# Stage messages are logged under "tokedit" (tokedit.engines.runner, ...); a library stays
# silent until its user (or the CLI, tokedit.cli.options.configure_logging) adds a handler.
logging.getLogger(__name__).addHandler(logging.NullHandler())

_EXPORTS = {
    "load_prior": "tokedit.api",
    "Prior": "tokedit.api",
    "Scores": "tokedit.api",
    "DocScores": "tokedit.api",
    "edit": "tokedit.api",
    "Edits": "tokedit.api",
    "Edit": "tokedit.api",
    "report": "tokedit.api",
    "ReportResult": "tokedit.api",
    "score_dataset": "tokedit.scoring.run",
    "ScoreResult": "tokedit.scoring.run",
    "edit_dataset": "tokedit.editor.run",
    "EditResult": "tokedit.editor.run",
    "EditCounts": "tokedit.editor.run",
    "ModelOptions": "tokedit.scoring.options",
    "ScoreOptions": "tokedit.scoring.options",
    "EditOptions": "tokedit.editor.options",
    "EditRule": "tokedit.editor.rules",
    "PRESETS": "tokedit.editor.rules",
    "RunOptions": "tokedit.engines.options",
    "ReportOptions": "tokedit.analysis.report",
    "TokeditError": "tokedit.errors",
    "InputError": "tokedit.errors",
    "OutputError": "tokedit.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tokedit' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
