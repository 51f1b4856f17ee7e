"""The one mapping from the library's parameter names to the command line's flags.

Library errors name parameters (:func:`tokedit.errors.arg`); the CLI prints them as the
flags here, and as ``--name-with-dashes`` for every parameter not listed."""

from __future__ import annotations

FLAGS = {
    "p": "--p",
    "ps": "--p",
    "scores_dir": "--scores",
    "out_dir": "--out",
    "input_dir": "INPUT",
    "model": "--model",
    "model_path": "--model",
    "texts": "INPUT",
    "target_edit_rates": "--target-edit-rate",
    "smoothing_alpha": "--smoothing",
}
