"""``tokedit score``."""

from __future__ import annotations

import click

from tokedit.cli.model import model_options
from tokedit.cli.options import (
    friendly_errors,
    input_options,
    run_options,
    silence_progress_bars,
)
from tokedit.scoring.options import ScoreOptions


@click.command()
@click.argument("input_dir", metavar="INPUT")
@click.option(
    "--model",
    "-m",
    required=True,
    help="Prior causal LM: a save_pretrained directory, a .gguf file (converted once, cached), or a hub name.",
)
@click.option(
    "--out",
    "-o",
    "out_dir",
    required=True,
    help="Scores directory to write (one parquet shard per input shard).",
)
@input_options()
@click.option(
    "--top-k",
    type=int,
    default=ScoreOptions.top_k,
    show_default=True,
    help="Candidates stored per position (0: none).",
)
@click.option(
    "--candidates-min-p",
    type=click.FloatRange(0, 1),
    default=ScoreOptions.candidates_min_p,
    show_default=True,
    help="Store candidates only where P(actual token) >= this; editing at p needs min-p <= p. "
    "0: at every position, so one scoring pass edits at any --p (about 5x the storage at "
    "--top-k 8: see docs/score.md).",
)
@model_options()
@run_options
@friendly_errors
def score(
    input_dir, model, out_dir, text_column, id_column, top_k, candidates_min_p, model_flags, run
):
    """Score every token of INPUT with a prior LM: log P(token | prefix) and top-k candidates.

    INPUT is a dataset directory (.parquet, .jsonl, .jsonl.gz, .jsonl.zst shards or a datasets
    save_to_disk folder). Rerunning the same command resumes an interrupted run.
    """
    from tokedit.scoring.run import format_score_summary, score_dataset

    if not run.progress:
        silence_progress_bars()
    result = score_dataset(
        input_dir,
        out_dir,
        model=model,
        options=model_flags.score_options(top_k=top_k, candidates_min_p=candidates_min_p),
        model_options=model_flags.model,
        run=run,
        text_column=text_column,
        id_column=id_column,
    )
    click.echo(format_score_summary(result))
