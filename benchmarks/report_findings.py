"""Human vs fully generated vs ToEdit-edited text on the demo corpus, measured by `tokedit report`.

Reproduces the findings quoted for issue 4 (they are measurements, not asserted thresholds):
  1. the human corpus: Shakespeare plays (default: the 6 plays of the test fixtures);
  2. a tiny prior trained on it (the test fixtures' recipe: preset "tiny", BPE-512, 300 steps);
  3. its scores, and the report's threshold suggestion for ``--target-edit-rate``;
  4. the edited corpus: ``tokedit edit`` from the scores at that p (default rule: top-k 8, T 1);
  5. two generated corpora: as many tokens as the human corpus, sampled from the prior in
     documents of 128 tokens, each prompted with the first 8 tokens of a human document:
     ``generated`` with temperature 1 over the full distribution (ancestral sampling), and
     ``generated-t0.7`` with temperature 0.7 and top-p 0.9 (a common decoding setting); each
     then scored by the same prior;
  6. ``tokedit report`` of human scores, both generated scores and the edited corpus
     (reference: human), printed as a table.

    .venv/bin/python benchmarks/report_findings.py [--out DIR] [--all-plays] [--target-edit-rate 0.1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

FIXTURE_PLAYS = ["hamlet", "macbeth", "tempest", "sonnets", "julius_caesar", "twelfth_night"]
PROMPT_TOKENS, DOC_TOKENS = 8, 128


def generate_corpus(
    model_dir: Path, human_scores: Path, out: Path, temperature: float, top_p: float, seed: int = 0
) -> int:
    """Sampled documents from the prior, prompted with the start of human documents."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    lists = [
        d
        for f in sorted(human_scores.glob("*.parquet"))
        for d in pq.read_table(f, columns=["token_ids"]).column("token_ids").to_pylist()
    ]
    docs = [d for d in lists if len(d) >= PROMPT_TOKENS]
    target = sum(len(d) for d in lists)
    n_docs = -(-target // DOC_TOKENS)
    prompts = torch.tensor([docs[i % len(docs)][:PROMPT_TOKENS] for i in range(n_docs)])
    bos = torch.full((n_docs, 1), tok.bos_token_id)
    prompts = torch.cat([bos, prompts], dim=1)
    torch.manual_seed(seed)
    texts = []
    with torch.inference_mode():
        for a in range(0, n_docs, 256):
            batch = prompts[a : a + 256]
            gen = model.generate(
                batch,
                attention_mask=torch.ones_like(batch),
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=top_p,
                max_new_tokens=DOC_TOKENS - PROMPT_TOKENS,
                min_new_tokens=DOC_TOKENS - PROMPT_TOKENS,
                pad_token_id=tok.pad_token_id,
            )
            texts += tok.batch_decode(gen[:, 1:], skip_special_tokens=True)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table({"id": [f"gen/{i:05d}" for i in range(len(texts))], "text": texts}),
        out / "generated.parquet",
    )
    return len(texts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/tokedit-report-findings")
    ap.add_argument("--all-plays", action="store_true")
    ap.add_argument("--target-edit-rate", type=float, default=0.1)
    args = ap.parse_args()

    from tokedit.analysis.report import (
        ReportOptions,
        build_report,
        format_report_summary,
        run_report,
    )
    from tokedit.demo import read_plays, write_demo_corpus
    from tokedit.editor import EditOptions, edit_dataset
    from tokedit.scoring.options import ScoreOptions
    from tokedit.scoring.run import score_dataset
    from tokedit.training.trainer import TrainConfig, train_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plays = read_plays()
    if not args.all_plays:
        plays = {k: plays[k] for k in FIXTURE_PLAYS}
    human = out / "human"
    if not human.exists():
        write_demo_corpus(human, plays=plays, n_shards=4)
    prior = out / "prior"
    if not (prior / "config.json").exists():
        config = TrainConfig(
            preset="tiny", block_size=128, batch_size=16, max_steps=300, learning_rate=3e-3, seed=0
        )
        train_model(
            str(human),
            str(prior),
            config=config,
            from_scratch=True,
            progress=False,
            log=lambda m: None,
        )
    sopts = ScoreOptions(max_length=256, overlap=64, batch_tokens=8192, candidates_min_p=0.05)
    hs = out / "human-scores"
    score_dataset(
        str(human), str(hs), model=str(prior), options=sopts, id_column="id", progress=False
    )

    rate = args.target_edit_rate
    sug = build_report([str(hs)], ReportOptions(target_edit_rates=(rate,)))["corpora"][0][
        "thresholds"
    ][0]
    p = round(max(sug["p"], sopts.candidates_min_p), 4)
    print(
        f"threshold suggestion for target edit rate {rate}: p = {sug['p']:.4f} (editing at p = {p})"
    )
    edited = out / "edited"
    if not edited.exists():
        edit_dataset(
            str(human),
            str(edited),
            scores_dir=str(hs),
            options=EditOptions(ps=(p,)),
            progress=False,
        )

    variants = {"generated": (1.0, 1.0), "generated-t0.7": (0.7, 0.9)}
    gen_scores = []
    for name, (temperature, top_p) in variants.items():
        generated = out / name
        if not generated.exists():
            n = generate_corpus(prior, hs, generated, temperature, top_p)
            print(f"{name}: {n} documents of {DOC_TOKENS} tokens (T={temperature}, top-p={top_p})")
        gs = out / f"{name}-scores"
        score_dataset(
            str(generated), str(gs), model=str(prior), options=sopts, id_column="id", progress=False
        )
        gen_scores.append(str(gs))

    result = run_report(
        [str(hs), *gen_scores, str(edited)],
        str(out / "report"),
        ReportOptions(labels=["human", *variants, "edited"], target_edit_rates=(rate,)),
    )
    r = result["report"]
    print(format_report_summary(result))
    rows = []
    for c in r["corpora"]:
        row = {"corpus": c["label"], "tokens": c["units"]}
        for n in ("1", "2", "3", "4"):
            row[f"distinct-{n}"] = round(c["ngrams"][n]["distinct_ratio"], 4)
        for n in ("2", "3", "4"):
            row[f"rare cov {n}"] = round(c["tail"][n]["rare_coverage"], 4)
            row[f"tail mass {n}"] = round(c["tail"][n]["tail_mass"], 4)
        for n in ("1", "2"):
            row[f"JS {n}"] = round(c["tail"][n]["js"], 4)
            row[f"KL(ref||c) {n}"] = round(c["tail"][n]["kl_ref_to_corpus"], 4)
        if c["probability"]:
            row["P>0.9"] = round(c["probability"]["share_above"]["0.9"], 5)
            row["token ppl"] = round(c["probability"]["token_perplexity"], 2)
            row["median doc ppl"] = round(c["perplexity"]["percentiles"]["50"], 2)
        if c["edits"]:
            row["edit above"] = round(c["edits"]["above_share"], 4)
            row["edit changed"] = round(c["edits"]["changed_share"], 4)
        rows.append(row)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    print("\n" + "\t".join(keys))
    for row in rows:
        print("\t".join(str(row.get(k, "")) for k in keys))
    (out / "findings.json").write_text(json.dumps(rows, indent=2))
    print(
        f"\n{time.perf_counter() - t0:.0f}s; report in {out / 'report'}; table in {out / 'findings.json'}"
    )


if __name__ == "__main__":
    main()
