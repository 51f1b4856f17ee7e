"""A prior made from scratch: a byte-level BPE tokenizer and a small Llama-style causal LM.

Saved with ``save_pretrained``, so ``--model DIR`` loads it exactly as a hub model loads.
The tokenizer is GPT-2 style (byte-level, ``trim_offsets=True``): its offsets leave leading
spaces out of token spans, one of the pitfalls the scorer and editor must handle.
"""

from __future__ import annotations

from collections.abc import Iterable

BOS, EOS, PAD = "<s>", "</s>", "<pad>"

# Model sizes, the one table of them. "tiny" trains in seconds (tests); "small" is the
# ~5M-parameter scratch prior; the experiments' presets name one of these.
PRESETS: dict[str, dict] = {
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
    ),
    "small": dict(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=1024,
    ),
    "base": dict(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        max_position_embeddings=2048,
    ),
    # The experiments' models: ``mini`` (~0.5M parameters with a 1,024-token vocabulary) for
    # the ``tiny`` experiment preset on 2 CPU cores; ``1b`` the Llama-3.2-1B / TinyLlama-1.1B
    # shape (hidden 2048, 16 layers, 32 heads, MLP 8192) for ``gpu-1b``.
    "mini": dict(
        vocab_size=1024,
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
    ),
    "1b": dict(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        max_position_embeddings=2048,
    ),
}


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE tokenizer and wrap it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=1 << 20
    )


def build_model(tokenizer, preset: str = "small", seed: int = 0, **overrides):
    """A freshly initialised ``LlamaForCausalLM`` sized by ``preset``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    size = {**PRESETS[preset], **overrides}
    size["vocab_size"] = len(tokenizer)
    config = LlamaConfig(
        **size,
        num_key_value_heads=size["num_attention_heads"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)
