"""Truncated Cross Entropy (TCE), from ForTIFAI (arXiv 2509.08972).

    TCE(p_t) = 1[p_t <= gamma] * CE(p_t),   p_t = P(target | context)

Tokens the model already predicts with probability above ``gamma`` contribute no loss and no
gradient. ForTIFAI's README motivates this as "selectively ignoring high-confidence tokens
during training, effectively filtering out likely machine-generated artifacts".

What ForTIFAI itself specifies (github pedramaghazadeh/ForTIFAI; see docs/fidelity.md):

* its code, ``src/losses.py`` ``clipped_loss`` (called from ``src/plt_model.py``
  ``LitModel.training_step`` for ``loss_type`` "clipped" and "dynamic"): the mask is
  ``p_t > gamma -> 0`` on the probability of the target, detached; the loss is
  ``loss.mean()`` over **every** position of the packed block (``src/dataset.py``
  ``group_texts``: fixed ``block_size`` chunks, labels = input ids, no ignore index), the
  masked positions included as zeros. ``src/run_pipeline.sh`` sets gamma to 0.99;
* its project page (``docs/index.html``) writes the loss as a sum,
  ``-sum_i log p(x_i) * I[log p(x_i) < tau]``, with no normalisation.

Everything below that goes beyond this is tokedit's own choice. Decisions, and why:

* The mask is computed on the *detached* probability of the target: it is a data selection,
  not part of the function being differentiated.
* Labels equal to ``ignore_index`` (HF collators put ``-100`` on padding) never count,
  neither in the loss nor in any denominator or statistic.
* Normalisation is explicit (``normalize``):

  - ``"real"`` (default): sum of the kept tokens' losses / number of real (non-ignored)
    tokens. On packed blocks without padding this is exactly the ForTIFAI code's
    ``loss.mean()`` (masked tokens count as zeros in the denominator); with padding, the
    padding is left out where the ForTIFAI code has none to leave out. It is the default
    because the loss scale then does not jump when the masked share changes, values are
    comparable across gammas, and with ``num_items_in_batch`` gradient accumulation is
    *exactly* one big batch.
  - ``"kept"``: mean over the kept tokens only, tokedit's alternative (neither the ForTIFAI
    code nor its project page normalises this way). Each kept token weighs more as the
    masked share grows.

* Gradient accumulation: ``transformers.Trainer`` passes ``num_items_in_batch``, the number
  of real target tokens over all micro-batches of one optimizer step, and does not divide
  the loss by the accumulation steps itself when a ``compute_loss_func`` is set. Then:

  - ``"real"``: loss = kept sum / ``num_items_in_batch``. Summing the micro-batch gradients
    gives exactly the gradient of one big batch.
  - ``"kept"``: the exact big-batch value needs the kept count of *all* micro-batches,
    which is unknown before their forward passes. Each micro-batch's kept-mean is weighted
    by its share of real tokens: loss = (kept sum / n_kept) * (n_real / num_items_in_batch).
    The scale is right (weights sum to one over the step) and the result is exact when
    there is one micro-batch or the masked share is the same in all of them; otherwise it
    is a real-token-weighted average of per-micro-batch kept-means.

* ``gamma`` of ``None`` or ``>= 1`` masks nothing and is plain cross entropy (the mask is
  skipped rather than evaluated, so float rounding of ``exp(-ce)`` cannot mask a token).
* Memory: the per-token CE is one ``F.cross_entropy(reduction="none")`` in float32 on a view
  of the logits (bf16 logits are upcast, as HF's own causal-LM loss does). Labels are
  shifted, not logits, so no shifted copy of the ``[tokens, vocab]`` logits is made.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

NORMALIZATIONS = ("real", "kept")


def shift_labels(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Align HF-style labels with the logits that predict them.

    HF labels are unshifted (``logits[:, i]`` predicts ``labels[:, i + 1]``). Shifting the
    labels left and padding the last position with ``ignore_index`` gives the same pairs as
    ``logits[:, :-1]`` vs ``labels[:, 1:]`` without copying the logits.
    """
    return F.pad(labels, (0, 1), value=ignore_index)[..., 1:]


def per_token_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    shift: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 per-token CE (flattened) and the boolean mask of real target tokens.

    Ignored positions get CE 0 (``F.cross_entropy`` semantics) and ``real == False``.
    """
    if shift:
        labels = shift_labels(labels, ignore_index)
    vocab = logits.size(-1)
    targets = labels.reshape(-1).to(logits.device)
    ce = F.cross_entropy(
        logits.reshape(-1, vocab).float(), targets, ignore_index=ignore_index, reduction="none"
    )
    return ce, targets != ignore_index


def _loss_denominator(
    normalize: str,
    n_real: torch.Tensor,
    n_kept: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None,
) -> int | torch.Tensor:
    """What the kept tokens' loss sum is divided by, for ``normalize`` and gradient
    accumulation (see the module docstring)."""
    if normalize == "real":
        return n_real.clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    if num_items_in_batch is None:
        return n_kept.clamp(min=1)
    return n_kept.clamp(min=1) * num_items_in_batch / n_real.clamp(min=1)


def truncated_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    gamma: float | None = 0.99,
    ignore_index: int = -100,
    normalize: str = "real",
    num_items_in_batch: int | torch.Tensor | None = None,
    shift: bool = True,
    return_stats: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TCE loss: cross entropy of the tokens with ``P(target) <= gamma``, zero elsewhere.

    Args:
        logits: ``[..., vocab]`` (any float dtype; computed in float32).
        labels: same leading shape as ``logits``; ``ignore_index`` marks non-targets.
        gamma: confidence threshold; ``None`` or ``>= 1`` is plain cross entropy.
        normalize: ``"real"`` (sum / real tokens, default) or ``"kept"`` (mean over kept
            tokens); see the module docstring, including gradient accumulation.
        num_items_in_batch: real target tokens over all micro-batches of the optimizer step
            (what ``transformers.Trainer`` passes); ``None`` normalises within this batch.
        shift: ``True`` for HF-style unshifted labels (``logits[:, :-1]`` predict
            ``labels[:, 1:]``); ``False`` when ``labels`` are already aligned with ``logits``.
        return_stats: also return detached counts (no host sync): ``n_real``, ``n_kept``,
            ``n_masked`` (real tokens with ``p_t > gamma``) and ``masked_share``.

    Returns:
        The scalar float32 loss, or ``(loss, stats)`` when ``return_stats``.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if gamma is not None and not gamma > 0:
        raise ValueError(f"gamma must be > 0 (or None for plain cross entropy), got {gamma!r}")

    ce, real = per_token_cross_entropy(logits, labels, ignore_index, shift)
    if gamma is None or gamma >= 1:
        kept = real
    else:
        p_target = torch.exp(-ce.detach())
        kept = real & (p_target <= gamma)

    total = ce.masked_fill(~kept, 0.0).sum()
    n_real = real.sum()
    n_kept = kept.sum()
    denom = _loss_denominator(normalize, n_real, n_kept, num_items_in_batch)
    if torch.is_tensor(denom):
        denom = denom.to(device=total.device, dtype=total.dtype)
    loss = total / denom

    if not return_stats:
        return loss
    n_masked = n_real - n_kept
    stats = {
        "n_real": n_real,
        "n_kept": n_kept,
        "n_masked": n_masked,
        "masked_share": n_masked.float() / n_real.clamp(min=1).float(),
    }
    return loss, stats


def cross_entropy_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
    shift: bool = True,
    return_stats: bool = False,
):
    """Plain cross entropy through the same code path (``gamma=None``), so CE and TCE runs
    differ in the mask only."""
    return truncated_cross_entropy(
        logits,
        labels,
        gamma=None,
        ignore_index=ignore_index,
        num_items_in_batch=num_items_in_batch,
        shift=shift,
        return_stats=return_stats,
    )


def _logits_of(outputs) -> torch.Tensor:
    if torch.is_tensor(outputs):
        return outputs
    if isinstance(outputs, dict) or hasattr(outputs, "logits"):
        return outputs["logits"]
    return outputs[0]


class TCELossFunc:
    """``compute_loss_func`` for ``transformers.Trainer``: ``(outputs, labels,
    num_items_in_batch=None) -> loss``.

    It keeps running, detached sums of real and masked tokens of the *training* steps so a
    callback (``MaskedShareCallback``) can log the masked share; ``pop_masked_share()``
    returns the share since the last call and resets the sums.

    With ``eval_ce=True`` (default) calls made with gradients disabled (``Trainer``'s
    evaluation) return plain CE, so ``eval_loss`` is a perplexity comparable across CE and
    TCE arms and across gammas.
    """

    def __init__(
        self,
        gamma: float | None = 0.99,
        normalize: str = "real",
        ignore_index: int = -100,
        eval_ce: bool = True,
    ):
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.gamma = gamma
        self.normalize = normalize
        self.ignore_index = ignore_index
        self.eval_ce = eval_ce
        self._n_real = None
        self._n_masked = None

    def __call__(self, outputs, labels, num_items_in_batch=None):
        training = torch.is_grad_enabled()
        gamma = self.gamma if (training or not self.eval_ce) else None
        loss, stats = truncated_cross_entropy(
            _logits_of(outputs),
            labels,
            gamma=gamma,
            ignore_index=self.ignore_index,
            normalize=self.normalize,
            num_items_in_batch=num_items_in_batch,
            shift=True,
            return_stats=True,
        )
        if training:
            if self._n_real is None:
                self._n_real, self._n_masked = stats["n_real"], stats["n_masked"]
            else:
                self._n_real = self._n_real + stats["n_real"]
                self._n_masked = self._n_masked + stats["n_masked"]
        return loss

    def pop_masked_share(self) -> float | None:
        """Share of real training tokens masked (``p_t > gamma``) since the last call."""
        if self._n_real is None:
            return None
        n_real, n_masked = int(self._n_real), int(self._n_masked)
        self._n_real = self._n_masked = None
        return n_masked / n_real if n_real else 0.0


def make_compute_loss_func(
    gamma: float | None = 0.99, normalize: str = "real", **kwargs
) -> Callable:
    """Factory for ``Trainer(compute_loss_func=make_compute_loss_func(0.99))``.

    Extra keyword arguments go to :class:`TCELossFunc` (``ignore_index``, ``eval_ce``).
    """
    return TCELossFunc(gamma=gamma, normalize=normalize, **kwargs)


try:  # the callback is optional: the loss itself needs only torch
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover
    TrainerCallback = object


class MaskedShareCallback(TrainerCallback):
    """Adds ``tce_masked_share`` (share of real training tokens with ``p_t > gamma`` since
    the previous log) to the Trainer's logs and ``state.log_history``.

    Trainer calls callbacks in order, and reporters registered before this one have already
    seen the logs; use :func:`attach_masked_share_logging` to run it first.
    """

    def __init__(self, loss_func: TCELossFunc, key: str = "tce_masked_share"):
        self.loss_func = loss_func
        self.key = key

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:  # eval / final-summary logs: nothing to add
            return
        share = self.loss_func.pop_masked_share()
        if share is None:
            return
        logs[self.key] = share
        last = state.log_history[-1] if state.log_history else None
        if last is not None and last.get("step") == state.global_step and "loss" in last:
            last[self.key] = share


def attach_masked_share_logging(trainer, loss_func: TCELossFunc) -> MaskedShareCallback:
    """Register a :class:`MaskedShareCallback` *first*, so progress bars and reporters
    (TensorBoard, W&B, ...) see the metric."""
    callback = MaskedShareCallback(loss_func)
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback
