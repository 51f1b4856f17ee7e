"""``tokedit experiment summary``: one experiment run with several seeds, read back from the
runs' result files (``recursive.json`` / ``mixture.json``) and reduced to mean, sample
standard deviation and the per-seed values, plus the paired differences of each arm against
CE seed by seed (the comparison a small-scale result rests on) and the time to failure of
each seed. Pure functions on the result dictionaries; the CLI reads and prints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from tokedit.errors import InputError

RESULT_FILES = ("recursive.json", "mixture.json")

# (key, column title, reader of one recursive row): the columns `experiment recursive` prints
RECURSIVE_METRICS = (
    ("held_out_ppl", "held-out ppl", lambda r: r["held_out_ppl"]),
    ("kt_accuracy", "KT acc", lambda r: r["kt_accuracy"]),
    ("probe_accuracy", "probe acc", lambda r: r["probe_accuracy"]),
    (
        "kl_synthetic_to_real_nats",
        "KL(gen‖real) nats (ForTIFAI)",
        lambda r: r["generated"]["kl_synthetic_to_real_nats"],
    ),
    ("unigram_kl", "KL(real‖gen) bits (tokedit)", lambda r: r["generated"]["unigram_kl"]),
    ("distinct_2", "distinct-2 of gen", lambda r: r["generated"]["distinct_2"]),
    ("p_above_0.9", "P>0.9 share of gen", lambda r: r["generated"]["hist10"]["shares"][-1]),
    ("tce_masked_share", "TCE masked", lambda r: r["train"]["tce_masked_share_last"]),
)
MIXTURE_METRICS = (
    ("held_out_ppl", "held-out ppl", lambda a: a["held_out_ppl"]),
    ("other_corpus_ppl", "other-corpus ppl", lambda a: a["other_corpus_ppl"]),
    ("unigram_kl", "unigram KL (bits)", lambda a: a["data"]["unigram_kl"]),
    ("distinct_2", "distinct-2", lambda a: a["data"]["distinct_2"]),
)
# the paired comparison against CE: lower is better for all three but the knowledge test
PAIRED = ("held_out_ppl", "kt_accuracy", "kl_synthetic_to_real_nats")


def read_result(run_dir: str | Path) -> dict:
    """The result file of one finished experiment run directory."""
    run = Path(run_dir)
    for name in RESULT_FILES:
        if (run / name).is_file():
            try:
                return json.loads((run / name).read_text())
            except json.JSONDecodeError as e:
                raise InputError(
                    f"{run / name}: not valid JSON (line {e.lineno}): {e.msg}",
                    remedy="rerun the experiment into this directory to rewrite its result",
                ) from e
    raise InputError(
        f"{run}: no {' or '.join(RESULT_FILES)} here",
        remedy="pass the output directories of finished recursive or mixture experiments",
    )


def check_comparable(results: list[dict], names: list[str]) -> None:
    """One experiment, one preset and one set of arms, each seed once: otherwise the spread
    would mix different experiments."""
    first, where = results[0], names[0]
    for result, name in zip(results[1:], names[1:], strict=True):
        if result["experiment"] != first["experiment"]:
            raise InputError(
                f"{name} is a {result['experiment']} run, {where} a {first['experiment']} run",
                remedy="summarize runs of one experiment at a time",
            )
        differ = sorted(
            k
            for k in first["preset"].keys() | result["preset"].keys()
            if first["preset"].get(k) != result["preset"].get(k)
        )
        if differ:
            raise InputError(
                f"{name} and {where} ran with different settings: {', '.join(differ)}",
                remedy="summarize runs of one preset with the same overrides, seeds apart",
            )
        if list(result["arms"]) != list(first["arms"]):
            raise InputError(
                f"{name} has arms {list(result['arms'])}, {where} has {list(first['arms'])}",
                remedy="summarize runs with the same arms (the same TCE gammas, ToEdit in all or none)",
            )
    seeds = [r["seed"] for r in results]
    for seed in sorted({s for s in seeds if seeds.count(s) > 1}):
        runs = [n for n, s in zip(names, seeds, strict=True) if s == seed]
        raise InputError(
            f"seed {seed} appears more than once: {', '.join(runs)}",
            remedy="pass each seed's run once",
        )


def spread(values: list) -> dict:
    """Mean and sample standard deviation (ddof 1; None below two values) of the finite
    values, with the values themselves in seed order (None where a run had none)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    mean = float(np.mean(finite)) if finite else None
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else None
    return {"mean": mean, "std": std, "n": len(finite), "values": values}


def summarize(results: list[dict], names: list[str]) -> dict:
    """Across-seed summary of runs of one experiment (see the module docstring)."""
    check_comparable(results, names)
    order = sorted(range(len(results)), key=lambda i: results[i]["seed"])
    results, names = [results[i] for i in order], [names[i] for i in order]
    summary = {
        "experiment": results[0]["experiment"],
        "seeds": [r["seed"] for r in results],
        "runs": names,
        "preset": results[0]["preset"],
        "std": "sample standard deviation over seeds (ddof 1)",
        "arms": {},
    }
    if summary["experiment"] == "mixture":
        for arm in results[0]["arms"]:
            summary["arms"][arm] = {
                key: spread([get(r["arms"][arm]) for r in results])
                for key, _, get in MIXTURE_METRICS
            }
        return summary
    for arm, rows in results[0]["arms"].items():
        summary["arms"][arm] = [
            {
                "generation": g,
                **{
                    key: spread([get(r["arms"][arm][g]) for r in results])
                    for key, _, get in RECURSIVE_METRICS
                },
            }
            for g in range(len(rows))
        ]
    summary["paired_vs_ce"] = {
        arm: [
            {
                "generation": g,
                **{
                    key: spread(
                        [
                            _get(key)(r["arms"][arm][g]) - _get(key)(r["arms"]["ce"][g])
                            for r in results
                        ]
                    )
                    for key in PAIRED
                },
            }
            for g in range(len(rows))
        ]
        for arm, rows in results[0]["arms"].items()
        if arm != "ce" and "ce" in results[0]["arms"]
    }
    summary["failure_lines"] = results[0]["failure_lines"]
    summary["time_to_failure"] = {
        arm: {
            metric: [r["time_to_failure"][arm][metric] for r in results]
            for metric in results[0]["time_to_failure"][arm]
        }
        for arm in results[0]["arms"]
    }
    return summary


def _get(key: str):
    return next(get for k, _, get in RECURSIVE_METRICS if k == key)


def _cell(s: dict) -> str:
    if s["mean"] is None:
        return ""
    mean = 0.0 if abs(s["mean"]) < 1e-12 else s["mean"]  # a mean of +x and -x: print 0
    if s["std"] is None:
        return f"{mean:.4g}"
    return f"{mean:.4g} ± {s['std']:.2g}"


def _seeds_phrase(generations: list, seeds: list[int]) -> str:
    """ "generation 2 in seeds 0, 1; not crossed in seed 2" from per-seed values."""
    groups: dict = {}
    for g, seed in zip(generations, seeds, strict=True):
        groups.setdefault(g, []).append(str(seed))
    parts = []
    for g, members in sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        label = "not crossed" if g is None else f"generation {g}"
        parts.append(f"{label} in seed{'s' if len(members) > 1 else ''} {', '.join(members)}")
    return "; ".join(parts)


def format_seed_summary(summary: dict) -> str:
    """Markdown tables of :func:`summarize`'s result (what the CLI prints)."""
    seeds = summary["seeds"]
    lines = [
        f"{summary['experiment']}: seeds {', '.join(map(str, seeds))} (mean ± {summary['std']})",
        "",
    ]
    if summary["experiment"] == "mixture":
        lines += [
            "| arm | " + " | ".join(title for _, title, _ in MIXTURE_METRICS) + " |",
            "|---|" + "---|" * len(MIXTURE_METRICS),
        ]
        for arm, metrics in summary["arms"].items():
            cells = " | ".join(_cell(metrics[key]) for key, _, _ in MIXTURE_METRICS)
            lines.append(f"| {arm} | {cells} |")
        return "\n".join(lines)
    lines += [
        "| arm | gen | " + " | ".join(title for _, title, _ in RECURSIVE_METRICS) + " |",
        "|---|---|" + "---|" * len(RECURSIVE_METRICS),
    ]
    for arm, rows in summary["arms"].items():
        for row in rows:
            cells = " | ".join(_cell(row[key]) for key, _, _ in RECURSIVE_METRICS)
            lines.append(f"| {arm} | {row['generation']} | {cells} |")
    if summary["paired_vs_ce"]:
        lines += [
            "",
            "Paired differences, arm − CE of the same seed (values in seed order):",
            "",
            "| arm | gen | " + " | ".join(f"Δ {_title(key)}" for key in PAIRED) + " |",
            "|---|---|" + "---|" * len(PAIRED),
        ]
        for arm, rows in summary["paired_vs_ce"].items():
            for row in rows:
                cells = " | ".join(
                    f"{_cell(row[key])} ({', '.join(_signed(v) for v in row[key]['values'])})"
                    for key in PAIRED
                )
                lines.append(f"| {arm} | {row['generation']} | {cells} |")
    lines += [
        "",
        f"Time to failure (first generation past each line {summary['failure_lines']}):",
        "",
    ]
    for arm, metrics in summary["time_to_failure"].items():
        for metric, generations in metrics.items():
            lines.append(f"- {arm}, {metric}: {_seeds_phrase(generations, seeds)}")
    return "\n".join(lines)


def _title(key: str) -> str:
    return next(title for k, title, _ in RECURSIVE_METRICS if k == key)


def _signed(v) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:+.3g}"
