"""``tokedit edit``."""

from __future__ import annotations

import click

from tokedit.cli.model import model_options
from tokedit.cli.options import (
    friendly_errors,
    input_options,
    run_options,
    silence_progress_bars,
)
from tokedit.editor.options import EditOptions
from tokedit.editor.rules import DEFAULT_PRESET, PRESETS
from tokedit.scoring.options import ModelOptions


@click.command()
@click.argument("input_dir", metavar="INPUT")
@click.option("--out", "-o", "out_dir", required=True, help="Edited dataset directory to write.")
@click.option(
    "--scores",
    "-s",
    "scores_dir",
    default=None,
    help="Scores directory of INPUT (`tokedit score`).",
)
@click.option(
    "--model",
    "-m",
    default=None,
    help="No scores: score with this prior and edit in the same pass (full distribution).",
)
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default=DEFAULT_PRESET,
    show_default=True,
    help="The authors' strategies (toedit_resampling.py). up-revise: p 0.99, top-k 8, "
    "T 1.5, no deletion. low-drop-up-revise: p 0.99, top-k 64, T 1, delete P < 0.001. "
    "Flags given explicitly override the preset's values.",
)
@click.option(
    "--p",
    "ps",
    default=None,
    help="Edit tokens with P(token | prefix) > p [preset: 0.99]. A list (0.9,0.99,0.999) "
    "writes OUT/p=<p>/ each.",
)
@click.option(
    "--strategy",
    type=click.Choice(["topk", "topp"]),
    default=None,
    help="topk: draw among the top-k candidates with weights P^(1/T); topp: nucleus within "
    "them [preset: topk].",
)
@click.option(
    "--top-k",
    type=int,
    default=None,
    help="Candidates drawn from (at most the scores' k); 0 with --model: the whole vocabulary "
    "[preset: up-revise 8, low-drop-up-revise 64].",
)
@click.option(
    "--top-p", type=float, default=None, help="Nucleus mass for --strategy topp [default: 0.9]."
)
@click.option(
    "--temperature",
    type=float,
    default=None,
    help="Weights P^(1/T) (the official beta) [preset: up-revise 1.5, low-drop-up-revise 1]. "
    "At T 1 and p 0.99 the draw returns the original token more than 99% of the time.",
)
@click.option(
    "--drop-below",
    type=float,
    default=None,
    help="Delete tokens with P(token | prefix) < Q, byte-exact (their span is cut out; "
    "recorded as edits with new_id -1) [preset: up-revise 0 = never, low-drop-up-revise "
    "0.001]. The first token without a log-prob is never deleted.",
    metavar="Q",
)
@click.option(
    "--exclude-original", is_flag=True, help="Never draw the token that is there (force a change)."
)
@click.option(
    "--seed",
    type=int,
    default=EditOptions.seed,
    show_default=True,
    help="With the document id, seeds each draw.",
)
@input_options(from_scores=True)
@click.option(
    "--output-column", default=None, help="Write the edited text here; keep the text column as is."
)
@click.option("--no-provenance", is_flag=True, help="Do not add the tokedit_* columns.")
@click.option(
    "--output-format",
    type=click.Choice(["mirror", "parquet", "jsonl.gz"]),
    default=EditOptions.output_format,
    show_default=True,
    help="mirror: each shard in its input's format, at its input's path; parquet / jsonl.gz: "
    "every shard in that format (the same path with that suffix), so one loader reads them all.",
)
@click.option(
    "--tokenizer", default=None, help="Tokenizer to decode with, if the scores' model path moved."
)
@model_options(one_pass=True)
@run_options
@friendly_errors
def edit(input_dir, out_dir, scores_dir, model, preset, ps, strategy, top_k, top_p, temperature, drop_below, exclude_original, seed, text_column, id_column, output_column, no_provenance, output_format, tokenizer, model_flags, run):  # fmt: skip
    """Token-Level Editing: resample the tokens of INPUT the prior is over-confident about.

    Every token with P(token | original prefix) > p is redrawn from the prior's candidates;
    with --drop-below Q, every token with P < Q is deleted; the rest of the text is kept
    byte for byte. The default is the authors' core implementation (--preset up-revise).
    Output: same shards and columns, plus tokedit_* provenance, in the input's formats
    (--output-format mirror) or all in one format. Rerunning the same command resumes an
    interrupted run.
    """
    if not run.progress and model:  # with --scores no model loads: transformers stays out
        silence_progress_bars()
    from tokedit.editor.run import edit_dataset, format_edit_summary

    result = edit_dataset(
        input_dir,
        out_dir,
        scores_dir=scores_dir,
        model=model,
        # with --scores, only a --bos given is used (checked against the scores)
        score_options=model_flags.score_options() if model or model_flags.windows["bos"] else None,
        # with --scores, a --backend given is refused (nothing is scored)
        model_options=model_flags.model if model or model_flags.model != ModelOptions() else None,
        run=run,
        text_column=text_column,
        id_column=id_column,
        tokenizer=tokenizer,
        preset=preset,
        p=ps,
        strategy=strategy,
        top_k=top_k,
        top_p=top_p,
        temperature=temperature,
        drop_below=drop_below,
        exclude_original=exclude_original or None,
        seed=seed,
        output_column=output_column,
        provenance=not no_provenance,
        output_format=output_format,
    )
    click.echo(format_edit_summary(result))
