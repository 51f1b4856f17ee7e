"""The options of scoring, each default declared here and nowhere else.

Two concerns, one frozen dataclass each: :class:`ModelOptions` (which backend runs the
prior, where, in which precision, at which revision) and :class:`ScoreOptions` (windows,
batches, the BOS token and the candidates kept). The command line builds them from its
flags (``tokedit score``, ``tokedit edit --model``), the Python API takes them or their
fields as keyword arguments, and the scores manifest records what they resolve to.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from tokedit.config import take
from tokedit.errors import InputError, arg

DEFAULT_MAX_LEN = 1024  # window length when the model has more positions (or says none)

BACKENDS = ("hf", "vllm")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# bos: "auto" follows the tokenizer (a BOS only where encoding with its special tokens
# prepends one), "always" prepends bos_token_id whenever the tokenizer has one, "never" none.
BOS_MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class ModelOptions:
    """How the prior runs: the backend, the device, the precision, the hub revision, and
    whether the model's own code may run."""

    backend: str = "hf"  # one of BACKENDS; vllm: a CUDA GPU or vLLM's CPU build
    device: str = "auto"  # auto (CUDA if there is one), cpu, cuda, cuda:1 ...
    dtype: str = "auto"  # one of DTYPES; auto: bfloat16 on CUDA, float32 on CPU
    revision: str | None = None  # hub revision of the model (a name or a directory: None)
    # Run the Python code a model ships (an ``auto_map`` in its config.json or
    # tokenizer_config.json). Off: such a model is refused, and its code is never imported.
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InputError(
                f"{arg('backend', self.backend)} is not one of {', '.join(BACKENDS)}",
                remedy=f"use {arg('backend', 'hf')} (transformers) or {arg('backend', 'vllm')}",
            )
        if self.dtype not in DTYPES:
            raise InputError(
                f"{arg('dtype', self.dtype)} is not one of {', '.join(DTYPES)}",
                remedy=f"e.g. {arg('dtype', 'auto')}",
            )


@dataclass(frozen=True)
class ScoreOptions:
    """Windows, batches, the BOS token and the candidates a scoring run keeps."""

    max_length: int | None = None  # window length; None: the model's positions, at most 1024
    overlap: int | None = None  # least context beyond the first window; None: max_length / 8
    batch_tokens: int = 16384  # padded tokens per forward batch (rows x longest window)
    top_k: int = 8  # candidates stored per position (0: none)
    candidates_min_p: float = 0.0  # candidates only where P >= this; 0: everywhere
    bos: str = "auto"  # one of BOS_MODES; resolved per tokenizer by scorer.bos_prepended

    def __post_init__(self) -> None:
        if self.bos not in BOS_MODES:
            raise InputError(
                f"{arg('bos', self.bos)} is not one of {', '.join(BOS_MODES)}",
                remedy=f"e.g. {arg('bos', 'auto')}",
            )
        if not 0 <= self.candidates_min_p <= 1:
            raise InputError(
                f"{arg('candidates_min_p', self.candidates_min_p)} is outside [0, 1]",
                remedy=f"e.g. {arg('candidates_min_p', 0)} (candidates at every position)",
            )
        if self.top_k < 0:
            raise InputError(
                f"{arg('top_k', self.top_k)} is negative",
                remedy=f"e.g. {arg('top_k', 8)}, or 0 for none",
            )
        if self.batch_tokens < 1:
            raise InputError(
                f"{arg('batch_tokens', self.batch_tokens)} must be >= 1",
                remedy=f"e.g. {arg('batch_tokens', 16384)}",
            )

    def resolved(self, model_positions: int | None) -> ScoreOptions:
        """Fill ``max_length`` / ``overlap`` defaults from the model's number of positions,
        and refuse a ``max_length`` the model cannot read."""
        max_len = self.max_length or min(DEFAULT_MAX_LEN, model_positions or DEFAULT_MAX_LEN)
        if model_positions and max_len > model_positions:
            raise InputError(
                f"{arg('max_length', max_len)} exceeds the model's {model_positions} positions",
                remedy=f"pass {arg('max_length', model_positions)} or less",
            )
        overlap = self.overlap if self.overlap is not None else max(1, max_len // 8)
        return replace(self, max_length=max_len, overlap=overlap)


MODEL_FIELDS = tuple(f.name for f in fields(ModelOptions))
# The fields of ScoreOptions an edit in one pass takes: its rule sets top_k and
# candidates_min_p.
ONE_PASS_FIELDS = ("max_length", "overlap", "batch_tokens", "bos")


def one_pass_score_options(given: ScoreOptions | None, kwargs: dict) -> ScoreOptions | None:
    """``given`` with the :data:`ONE_PASS_FIELDS` of ``kwargs`` replaced (and removed from
    ``kwargs``); None when neither is given (then the scores' BOS choice is not checked)."""
    if given is None and not any(k in kwargs for k in ONE_PASS_FIELDS):
        return None
    return take(kwargs, ScoreOptions, given, exclude=("top_k", "candidates_min_p"))
