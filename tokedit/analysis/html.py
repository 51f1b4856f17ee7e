"""``report.html`` and its PNG plots, rendered from the report dict alone.

Plots go to ``plots/`` beside the HTML and are referenced by relative paths, so the folder
can be moved or archived as a whole. Figures are drawn on their own Agg canvas (no display),
without pyplot: importing tokedit never switches the caller's matplotlib backend.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from tokedit.io.write import atomic_path

PLOTS_DIR = "plots"
TOP_SHOWN = 10


def _fmt(v, pct: bool = False, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if pct:
            return f"{100 * v:.2f} %"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.{digits}g}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def new_figure(width: float, height: float, ncols: int = 1):
    """A figure on its own Agg canvas and its row of ``ncols`` axes (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, out: Path, name: str) -> str:
    rel = f"{PLOTS_DIR}/{name}.png"
    fig.tight_layout()
    with atomic_path(out / rel) as tmp:  # a kill mid-write leaves no partial plot
        fig.savefig(tmp, dpi=110, format="png")
    return rel


def _img(rel: str, alt: str) -> str:
    return f'<figure><img src="{html.escape(rel)}" alt="{html.escape(alt)}"></figure>'


# --- plots ------------------------------------------------------------------------------------


def plot_prob_hist10(corpora: list[dict], out: Path) -> str:
    fig, (ax,) = new_figure(8, 3.6)
    width = 0.8 / len(corpora)
    for j, c in enumerate(corpora):
        h = c["probability"]["hist10"]
        x = np.arange(len(h["shares"])) + j * width - 0.4 + width / 2
        ax.bar(x, [100 * (s or 0) for s in h["shares"]], width=width, label=c["label"])
    edges = corpora[0]["probability"]["hist10"]["edges"]
    ax.set_xticks(range(len(edges) - 1))
    ax.set_xticklabels(
        [f"{a:.1f}-{b:.1f}" for a, b in zip(edges[:-1], edges[1:], strict=True)], fontsize=8
    )
    ax.set_xlabel("P(token | prefix)")
    ax.set_ylabel("% of tokens")
    ax.set_title("Token probability, 10 equal bins")
    ax.legend()
    return _save(fig, out, "prob_hist10")


def plot_prob_fine(corpora: list[dict], out: Path) -> str:
    fig, (ax,) = new_figure(8, 3.6)
    for c in corpora:
        h = c["probability"]["hist_fine"]
        shares = np.array([s or 0 for s in h["shares"]])
        ax.stairs(np.maximum(shares, 1e-9), h["edges"], label=c["label"])
    ax.set_yscale("log")
    ax.set_xlabel("P(token | prefix)")
    ax.set_ylabel("share of tokens")
    ax.set_title(f"Token probability, {len(corpora[0]['probability']['hist_fine']['shares'])} bins")
    ax.legend()
    return _save(fig, out, "prob_fine")


def plot_perplexity(corpora: list[dict], out: Path) -> str:
    fig, (ax,) = new_figure(8, 3.6)
    for c in corpora:
        h = c["perplexity"]["log10_hist"]
        counts = np.asarray(h["counts"], dtype=float)
        ax.stairs(counts / max(counts.sum(), 1), h["edges"], label=c["label"])
    ax.set_xlabel("log10 perplexity of a document")
    ax.set_ylabel("share of documents")
    ax.set_title("Per-document perplexity")
    ax.legend()
    return _save(fig, out, "perplexity")


def plot_concentration(corpora: list[dict], max_n: int, out: Path) -> str:
    ns = list(range(1, max_n + 1))
    metrics = [
        ("distinct_ratio", "distinct-n (unique / total)"),
        ("entropy_bits", "entropy (bits)"),
        ("top1pct_share", "mass of the top 1 %"),
    ]
    fig, axes = new_figure(11, 3.4, ncols=3)
    for ax, (key, title) in zip(axes, metrics, strict=True):
        for c in corpora:
            ax.plot(ns, [c["ngrams"][str(n)][key] for n in ns], marker="o", label=c["label"])
        ax.set_xticks(ns)
        ax.set_xlabel("n")
        ax.set_title(title)
    axes[0].legend()
    return _save(fig, out, "ngram_concentration")


def plot_rank_frequency(corpora: list[dict], out: Path) -> str:
    fig, axes = new_figure(10, 3.6, ncols=2)
    for ax, n in zip(axes, (1, 2), strict=True):
        for c in corpora:
            rf = c["ngrams"][str(n)]["rank_frequency"]
            if rf["rank"]:
                ax.loglog(rf["rank"], rf["count"], label=c["label"])
        ax.set_xlabel("rank")
        ax.set_ylabel("count")
        ax.set_title(f"{n}-gram rank / frequency")
    axes[0].legend()
    return _save(fig, out, "rank_frequency")


def plot_tail(corpora: list[dict], max_n: int, out: Path) -> str:
    ns = list(range(1, max_n + 1))
    fig, axes = new_figure(10, 3.4, ncols=2)
    for ax, (key, title) in zip(
        axes,
        [
            ("rare_coverage", "share of the reference's rare n-grams present"),
            ("tail_mass", "mass on the reference's rare n-grams"),
        ],
        strict=True,
    ):
        for c in corpora:
            vals = [c["tail"][str(n)][key] for n in ns]
            ax.plot(ns, [np.nan if v is None else v for v in vals], marker="o", label=c["label"])
        ax.set_xticks(ns)
        ax.set_xlabel("n")
        ax.set_title(title, fontsize=10)
    axes[0].legend()
    return _save(fig, out, "tail_coverage")


def plot_edits(corpora: list[dict], out: Path) -> str:
    fig, (ax,) = new_figure(7, 3.4)
    keys = [("above_share", "above p"), ("changed_share", "changed"), ("skipped_share", "skipped")]
    width = 0.8 / len(corpora)
    for j, c in enumerate(corpora):
        e = c["edits"]
        x = np.arange(len(keys)) + j * width - 0.4 + width / 2
        ax.bar(x, [100 * (e[k] or 0) for k, _ in keys], width=width, label=c["label"])
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([t for _, t in keys])
    ax.set_ylabel("% of scored tokens")
    ax.set_title("Edits")
    ax.legend()
    return _save(fig, out, "edits")


# --- page -------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
thead th{background:#f2f2f2}
figure{margin:.5em 0}img{max-width:100%}
code{background:#f5f5f5;padding:0 .2em}.note{color:#555;font-size:.9em}
.tv{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:.85em;line-height:1.6;
border:1px solid #ddd;padding:.6em;margin:.3em 0 1.2em;overflow-wrap:anywhere}
.tv span[title]{border-radius:2px}.tv .hi{box-shadow:inset 0 -2px 0 #1d2c80}
.tv del{text-decoration:line-through 2px #b00}.tv ins{text-decoration:none;background:#9be89b;
outline:1px solid #2a7a2a;padding:0 1px}.tv .drop del{background:#ffd0d0}
.tv .np{background:#eee}.legend span{display:inline-block;padding:0 .5em;margin:0 1px 2px 0;
font-size:.8em;font-family:ui-monospace,monospace}.doc-head{font-size:.85em;color:#444}
"""


# --- token view -------------------------------------------------------------------------------

# one colour per 0.1 of P (RdYlBu, lightened): red = surprising, blue = confident
PROB_COLOURS = [
    "#d36772",
    "#ee8b7b",
    "#fab58e",
    "#fedaa7",
    "#fef5c6",
    "#f5fbe7",
    "#d9eef5",
    "#b5d7e8",
    "#95b7d7",
    "#7f8fc3",
]
HIGH_P = 0.99  # tokens above it (ToEdit's default threshold) are underlined
PROB_CSS = "".join(f".p{i}{{background:{c}}}" for i, c in enumerate(PROB_COLOURS))


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def prob_class(p: float | None) -> str:
    """CSS classes of a probability: its decile ``p0``..``p9``, ``hi`` above 0.99."""
    if p is None:
        return "np"
    cls = f"p{min(int(p * 10), 9)}"
    return cls + " hi" if p > HIGH_P else cls


def _visible(text: str) -> str:
    """An edit's text with its white space made visible (a struck-through newline is none)."""
    if text.strip() == "":
        return text.replace(" ", "·").replace("\t", "→").replace("\n", "↵\n")
    return text.replace("\n", "↵\n")


def _prob_title(p: float | None, tokens: int) -> str:
    if p is None:
        return "no probability (no scores, or no context)" if tokens else "not a token"
    more = f" ({tokens} tokens of one character; product)" if tokens > 1 else ""
    return f"P = {p:.4f}{more}"


def render_segment(seg: dict) -> str:
    """One segment of the token view as HTML (every text escaped)."""
    text, p, edit = seg["text"], seg["p"], seg["edit"]
    if edit is None:
        return f'<span class="{prob_class(p)}" title="{_esc(_prob_title(p, seg["tokens"]))}">{_esc(text)}</span>'
    head = _prob_title(p, 1)
    if edit["deleted"]:
        title = f"{head} · deleted {text!r} (token {edit['orig_id']})"
        return f'<span class="ed drop" title="{_esc(title)}"><del class="{prob_class(p)}">{_esc(_visible(text))}</del></span>'
    new = edit["new"]
    shown = new if new is not None else f"<token {edit['new_id']}>"
    title = f"{head} · {text!r} (token {edit['orig_id']}) → {shown!r} (token {edit['new_id']})"
    return (
        f'<span class="ed" title="{_esc(title)}"><del class="{prob_class(p)}">{_esc(_visible(text))}</del>'
        f"<ins>{_esc(_visible(shown))}</ins></span>"
    )


def _legend() -> str:
    swatches = "".join(
        f'<span class="p{i}" title="{i / 10:.1f} &lt;= P &lt; {(i + 1) / 10:.1f}">'
        f"{i / 10:.1f}–{(i + 1) / 10:.1f}</span>"
        for i in range(10)
    )
    return (
        f"<p class='legend'>P(token | prefix): {swatches} "
        f"<span class='p9 hi'>P &gt; {HIGH_P}</span> <span class='np'>no probability</span> "
        "edit: <span><del style='text-decoration:line-through 2px #b00'>original</del>"
        "<ins style='background:#9be89b'>replacement</ins></span> "
        "deleted: <span><del style='background:#ffd0d0;text-decoration:line-through 2px #b00'>token</del></span></p>"
    )


def token_view_section(report: dict) -> str:
    """The token-view section: a legend, then each corpus's example documents."""
    n = report["options"].get("examples", 0)
    if not n:
        return ""
    with_examples = [c for c in report["corpora"] if c.get("examples")]
    parts = ["<section id='token-view'><h2>Token view</h2>"]
    if not with_examples:
        parts.append(
            "<p class='note'>No example documents: the token view needs a scores or an edited "
            "directory.</p></section>"
        )
        return "".join(parts)
    parts.append(
        f"<p class='note'>Up to {n} documents per scores / edited corpus (scores: the first "
        "scored documents; edited: the documents with the most edits), at most "
        f"{report['options'].get('example_chars')} characters each. Each token is shaded by "
        "its prior probability (hover for the value). Edited corpora show the ORIGINAL text "
        "with every edit overlaid: the original token struck through, its replacement after "
        "it.</p>"
    )
    parts.append(_legend())
    for c in with_examples:
        parts.append(f"<h3>{_esc(c['label'])} <small>[{_esc(c['kind'])}]</small></h3>")
        for ex in c["examples"]:
            w = ex["window"]
            facts = [
                f"document <code>{_esc(str(ex['id']))}</code> (row {ex['row']})",
                f"characters {w['start']:,}–{w['end']:,} of {ex['chars']:,}",
                f"text: {_esc(str(ex['text_source']))}",
            ]
            if ex["tokens"] is not None:
                facts.append(f"{ex['tokens']:,} tokens")
            if ex["edits"] is not None:
                facts.append(f"{ex['edits_shown']} of {ex['edits']} edits shown")
            if ex["verified"] is False:
                facts.append("<b>edits do not reproduce the edited text</b>")
            if ex["scores"] is None:
                facts.append("no scores: unshaded")
            parts.append(f"<div class='doc-head'>{' · '.join(facts)}</div>")
            body = "".join(render_segment(s) for s in ex["segments"])
            parts.append(f"<div class='tv'>{body}</div>")
    parts.append("</section>")
    return "".join(parts)


def _preview_table(corpus: dict) -> str:
    """The edit preview of one scores corpus: per setting, shares above p, changed,
    redrawn as itself (expected) and deleted."""
    rows = []
    for r in corpus["edit_preview"]["settings"]:
        rows.append(
            [
                html.escape(r["setting"]),
                _fmt(r["p"]),
                _fmt(r["top_k"]),
                _fmt(r["temperature"]),
                _fmt(r["drop_below"]),
                _fmt(r["share_above"], pct=True),
                _fmt(r["expected_share_changed"], pct=True),
                _fmt(r["expected_share_as_itself"], pct=True),
                _fmt(r["share_deleted"], pct=True),
            ]
        )
    return (
        f"<h3>What an edit would do: {html.escape(corpus['label'])}</h3>"
        "<p class='note'>From the stored scores, without editing: shares of scored tokens; "
        "changed and redrawn-as-itself are expected values from the stored candidates' "
        "weights.</p>"
        + _table(
            [
                "setting",
                "p",
                "top-k",
                "T",
                "drop below",
                "above p",
                "changed",
                "as itself",
                "deleted",
            ],
            rows,
        )
    )


def render_html(report: dict, out: Path) -> Path:
    """Write the plots and ``report.html`` into ``out``; returns the HTML path."""
    out = Path(out)
    (out / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
    corpora = report["corpora"]
    labels = [html.escape(c["label"]) for c in corpora]
    max_n = report["max_n"]
    scored = [c for c in corpora if c["probability"] is not None]
    edited = [c for c in corpora if c["edits"] is not None]
    units = report["units"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>tokedit report</title>",
        f"<style>{CSS}{PROB_CSS}</style></head><body>",
        "<h1>tokedit report</h1>",
    ]
    unit_desc = (
        f"model tokens of <code>{html.escape(str(units.get('tokenizer')))}</code> (hash {html.escape(str(units.get('tokenizer_hash')))})"
        if units["kind"] == "tokens"
        else f"lower-cased words, pattern <code>{html.escape(units['pattern'])}</code>"
    )
    parts.append(
        f"<p>n-grams are counted over {unit_desc}. Reference corpus for tail coverage: "
        f"<b>{html.escape(report['reference'])}</b>. Definitions of every number: docs/report.md.</p>"
    )
    if report["sampled"]:
        parts.append(
            f"<p class='note'><b>Sampled:</b> at most {report['options']['max_docs']} documents per corpus "
            f"(uniform without replacement, seed {report['options']['seed']}).</p>"
        )
    # overview
    rows = [
        ["kind"] + [c["kind"] for c in corpora],
        ["path"] + [html.escape(c["path"]) for c in corpora],
        ["documents used"] + [_fmt(c["documents"]["used"]) for c in corpora],
        ["documents in corpus"] + [_fmt(c["documents"]["total"]) for c in corpora],
        ["sampled"] + [_fmt(c["documents"]["sampled"]) for c in corpora],
        [f"{units['kind']} counted"] + [_fmt(c["units"]) for c in corpora],
        ["row statuses"]
        + [", ".join(f"{k}={v}" for k, v in c["documents"]["statuses"].items()) for c in corpora],
    ]
    parts += ["<h2>Corpora</h2>", _table([""] + labels, rows)]

    if scored:
        slabels = [html.escape(c["label"]) for c in scored]
        parts.append("<h2>Token probability</h2>")
        edges = scored[0]["probability"]["hist10"]["edges"]
        rows = [
            [f"[{a:.1f}, {b:.1f}{']' if i == len(edges) - 2 else ')'}"]
            + [_fmt(c["probability"]["hist10"]["shares"][i], pct=True) for c in scored]
            for i, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True))
        ]
        for t in scored[0]["probability"]["share_above"]:
            rows.append(
                [f"share with P &gt; {t}"]
                + [_fmt(c["probability"]["share_above"][t], pct=True) for c in scored]
            )
        rows.append(
            ["token perplexity"] + [_fmt(c["probability"]["token_perplexity"]) for c in scored]
        )
        rows.append(["scored tokens"] + [_fmt(c["probability"]["scored_tokens"]) for c in scored])
        parts.append(_table(["P(token | prefix)"] + slabels, rows))
        parts.append(_img(plot_prob_hist10(scored, out), "token probability, 10 bins"))
        parts.append(_img(plot_prob_fine(scored, out), "token probability, fine bins"))
        rows = [
            [f"target rate {_fmt(s['target_rate'], pct=True)}"]
            + [_fmt(c["thresholds"][i]["p"], digits=6) for c in scored]
            for i, s in enumerate(scored[0]["thresholds"])
        ]
        parts += [
            "<h3>Threshold suggestion</h3>",
            "<p class='note'>The p at which an edit (P &gt; p) would touch the target share of tokens.</p>",
            _table([""] + slabels, rows),
        ]
        for c in scored:
            if c.get("edit_preview"):
                parts.append(_preview_table(c))
        parts.append("<h2>Per-document perplexity</h2>")
        pct = scored[0]["perplexity"]["percentiles"] or {}
        rows = [
            [f"p{q}"] + [_fmt((c["perplexity"]["percentiles"] or {}).get(q)) for c in scored]
            for q in pct
        ]
        rows.append(["mean"] + [_fmt(c["perplexity"]["mean"]) for c in scored])
        rows.append(["documents"] + [_fmt(c["perplexity"]["documents"]) for c in scored])
        parts.append(_table([""] + slabels, rows))
        if all(c["perplexity"]["log10_hist"] for c in scored):
            parts.append(_img(plot_perplexity(scored, out), "per-document perplexity"))
    else:
        parts.append(
            "<h2>Token probability</h2><p class='note'>No scores directory among the corpora: "
            "probability and perplexity need <code>tokedit score</code> output.</p>"
        )

    parts.append("<h2>n-gram concentration</h2>")
    metrics = [
        ("total", "n-grams", False),
        ("distinct", "distinct", False),
        ("distinct_ratio", "distinct-n", False),
        ("entropy_bits", "entropy (bits)", False),
        ("top1pct_share", "mass of top 1 %", True),
        ("top100_share", "mass of top 100", True),
        ("singleton_share", "distinct seen once", True),
    ]
    rows = [
        [f"{n}-gram {title}"] + [_fmt(c["ngrams"][str(n)][key], pct=pct) for c in corpora]
        for n in range(1, max_n + 1)
        for key, title, pct in metrics
    ]
    parts.append(_table([""] + labels, rows))
    parts.append(_img(plot_concentration(corpora, max_n, out), "n-gram concentration"))
    parts.append(_img(plot_rank_frequency(corpora, out), "rank frequency"))
    parts.append("<h3>Most frequent n-grams</h3>")
    for n in range(1, max_n + 1):
        rows = []
        for i in range(TOP_SHOWN):
            row = [str(i + 1)]
            for c in corpora:
                top = c["ngrams"][str(n)]["top"]
                row.append(
                    f"<code>{html.escape(repr(top[i]['text']))}</code> {_fmt(top[i]['share'], pct=True)}"
                    if i < len(top)
                    else ""
                )
            rows.append(row)
        parts.append(
            f"<details><summary>{n}-grams</summary>{_table(['#'] + labels, rows)}</details>"
        )

    parts.append(f"<h2>Tail coverage against {html.escape(report['reference'])}</h2>")
    cutoff = report["options"]["rare_max_count"]
    parts.append(
        f"<p class='note'>Rare = at most {cutoff} occurrence(s) in the reference. KL with add-"
        f"{report['options']['smoothing_alpha']} smoothing over the union of both supports; JS unsmoothed; bits.</p>"
    )
    tmetrics = [
        ("reference_rare", "reference rare n-grams", False),
        ("rare_coverage", "rare coverage", True),
        ("tail_mass", "mass on reference tail", True),
        ("distinct_coverage", "reference distinct covered", True),
        ("reference_mass_covered", "reference mass covered", True),
        ("novel_mass", "mass not in reference", True),
        ("kl_ref_to_corpus", "KL(ref ‖ corpus)", False),
        ("kl_corpus_to_ref", "KL(corpus ‖ ref)", False),
        ("js", "JS divergence", False),
    ]
    rows = [
        [f"{n}-gram {title}"] + [_fmt(c["tail"][str(n)].get(key), pct=pct) for c in corpora]
        for n in range(1, max_n + 1)
        for key, title, pct in tmetrics
        if key in corpora[0]["tail"][str(n)]
    ]
    parts.append(_table([""] + labels, rows))
    parts.append(_img(plot_tail(corpora, max_n, out), "tail coverage"))

    if edited:
        elabels = [html.escape(c["label"]) for c in edited]
        parts.append("<h2>Edits</h2>")
        emetrics = [
            ("documents_changed", "documents changed", False),
            ("scored_tokens", "scored tokens", False),
            ("above", "tokens above p", False),
            ("changed", "tokens changed", False),
            ("skipped", "tokens skipped", False),
            ("above_share", "share above p", True),
            ("changed_share", "share changed", True),
            ("skipped_share", "share skipped", True),
            ("changed_per_above", "changed / above", True),
        ]
        rows = [[t] + [_fmt(c["edits"][k], pct=p) for c in edited] for k, t, p in emetrics]
        parts.append(_table([""] + elabels, rows))
        parts.append(_img(plot_edits(edited, out), "edit shares"))
        for c in edited:
            rows = [
                [
                    f"<code>{html.escape(repr(p['orig']))}</code>",
                    f"<code>{html.escape(repr(p['new']))}</code>",
                    _fmt(p["count"]),
                    _fmt(p["share"], pct=True),
                ]
                for p in c["edits"]["top_pairs"][:TOP_SHOWN]
            ]
            parts.append(
                f"<details><summary>{html.escape(c['label'])}: most frequent replacements</summary>"
                + _table(["original", "replacement", "count", "share"], rows)
                + "</details>"
            )
    parts.append(token_view_section(report))
    parts.append(
        f"<p class='note'>tokedit {html.escape(report['version'])}; {report['seconds']:.1f} s.</p></body></html>"
    )
    path = out / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return path
