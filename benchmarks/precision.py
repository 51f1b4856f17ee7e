"""What bfloat16 and float16 do to the scores of a real prior, against float32, on CPU.

Scores the same Shakespeare documents with ``tokedit score --dtype float32 / bfloat16 /
float16`` (the real pipeline: tokenization, windows, packed batches, the hf backend), edits
each scores directory with the default preset (``up-revise``, p = 0.99, same seed), and
prints, for each reduced precision against float32:

- max and mean |delta log P| on the actual tokens;
- P > 0.99 decisions that flip (the tokens ToEdit would resample);
- edits that differ (a position edited in one run and not the other, or to another token).

    .venv/bin/python benchmarks/precision.py --model ~/.cache/tokedit/priors/gemma-3-270m \
        [--tokens 4096] [--max-length 512]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tokedit.demo import read_plays
from tokedit.editor.run import edit_dataset
from tokedit.io.texts import split_documents
from tokedit.scoring.options import ScoreOptions
from tokedit.scoring.run import score_dataset

DTYPES = ("float32", "bfloat16", "float16")
P = 0.99


def corpus(path: Path, n_tokens: int) -> int:
    """Documents of the plays, in order, until about ``n_tokens`` (4 characters a token)."""
    docs, chars = [], 0
    for text in read_plays().values():
        for d in split_documents(text):
            docs.append({"id": f"d{len(docs)}", "text": d})
            chars += len(d)
            if chars >= 4 * n_tokens:
                break
        if chars >= 4 * n_tokens:
            break
    path.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(docs), path / "docs.parquet")
    return len(docs)


def edits(path: Path) -> set[tuple]:
    t = pq.read_table(path / "docs.parquet", columns=["id", "tokedit_edits"]).to_pylist()
    return {(row["id"], e["pos"], e["new_id"]) for row in t for e in (row["tokedit_edits"] or [])}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", required=True, help="a prior (directory or .gguf)")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--max-length", type=int, default=512)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        n_docs = corpus(work / "data", args.tokens)
        lp, above, edited, seconds = {}, {}, {}, {}
        for dtype in DTYPES:
            t0 = time.perf_counter()
            score_dataset(
                str(work / "data"),
                str(work / dtype),
                model=args.model,
                options=ScoreOptions(max_length=args.max_length, top_k=8),
                device="cpu",
                dtype=dtype,
                id_column="id",
                progress=False,
            )
            seconds[dtype] = time.perf_counter() - t0
            col = pq.read_table(work / dtype / "docs.parquet", columns=["logprob"])["logprob"]
            values = col.combine_chunks().flatten()
            lp[dtype] = np.asarray(values.fill_null(np.nan), dtype=np.float64)
            above[dtype] = lp[dtype] > np.log(P)
            edit_dataset(
                str(work / "data"),
                str(work / f"edit-{dtype}"),
                scores_dir=str(work / dtype),
                id_column="id",
                progress=False,
            )
            edited[dtype] = edits(next((work / f"edit-{dtype}").rglob("docs.parquet")).parent)
        ref = "float32"
        n = int(np.isfinite(lp[ref]).sum())
        print(
            f"model {args.model}; {n_docs} documents, {n} scored tokens, max length {args.max_length}"
        )
        print(
            f"float32: {int(above[ref].sum())} tokens with P > {P} ({above[ref].mean():.2%}), "
            f"{len(edited[ref])} edits (up-revise); scored in {seconds[ref]:.0f} s"
        )
        print(
            "| dtype | max abs dlogP | mean abs dlogP | P > 0.99 flips | edits differing | score time |"
        )
        print("|---|---|---|---|---|---|")
        for dtype in DTYPES[1:]:
            d = np.abs(lp[dtype] - lp[ref])
            finite = np.isfinite(d)
            nonfinite = int((~np.isfinite(lp[dtype]) & np.isfinite(lp[ref])).sum())
            flips = int((above[dtype] != above[ref]).sum())
            differ = len(edited[dtype] ^ edited[ref])
            if not finite.any():
                print(
                    f"| {dtype} | n/a | n/a | n/a | n/a | {seconds[dtype]:.0f} s; all {n} log-probs non-finite |"
                )
                continue
            print(
                f"| {dtype} | {d[finite].max():.3f} | {d[finite].mean():.4f} "
                f"| {flips} ({flips / n:.2%}) | {differ} of {len(edited[ref])} "
                f"| {seconds[dtype]:.0f} s{f'; {nonfinite} non-finite log-probs' if nonfinite else ''} |"
            )


if __name__ == "__main__":
    main()
