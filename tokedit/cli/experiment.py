"""``tokedit experiment``."""

from __future__ import annotations

import json

import click

from tokedit.cli.options import friendly_errors, log_options, storage_option
from tokedit.experiments.presets import PRESETS as EXPERIMENT_PRESETS


@click.group()
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
            log_options,
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
    require_local(out_dir, "out_dir")
    result = run_recursive(data_dir, out_dir, p, seed=seed, with_toedit=not no_toedit)
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

    require_local(out_dir, "out_dir")
    p = get_preset(preset, steps=steps, base=base)
    result = run_mixture(data_dir, out_dir, p, seed=seed)
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
