"""Benchmark `tokedit score --engine ray` against `--engine local`, in one run, on one model.

Prints, on the same ~4M-parameter Llama-style model (preset "small", random weights: speed
does not depend on training) and the same Shakespeare documents split into shards:
  1. tokens/s of `--engine local` (one process, the shards one after the other);
  2. tokens/s of `--engine ray` on a local Ray instance (default pool: as many torch threads
     per actor as the local engine, one CPU left to the driver; optionally other pool sizes),
     the Ray start-up time reported apart;
  3. the ratio ray / local (goal on a 2-CPU machine: >= 0.8), the engines alternating
     `--repeats` times and the best run of each compared, and whether each Ray run wrote
     the local run's bytes (the default pool must; a pool with fewer threads per actor
     than the local engine may differ in the last bit of some log-probs);
  4. the same comparison for `tokedit edit --scores` (no model: reading, drawing, splicing
     and writing), from the local run's scores, and whether the bytes match;
  5. peak RSS of the Ray driver process and of the scoring actors (sampled) on a corpus
     and on the same corpus 8 x larger (goal: flat).

    .venv/bin/python benchmarks/ray.py [--docs 160] [--shards 4] [--max-length 512]
                                       [--skip-edit] [--skip-memory]
"""

from __future__ import annotations

import os
import sys

# This file is named ray.py: drop its own directory from the import path, or `import ray`
# would import this script instead of Ray.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from tokedit.demo import read_plays  # noqa: E402
from tokedit.editor.run import edit_dataset  # noqa: E402
from tokedit.engines.ray_engine import ray_session  # noqa: E402
from tokedit.io.texts import split_documents  # noqa: E402
from tokedit.scoring.options import ScoreOptions  # noqa: E402
from tokedit.scoring.run import score_dataset  # noqa: E402

_spec = importlib.util.spec_from_file_location("score_bench", Path(__file__).with_name("score.py"))
_score_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_score_bench)
make_model = _score_bench.make_model


def write_shards(out: Path, docs: list[str], n_shards: int, copies: int = 1) -> Path:
    out.mkdir(parents=True)
    for c in range(copies):
        for k in range(n_shards):
            rows = [{"text": t} for t in docs[k::n_shards]]
            pq.write_table(pa.Table.from_pylist(rows), out / f"part-{c:02d}-{k:02d}.parquet")
    return out


def pool_label(size: int | None) -> str:
    if size is None:
        return "--engine ray (default pool)"
    return f"--engine ray ({size} actor{'s' if size > 1 else ''})"


def outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.parquet"))}


MEMORY_PROBE = r"""
import json, os, resource, sys, threading, time
import psutil
from tokedit.scoring.run import score_dataset
from tokedit.scoring.options import ScoreOptions

corpus, model, out = sys.argv[1:4]
peak = {"actor": 0}
stop = threading.Event()

def sample():
    me = psutil.Process(os.getpid())
    while not stop.is_set():
        for p in me.children(recursive=True):  # the Ray instance this driver started
            try:
                if p.cmdline() and p.cmdline()[0].startswith("ray::MapWorker"):
                    peak["actor"] = max(peak["actor"], p.memory_info().rss)
            except psutil.Error:
                pass
        time.sleep(0.1)

threading.Thread(target=sample, daemon=True).start()
s = score_dataset(corpus, out, model=model, options=ScoreOptions(max_length=256, overlap=64),
                  progress=False, engine="ray")
stop.set()
print(json.dumps({
    "driver_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "actor_mb": peak["actor"] / 2**20,
    "tokens": s.run.tokens,
}))
"""


def memory_probe(corpus: Path, model: Path, out: Path) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(corpus), str(model), str(out)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--docs", type=int, default=160, help="documents for the throughput part")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument(
        "--pool-sizes",
        default="",
        help="extra --ray-actors values to time, e.g. 2 (comma-separated)",
    )
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs of each engine")
    ap.add_argument("--skip-edit", action="store_true", help="time only `score`")
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    docs = [d for text in read_plays().values() for d in split_documents(text)]
    rng = np.random.default_rng(0)
    pick = sorted(rng.choice(len(docs), size=min(args.docs, len(docs)), replace=False))
    sample = [docs[i] for i in pick]

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = make_model(docs, work, "small", 4096)
        corpus = write_shards(work / "corpus", sample, args.shards)
        opts = ScoreOptions(
            max_length=args.max_length, overlap=args.max_length // 8, batch_tokens=args.batch_tokens
        )
        print(
            f"corpus: {len(sample)} documents, {sum(map(len, sample)) / 1e6:.2f} M chars in {args.shards} shards; "
            f"{os.cpu_count()} CPUs; torch threads {torch.get_num_threads()}"
        )

        sizes = [None, *[int(x) for x in args.pool_sizes.split(",") if x.strip()]]
        rates: dict[str, list[float]] = {"local": [], **{pool_label(n): [] for n in sizes}}
        differ: set[str] = set()
        edit_rates: dict[str, list[float]] = {"local": [], "ray": []}
        edit_differ = False
        # Engines alternate, `--repeats` times; the best of each is compared, which is the
        # fairest reading on a machine whose load changes during the run.
        for rep in range(args.repeats):
            local = score_dataset(
                str(corpus), str(work / f"local-{rep}"), model=str(model), options=opts,
                progress=False,
            )  # fmt: skip
            rates["local"].append(local.tokens_per_s)
            if not args.skip_edit:
                edited = edit_dataset(
                    str(corpus), str(work / f"edit-local-{rep}"),
                    scores_dir=str(work / f"local-{rep}"), progress=False,
                )  # fmt: skip
                edit_rates["local"].append(edited.tokens_per_s)
            t0 = time.perf_counter()
            with ray_session(None):
                print(
                    f"  repeat {rep + 1}: local Ray instance started in {time.perf_counter() - t0:.1f} s (not in the rates)"
                )
                for size in sizes:
                    out = work / f"ray-{size or 'default'}-{rep}"
                    s = score_dataset(
                        str(corpus), str(out), model=str(model), options=opts,
                        progress=False, engine="ray", ray_actors=size,
                    )  # fmt: skip
                    if outputs(out) != outputs(work / f"local-{rep}"):
                        differ.add(pool_label(size))
                    rates[pool_label(size)].append(s.tokens_per_s)
                if not args.skip_edit:
                    out = work / f"edit-ray-{rep}"
                    edited = edit_dataset(
                        str(corpus), str(out), scores_dir=str(work / f"local-{rep}"),
                        progress=False, engine="ray",
                    )  # fmt: skip
                    edit_rates["ray"].append(edited.tokens_per_s)
                    edit_differ |= outputs(out) != outputs(work / f"edit-local-{rep}")
        tokens = local.run.tokens
        print(
            f"{tokens} tokens per run; tokens/s end to end (model loading included), best of {args.repeats}:"
        )
        best_local = max(rates["local"])
        for label, values in rates.items():
            runs = ", ".join(f"{v:.0f}" for v in values)
            ratio = (
                ""
                if label == "local"
                else f"   {max(values) / best_local:.2f} x local (goal >= 0.8)"
            )
            print(f"  {label:28s}{max(values):9.0f}   (runs: {runs}){ratio}")
        for label, values in rates.items():
            if label != "local":
                pairs = ", ".join(
                    f"{r / lo:.2f}" for r, lo in zip(values, rates["local"], strict=True)
                )
                print(f"  {label} / local, repeat by repeat: {pairs}")
        for label in rates:
            if label != "local":
                same = (
                    "DIFFERENT (see docs/scaling.md: thread counts)"
                    if label in differ
                    else "identical"
                )
                print(f"  output bytes of {label} vs local: {same}")
        if not args.skip_edit:
            pairs = ", ".join(
                f"{r / lo:.2f}"
                for r, lo in zip(edit_rates["ray"], edit_rates["local"], strict=True)
            )
            print(
                "edit --scores, tokens/s (no model; reading, drawing, splicing, writing): "
                f"local {', '.join(f'{v:.0f}' for v in edit_rates['local'])}; "
                f"ray {', '.join(f'{v:.0f}' for v in edit_rates['ray'])}; "
                f"ray / local per repeat: {pairs}; bytes "
                + ("DIFFERENT" if edit_differ else "identical")
            )

        if not args.skip_memory:
            tiny = make_model(docs, work, "tiny", 512)
            base = write_shards(work / "mem1", docs[: len(docs) // 8], 2)
            big = work / "mem8"
            big.mkdir()
            for k in range(8):
                for p in base.glob("*.parquet"):
                    shutil.copy(p, big / f"copy{k}-{p.name}")
            m1 = memory_probe(base, tiny, work / "o1")
            m8 = memory_probe(big, tiny, work / "o8")
            for key, name in (("driver_mb", "driver"), ("actor_mb", "actor (sampled)")):
                print(
                    f"peak RSS {name}: {m1[key]:.0f} MB on {m1['tokens']} tokens, {m8[key]:.0f} MB "
                    f"on {m8['tokens']} tokens ({100 * (m8[key] / m1[key] - 1):+.1f} %; goal flat)"
                )


if __name__ == "__main__":
    main()
