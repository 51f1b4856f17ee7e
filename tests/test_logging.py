"""Stage messages go through the ``tokedit`` logger hierarchy: a library call logs them (and
prints nothing until its user configures logging); the CLI configures it once, printing INFO
on stderr by default, warnings only with ``-q`` and debug messages with ``-v``."""

from __future__ import annotations

import logging
import shutil

import pytest
from scale_helpers import invoke

import tokedit
from tokedit.editor import EditOptions
from tokedit.editor.rules import EditRule

RESUMED = "resumed: 4 shard(s) already complete"
DEBUG_LINE = "shard(s) in this slice"


def test_a_resumed_library_run_logs_under_tokedit_and_prints_nothing(
    tmp_path, corpus_dir, tiny_scores, tiny_edited, caplog, capfd
):
    """Catches: the "resumed" message printed to stderr (a library user cannot route or
    silence it), or logged on a logger outside the ``tokedit`` hierarchy."""
    out = tmp_path / "edited"
    shutil.copytree(tiny_edited, out)
    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger="tokedit"):
        result = tokedit.edit_dataset(
            str(corpus_dir),
            str(out),
            scores_dir=str(tiny_scores),
            options=EditOptions(ps=(0.5,), rule=EditRule(exclude_original=True)),
            progress=False,
        )
    assert (result.processed, result.skipped) == (0, 4)
    resumed = [r for r in caplog.records if RESUMED in r.getMessage()]
    assert len(resumed) == 1, [r.getMessage() for r in caplog.records]
    assert resumed[0].name.startswith("tokedit.") and resumed[0].levelno == logging.INFO
    err = capfd.readouterr().err
    assert "resumed" not in err and err == "", err


def test_tokedit_logger_has_only_a_null_handler_after_a_cli_run(tmp_path, corpus_dir):
    """Catches: the CLI's stderr handler left on the library's logger after the command (a
    later library call in the same process would print)."""
    r = invoke("report", corpus_dir, "--out", tmp_path / "report", "--max-docs", "20")
    assert r.returncode == 0, r.stderr
    logger = logging.getLogger("tokedit")
    assert all(isinstance(h, logging.NullHandler) for h in logger.handlers), logger.handlers
    assert logger.propagate and logger.level == logging.NOTSET


@pytest.fixture(scope="module")
def cli_edited(tmp_path_factory, corpus_dir, tiny_scores):
    """A finished ``tokedit edit`` output: every rerun of the same command resumes."""
    out = tmp_path_factory.mktemp("cli-log") / "ed"
    r = invoke("edit", corpus_dir, "--scores", tiny_scores, "--out", out, "-q")
    assert r.returncode == 0, r.stderr
    return out


def edit_again(corpus_dir, tiny_scores, out, *flags):
    r = invoke("edit", corpus_dir, "--scores", tiny_scores, "--out", out, *flags)
    assert r.returncode == 0, r.stderr
    assert "4 shard(s) already done" in r.stdout  # the result stays on stdout
    return r


def test_the_cli_prints_stage_messages_by_default(corpus_dir, tiny_scores, cli_edited):
    """Catches: the CLI not configuring a handler (the message lost), debug on by default,
    or a progress bar drawn where no person watches (stderr not a TTY)."""
    r = edit_again(corpus_dir, tiny_scores, cli_edited)
    assert RESUMED in r.stderr and RESUMED not in r.stdout
    assert DEBUG_LINE not in r.stderr
    assert "tok/s" not in r.stderr, r.stderr  # no progress bar: stderr is no terminal here


def test_quiet_silences_stage_messages(corpus_dir, tiny_scores, cli_edited):
    """Catches: ``-q`` only turning the progress bar off, the level left at INFO."""
    r = edit_again(corpus_dir, tiny_scores, cli_edited, "-q")
    assert "resumed" not in r.stderr, r.stderr


def test_verbose_prints_debug_messages(corpus_dir, tiny_scores, cli_edited):
    """Catches: ``-v`` missing or not lowering the level to DEBUG."""
    r = edit_again(corpus_dir, tiny_scores, cli_edited, "-v")
    assert RESUMED in r.stderr
    assert "4 shard(s) in this slice (0 of 1), 4 already complete; engine local" in r.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["score"],
        ["edit"],
        ["train"],
        ["report"],
        ["demo"],
        ["experiment", "recursive"],
        ["experiment", "mixture"],
    ],
)
def test_every_quiet_command_takes_verbose(command):
    """Catches: a command with ``-q`` but no ``-v``."""
    r = invoke(*command, "--help")
    assert r.returncode == 0, r.stderr
    assert "-q, --quiet" in r.stdout and "-v, --verbose" in r.stdout
