"""Sizes of the experiments, the one table of them: ``test`` (seconds, the test suite),
``tiny`` (the demo corpus on 2 CPU cores, a scratch-pretrained base), ``cpu-gemma`` (the real
Gemma 3 270M prior on 2 CPU cores) and ``gpu-1b`` (documented for one GPU). Each names its
model size in :data:`tokedit.training.prior.PRESETS` (used by a ``scratch`` base)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class ExperimentPreset:
    """Sizes of one experiment run (recursive and mixture read the fields they need)."""

    model: str = "tiny"  # a model size of tokedit.training.prior.PRESETS ...
    model_overrides: dict = field(default_factory=dict)  # ... with these fields replaced
    # The pretrained model (``--model``): recursive's generation 0 fine-tunes it; mixture uses
    # it as its prior (the generator of the synthetic corpus and ToEdit's scorer). "scratch":
    # recursive pretrains a ``model``-sized model here once on ``base_docs`` documents no arm
    # trains on (``base_steps`` steps at ``base_learning_rate``, cached in OUT/base) and
    # mixture trains its prior on the human documents for ``prior_steps``. Otherwise a prior
    # name (``gemma-3-270m``), a save_pretrained directory, a GGUF file or a hub name.
    base: str = "scratch"
    base_docs: int = 64
    base_steps: int = 100
    base_learning_rate: float = 3e-3
    # recursive: how a generation's model writes the next generation's synthetic data
    # (``--generation``): "beam" (ForTIFAI's generate.py: 5 beams, repetition penalty 3.0,
    # 32 new tokens after each 512-token window of the training stream) or "sample"
    # (tokedit's prefix-conditioned ancestral sampling: prefix_tokens, temperature, top_p).
    generation: str = "beam"
    num_beams: int = 5
    repetition_penalty: float = 3.0
    context_tokens: int = 512
    new_tokens: int = 32
    # recursive: knowledge test items (statements taken from the real training slices)
    kt_items: int = 64
    # recursive: each generation's fine-tuning of the pretrained base (None: the general
    # ``learning_rate`` / ``steps`` / ``batch_size`` / ``warmup_steps``, which size mixture's
    # training runs from scratch)
    finetune_learning_rate: float | None = None
    finetune_steps: int | None = None
    finetune_batch_size: int | None = None
    finetune_warmup_steps: int | None = None
    # recursive: failure lines for "time to failure" (the first generation that crosses):
    # (metric, "above" | "below", value); a *_ratio is the metric over the arm's generation 0
    # value (beam-searched data is far from the real unigrams from generation 0 on, so an
    # absolute KL line would be crossed at once at every scale we run).
    failure_lines: tuple[tuple[str, str, float], ...] = (
        ("kl_synthetic_to_real_nats_ratio", "above", 1.5),
        ("held_out_ppl_ratio", "above", 1.1),
        ("kt_accuracy", "below", 0.55),
    )
    # mixture: every ``other_every``-th group of documents (demo corpus: play, from the ``id``
    # "play/k"; otherwise the shard) is the second corpus, never trained on
    other_every: int = 3
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
        finetune_steps=2,
        base_docs=12,
        base_steps=3,
        num_beams=2,
        context_tokens=16,
        new_tokens=8,
        kt_items=8,
    ),
    # the demo corpus on 2 CPU cores, within ~20 minutes per experiment; recursive fine-tunes
    # a base pretrained here once (300 steps on 256 documents no arm trains on)
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
        base_docs=256,
        base_steps=300,
        finetune_learning_rate=1e-3,  # fine-tuning the base, generation after generation
        context_tokens=64,  # ForTIFAI: 512 (the tiny model's documents are 96 tokens)
        new_tokens=32,
        kt_items=200,
    ),
    # the real Gemma 3 270M prior (``tokedit prior fetch gemma-3-270m``) on 2 CPU cores
    # (~110 tokens/s forward). recursive: G = 2, 8 documents of 128 tokens per slice, CE and
    # TCE-0.9, 8 fine-tuning steps of 4 x 128 tokens at ForTIFAI's learning rate; sized for
    # <= 60 minutes (docs/training.md has the measurement). mixture: Gemma samples the
    # synthetic corpus and scores for ToEdit; the arms train tiny's mini model from scratch
    # on 128 documents (~10 minutes).
    "cpu-gemma": ExperimentPreset(
        base="gemma-3-270m",
        model="mini",
        vocab_size=1024,
        doc_tokens=128,
        prefix_tokens=16,
        held_out_docs=8,
        generations=2,
        docs_per_slice=8,
        gammas=(0.9,),
        probe_pairs=16,
        kt_items=24,
        mixture_docs=128,
        prior_steps=0,
        steps=100,
        batch_size=16,
        block_size=128,
        finetune_learning_rate=2e-5,  # ForTIFAI's src/run_pipeline.sh (Gemma 3 1B)
        finetune_steps=8,
        finetune_batch_size=4,
        finetune_warmup_steps=0,
        warmup_steps=10,
        generate_batch_size=20,  # 4 beam windows of 5 beams per batch
        context_tokens=64,
        new_tokens=32,
        score_batch_tokens=2048,
    ),
    # documented for a GPU, not run here. recursive: fine-tunes google/gemma-3-1b-pt (the
    # model of ForTIFAI's run_pipeline.sh) generation after generation. mixture: a ~1B
    # Llama-shaped model (hidden 2048, 16 layers, 32 heads, MLP 8192) trained from scratch;
    # use with a corpus of a few billion tokens.
    "gpu-1b": ExperimentPreset(
        model="1b",
        base="google/gemma-3-1b-pt",  # ForTIFAI's src/run_pipeline.sh MODEL_TAG (a hub name)
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
        learning_rate=3e-4,  # mixture: from scratch
        finetune_learning_rate=2e-5,  # recursive: ForTIFAI's LEARNING_RATE for Gemma 3 1B
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
