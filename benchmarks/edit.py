"""Throughput of ``tokedit edit`` from scores vs a per-token Python loop, on the same scores.

The reference is how the ToEdit paper's code post-processes vLLM prompt log-probs: a Python
loop over every token of every document, with a dict {token id: log-prob} of candidates per
position, ``random.choices`` where P > p, then ``tokenizer.decode`` of the new ids. Its
inputs (lists and dicts, as vLLM returns them) are built before timing. The tokedit core is
timed from in-memory Arrow score tables to edited texts and provenance arrays
(``ScoreBatch.from_table`` + ``draw_batch`` + ``apply_draws``), one threshold at a time.
The end-to-end ``edit_dataset`` run (read, edit, write compressed shards) is timed too.

The process is pinned to one CPU core. Usage::

    python benchmarks/edit.py --input DATA --scores SCORES [--p 0.1,0.5,0.99]
    python benchmarks/edit.py            # builds the test-fixture corpus, prior and scores
                                         # once under $TOKEDIT_CACHE/bench-edit (~1-2 min)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from tokedit.io.manifest import read_manifest

FIXTURE_PLAYS = ["hamlet", "macbeth", "tempest", "sonnets", "julius_caesar", "twelfth_night"]


def pin_one_core() -> str:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if hasattr(os, "sched_setaffinity"):
        cpu = sorted(os.sched_getaffinity(0))[0]
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity)"


def build_fixture(root: Path) -> tuple[Path, Path]:
    """The tests' corpus (6 plays), tiny prior and scores (candidates_min_p=0.05), cached."""
    from tokedit.demo import read_plays, write_demo_corpus
    from tokedit.scoring.options import ScoreOptions
    from tokedit.scoring.run import score_dataset
    from tokedit.training.trainer import TrainConfig, train_model

    corpus, prior, scores = root / "corpus", root / "prior", root / "scores"
    if not corpus.is_dir():
        plays = read_plays()
        write_demo_corpus(corpus, plays={k: plays[k] for k in FIXTURE_PLAYS}, n_shards=4)
    if not (prior / "config.json").is_file():
        config = TrainConfig(
            preset="tiny",
            block_size=128,
            batch_size=16,
            max_steps=300,
            learning_rate=3e-3,
            seed=0,
        )
        train_model(str(corpus), str(prior), config=config, from_scratch=True, progress=False)
    if not (read_manifest(scores) or {}).get("totals"):
        score_dataset(
            str(corpus),
            str(scores),
            model=str(prior),
            options=ScoreOptions(max_length=256, overlap=64, candidates_min_p=0.05),
            id_column="id",
            progress=False,
        )
    return corpus, scores


def load(input_dir: Path, scores_dir: Path):
    from tokedit.io.read import iter_documents
    from tokedit.io.scores_dir import scores_rel
    from tokedit.io.shards import discover_shards

    manifest = read_manifest(scores_dir)
    opts = manifest["options"]
    tables, texts = [], []
    for shard in discover_shards(input_dir):
        tables.append(pq.read_table(scores_dir / scores_rel(shard)))
        t = []
        for docs in iter_documents(shard, opts["text_column"], opts["id_column"], 1 << 30):
            t += docs.texts
        texts.append(t)
    return opts, tables, texts


def reference_inputs(tables):
    """Per document: token ids, log-probs and a candidate dict per position (vLLM-style)."""
    docs = []
    for t in tables:
        for r in t.to_pylist():
            cands = [
                dict(zip(ids, lps, strict=True)) if ids else None
                for ids, lps in zip(r["topk_ids"], r["topk_logprobs"], strict=True)
            ]
            docs.append((r["id"], r["token_ids"], r["logprob"], cands))
    return docs


def reference_loop(docs, p: float, tokenizer, seed: int = 0) -> tuple[list[str], int]:
    """The per-token loop: resample where P > p from the candidate dict, then decode."""
    out, changed = [], 0
    for doc_id, token_ids, logprobs, cands in docs:
        rng = random.Random(f"{seed}:{doc_id}")
        new_ids = []
        for i, tid in enumerate(token_ids):
            lp = logprobs[i]
            if lp is not None and math.exp(lp) > p and cands[i]:
                ids = list(cands[i].keys())
                weights = [math.exp(v) for v in cands[i].values()]
                new = rng.choices(ids, weights=weights)[0]
                changed += new != tid
                new_ids.append(new)
            else:
                new_ids.append(tid)
        out.append(tokenizer.decode(new_ids))
    return out, changed


def core_edit(tables, texts, p: float, tokenizer_bits, seed: int = 0):
    from tokedit.editor.batch import ScoreBatch, apply_draws, draw_batch
    from tokedit.editor.rng import doc_keys
    from tokedit.editor.rules import EditRule

    renderer, banned = tokenizer_bits
    counts = {"above": 0, "changed": 0, "skipped": 0}
    for table, t in zip(tables, texts, strict=True):
        for a in range(0, table.num_rows, 512):  # the CLI's default batch of rows
            sb = ScoreBatch.from_table(table.slice(a, 512))
            draws = draw_batch(sb, doc_keys(seed, sb.ids), p, EditRule(), banned)
            e = apply_draws(sb, t[a : a + 512], draws, p, renderer)
            e.edits_array()
            counts["above"] += e.counts["above"]
            counts["changed"] += e.counts["changed"]
            counts["skipped"] += sum(e.counts["skipped"].values())
    return counts


def best_of(fn, repeat: int):
    best, result = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", type=Path, help="dataset directory that was scored")
    ap.add_argument("--scores", type=Path, help="its scores directory")
    ap.add_argument("--p", default="0.1,0.5,0.99", help="thresholds to time")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    pinned = pin_one_core()

    from tokedit.editor import EditOptions, edit_dataset
    from tokedit.editor.rules import banned_mask
    from tokedit.editor.splice import Renderer
    from tokedit.scoring.hf import load_tokenizer

    if args.scores is None or args.input is None:
        cache = Path(os.environ.get("TOKEDIT_CACHE", Path.home() / ".cache" / "tokedit"))
        args.input, args.scores = build_fixture(cache / "bench-edit")
    opts, tables, texts = load(args.input, args.scores)
    tokenizer = load_tokenizer(opts["model"], opts.get("revision"))
    tokens = sum(len(x) for t in tables for x in t.column("token_ids").to_pylist())
    docs = reference_inputs(tables)
    bits = (Renderer(tokenizer), banned_mask(tokenizer))
    print(
        f"scores {args.scores}: {len(docs)} documents, {tokens} tokens, "
        f"k={opts['top_k']}, candidates where P >= {opts['candidates_min_p']}; {pinned}"
    )
    convert_s, _ = best_of(lambda: reference_inputs(tables), args.repeat)
    print(
        f"building the loop's per-position dicts from the Arrow scores takes {convert_s:.2f}s: "
        "excluded from 'loop', included in 'loop+dicts'"
    )
    print(
        f"{'p':>6} {'above':>7} {'changed':>8} {'core tok/s':>12} {'loop tok/s':>11} "
        f"{'ratio':>6} {'loop+dicts tok/s':>17} {'ratio':>6}"
    )
    results = []
    for p in [float(x) for x in args.p.split(",")]:
        if p < opts["candidates_min_p"]:
            print(f"{p:>6}: skipped (below the scores' candidates_min_p)")
            continue
        core_s, counts = best_of(lambda p=p: core_edit(tables, texts, p, bits), args.repeat)
        loop_s, _ = best_of(lambda p=p: reference_loop(docs, p, tokenizer), args.repeat)
        row = {
            "p": p,
            "tokens": tokens,
            "above_share": counts["above"] / tokens,
            "changed_share": counts["changed"] / tokens,
            "core_tokens_per_s": tokens / core_s,
            "loop_tokens_per_s": tokens / loop_s,
            "ratio": loop_s / core_s,
            "loop_with_dicts_tokens_per_s": tokens / (loop_s + convert_s),
            "ratio_with_dicts": (loop_s + convert_s) / core_s,
        }
        results.append(row)
        print(
            f"{p:>6} {100 * row['above_share']:>6.2f}% {100 * row['changed_share']:>7.2f}% "
            f"{row['core_tokens_per_s']:>12,.0f} {row['loop_tokens_per_s']:>11,.0f} "
            f"{row['ratio']:>5.1f}x {row['loop_with_dicts_tokens_per_s']:>17,.0f} "
            f"{row['ratio_with_dicts']:>5.1f}x"
        )

    # End to end (read shards + scores, edit, write compressed shards), first threshold.
    p0 = results[0]["p"] if results else 0.99
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        edit_dataset(
            str(args.input),
            str(Path(tmp) / "out"),
            scores_dir=str(args.scores),
            options=EditOptions(ps=(p0,)),
            progress=False,
        )
        e2e = tokens / (time.perf_counter() - t0)
    print(f"end to end `tokedit edit` (p={p0}, I/O and compression included): {e2e:,.0f} tokens/s")
    if args.json:
        args.json.write_text(
            json.dumps({"rows": results, "end_to_end_tokens_per_s": e2e}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
