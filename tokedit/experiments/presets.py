"""Sizes of the experiments, the one table of them: ``test`` (seconds, the test suite),
``tiny`` (the demo corpus on 2 CPU cores) and ``gpu-1b`` (documented for one GPU). Each
names its model size in :data:`tokedit.training.prior.PRESETS`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class ExperimentPreset:
    """Sizes of one experiment run (recursive and mixture read the fields they need)."""

    model: str = "tiny"  # a model size of tokedit.training.prior.PRESETS ...
    model_overrides: dict = field(default_factory=dict)  # ... with these fields replaced
    vocab_size: int = 512
    doc_chars: int = 2000  # real documents cut into pieces of at most this many characters
    doc_tokens: int = 128  # ... then truncated to this many tokens
    prefix_tokens: int = 16  # generation keeps this many real tokens and samples the rest
    temperature: float = 1.0
    top_p: float = 1.0
    held_out_docs: int = 64
    # recursive
    generations: int = 3  # G: generations 0..G, real slices 0..G
    docs_per_slice: int = 64
    gammas: tuple[float, ...] = (0.9,)
    probe_pairs: int = 64
    # mixture
    mixture_docs: int = 256
    prior_steps: int = 200
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    # ToEdit arms
    target_edit_rate: float = 0.10
    # training (every run)
    steps: int = 100
    batch_size: int = 16
    block_size: int = 128
    learning_rate: float = 3e-3
    warmup_steps: int = 10
    generate_batch_size: int = 32
    score_batch_tokens: int = 16384


PRESETS: dict[str, ExperimentPreset] = {
    # seconds-sized: the test suite
    "test": ExperimentPreset(
        model="tiny",
        vocab_size=300,
        doc_chars=600,
        doc_tokens=48,
        prefix_tokens=8,
        held_out_docs=8,
        generations=1,
        docs_per_slice=12,
        probe_pairs=8,
        mixture_docs=16,
        prior_steps=4,
        fractions=(0.5, 1.0),
        steps=3,
        batch_size=4,
        block_size=48,
        warmup_steps=1,
    ),
    # the demo corpus on 2 CPU cores, within ~20 minutes per experiment
    "tiny": ExperimentPreset(
        model="mini",
        vocab_size=1024,
        doc_chars=2000,
        doc_tokens=96,
        prefix_tokens=16,
        held_out_docs=96,
        generations=3,
        docs_per_slice=96,
        # A 0.5M-parameter model gives no token P > 0.9 (measured: TCE-0.9 equalled CE);
        # about 5 % of its tokens are above 0.5, so gamma 0.5 is where TCE acts at this size.
        gammas=(0.5,),
        probe_pairs=200,
        mixture_docs=512,
        prior_steps=200,
        steps=100,
        batch_size=16,
        block_size=128,
        generate_batch_size=128,
    ),
    # documented for a GPU, not run here: a ~1B-parameter Llama-shaped model (the
    # Llama-3.2-1B / TinyLlama-1.1B class: hidden 2048, 16 layers, 32 heads, MLP 8192)
    # trained from scratch; use with a corpus of a few billion tokens.
    "gpu-1b": ExperimentPreset(
        model="1b",
        vocab_size=32000,
        doc_chars=16000,
        doc_tokens=1024,
        prefix_tokens=64,
        held_out_docs=2000,
        generations=5,
        docs_per_slice=200_000,
        gammas=(0.9, 0.99),
        probe_pairs=2000,
        mixture_docs=1_000_000,
        prior_steps=20000,
        steps=20000,
        batch_size=32,
        block_size=1024,
        learning_rate=3e-4,
        warmup_steps=500,
        generate_batch_size=256,
        score_batch_tokens=262144,
    ),
}


def get_preset(name: str, **overrides) -> ExperimentPreset:
    from tokedit.errors import InputError

    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}", remedy=f"choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
