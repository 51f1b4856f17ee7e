"""Plots, HTML and the terminal summary of the experiments."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from tokedit.analysis.html import new_figure
from tokedit.analysis.report import json_safe

RECURSIVE_PLOTS = {
    "held_out_ppl": ("held-out perplexity (real text)", lambda r: r["held_out_ppl"]),
    "probe_accuracy": ("word-swap probe accuracy (tokedit)", lambda r: r["probe_accuracy"]),
    "kt_accuracy": ("knowledge test accuracy (ForTIFAI-style)", lambda r: r["kt_accuracy"]),
    "unigram_kl": (
        "tokedit: unigram KL(real || generated), bits",
        lambda r: r["generated"]["unigram_kl"],
    ),
    "kl_synthetic_to_real_nats": (
        "ForTIFAI: KL(generated || real), nats",
        lambda r: r["generated"]["kl_synthetic_to_real_nats"],
    ),
    "distinct_2": ("distinct-2 of generated data", lambda r: r["generated"]["distinct_2"]),
}


def plot_recursive(result: dict, out: Path) -> dict[str, str]:
    files = {}
    for key, (title, get) in RECURSIVE_PLOTS.items():
        fig, (ax,) = new_figure(5, 3.5)
        for name, rows in result["arms"].items():
            ax.plot([r["generation"] for r in rows], [get(r) for r in rows], marker="o", label=name)
        ax.set_xlabel("generation")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        files[key] = f"recursive_{key}.png"
        fig.savefig(out / files[key], dpi=100)
    names = list(result["arms"])
    fig, axes = new_figure(4 * len(names), 3.2, len(names))
    for ax, name in zip(axes, names, strict=True):
        for r in result["arms"][name]:
            shares = [s or 0.0 for s in r["generated"]["hist10"]["shares"]]
            ax.plot(np.arange(0.05, 1, 0.1), shares, marker=".", label=f"gen {r['generation']}")
        ax.set_yscale("symlog", linthresh=1e-3)  # the high-probability bins are small
        ax.set_ylabel("share of tokens")
        ax.set_title(f"{name}: P(token) of generated data")
        ax.set_xlabel("probability bin")
        ax.legend(fontsize=7)
    fig.tight_layout()
    files["hist10"] = "recursive_hist10.png"
    fig.savefig(out / files["hist10"], dpi=100)
    return files


def _html(title: str, intro: str, table: str, images: dict[str, str]) -> str:
    imgs = "".join(f'<img src="{f}" alt="{k}">' for k, f in images.items())
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>"
        "body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:right}"
        "img{margin:4px;border:1px solid #ccc}</style></head><body>"
        f"<h1>{title}</h1><p>{intro}</p>{table}<div>{imgs}</div></body></html>"
    )


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4g}"


def write_recursive_report(result: dict, out: Path) -> None:
    result["plots"] = plot_recursive(result, out)
    head = "<tr><th>arm</th><th>gen</th><th>held-out ppl</th><th>probe acc</th><th>KT acc</th><th>KL(real||gen) bits</th><th>KL(gen||real) nats</th><th>distinct-2</th><th>P&gt;0.9 share</th></tr>"
    body = "".join(
        f"<tr><td>{name}</td><td>{r['generation']}</td><td>{_fmt(r['held_out_ppl'])}</td>"
        f"<td>{_fmt(r['probe_accuracy'])}</td><td>{_fmt(r['kt_accuracy'])}</td>"
        f"<td>{_fmt(r['generated']['unigram_kl'])}</td>"
        f"<td>{_fmt(r['generated']['kl_synthetic_to_real_nats'])}</td>"
        f"<td>{_fmt(r['generated']['distinct_2'])}</td><td>{_fmt(r['generated']['hist10']['shares'][-1])}</td></tr>"
        for name, rows in result["arms"].items()
        for r in rows
    )
    intro = (
        f"Recursive training: base {result['preset']['base']} "
        f"({result['parameters'] / 1e6:.2f}M parameters), data by {result['preset']['generation']}, "
        f"seed {result['seed']}. Time to failure (first generation past each line "
        f"{result['failure_lines']}): {result['time_to_failure']}. "
        "Small-scale results; see docs/training.md for definitions."
    )
    (out / "recursive.json").write_text(json.dumps(json_safe(result), indent=2) + "\n")
    (out / "recursive.html").write_text(
        _html("tokedit: recursive training", intro, f"<table>{head}{body}</table>", result["plots"])
    )


def plot_mixture(result: dict, out: Path) -> dict[str, str]:
    names = list(result["arms"])
    fig, (ax,) = new_figure(6, 3.5)
    x = np.arange(len(names))
    for k, (key, label) in enumerate(
        [("held_out_ppl", "held-out (same plays)"), ("other_corpus_ppl", "other corpus")]
    ):
        ax.bar(x + 0.4 * k - 0.2, [result["arms"][n][key] for n in names], 0.4, label=label)
    ax.set_xticks(x, names)
    ax.legend()
    ax.set_ylabel("perplexity (real text)")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(out / "mixture_ppl.png", dpi=100)
    return {"held_out_ppl": "mixture_ppl.png"}


def write_mixture_report(result: dict, out: Path) -> None:
    result["plots"] = plot_mixture(result, out)
    head = "<tr><th>arm</th><th>synthetic share</th><th>held-out ppl</th><th>other-corpus ppl</th><th>train tokens</th><th>unigram KL</th><th>distinct-2</th></tr>"
    body = "".join(
        f"<tr><td>{n}</td><td>{_fmt(a['synthetic_share'])}</td><td>{_fmt(a['held_out_ppl'])}</td>"
        f"<td>{_fmt(a['other_corpus_ppl'])}</td><td>{a['train']['train_tokens']}</td><td>{_fmt(a['data']['unigram_kl'])}</td>"
        f"<td>{_fmt(a['data']['distinct_2'])}</td></tr>"
        for n, a in result["arms"].items()
    )
    intro = (
        f"Human vs synthetic mixtures vs ToEdit-edited data; prior held-out ppl "
        f"{_fmt(result['prior']['held_out_ppl'])}; edit threshold p = {result['edit']['p']}. "
        "Small-scale results; see docs/training.md."
    )
    (out / "mixture.json").write_text(json.dumps(json_safe(result), indent=2) + "\n")
    (out / "mixture.html").write_text(
        _html(
            "tokedit: synthetic-data mixtures",
            intro,
            f"<table>{head}{body}</table>",
            result["plots"],
        )
    )


def format_summary(result: dict) -> str:
    """A Markdown table of a recursive or mixture result (what the CLI prints)."""
    if result["experiment"] == "recursive":
        lines = [
            "| arm | gen | held-out ppl | probe acc | KT acc | KL(real‖gen) bits (tokedit) "
            "| KL(gen‖real) nats (ForTIFAI) | distinct-2 | P>0.9 share | TCE masked |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, rows in result["arms"].items():
            for r in rows:
                g = r["generated"]
                lines.append(
                    f"| {name} | {r['generation']} | {_fmt(r['held_out_ppl'])} | "
                    f"{_fmt(r['probe_accuracy'])} | {_fmt(r['kt_accuracy'])} | "
                    f"{_fmt(g['unigram_kl'])} | {_fmt(g['kl_synthetic_to_real_nats'])} | "
                    f"{_fmt(g['distinct_2'])} | {_fmt(g['hist10']['shares'][-1])} | "
                    f"{_fmt(r['train']['tce_masked_share_last'])} |"
                )
        lines.append("")
        lines.append(f"time to failure {result['failure_lines']}: {result['time_to_failure']}")
        return "\n".join(lines)
    lines = [
        "| arm | synthetic share | held-out ppl | other-corpus ppl | train tokens "
        "| unigram KL (bits) | distinct-2 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, a in result["arms"].items():
        lines.append(
            f"| {name} | {_fmt(a['synthetic_share'])} | {_fmt(a['held_out_ppl'])} | "
            f"{_fmt(a['other_corpus_ppl'])} | {a['train']['train_tokens']} | {_fmt(a['data']['unigram_kl'])} | "
            f"{_fmt(a['data']['distinct_2'])} |"
        )
    return "\n".join(lines)
