"""Truncated Cross Entropy: values against an independent float64 computation, gradients,
gradient accumulation, normalisations, statistics, bf16, and a real Trainer run."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tokedit.training.tce import (
    TCELossFunc,
    attach_masked_share_logging,
    cross_entropy_loss,
    make_compute_loss_func,
    truncated_cross_entropy,
)

GAMMAS = [0.05, 0.3, 0.5, 0.9, 0.99]


def _batch(seed=0, B=3, T=9, V=11):
    """Random logits with some very confident targets, right padding and an interior
    ignore_index, so every gamma in GAMMAS masks some but not all real tokens."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 2.0
    labels = torch.randint(0, V, (B, T), generator=g)
    # make ~half the targets confident: logits[:, t] predicts labels[:, t + 1]
    boost = torch.rand(B, T - 1, generator=g) < 0.5
    scale = torch.rand(B, T - 1, generator=g) * 10.0
    for b in range(B):
        for t in range(T - 1):
            if boost[b, t]:
                logits[b, t, labels[b, t + 1]] += scale[b, t]
    labels[1, -3:] = -100  # right padding
    labels[2, 4] = -100  # interior ignore_index
    return logits, labels


def _reference(logits, labels, gamma, ignore_index=-100):
    """Per-token float64 loop: (real-normalised loss, kept-normalised loss, masked share)."""
    x = logits.double().numpy()
    y = labels.numpy()
    B, T, _ = x.shape
    kept_losses, n_real = [], 0
    for b in range(B):
        for t in range(T - 1):
            target = int(y[b, t + 1])
            if target == ignore_index:
                continue
            n_real += 1
            row = x[b, t]
            m = row.max()
            logp = row[target] - (m + math.log(np.exp(row - m).sum()))
            if gamma is None or math.exp(logp) <= gamma:
                kept_losses.append(-logp)
    total = sum(kept_losses)
    n_kept = len(kept_losses)
    return total / n_real, (total / n_kept if n_kept else 0.0), (n_real - n_kept) / n_real


@pytest.mark.parametrize("gamma", [None, 1.0, 1.5])
def test_gamma_ge_1_is_cross_entropy(gamma):
    logits, labels = _batch()
    V = logits.size(-1)
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))
    for normalize in ("real", "kept"):
        loss, stats = truncated_cross_entropy(
            logits, labels, gamma=gamma, normalize=normalize, return_stats=True
        )
        torch.testing.assert_close(loss, ce, rtol=1e-6, atol=1e-7)
        assert stats["n_masked"].item() == 0
    torch.testing.assert_close(cross_entropy_loss(logits, labels), ce, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_matches_independent_per_token_computation(gamma):
    logits, labels = _batch()
    want_real, want_kept, want_share = _reference(logits, labels, gamma)
    assert 0.0 < want_share < 1.0  # the case really masks something and keeps something
    real, stats = truncated_cross_entropy(logits, labels, gamma, return_stats=True)
    kept = truncated_cross_entropy(logits, labels, gamma, normalize="kept")
    assert real.dtype == torch.float32
    assert real.item() == pytest.approx(want_real, rel=1e-5)
    assert kept.item() == pytest.approx(want_kept, rel=1e-5)
    assert stats["masked_share"].item() == pytest.approx(want_share, abs=1e-7)
    n_real = int((labels[:, 1:] != -100).sum())
    assert stats["n_real"].item() == n_real == 3 * 8 - 3 - 1
    assert stats["n_kept"].item() + stats["n_masked"].item() == n_real


def test_shift_false_takes_aligned_labels():
    logits, labels = _batch()
    aligned = F.pad(labels, (0, 1), value=-100)[..., 1:]
    a = truncated_cross_entropy(logits, labels, 0.5)
    b = truncated_cross_entropy(logits, aligned, 0.5, shift=False)
    assert a.item() == b.item()


def test_kept_and_real_normalisations_documented_values():
    # V=2, aligned labels (shift=False); row logits [log p, log(1-p)] give P(target=0) = p
    ps = [0.5, 0.999, 0.2, 0.7]
    logits = torch.tensor([[[math.log(p), math.log(1 - p)] for p in ps]])
    labels = torch.tensor([[0, 0, 0, -100]])
    real, stats = truncated_cross_entropy(logits, labels, 0.99, shift=False, return_stats=True)
    kept = truncated_cross_entropy(logits, labels, 0.99, normalize="kept", shift=False)
    kept_sum = math.log(2) + math.log(5)  # 0.999 is masked, the 4th token is ignored
    assert real.item() == pytest.approx(kept_sum / 3, rel=1e-6)
    assert kept.item() == pytest.approx(kept_sum / 2, rel=1e-6)
    assert stats["masked_share"].item() == pytest.approx(1 / 3)
    assert (stats["n_real"].item(), stats["n_kept"].item(), stats["n_masked"].item()) == (3, 2, 1)
    # with num_items_in_batch: "real" divides by it; "kept" weighs the kept-mean by n_real/N
    r = truncated_cross_entropy(logits, labels, 0.99, shift=False, num_items_in_batch=6)
    k = truncated_cross_entropy(
        logits, labels, 0.99, normalize="kept", shift=False, num_items_in_batch=torch.tensor(6)
    )
    assert r.item() == pytest.approx(kept_sum / 6, rel=1e-6)
    assert k.item() == pytest.approx(kept_sum / 2 * 3 / 6, rel=1e-6)


def test_everything_masked_or_ignored_gives_zero_loss():
    logits = torch.tensor([[[10.0, -10.0], [10.0, -10.0]]], requires_grad=True)
    labels = torch.tensor([[0, 0]])
    for normalize in ("real", "kept"):
        loss = truncated_cross_entropy(logits, labels, 0.9, normalize=normalize, shift=False)
        assert loss.item() == 0.0
    all_ignored = truncated_cross_entropy(logits, torch.full((1, 2), -100), 0.9, shift=False)
    assert all_ignored.item() == 0.0


def test_masked_positions_have_exactly_zero_gradient():
    logits, labels = _batch()
    logits.requires_grad_(True)
    gamma = 0.5
    truncated_cross_entropy(logits, labels, gamma).backward()
    grad = logits.grad
    with torch.no_grad():
        targets = F.pad(labels, (0, 1), value=-100)[:, 1:]
        logp = torch.log_softmax(logits.double(), -1)
        p = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1).exp()
        dropped = (targets == -100) | (p > gamma)
    n_dropped = int(dropped.sum())
    assert 0 < n_dropped < dropped.numel()
    assert torch.count_nonzero(grad[dropped]).item() == 0
    assert (grad[~dropped].abs().sum(-1) > 0).all()


def _tiny_model(V=13, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Embedding(V, 8), torch.nn.Linear(8, V))


def _grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("gamma", [0.08, None])  # ~1/V: untrained model splits
def test_gradient_accumulation_equals_one_big_batch(gamma):
    V, T = 13, 10
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (4, T), generator=g)
    labels = ids.clone()
    labels[0, 3:] = -100  # micro-batch 1 has far fewer real tokens than micro-batch 2
    labels[1, 5:] = -100
    model = _tiny_model(V)

    model.zero_grad()
    big, stats = truncated_cross_entropy(model(ids), labels, gamma, return_stats=True)
    big.backward()
    want = _grads(model)
    if gamma is not None:
        assert 0 < stats["n_masked"].item() < stats["n_real"].item()

    n_items = int((labels[:, 1:] != -100).sum())
    model.zero_grad()
    for sl in (slice(0, 2), slice(2, 4)):
        truncated_cross_entropy(
            model(ids[sl]), labels[sl], gamma, num_items_in_batch=n_items
        ).backward()
    for a, b in zip(_grads(model), want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)

    # the naive mean of micro-batch means is measurably different: the test discriminates
    model.zero_grad()
    for sl in (slice(0, 2), slice(2, 4)):
        (truncated_cross_entropy(model(ids[sl]), labels[sl], gamma) / 2).backward()
    diff = max((a - b).abs().max().item() for a, b in zip(_grads(model), want, strict=True))
    assert diff > 1e-3


def test_kept_under_accumulation_is_real_weighted_mean_of_kept_means():
    logits, labels = _batch(seed=3, B=4)
    n_items = int((labels[:, 1:] != -100).sum())
    parts = [(logits[:2], labels[:2]), (logits[2:], labels[2:])]
    got = sum(
        truncated_cross_entropy(x, y, 0.5, normalize="kept", num_items_in_batch=n_items)
        for x, y in parts
    )
    want = 0.0
    for x, y in parts:
        _, kept_mean, _ = _reference(x, y, 0.5)
        want += kept_mean * int((y[:, 1:] != -100).sum()) / n_items
    assert got.item() == pytest.approx(want, rel=1e-5)
    # one micro-batch holding everything: exactly the plain kept-mean
    one = truncated_cross_entropy(logits, labels, 0.5, normalize="kept", num_items_in_batch=n_items)
    assert one.item() == pytest.approx(_reference(logits, labels, 0.5)[1], rel=1e-5)


def test_bf16_logits():
    logits32, labels = _batch()
    logits = logits32.to(torch.bfloat16).requires_grad_(True)
    loss, stats = truncated_cross_entropy(logits, labels, 0.9, return_stats=True)
    assert loss.dtype == torch.float32
    want_real, _, want_share = _reference(logits.detach().float(), labels, 0.9)
    assert loss.item() == pytest.approx(want_real, rel=1e-5)  # exact after the upcast
    assert stats["masked_share"].item() == pytest.approx(want_share)
    # against the un-rounded float32 logits: bf16 rounding (8 mantissa bits), looser
    assert loss.item() == pytest.approx(_reference(logits32, labels, 0.9)[0], rel=2e-2)
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad).all()


def test_loss_func_callable_tracks_training_share_and_eval_is_ce():
    logits, labels = _batch()
    fn = make_compute_loss_func(0.5)
    assert isinstance(fn, TCELossFunc)
    _, _, share = _reference(logits, labels, 0.5)
    out = {"logits": logits.clone().requires_grad_(True)}
    loss = fn(out, labels, num_items_in_batch=None)
    assert loss.item() == pytest.approx(_reference(logits, labels, 0.5)[0], rel=1e-5)
    fn(out, labels)
    assert fn.pop_masked_share() == pytest.approx(share)
    assert fn.pop_masked_share() is None
    with torch.no_grad():  # evaluation: plain CE, not counted in the training share
        ev = fn(out, labels)
    assert ev.item() == pytest.approx(_reference(logits, labels, None)[0], rel=1e-5)
    assert fn.pop_masked_share() is None


def test_invalid_arguments():
    logits, labels = _batch()
    with pytest.raises(ValueError, match="normalize"):
        truncated_cross_entropy(logits, labels, normalize="all")
    with pytest.raises(ValueError, match="gamma"):
        truncated_cross_entropy(logits, labels, gamma=0.0)


def test_trainer_compute_loss_func_with_tiny_llama(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    V, T, R = 64, 16, 12
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=T,
    )
    model = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (8, T), generator=g)
    labels = ids.clone()
    labels[:, R + 1 :] = -100  # every row: R real targets after the shift, 3 padding
    data = [{"input_ids": ids[i], "labels": labels[i]} for i in range(8)]

    # gamma near 1/V splits an untrained model's target probabilities into kept and masked
    gamma = 1.0 / V
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    want_loss, _, want_share = _reference(logits, labels, gamma)
    want_eval, _, _ = _reference(logits, labels, None)
    assert 0.05 < want_share < 0.95

    loss_fn = make_compute_loss_func(gamma)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=8,
        gradient_accumulation_steps=2,
        learning_rate=0.0,  # frozen weights: the logged numbers are checkable exactly
        logging_steps=2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=data, eval_dataset=data, compute_loss_func=loss_fn
    )
    attach_masked_share_logging(trainer, loss_fn)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 1
    # equal real counts per row: mean of the two step losses == sum kept CE / all real tokens
    assert math.isfinite(logged[0]["loss"])
    assert logged[0]["loss"] == pytest.approx(want_loss, rel=1e-4)
    assert logged[0]["tce_masked_share"] == pytest.approx(want_share, abs=1e-9)
    ev = trainer.evaluate()
    assert ev["eval_loss"] == pytest.approx(want_eval, rel=1e-4)  # eval is plain CE
