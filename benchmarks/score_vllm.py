"""Benchmark ``--backend vllm`` beside ``--backend hf``: the same tokens, the same run.

Both backends score the same windows of the same Shakespeare documents with the same prior
(Gemma 3 270M by default: ``tokedit prior fetch gemma-3-270m``), in float32 on whatever
device each uses here (vLLM: its CPU build or a CUDA GPU). Prints, per backend, the
start-up time and tokens/s over the scored positions, then the largest |log P difference|
between the two, the P > p decisions that differ, and the candidates that differ where
they are not tied:

    .venv/bin/python benchmarks/score_vllm.py [--model DIR] [--tokens 960] [--max-length 512] [--top-k 8]

vLLM starts its engine in other processes (spawn): run this as a script, not imported. (Not
named vllm.py: run as a script, that name would shadow the vllm package.)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from tokedit.demo import read_plays
from tokedit.scoring.hf import HFBackend, load_tokenizer
from tokedit.scoring.options import ScoreOptions
from tokedit.scoring.scorer import tokenize_documents
from tokedit.scoring.vllm_backend import VLLMBackend
from tokedit.scoring.windows import plan_windows

PS = (0.5, 0.9, 0.99)


def documents(tokenizer, n_tokens: int) -> list[np.ndarray]:
    """Sequences (BOS first) of whole plays' openings, ``n_tokens`` scored positions in all."""
    seqs, left = [], n_tokens
    for text in read_plays().values():
        if left <= 0:
            break
        (doc,) = tokenize_documents(tokenizer, [text[:20000]], add_bos=True)
        seq = doc.seq[: left + 1]
        seqs.append(seq)
        left -= len(seq) - 1
    return seqs


def timed(backend, seqs, windows, top_k):
    t = time.perf_counter()
    out = backend.score_batch(seqs, windows, top_k=top_k, min_p=0.0)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a prior directory (default: Gemma 3 270M)")
    ap.add_argument("--tokens", type=int, default=960, help="scored positions in all")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--batch-tokens", type=int, default=1024)
    args = ap.parse_args()
    if args.model is None:
        from tokedit.scoring.priors import fetch_prior

        args.model = fetch_prior("gemma-3-270m")["model_dir"]
    model = str(Path(args.model).expanduser())

    seqs = documents(load_tokenizer(model), args.tokens)
    windows = [
        w
        for d, s in enumerate(seqs)
        for w in plan_windows(len(s), args.max_length, args.overlap, d)
    ]
    n = sum(w.end - w.score_from for w in windows)
    print(f"{model}: {n} scored positions in {len(windows)} windows of <= {args.max_length}")

    results = {}
    t = time.perf_counter()
    hf = HFBackend(model, dtype="float32")
    start_hf = time.perf_counter() - t
    results["hf"], secs_hf = timed(hf, seqs, windows, args.top_k)
    print(f"hf   ({hf.device}): start {start_hf:6.1f} s, {n / secs_hf:8.1f} tokens/s")
    del hf

    opts = ScoreOptions(
        max_length=args.max_length, top_k=args.top_k, batch_tokens=args.batch_tokens
    )
    t = time.perf_counter()
    vl = VLLMBackend.load(model, options=opts, dtype="float32")
    start_vl = time.perf_counter() - t
    timed(vl, seqs[:1], windows[:1], args.top_k)  # vLLM's first request warms its kernels
    results["vllm"], secs_vl = timed(vl, seqs, windows, args.top_k)
    print(f"vllm ({vl.device}): start {start_vl:6.1f} s, {n / secs_vl:8.1f} tokens/s")
    vl.close()

    a = np.concatenate([r.logprob for r in results["vllm"]])
    b = np.concatenate([r.logprob for r in results["hf"]])
    d = np.abs(a - b)
    flips = {p: int(((a > np.log(p)) != (b > np.log(p))).sum()) for p in PS}
    ka = np.concatenate([r.topk_ids for r in results["vllm"]])
    kb = np.concatenate([r.topk_ids for r in results["hf"]])
    lb = np.concatenate([r.topk_logprobs for r in results["hf"]])
    untied = np.ones(kb.shape, bool)
    if kb.shape[1] > 1:
        gap = np.abs(np.diff(lb, axis=1)) >= 1e-4
        untied[:, :-1] &= gap
        untied[:, 1:] &= gap
    print(
        f"max |d log P| {d.max():.2e} nats (mean {d.mean():.1e}); "
        + ", ".join(f"P > {p}: {f} flips" for p, f in flips.items())
        + f"; untied candidates differing: {int((ka != kb)[untied].sum())} of {int(untied.sum())}"
    )
    print(
        f"above P = 0.99: hf {int((b > np.log(0.99)).sum())}, vllm {int((a > np.log(0.99)).sum())}"
    )


if __name__ == "__main__":
    main()
