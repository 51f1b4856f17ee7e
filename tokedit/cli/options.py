"""The option groups the commands share, each declared once (click decorators), and the
turning of library errors into messages in the terms of the command line."""

from __future__ import annotations

import functools
import logging
import sys

import click

from tokedit.cli.flags import FLAGS
from tokedit.engines.options import ENGINES, RunOptions
from tokedit.errors import TokeditError


def friendly_errors(fn):
    """Print a :class:`TokeditError` as a message and a fix, exit 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TokeditError as e:
            click.echo(f"error: {e.render(FLAGS)}", err=True)
            sys.exit(2)

    return wrapper


def options(*decorators):
    """Apply click decorators in the order ``--help`` lists them (the first on top)."""

    def apply(fn):
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return apply


def collect(name: str, factory, keys: tuple[str, ...]):
    """Hand the command the values of the options ``keys`` as one argument ``name``,
    ``factory(**values)``, instead of one argument each. A :class:`TokeditError` of
    ``factory`` (a value its dataclass refuses) is printed like the command's own."""

    def apply(fn):
        @functools.wraps(fn)
        @friendly_errors
        def wrapper(*args, **kwargs):
            kwargs[name] = factory(**{k: kwargs.pop(k) for k in keys})
            return fn(*args, **kwargs)

        return wrapper

    return apply


class _StderrHandler(logging.StreamHandler):
    """A ``StreamHandler`` on whatever ``sys.stderr`` is when a record is emitted (click's
    test runner swaps it per invocation)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _PlainFormatter(logging.Formatter):
    """``%(message)s``; a warning or error as ``warning: ...`` / ``error: ...``."""

    def __init__(self):
        super().__init__("%(message)s")

    def format(self, record):
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def configure_logging(quiet: bool = False, verbose: bool = False) -> None:
    """The CLI's one logging set-up: the ``tokedit`` logger's messages on stderr, plain, at
    INFO (``-q``: WARNING, ``-v``: DEBUG). Called again (the group, then a command with
    ``-q``/``-v``) it replaces its handler; it is removed when the command's click context
    closes, so a command run in-process (tests) leaves the library's logging as it found it."""
    logger = _without_stderr_handler()
    handler = _StderrHandler()
    handler.setFormatter(_PlainFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False  # printed once, whatever the root logger has
    ctx = click.get_current_context(silent=True)
    if ctx is not None and not ctx.find_root().meta.get("tokedit.logging"):
        root = ctx.find_root()
        root.meta["tokedit.logging"] = True
        root.call_on_close(_unconfigure_logging)


def _without_stderr_handler() -> logging.Logger:
    """The ``tokedit`` logger, without the handler :func:`configure_logging` adds."""
    logger = logging.getLogger("tokedit")
    for h in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(h)
    return logger


def _unconfigure_logging() -> None:
    logger = _without_stderr_handler()
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


def log_options(fn):
    """``-q/--quiet`` and ``-v/--verbose``: configure logging (:func:`configure_logging`)
    before the command runs; the command still receives ``quiet`` (progress bars off)."""

    @click.option(
        "--quiet",
        "-q",
        is_flag=True,
        help="No progress bar and no stage messages (warnings and errors only).",
    )
    @click.option(
        "--verbose",
        "-v",
        is_flag=True,
        help="Also debug messages (e.g. the shards selected and how they run).",
    )
    @functools.wraps(fn)
    def wrapper(*args, quiet, verbose, **kwargs):
        configure_logging(quiet, verbose)
        return fn(*args, quiet=quiet, **kwargs)

    return wrapper


# The arguments of the commands that name directories (or files) on any storage: URLs among
# them get the storage options of --storage-options.
STORAGE_PARAMS = ("input_dir", "out_dir", "scores_dir", "data_dir", "dirs", "reference")


def _parse_storage_options(ctx, param, value):
    if value is None:
        return None
    from tokedit.errors import InputError
    from tokedit.io.storage import parse_storage_options

    try:
        return parse_storage_options(value)
    except InputError as e:
        raise click.BadParameter(e.render(FLAGS)) from None


def storage_option(fn):
    """``--storage-options JSON``: the options are attached to the URLs among the command's
    directory arguments (:data:`STORAGE_PARAMS`), which carry them wherever they go (the
    paths derived from them, Ray actors); an error of their store exits 2 naming them."""

    @click.option(
        "--storage-options",
        "storage_options",
        default=None,
        callback=_parse_storage_options,
        metavar="JSON",
        help='Options of the fsspec filesystem of s3:// gs:// hf:// directories, e.g. \'{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}\' (default: the filesystem\'s environment variables). Never recorded. See docs/storage.md.',
    )
    @functools.wraps(fn)
    @friendly_errors
    def wrapper(*args, storage_options, **kwargs):
        from tokedit.io.storage import as_path, command_storage_errors, is_remote

        urls = []
        for name in STORAGE_PARAMS:
            value = kwargs.get(name)
            values = list(value) if isinstance(value, tuple | list) else [value]
            paths = [as_path(v, storage_options) if is_remote(v) else v for v in values]
            urls += [p for p in paths if is_remote(p)]
            if value is not None:
                kwargs[name] = type(value)(paths) if isinstance(value, tuple | list) else paths[0]
        with command_storage_errors(urls):
            return fn(*args, **kwargs)

    return wrapper


def input_options(*, from_scores: bool = False, ids: bool = True):
    """``--text-column`` / ``--id-column`` of every command that reads a dataset directory;
    ``from_scores``: ``edit``, whose defaults are the columns the scores were made with."""
    text = (
        click.option(
            "--text-column",
            default=None,
            help="Default: the scores' text column (with --model: text).",
        )
        if from_scores
        else click.option(
            "--text-column",
            default="text",
            show_default=True,
            help="Column holding the document text.",
        )
    )
    if not ids:
        return text
    id_help = (
        "Default: the scores' id column."
        if from_scores
        else "Column with document ids. Rows without one get '<shard path>:<row>'."
    )
    return options(text, click.option("--id-column", default=None, help=id_help))


def _run_options(num_shards, shard_index, overwrite, engine, ray_address, ray_actors, batch_rows, quiet):  # fmt: skip
    return RunOptions(
        num_shards=num_shards,
        shard_index=shard_index,
        overwrite=overwrite,
        engine=engine,
        ray_address=ray_address,
        ray_actors=ray_actors,
        batch_rows=batch_rows,
        progress=not quiet,
    )


RUN_FLAGS = ("num_shards", "shard_index", "overwrite", "engine", "ray_address", "ray_actors", "batch_rows", "quiet")  # fmt: skip

run_options = options(
    click.option(
        "--num-shards",
        type=int,
        default=RunOptions.num_shards,
        show_default=True,
        help="Split the shards into this many slices, e.g. one per Slurm task.",
    ),
    click.option(
        "--shard-index",
        type=int,
        default=RunOptions.shard_index,
        show_default=True,
        help="Which slice of the shards this process handles (0-based).",
    ),
    click.option(
        "--overwrite",
        is_flag=True,
        help="Replace an output written with other options (default: refuse; same options resume).",
    ),
    click.option(
        "--engine",
        type=click.Choice(ENGINES),
        default=RunOptions.engine,
        show_default=True,
        help="local: shards one after the other in this process; ray: a pool of Ray actors, one shard at a time each (same output bytes).",
    ),
    click.option(
        "--ray-address",
        default=RunOptions.ray_address,
        help="--engine ray: address of a running cluster (host:port or 'auto'); default: start a local instance.",
    ),
    click.option(
        "--ray-actors",
        type=int,
        default=RunOptions.ray_actors,
        help="--engine ray: size of the actor pool (default: one per GPU; on CPUs, actors with as many threads as a local run, one CPU left to the driver).",
    ),
    click.option(
        "--batch-rows",
        type=int,
        default=RunOptions.batch_rows,
        show_default=True,
        help="Rows read (and scored, edited) at a time; bounds the memory. Also the rows "
        "of a scores parquet row group (edited shards: 1024 rows, whatever this is).",
    ),
    log_options,
    storage_option,
    collect("run", _run_options, RUN_FLAGS),
)


def silence_progress_bars() -> None:
    """``-q``: no progress bar at all, transformers' "Loading weights" bar included (the hub's
    bars read the variable when imported; transformers' own switch is process-wide)."""
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
