"""Benchmark `tokedit score` against its limit and against the common baseline, in one run.

Prints, on the same ~4M-parameter Llama-style model (preset "small", random weights: speed
does not depend on training) and the same Shakespeare documents:
  1. raw forward: tokens/s of ``model(input_ids)`` on the same tokens packed into full
     windows, no padding (the limit: no tokenization, no log-probs, no I/O);
  2. ``tokedit score`` end to end (read, tokenize, window, batch, forward, log-probs,
     top-k, write parquet);
  3. a per-document, batch-size-1 Hugging Face loop (full logits, log_softmax, gather);
  4. padding share of computed positions;
  5. peak RSS of a ``tokedit score`` process on a corpus and on the same corpus 8x larger.
Goals (issue 2): (2) >= 0.85 x (1); (2) >= 5 x (3); padding <= 10 %; RSS growth <= 20 %.

With ``--model PRIOR`` (a directory, a .gguf file, e.g. the one `tokedit prior fetch
gemma-3-270m` prints) it measures that prior instead, and (5) becomes the peak RSS of one
``tokedit score`` process against the model's size (goal: within model size + 1 GB):

    .venv/bin/python benchmarks/score.py [--docs 120] [--max-length 512]
    .venv/bin/python benchmarks/score.py --model ~/.cache/tokedit/priors/gemma-3-270m \
        --docs 6 --max-length 512 --skip-loop

With ``--model PRIOR --tokens N`` it measures the real-prior goals on mixed-length documents
(some longer than ``--max-length``): ``tokedit score`` end to end in its own process (start,
imports and model load included) against the raw forward of the same model on the same
tokens, and that process's peak RSS against the model's size:

    .venv/bin/python benchmarks/score.py --model ~/.cache/tokedit/priors/gemma-3-270m \
        --tokens 20000 --max-length 512
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tokedit.demo import read_plays
from tokedit.io.texts import split_documents
from tokedit.scoring.options import ScoreOptions
from tokedit.scoring.run import score_dataset
from tokedit.training.prior import build_model, train_tokenizer


def make_model(texts: list[str], workdir: Path, preset: str, vocab: int) -> Path:
    tok = train_tokenizer(texts, vocab)
    model = build_model(tok, preset)
    path = workdir / f"model-{preset}"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@torch.inference_mode()
def raw_forward_tokens_per_s(model, token_ids: np.ndarray, max_len: int, batch_rows: int) -> float:
    n_blocks = len(token_ids) // max_len
    blocks = torch.from_numpy(token_ids[: n_blocks * max_len].astype(np.int64)).view(
        n_blocks, max_len
    )
    model(input_ids=blocks[:1])  # warm-up
    t0 = time.perf_counter()
    for a in range(0, n_blocks, batch_rows):
        model(input_ids=blocks[a : a + batch_rows])
    return blocks.numel() / (time.perf_counter() - t0)


@torch.inference_mode()
def per_document_loop_tokens_per_s(model, tokenizer, texts: list[str], max_len: int) -> float:
    """The common baseline: one document at a time, full logits, log_softmax, gather."""
    n = 0
    t0 = time.perf_counter()
    for text in texts:
        ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        for a in range(0, len(ids) - 1, max_len - 1):  # plain chunks, no overlap
            chunk = torch.tensor(ids[a : a + max_len])[None]
            logp = torch.log_softmax(model(input_ids=chunk).logits.float(), dim=-1)
            logp[0, :-1].gather(1, chunk[0, 1:, None])
            n += chunk.shape[1] - 1
    return n / (time.perf_counter() - t0)


def scored_in_a_process(corpus: Path, model: Path, out: Path, opts: ScoreOptions) -> dict:
    """``tokedit score`` in a fresh process: wall time from the parent (interpreter start,
    imports and model load included), its tokens and its peak RSS (VmHWM)."""
    code = (
        "import json\n"
        "from tokedit.scoring.run import score_dataset\n"
        "from tokedit.scoring.options import ScoreOptions\n"
        f"s = score_dataset({str(corpus)!r}, {str(out)!r}, model={str(model)!r}, options=ScoreOptions(max_length={opts.max_length}, overlap={opts.overlap}, batch_tokens={opts.batch_tokens}), device='cpu', progress=False)\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(json.dumps({'tokens': s.run.tokens, 'totals': {'compute_overhead': s.totals.compute_overhead}, 'rss_mb': int(hwm.split()[1]) / 1024}))\n"
    )
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["seconds"] = time.perf_counter() - t0
    return out


def mixed_documents(docs: list[str], n_tokens: int, tokenizer, max_len: int) -> list[str]:
    """Documents of the plays in a fixed random order until ``n_tokens`` tokens; every fifth
    joins four of them, so some are longer than ``max_len`` (several windows each)."""
    rng = np.random.default_rng(0)
    order = rng.permutation(len(docs))
    out, total, at = [], 0, 0
    while total < n_tokens and at < len(order):
        take = 4 if len(out) % 5 == 4 else 1
        text = "\n\n".join(docs[i] for i in order[at : at + take])
        at += take
        out.append(text)
        total += len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
    return out


def peak_rss_mb(corpus: Path, model: Path, out: Path, max_len: int = 256) -> float:
    code = (
        "import sys\n"
        "from tokedit.scoring.run import score_dataset\n"
        "from tokedit.scoring.options import ScoreOptions\n"
        f"score_dataset({str(corpus)!r}, {str(out)!r}, model={str(model)!r}, options=ScoreOptions(max_length={max_len}, overlap=64), progress=False)\n"
        # VmHWM, not ru_maxrss: ru_maxrss survives fork + exec, so a child of a large
        # benchmark process would report the parent's peak.
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(int(hwm.split()[1]) / 1024)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--docs", type=int, default=120, help="documents for the throughput part")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument(
        "--skip-loop", action="store_true", help="skip the bs=1 loop (slow on big priors)"
    )
    ap.add_argument("--model", default=None, help="a real prior instead of a random 4M model")
    ap.add_argument(
        "--tokens",
        type=int,
        default=None,
        help="with --model: mixed-length documents of about this many tokens, tokedit score "
        "in its own process (load included, peak RSS) vs the raw forward",
    )
    args = ap.parse_args()
    if args.model and args.tokens:
        return real_prior(args)
    torch.manual_seed(0)
    plays = read_plays()
    docs = [d for text in plays.values() for d in split_documents(text)]
    rng = np.random.default_rng(0)
    sample = [
        docs[i]
        for i in sorted(rng.choice(len(docs), size=min(args.docs, len(docs)), replace=False))
    ]

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_path = args.model or make_model(docs, work, "small", 4096)
        corpus = work / "corpus"
        corpus.mkdir()
        pq.write_table(pa.Table.from_pylist([{"text": t} for t in sample]), corpus / "docs.parquet")

        from tokedit.scoring.hf import load_causal_lm, load_tokenizer

        tokenizer = load_tokenizer(str(model_path))
        model = load_causal_lm(str(model_path), dtype=torch.float32).eval()
        n_params = sum(p.numel() for p in model.parameters())
        all_ids = np.concatenate(
            [
                [tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False)["input_ids"]
                for t in sample
            ]
        ).astype(np.int64)
        print(
            f"model: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}; corpus: {len(sample)} documents, {len(all_ids)} tokens; torch threads {torch.get_num_threads()}"
        )

        raw = raw_forward_tokens_per_s(
            model, all_ids, args.max_length, max(1, args.batch_tokens // args.max_length)
        )
        print(f"raw forward (packed, no padding):  {raw:10.0f} tokens/s")

        opts = ScoreOptions(
            max_length=args.max_length, overlap=args.max_length // 8, batch_tokens=args.batch_tokens
        )
        t0 = time.perf_counter()
        s = score_dataset(
            str(corpus), str(work / "scores"), model=str(model_path), options=opts, progress=False
        )
        e2e = s.run.tokens / (time.perf_counter() - t0)  # includes model loading
        padding = s.totals.padding_share
        overlap_extra = s.totals.computed_positions / s.run.tokens - 1
        print(
            f"tokedit score end to end:          {e2e:10.0f} tokens/s   ({e2e / raw:.2f} x raw forward; goal >= 0.85)"
        )
        print(
            f"  padding: {100 * padding:.1f} % of computed positions (goal <= 10 %); window overlap adds {100 * (overlap_extra - padding):.1f} % positions"
        )

        if not args.skip_loop:
            loop_docs = sample[: max(10, len(sample) // 4)]
            loop = per_document_loop_tokens_per_s(model, tokenizer, loop_docs, args.max_length)
            print(
                f"per-document bs=1 HF loop:         {loop:10.0f} tokens/s   (tokedit = {e2e / loop:.1f} x; goal >= 5)"
            )

        if args.model and not args.skip_memory:
            model_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
            del model
            rss = peak_rss_mb(corpus, Path(model_path), work / "rss", args.max_length)
            print(
                f"peak RSS of one tokedit score process: {rss:.0f} MB; model {model_mb:.0f} MB "
                f"(+{rss - model_mb:.0f} MB; goal <= model + 1024 MB)"
            )
        elif not args.skip_memory:
            small = make_model(docs, work, "tiny", 512)
            base = work / "mem1"
            base.mkdir()
            one = docs[: len(docs) // 8]
            pq.write_table(
                pa.Table.from_pylist([{"text": t} for t in one]), base / "part-0.parquet"
            )
            big = work / "mem8"
            big.mkdir()
            for k in range(8):
                shutil.copy(base / "part-0.parquet", big / f"part-{k}.parquet")
            rss1 = peak_rss_mb(base, small, work / "o1")
            rss8 = peak_rss_mb(big, small, work / "o8")
            chars = sum(len(t) for t in one)
            print(
                f"peak RSS: {rss1:.0f} MB on {chars / 1e6:.1f} M chars, {rss8:.0f} MB on 8 x that ({100 * (rss8 / rss1 - 1):+.1f} %; goal <= +20 %)"
            )


def real_prior(args) -> None:
    """The real-prior goals (issue 22): end to end >= 0.85 x raw forward, RSS <= model + 1 GB."""
    from tokedit.scoring.hf import load_causal_lm, load_tokenizer

    torch.manual_seed(0)
    docs = [d for text in read_plays().values() for d in split_documents(text)]
    tokenizer = load_tokenizer(args.model)
    sample = mixed_documents(docs, args.tokens, tokenizer, args.max_length)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = work / "corpus"
        corpus.mkdir()
        pq.write_table(pa.Table.from_pylist([{"text": t} for t in sample]), corpus / "docs.parquet")
        opts = ScoreOptions(
            max_length=args.max_length, overlap=args.max_length // 8, batch_tokens=args.batch_tokens
        )
        e2e = scored_in_a_process(corpus, Path(args.model), work / "scores", opts)
        model = load_causal_lm(args.model, dtype=torch.float32).eval()
        model_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        ids = [
            [tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False)["input_ids"]
            for t in sample
        ]
        all_ids = np.concatenate(ids).astype(np.int64)
        longer = sum(len(i) > args.max_length for i in ids)
        # full float32 logits of a raw batch stay under 2 GB
        rows = max(1, (2 << 30) // (4 * args.max_length * model.config.vocab_size))
        raw = raw_forward_tokens_per_s(model, all_ids, args.max_length, rows)
        totals = e2e["totals"]
        rate = e2e["tokens"] / e2e["seconds"]
        print(
            f"model {args.model}: {model_mb:.0f} MB float32; {len(sample)} documents, "
            f"{len(all_ids)} tokens ({longer} longer than --max-length {args.max_length}); "
            f"torch threads {torch.get_num_threads()}"
        )
        print(f"raw forward (full rows, batch {rows}): {raw:8.1f} tokens/s")
        print(
            f"tokedit score end to end (own process, load included, {e2e['seconds']:.0f} s): "
            f"{rate:8.1f} tokens/s = {rate / raw:.2f} x raw forward (goal >= 0.85)"
        )
        o = totals["compute_overhead"]
        print(
            f"  positions computed per token scored: {o['computed_per_scored']:.3f} "
            f"(context {o['context_per_scored']:.3f}, padding {o['padding_per_scored']:.3f})"
        )
        print(
            f"peak RSS (VmHWM) of that process: {e2e['rss_mb']:.0f} MB = model + "
            f"{e2e['rss_mb'] - model_mb:.0f} MB (goal <= model + 1024 MB)"
        )


if __name__ == "__main__":
    main()
