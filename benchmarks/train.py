"""TCE vs CE training step time on the same batch (issue 5 goal: TCE <= 1.05 x CE).

Builds a small LlamaForCausalLM from a config (no hub access needed), then times
forward + backward + AdamW step with
  * CE:  the model's own loss (``model(input_ids, labels=labels).loss``), what a user has today;
  * TCE: ``truncated_cross_entropy(model(input_ids).logits, labels, gamma)``;
  * CE through the same code path (``gamma=None``), which isolates the cost of the mask.
Steps are interleaved (CE, TCE, CE, ...) after a warm-up so drift in machine load hits both
arms alike; the median (and the min, less sensitive to other processes on a shared machine)
of each arm is reported. A second, much cheaper measurement times the loss alone (forward +
backward on fixed logits of the same shape), where the mask's own cost is not drowned by the
model.

On a shared CPU machine wall time mostly measures the other processes; ``--threads 1
--clock cpu`` times the process CPU time of a single-threaded run instead, which counts only
this process's work.

    python benchmarks/train.py                 # defaults: ~5M params, batch 8 x 256
    python benchmarks/train.py --steps 20 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from tokedit.training.tce import truncated_cross_entropy


def build_model(vocab: int, hidden: int, layers: int, heads: int, seq: int, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=seq,
    )
    return LlamaForCausalLM(cfg).to(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step(model, opt, ids, labels, loss: str, gamma: float, device: str) -> float:
    """One optimizer step; returns its wall time in seconds."""
    _sync(device)
    t0 = clock()
    if loss == "ce":
        out = model(input_ids=ids, labels=labels).loss
    else:
        g = gamma if loss == "tce" else None
        out = truncated_cross_entropy(model(input_ids=ids).logits, labels, g)
    out.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    _sync(device)
    return clock() - t0


def time_loss_only(shape, labels, gamma, reps: int, device: str) -> dict:
    """Median seconds of loss forward + backward on fixed ``[batch, seq, vocab]`` logits."""
    logits = torch.randn(*shape, device=device, requires_grad=True)
    fns = {
        "ce": lambda: torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, shape[-1]), labels[:, 1:].reshape(-1)
        ),
        "tce": lambda: truncated_cross_entropy(logits, labels, gamma),
        "ce_same_path": lambda: truncated_cross_entropy(logits, labels, None),
    }
    times = {k: [] for k in fns}
    for i in range(reps + 2):
        for k, fn in fns.items():
            _sync(device)
            t0 = clock()
            fn().backward()
            logits.grad = None
            _sync(device)
            if i >= 2:
                times[k].append(clock() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--gamma", type=float, default=0.99)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--loss-reps", type=int, default=30)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    args = ap.parse_args()

    global clock
    clock = CLOCKS[args.clock]
    if args.device != "cpu" and args.clock == "cpu":
        ap.error("--clock cpu is only meaningful with --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = build_model(args.vocab, args.hidden, args.layers, args.heads, args.seq, args.device)
    # lr 0: every step sees the same weights, so both arms time identical work
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), device=args.device)
    labels = ids.clone()
    labels[:, -16:] = -100  # a little padding, as in real batches

    arms = ("ce", "tce", "ce_same_path")
    for _ in range(args.warmup):
        for loss in arms:
            step(model, opt, ids, labels, loss, args.gamma, args.device)
    times = {loss: [] for loss in arms}
    for _ in range(args.steps):
        for loss in arms:
            times[loss].append(step(model, opt, ids, labels, loss, args.gamma, args.device))

    ce, tce, ce2 = (statistics.median(times[loss]) for loss in arms)
    mins = {loss: min(times[loss]) for loss in arms}
    shape = (args.batch, args.seq, args.vocab)
    lo = time_loss_only(shape, labels, args.gamma, args.loss_reps, args.device)
    n_params = sum(p.numel() for p in model.parameters())
    result = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "params_M": round(n_params / 1e6, 2),
        "batch": args.batch,
        "seq": args.seq,
        "vocab": args.vocab,
        "gamma": args.gamma,
        "steps": args.steps,
        "ce_step_s": round(ce, 4),
        "tce_step_s": round(tce, 4),
        "ce_same_path_step_s": round(ce2, 4),
        "tce_over_ce": round(tce / ce, 3),
        "tce_over_ce_same_path": round(tce / ce2, 3),
        "min_step_s": {k: round(v, 4) for k, v in mins.items()},
        "tce_over_ce_min": round(mins["tce"] / mins["ce"], 3),
        "loss_only_ms": {k: round(v * 1e3, 2) for k, v in lo.items()},
        "loss_only_tce_over_ce": round(lo["tce"] / lo["ce"], 3),
        "goal": "tce_over_ce <= 1.05",
    }
    print(f"CE  step: {ce * 1e3:8.1f} ms (median of {args.steps})")
    print(f"TCE step: {tce * 1e3:8.1f} ms (median of {args.steps}, gamma={args.gamma})")
    print(f"CE (tokedit path, gamma=None): {ce2 * 1e3:8.1f} ms")
    print(f"TCE/CE:   {tce / ce:.3f}  (goal <= 1.05); TCE/CE same path: {tce / ce2:.3f}")
    print(f"TCE/CE by min step time: {mins['tce'] / mins['ce']:.3f}")
    print(
        f"loss only (fwd+bwd, {shape}): CE {lo['ce'] * 1e3:.1f} ms, TCE {lo['tce'] * 1e3:.1f} ms"
        f", same-path CE {lo['ce_same_path'] * 1e3:.1f} ms"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
