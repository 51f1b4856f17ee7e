"""Token-Level Editing (ToEdit): resample the tokens a prior is over-confident about.

Pure cores: :mod:`~tokedit.editor.rng` (per-document random numbers),
:mod:`~tokedit.editor.rules` (the resampling rule), :mod:`~tokedit.editor.splice` (token
text in context, byte-exact splicing), :mod:`~tokedit.editor.batch` (a batch of scores in,
edits out). Shells: :mod:`~tokedit.editor.run` (``tokedit edit``) and
:mod:`~tokedit.editor.onepass` (``--model``: score and draw in the same forward).
"""

from tokedit.editor.batch import EDITS_TYPE, SKIP_REASONS, ScoreBatch, apply_draws, draw_batch
from tokedit.editor.options import EditOptions
from tokedit.editor.rng import doc_keys, position_uniforms
from tokedit.editor.rules import (
    PRESETS,
    EditRule,
    above_threshold,
    below_threshold,
    draw,
    resolve_preset,
)
from tokedit.editor.run import EditCounts, EditResult, edit_dataset
from tokedit.editor.splice import Renderer, align_span, splice
from tokedit.io.edited_dir import PROVENANCE_COLUMNS

__all__ = [
    "EDITS_TYPE",
    "PRESETS",
    "PROVENANCE_COLUMNS",
    "SKIP_REASONS",
    "EditCounts",
    "EditOptions",
    "EditResult",
    "EditRule",
    "Renderer",
    "ScoreBatch",
    "above_threshold",
    "below_threshold",
    "align_span",
    "apply_draws",
    "doc_keys",
    "draw",
    "draw_batch",
    "edit_dataset",
    "position_uniforms",
    "resolve_preset",
    "splice",
]
