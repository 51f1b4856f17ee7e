"""``tokedit train``: a causal LM on any dataset directory, through ``transformers.Trainer``.

Documents are tokenized, joined with EOS and packed into fixed-length blocks. The loss is
pluggable (``compute_loss_func``), so cross entropy and Truncated Cross Entropy share one
trainer. Held-out perplexity is measured with plain cross entropy whatever the loss.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from tokedit.errors import InputError, arg
from tokedit.io.read import read_ok_texts
from tokedit.scoring.options import ModelOptions
from tokedit.training.tce import per_token_cross_entropy

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass
class TrainConfig:
    preset: str = "small"
    block_size: int = 256
    batch_size: int = 16
    grad_accum: int = 1
    learning_rate: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 20
    max_steps: int = 200
    time_budget_s: float | None = None
    eval_every_nth_doc: int = 20  # documents i % n == n-1 are held out
    seed: int = 0
    loss: str = "ce"
    gamma: float = 0.99
    tce_normalize: str = "real"


def read_texts(data_dir: str, text_column: str = "text", id_column: str | None = None) -> list[str]:
    """All processable texts of a dataset directory, in shard then row order."""
    _, texts = read_ok_texts(data_dir, text_column, id_column)
    if not texts:
        raise InputError(
            f"{data_dir}: no non-empty documents to train on",
            remedy=f"check {arg('text_column', text_column)}",
        )
    return texts


def split_held_out(texts: list[str], every_nth: int) -> tuple[list[str], list[str]]:
    """Deterministic document-level split: every ``every_nth`` document is held out."""
    if every_nth <= 1 or len(texts) < 2:
        return texts, []
    train = [t for i, t in enumerate(texts) if i % every_nth != every_nth - 1]
    held = [t for i, t in enumerate(texts) if i % every_nth == every_nth - 1]
    return train, held


def pack_blocks(
    docs: Iterable[np.ndarray],
    block_size: int,
    eos_id: int,
    pad_id: int,
    bos_id: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Join documents with EOS after each and cut into ``[n, block_size]`` blocks.

    With ``bos_id``, every block starts with it and holds ``block_size - 1`` tokens of the
    stream after it; the BOS is labelled ``IGNORE_INDEX`` (context, never a target). Returns
    ``(input_ids, labels)``; the last partial block is padded, its padding labelled
    ``IGNORE_INDEX`` so no token is dropped and no padding is learned.
    """
    parts = [np.append(np.asarray(d, dtype=np.int64), eos_id) for d in docs]
    stream = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    lead = 0 if bos_id is None else 1
    span = block_size - lead
    if span < 1:
        raise ValueError(f"block_size {block_size} leaves no room after the BOS")
    n_blocks = max(1, math.ceil(len(stream) / span))
    body = np.full(n_blocks * span, pad_id, dtype=np.int64)
    body_labels = np.full(n_blocks * span, IGNORE_INDEX, dtype=np.int64)
    body[: len(stream)] = stream
    body_labels[: len(stream)] = stream
    ids, labels = body.reshape(n_blocks, span), body_labels.reshape(n_blocks, span)
    if lead:
        ids = np.concatenate([np.full((n_blocks, 1), bos_id, np.int64), ids], axis=1)
        labels = np.concatenate([np.full((n_blocks, 1), IGNORE_INDEX, np.int64), labels], axis=1)
    return ids, labels


def tokenize_texts(tokenizer, texts: list[str]) -> list[np.ndarray]:
    enc = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return [np.asarray(ids, dtype=np.int64) for ids in enc]


def pad_token_id(tokenizer) -> int:
    """The tokenizer's padding id, else its EOS (the tokenizers trained here have no pad)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def block_bos_id(tokenizer) -> int | None:
    """The BOS every training or evaluation block starts with: the tokenizer's, where encoding
    with its own special tokens prepends it (Gemma, Llama; ``scoring.scorer.bos_prepended``,
    the scorer's ``--bos auto``), else None (GPT-2 style, Qwen, the tokenizers trained here).
    A model pretrained with a BOS at position 0 is far off its distribution without one: Gemma
    3 270M's perplexity on held-out Shakespeare blocks is 398 without and 78 with it."""
    from tokedit.scoring.scorer import bos_prepended

    return tokenizer.bos_token_id if bos_prepended(tokenizer, "auto") else None


def pack_texts(tokenizer, texts: list[str], block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``texts`` tokenized and packed into blocks (:func:`pack_blocks`), EOS after each, each
    block led by the tokenizer's BOS where it uses one (:func:`block_bos_id`)."""
    return pack_blocks(
        tokenize_texts(tokenizer, texts),
        block_size,
        tokenizer.eos_token_id,
        pad_token_id(tokenizer),
        block_bos_id(tokenizer),
    )


class BlockDataset(torch.utils.data.Dataset):
    def __init__(self, ids: np.ndarray, labels: np.ndarray):
        self.ids = torch.from_numpy(ids)
        self.labels = torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        # No attention mask: padding exists only at the end of the last block, where causal
        # attention cannot reach real tokens and the labels are IGNORE_INDEX.
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


@torch.inference_mode()
def evaluate_perplexity(model, ids: np.ndarray, labels: np.ndarray, batch_size: int = 16) -> float:
    """Held-out perplexity: exp of the mean cross entropy over all labelled tokens."""
    if len(ids) == 0:
        return float("nan")
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for a in range(0, len(ids), batch_size):
        x = torch.from_numpy(ids[a : a + batch_size]).to(device)
        y = torch.from_numpy(labels[a : a + batch_size]).to(device)
        ce, real = per_token_cross_entropy(model(input_ids=x).logits, y, IGNORE_INDEX)
        total += float(ce.sum())
        count += int(real.sum())
    return math.exp(total / count) if count else float("nan")


def weights_sha(model) -> str:
    """sha256 (16 hex digits) of a model's weights: for each entry of ``state_dict()`` in name
    order, the name and the tensor's float32 bytes. Records which weights a run started from."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def make_loss_func(config: TrainConfig) -> Callable | None:
    """``None`` means the model's own cross entropy; TCE plugs in through this one place."""
    if config.loss == "ce":
        return None
    if config.loss == "tce":
        from tokedit.training.tce import make_compute_loss_func

        return make_compute_loss_func(gamma=config.gamma, normalize=config.tce_normalize)
    raise InputError(
        f"unknown loss {config.loss!r}", remedy=f"use {arg('loss', 'ce')} or {arg('loss', 'tce')}"
    )


class TimeBudget(TrainerCallback):
    """Trainer callback that stops training after ``seconds``."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.t0 = time.perf_counter()

    def on_train_begin(self, args, state, control, **kw):
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if time.perf_counter() - self.t0 > self.seconds:
            control.should_training_stop = True
        return control


def _check_sources(
    data_dir: str | None, texts: list[str] | None, model_path: str | None, from_scratch: bool
) -> None:
    """Exactly one model source (``model_path`` or ``from_scratch``) and one text source."""
    if from_scratch == (model_path is not None):
        raise InputError(
            f"pass exactly one of {arg('model_path')} (continue training) and "
            f"{arg('from_scratch', True)}",
            remedy=f"pass {arg('model_path')} to continue a model, or {arg('from_scratch', True)} "
            "to train a new one",
        )
    if (texts is None) == (data_dir is None):
        raise ValueError("train_model takes a data_dir or texts, not both or neither")


def _tokenizer_and_model(
    config: TrainConfig,
    train_texts: list[str],
    model_path: str | None,
    vocab_size: int | None,
    log: Callable[[str], None],
    trust_remote_code: bool,
):
    """A new tokenizer and model of ``config.preset`` (no ``model_path``), else the saved ones
    (their own code run only if ``trust_remote_code``)."""
    if model_path is not None:
        from tokedit.scoring.hf import load_causal_lm, load_tokenizer

        trust = trust_remote_code
        return (
            load_tokenizer(model_path, trust_remote_code=trust),
            load_causal_lm(model_path, trust_remote_code=trust),
        )
    from tokedit.training.prior import PRESETS, build_model, train_tokenizer

    vocab = vocab_size or PRESETS[config.preset]["vocab_size"]
    log(f"training a byte-level BPE tokenizer (vocab {vocab}) on {len(train_texts)} documents")
    tokenizer = train_tokenizer(train_texts, vocab)
    model = build_model(
        tokenizer,
        config.preset,
        seed=config.seed,
        max_position_embeddings=max(
            config.block_size, PRESETS[config.preset]["max_position_embeddings"]
        ),
    )
    return tokenizer, model


def _packed_held_out(tokenizer, held_texts: list[str], block_size: int):
    """The held-out blocks and labels; empty ``[0, block_size]`` arrays when nothing is held out."""
    if held_texts:
        return pack_texts(tokenizer, held_texts, block_size)
    return (np.zeros((0, block_size), np.int64),) * 2


def _training_arguments(config: TrainConfig, output_dir: str, progress: bool):
    """``TrainingArguments`` of a run: cosine schedule, no checkpoints, bf16 on CUDA."""
    from transformers import TrainingArguments

    use_cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type="cosine",
        max_steps=config.max_steps,
        logging_steps=max(1, config.max_steps // 10),
        save_strategy="no",
        report_to=[],
        use_cpu=not use_cuda,
        bf16=use_cuda,
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=0,
        disable_tqdm=not progress,
    )


def _fit(model, config: TrainConfig, dataset: BlockDataset, progress: bool):
    """Train ``model`` in place with ``transformers.Trainer``; returns its ``TrainOutput`` and
    log history (with ``tce_masked_share`` on the TCE loss's log lines)."""
    from transformers import Trainer

    with tempfile.TemporaryDirectory() as scratch:
        args = _training_arguments(config, scratch, progress)
        callbacks = [TimeBudget(config.time_budget_s)] if config.time_budget_s else []
        loss_func = make_loss_func(config)
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            compute_loss_func=loss_func,
            callbacks=callbacks,
        )
        if loss_func is not None:  # TCE: log the share of masked tokens with the loss
            from tokedit.training.tce import attach_masked_share_logging

            attach_masked_share_logging(trainer, loss_func)
        result = trainer.train()
    return result, trainer.state.log_history


def _save_trained(out_dir: str, model, tokenizer, summary: dict) -> None:
    """The model, its tokenizer and ``tokedit_train.json`` (the summary) under ``out_dir``."""
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "tokedit_train.json").write_text(json.dumps(summary, indent=2) + "\n")


def train_model(
    data_dir: str | None,
    out_dir: str,
    *,
    config: TrainConfig | None = None,
    model_path: str | None = None,
    trust_remote_code: bool = ModelOptions.trust_remote_code,
    from_scratch: bool = False,
    vocab_size: int | None = None,
    text_column: str = "text",
    id_column: str | None = None,
    texts: list[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train (from scratch, or continue ``model_path``, whose own code runs only if
    ``trust_remote_code``) and save to ``out_dir``; returns a summary. The documents are read
    from ``data_dir``, or given as ``texts`` (then ``data_dir`` is None). Stage messages are
    logged (INFO, this module's logger), or passed to ``log`` if given."""
    config = config or TrainConfig()
    log = log or logger.info
    _check_sources(data_dir, texts, model_path, from_scratch)
    texts = texts if texts is not None else read_texts(data_dir, text_column, id_column)
    train_texts, held_texts = split_held_out(texts, config.eval_every_nth_doc)
    t0 = time.perf_counter()
    tokenizer, model = _tokenizer_and_model(
        config, train_texts, model_path, vocab_size, log, trust_remote_code
    )
    train_ids, train_labels = pack_texts(tokenizer, train_texts, config.block_size)
    held_ids, held_labels = _packed_held_out(tokenizer, held_texts, config.block_size)
    n_params = sum(p.numel() for p in model.parameters())
    initial_sha = weights_sha(model)  # the weights this run starts from, before any step
    log(
        f"model: {n_params / 1e6:.2f}M parameters; {train_ids.size} training tokens in {len(train_ids)} blocks of {config.block_size}; {held_ids.size} held out"
    )
    result, log_history = _fit(model, config, BlockDataset(train_ids, train_labels), progress)
    train_seconds = time.perf_counter() - t0
    held_ppl = evaluate_perplexity(model, held_ids, held_labels)
    summary = {
        "parameters": n_params,
        "vocab_size": len(tokenizer),
        "train_tokens": int(train_ids.size),
        "block_bos_id": block_bos_id(tokenizer),  # every block starts with it (None: no BOS)
        "held_out_tokens": int((held_labels != IGNORE_INDEX).sum()),
        "steps": int(result.global_step),
        "tokens_seen": int(
            result.global_step * config.batch_size * config.grad_accum * config.block_size
        ),
        "train_loss": float(result.training_loss),
        "tce_masked_share": [h["tce_masked_share"] for h in log_history if "tce_masked_share" in h],
        "held_out_ppl": held_ppl,
        "seconds": train_seconds,
        "config": asdict(config),
        "from_scratch": from_scratch,
        "base_model": model_path,
        "initial_weights_sha": initial_sha,
        "data": str(data_dir) if data_dir is not None else None,
    }
    _save_trained(out_dir, model, tokenizer, summary)
    return summary
