"""The options of the model that scores (``tokedit score`` and ``tokedit edit --model``),
declared once and collected into :class:`ModelFlags`."""

from __future__ import annotations

from dataclasses import dataclass

import click

from tokedit.cli.options import collect, options
from tokedit.scoring.options import (
    BACKENDS,
    BOS_MODES,
    DEFAULT_MAX_LEN,
    DTYPES,
    ModelOptions,
    ScoreOptions,
)


@dataclass(frozen=True)
class ModelFlags:
    """The model flags of ``score`` and ``edit --model``: how the model runs, and the fields
    of :class:`ScoreOptions` they set (windows, batch tokens, BOS; None: not given)."""

    model: ModelOptions
    windows: dict

    def score_options(self, **more) -> ScoreOptions:
        return ScoreOptions(**{k: v for k, v in self.windows.items() if v is not None}, **more)


def _model_flags(backend, max_length, overlap, batch_tokens, bos, no_bos, device, dtype, revision, trust_remote_code):  # fmt: skip
    return ModelFlags(
        ModelOptions(
            backend=backend,
            device=device,
            dtype=dtype,
            revision=revision,
            trust_remote_code=trust_remote_code,
        ),
        {
            "max_length": max_length,
            "overlap": overlap,
            "batch_tokens": batch_tokens,
            "bos": bos_mode(bos, no_bos, None),
        },
    )


MODEL_FLAGS = ("backend", "max_length", "overlap", "batch_tokens", "bos", "no_bos", "device", "dtype", "revision", "trust_remote_code")  # fmt: skip

TRUST_HELP = (
    "Run the Python code a model ships (an auto_map in its config.json or "
    "tokenizer_config.json: modeling_*.py files in its directory or hub repository). That "
    "code runs as you, with access to your files and network: read it first. Without this "
    "flag such a model is refused and none of its code runs."
)


def trust_remote_code_option(help_prefix: str = ""):
    """``--trust-remote-code``: the commands that load a model (its default: ModelOptions')."""
    return click.option(
        "--trust-remote-code",
        is_flag=True,
        default=ModelOptions.trust_remote_code,
        help=help_prefix + TRUST_HELP,
    )


def _backend_help(one_pass: bool) -> str:
    if one_pass:
        return "--model: hf draws from full rows (any --top-k); vllm (a CUDA GPU, or vLLM's CPU build) from its top-k candidates (--top-k >= 1)."
    return "hf: transformers on CPU or CUDA; vllm: vLLM on a CUDA GPU (pip install 'tokedit[vllm]') or its CPU build (docs/gpus.md)."


def _bos_help(one_pass: bool) -> str:
    if one_pass:
        return (
            "--model: as for tokedit score  [default: auto]. With --scores: checked against the "
            "BOS choice the scores were made with (refused if it differs); leave out to take the scores' one."
        )
    return (
        "A BOS token before every document? auto: as the tokenizer does with its special "
        "tokens (Llama, Gemma: yes; GPT-2 style, Qwen: no); always: whenever the tokenizer has one; "
        "never. Without a BOS the first token has no log-prob (null).  "
        f"[default: {ScoreOptions.bos}]"
    )


def model_options(*, one_pass: bool = False):
    """The options of the model that scores: ``score``'s, or (``one_pass``) ``edit --model``'s,
    where they are ignored with ``--scores`` and ``--bos`` is checked against the scores."""
    only = "--model only. " if one_pass else ""
    backend_help, bos_help = _backend_help(one_pass), _bos_help(one_pass)
    trust = trust_remote_code_option("--model, and the tokenizer of --scores. " if one_pass else "")
    return options(
        click.option(
            "--backend",
            type=click.Choice(BACKENDS),
            default=ModelOptions.backend,
            show_default=True,
            help=backend_help,
        ),
        click.option(
            "--max-length",
            type=int,
            default=ScoreOptions.max_length,
            help=only + "Window length in tokens; longer documents are scored in overlapping "
            f"windows.  [default: the model's positions, at most {DEFAULT_MAX_LEN}]",
        ),
        click.option(
            "--overlap",
            type=int,
            default=ScoreOptions.overlap,
            help=only + "Minimum context (tokens) of every position beyond the first window."
            "  [default: max-length / 8]",
        ),
        click.option(
            "--batch-tokens",
            type=int,
            default=None,
            help=only + "Padded tokens per forward batch (rows x longest window).  "
            f"[default: {ScoreOptions.batch_tokens}]",
        ),
        click.option("--bos", type=click.Choice(BOS_MODES), default=None, help=bos_help),
        click.option("--no-bos", is_flag=True, hidden=True, help="Deprecated: --bos never."),
        click.option(
            "--device",
            default=ModelOptions.device,
            show_default=True,
            help=only + "auto, cpu, cuda, cuda:1 ...",
        ),
        click.option(
            "--dtype",
            type=click.Choice(DTYPES),
            default=ModelOptions.dtype,
            show_default=True,
            help=only + "auto: bfloat16 on CUDA, float32 on CPU.",
        ),
        click.option(
            "--revision", default=ModelOptions.revision, help=only + "Hub revision of the model."
        ),
        trust,
        collect("model_flags", _model_flags, MODEL_FLAGS),
    )


def bos_mode(bos: str | None, no_bos: bool, default: str | None) -> str | None:
    """--bos, with the deprecated --no-bos as --bos never (``default`` when neither is given)."""
    if no_bos:
        if bos not in (None, "never", default):
            raise click.UsageError(f"--no-bos contradicts --bos {bos} (--no-bos is --bos never)")
        return "never"
    return bos if bos is not None else default
