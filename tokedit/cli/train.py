"""``tokedit train``."""

from __future__ import annotations

import click

from tokedit.cli.model import trust_remote_code_option
from tokedit.cli.options import friendly_errors, input_options, log_options, storage_option
from tokedit.training.prior import PRESETS as MODEL_SIZES


@click.command()
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
@trust_remote_code_option("--model only. ")
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
@log_options
@storage_option
@friendly_errors
def train(
    data_dir,
    out_dir,
    model_path,
    trust_remote_code,
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

    require_local(out_dir, "out_dir")

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
        trust_remote_code=trust_remote_code,
        from_scratch=from_scratch,
        vocab_size=vocab_size,
        text_column=text_column,
        id_column=id_column,
        progress=not quiet,
    )
    click.echo(
        f"trained {s['parameters'] / 1e6:.2f}M parameters for {s['steps']} steps ({s['tokens_seen']} tokens) in {s['seconds']:.0f}s; held-out perplexity {s['held_out_ppl']:.1f}; saved to {out_dir}"
    )
