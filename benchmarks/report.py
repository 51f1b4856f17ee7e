"""Benchmark `tokedit report`'s n-gram counting against collections.Counter, and a full report.

In one run, on ~10M synthetic token ids (Zipf(1.1) over a real byte-level BPE vocabulary
trained here on the Shakespeare demo text, documents of 200..1800 tokens):
  1. vectorised counting of n = 1..4 (``NgramCounterSet``: packed uint64 keys, sort, merge,
     lower orders by prefix sums) over all tokens;
  2. ``collections.Counter`` of n-gram tuples per document (the straightforward way) over the
     same tokens (about 3 GB of RAM at 10M tokens; ``--counter-tokens N`` times it on a prefix
     of N tokens instead and extrapolates linearly, which flatters Counter: its cost per token
     grows with its size); both are checked equal on a 1M-token prefix;
  3. a full ``tokedit report`` (read parquet scores, probabilities, perplexities, n-grams,
     tail coverage, JSON, HTML, PNGs) of a scores directory holding those tokens, in a fresh
     process: wall time and peak RSS (VmHWM); also without a known tokenizer (32-bit ids:
     3- and 4-grams hashed, the slower path);
  4. peak RSS of the same report on a quarter of the documents, and on that quarter repeated
     4 times (4x the tokens, the same distinct n-grams): memory follows the distinct n-grams.
Goals (issue 4): (3) <= 60 s on 10M tokens; (1) >= 10x (2).

    .venv/bin/python benchmarks/report.py [--tokens 10000000] [--counter-tokens N]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tokedit.analysis.ngrams import MAX_N, NgramCounterSet, id_bits
from tokedit.io.manifest import manifest_path

DOC_BATCH = 1024


def synth_docs(n_tokens: int, vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(200, 1801, size=n_tokens // 1000 + 10)
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), n_tokens) + 1]
    total = int(lengths.sum())
    # Zipf ranks, then a fixed random permutation of the non-special ids
    ranks = rng.zipf(1.1, size=total * 2)
    ranks = ranks[ranks <= vocab - 3][:total] - 1
    ids = (rng.permutation(vocab - 3)[ranks] + 3).astype(np.uint32)
    return ids, lengths


def vectorised_counts(ids, lengths, vocab):
    counters = NgramCounterSet(vocab, MAX_N)
    ends = np.concatenate([[0], np.cumsum(lengths)])
    for a in range(0, len(lengths), DOC_BATCH):
        b = min(a + DOC_BATCH, len(lengths))
        counters.add(ids[ends[a] : ends[b]], lengths[a:b])
    return counters.finish()


def counter_counts(ids, lengths):
    out = {n: Counter() for n in range(1, MAX_N + 1)}
    ends = np.concatenate([[0], np.cumsum(lengths)])
    for i in range(len(lengths)):
        doc = ids[ends[i] : ends[i + 1]].tolist()
        for n, c in out.items():
            c.update(zip(*[doc[k:] for k in range(n)], strict=False))
    return out


def write_scores(ids, lengths, out: Path, tokenizer_dir: Path, tok_hash: str, shards: int = 4):
    """A scores directory (SCORES_SCHEMA) of the given documents with synthetic log-probs."""
    from tokedit.io.scores_dir import SCORES_SCHEMA

    out.mkdir(parents=True)
    rng = np.random.default_rng(1)
    ends = np.concatenate([[0], np.cumsum(lengths)])
    per = -(-len(lengths) // shards)
    for s in range(shards):
        a, b = s * per, min((s + 1) * per, len(lengths))
        lo, hi = ends[a], ends[b]
        L = lengths[a:b]
        offs = pa.array(np.concatenate([[0], np.cumsum(L)]).astype(np.int32))
        tok = ids[lo:hi].astype(np.int32)
        lp = np.log(np.clip(rng.beta(0.4, 0.3, size=hi - lo), 1e-9, 1)).astype(np.float32)
        doc_lp = np.add.reduceat(lp, offs.to_numpy()[:-1]) / L
        no_ids = pa.ListArray.from_arrays(
            pa.array(np.zeros(hi - lo + 1, np.int32)), pa.array([], pa.int32())
        )
        no_lps = pa.ListArray.from_arrays(
            pa.array(np.zeros(hi - lo + 1, np.int32)), pa.array([], pa.float32())
        )
        table = pa.table(
            {
                "id": pa.array([f"d{i}" for i in range(a, b)]),
                "status": pa.array(["ok"] * (b - a)),
                "n_tokens": pa.array(L.astype(np.int32)),
                "mean_logprob": pa.array(doc_lp.astype(np.float64)),
                "ppl": pa.array(np.exp(-doc_lp).astype(np.float64)),
                "token_ids": pa.ListArray.from_arrays(offs, pa.array(tok)),
                "offsets": pa.ListArray.from_arrays(
                    offs, pa.array((np.arange(hi - lo) * 4).astype(np.int32))
                ),
                "logprob": pa.ListArray.from_arrays(offs, pa.array(lp)),
                "topk_ids": pa.ListArray.from_arrays(offs, no_ids),
                "topk_logprobs": pa.ListArray.from_arrays(offs, no_lps),
            }
        )
        pq.write_table(table.cast(SCORES_SCHEMA), out / f"part-{s:02d}.parquet", compression="zstd")
    manifest = {
        "command": "score",
        "options": {"model": str(tokenizer_dir), "tokenizer_hash": tok_hash},
        "shards": {},
    }
    manifest_path(out).parent.mkdir(parents=True, exist_ok=True)
    manifest_path(out).write_text(json.dumps(manifest))


def peak_rss_mb() -> float:
    """VmHWM of this process (ru_maxrss would include the parent's peak inherited over fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_report(dirs: list[str], out: str) -> None:
    """Run in a fresh process: the report, then its time and peak RSS as one JSON line."""
    t0 = time.perf_counter()
    from tokedit.analysis.report import run_report

    result = run_report(dirs, out)
    seconds = time.perf_counter() - t0
    units = sum(c["units"] for c in result["report"]["corpora"])
    rss = peak_rss_mb()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "build_seconds": result["report"]["seconds"],
                "units": units,
                "peak_rss_mb": rss,
            }
        )
    )


def child_imports() -> None:
    import transformers  # noqa: F401

    import tokedit.analysis.html  # noqa: F401
    import tokedit.analysis.report  # noqa: F401
    import tokedit.scoring.hf  # noqa: F401

    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


def run_child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=10_000_000)
    ap.add_argument(
        "--counter-tokens", type=int, default=0, help="time Counter on a prefix (0: all tokens)"
    )
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--child-report", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--child-imports", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_report:
        return child_report(args.child_report[1:], args.child_report[0])
    if args.child_imports:
        return child_imports()

    from tokedit.demo import read_plays
    from tokedit.scoring.hf import tokenizer_hash
    from tokedit.training.prior import train_tokenizer

    work = Path(tempfile.mkdtemp(prefix="tokedit-report-bench-"))
    try:
        t0 = time.perf_counter()
        tok = train_tokenizer(list(read_plays().values()), args.vocab)
        tok.save_pretrained(work / "tok")
        vocab = len(tok)
        ids, lengths = synth_docs(args.tokens, vocab)
        bits = id_bits(vocab + 1)
        print(
            f"setup {time.perf_counter() - t0:.1f}s: {len(ids):,} tokens in {len(lengths):,} documents, "
            f"vocabulary {vocab} ({bits} bits/id: n-gram keys packed up to n={64 // bits})"
        )

        t0 = time.perf_counter()
        tables = vectorised_counts(ids, lengths, vocab)
        vec_s = time.perf_counter() - t0
        distinct = {n: t.distinct for n, t in tables.items()}
        print(
            f"vectorised n=1..4 over {len(ids):,} tokens: {vec_s:.2f}s ({len(ids) / vec_s / 1e6:.2f}M tokens/s); distinct {distinct}"
        )

        def prefix(n_tokens):
            k = int(np.searchsorted(np.cumsum(lengths), n_tokens)) + 1
            return ids[: int(lengths[:k].sum())], lengths[:k]

        check_ids, check_len = prefix(1_000_000)
        ref = counter_counts(check_ids, check_len)
        for n, t in vectorised_counts(check_ids, check_len, vocab).items():
            rows = t.ids(np.arange(t.distinct))
            got = dict(zip(map(tuple, rows.tolist()), t.counts.tolist(), strict=True))
            assert got == dict(ref[n]), f"{n}-gram counts differ from Counter"
        del ref, got

        sub_ids, sub_len = prefix(args.counter_tokens) if args.counter_tokens else (ids, lengths)
        t0 = time.perf_counter()
        ref = counter_counts(sub_ids, sub_len)
        cnt_s = time.perf_counter() - t0
        del ref
        counter_s = cnt_s * len(ids) / len(sub_ids)
        if len(sub_ids) < len(ids):
            print(
                f"collections.Counter n=1..4 over {len(sub_ids):,} tokens: {cnt_s:.2f}s "
                f"-> extrapolated linearly to {len(ids):,} tokens: {counter_s:.1f}s"
            )
        else:
            print(f"collections.Counter n=1..4 over {len(ids):,} tokens: {cnt_s:.2f}s")
        print(
            f"speed-up vectorised / Counter: {counter_s / vec_s:.1f}x (goal >= 10x); "
            f"counts equal on a {len(check_ids):,}-token prefix"
        )

        scores = work / "scores"
        write_scores(ids, lengths, scores, work / "tok", tokenizer_hash(tok))
        base = run_child("--child-imports")
        full = run_child("--child-report", str(work / "R"), str(scores))
        print(
            f"full report on {full['units']:,} tokens (one scores directory): {full['seconds']:.1f}s "
            f"(reading + statistics {full['build_seconds']:.1f}s, rest: imports, JSON, HTML, plots) "
            f"(goal <= 60 s); peak RSS {full['peak_rss_mb']:.0f} MB (imports alone {base['peak_rss_mb']:.0f} MB)"
        )

        plain = work / "scores-no-tokenizer"
        plain.mkdir()
        for f in scores.glob("*.parquet"):
            (plain / f.name).symlink_to(f)
        manifest_path(plain).parent.mkdir()
        manifest_path(plain).write_text(json.dumps({"command": "score", "options": {}}))
        hashed = run_child("--child-report", str(work / "Rh"), str(plain))
        print(
            f"full report without a tokenizer (32-bit ids, 3/4-grams hashed): {hashed['seconds']:.1f}s, "
            f"peak RSS {hashed['peak_rss_mb']:.0f} MB"
        )

        q = len(lengths) // 4
        qi = ids[: int(lengths[:q].sum())]
        write_scores(qi, lengths[:q], work / "quarter", work / "tok", tokenizer_hash(tok), shards=1)
        write_scores(
            np.tile(qi, 4),
            np.tile(lengths[:q], 4),
            work / "quarter4",
            work / "tok",
            tokenizer_hash(tok),
            shards=4,
        )
        r1 = run_child("--child-report", str(work / "R1"), str(work / "quarter"))
        r4 = run_child("--child-report", str(work / "R4"), str(work / "quarter4"))
        print(
            f"peak RSS, same distinct n-grams: {r1['units']:,} tokens {r1['peak_rss_mb']:.0f} MB "
            f"vs {r4['units']:,} tokens (4x repeated) {r4['peak_rss_mb']:.0f} MB "
            f"({r4['seconds']:.1f}s vs {r1['seconds']:.1f}s)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
