"""``tokedit report``."""

from __future__ import annotations

import click

from tokedit.cli.options import friendly_errors, input_options, log_options, storage_option


@click.command()
@click.argument("dirs", nargs=-1, required=True, metavar="DIR [DIR ...]")
@click.option(
    "--out",
    "-o",
    "out_dir",
    required=True,
    help="Report directory (report.json, report.html, plots/).",
)
@click.option(
    "--labels", default=None, help="Comma-separated names, one per DIR (default: directory names)."
)
@click.option(
    "--reference",
    default=None,
    help="Corpus for tail coverage and divergences (default: the first DIR).",
)
@click.option(
    "--target-edit-rate",
    default="0.1",
    show_default=True,
    help="Comma-separated shares of tokens an edit should touch; the report suggests p for each.",
)
@click.option(
    "--max-docs",
    type=int,
    default=None,
    help="Use a uniform sample of at most this many documents per corpus.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the --max-docs sample."
)
@click.option(
    "--units",
    type=click.Choice(["auto", "tokens", "words"]),
    default="auto",
    show_default=True,
    help="n-gram units: model tokens (needs a tokenizer) or lower-cased words; auto: tokens when a tokenizer is known.",
)
@click.option(
    "--tokenizer",
    default=None,
    help="Tokenizer (model directory or hub name) for token n-grams of text corpora (default: the scores' prior).",
)
@click.option(
    "--rare-max-count",
    type=int,
    default=2,
    show_default=True,
    help="An n-gram is rare in the reference when it occurs at most this often.",
)
@click.option(
    "--smoothing",
    type=float,
    default=0.5,
    show_default=True,
    help="Add-alpha smoothing of the KL divergences.",
)
@input_options(ids=False)
@click.option(
    "--examples",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Token view: documents per scores / edited corpus, tokens shaded by P and edits marked (0: off).",
)
@click.option(
    "--example-chars",
    type=click.IntRange(min=1),
    default=1500,
    show_default=True,
    help="Token view: characters shown per document at most.",
)
@click.option(
    "--p",
    "preview_p",
    type=float,
    default=None,
    help="Edit preview of scores directories: also show what `tokedit edit --p P` (with the "
    "other preview options) would do. The presets are always shown.",
)
@click.option("--top-k", "preview_top_k", type=int, default=None, help="Edit preview: --top-k.")
@click.option(
    "--temperature",
    "preview_temperature",
    type=float,
    default=None,
    help="Edit preview: --temperature.",
)
@click.option(
    "--drop-below",
    "preview_drop_below",
    type=float,
    default=None,
    help="Edit preview: --drop-below.",
)
@log_options
@storage_option
@friendly_errors
def report(
    dirs,
    out_dir,
    labels,
    reference,
    target_edit_rate,
    max_docs,
    seed,
    units,
    tokenizer,
    rare_max_count,
    smoothing,
    text_column,
    examples,
    example_chars,
    preview_p,
    preview_top_k,
    preview_temperature,
    preview_drop_below,
    quiet,
):
    """Distribution report of one or more corpora (dataset, scores or edited directories).

    For scores directories it also shows, without editing, what each edit preset (and your
    own --p/--top-k/--temperature/--drop-below) would do: shares above p, expected changed,
    redrawn as themselves, deleted.
    """
    from tokedit.analysis.report import ReportOptions, format_report_summary, run_report

    try:
        rates = tuple(float(x) for x in target_edit_rate.split(",") if x.strip())
    except ValueError as e:
        raise click.BadParameter(
            "comma-separated numbers, e.g. 0.05,0.1", param_hint="--target-edit-rate"
        ) from e
    options = ReportOptions(
        labels=[x.strip() for x in labels.split(",")] if labels else None,
        reference=reference,
        max_docs=max_docs,
        seed=seed,
        target_edit_rates=rates,
        units=units,
        tokenizer=tokenizer,
        text_column=text_column,
        rare_max_count=rare_max_count,
        smoothing_alpha=smoothing,
        examples=examples,
        example_chars=example_chars,
        preview_values={
            "p": preview_p,
            "top_k": preview_top_k,
            "temperature": preview_temperature,
            "drop_below": preview_drop_below,
        },
    )
    click.echo(format_report_summary(run_report(list(dirs), out_dir, options)))
