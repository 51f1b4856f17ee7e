"""``report.html`` and its PNG plots, rendered from a :class:`~.sections.Report` alone.

Plots go to ``plots/`` beside the HTML and are referenced by relative paths, so the folder
can be moved or archived as a whole. The page is rendered from the Jinja templates of
``tokedit/analysis/templates`` with autoescape on, so no text of a corpus reaches it unescaped.
Figures are drawn on their own Agg canvas (no display),
without pyplot: importing tokedit never switches the caller's matplotlib backend.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from tokedit.analysis.sections import CorpusEntry, Report, Segment, SegmentEdit
from tokedit.io.write import atomic_path

PLOTS_DIR = "plots"
TOP_SHOWN = 10


def fmt(v, pct: bool = False, digits: int = 4) -> str:
    """A number as the tables show it (``–`` for null; the page escapes what it shows)."""
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
    return str(v)


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


# --- plots ------------------------------------------------------------------------------------


def plot_prob_hist10(corpora: list[CorpusEntry], out: Path) -> str:
    fig, (ax,) = new_figure(8, 3.6)
    width = 0.8 / len(corpora)
    for j, c in enumerate(corpora):
        h = c.probability.hist10
        x = np.arange(len(h.shares)) + j * width - 0.4 + width / 2
        ax.bar(x, [100 * (s or 0) for s in h.shares], width=width, label=c.label)
    edges = corpora[0].probability.hist10.edges
    ax.set_xticks(range(len(edges) - 1))
    ax.set_xticklabels(
        [f"{a:.1f}-{b:.1f}" for a, b in zip(edges[:-1], edges[1:], strict=True)], fontsize=8
    )
    ax.set_xlabel("P(token | prefix)")
    ax.set_ylabel("% of tokens")
    ax.set_title("Token probability, 10 equal bins")
    ax.legend()
    return _save(fig, out, "prob_hist10")


def plot_prob_fine(corpora: list[CorpusEntry], out: Path) -> str:
    fig, (ax,) = new_figure(8, 3.6)
    for c in corpora:
        h = c.probability.hist_fine
        shares = np.array([s or 0 for s in h.shares])
        ax.stairs(np.maximum(shares, 1e-9), h.edges, label=c.label)
    ax.set_yscale("log")
    ax.set_xlabel("P(token | prefix)")
    ax.set_ylabel("share of tokens")
    ax.set_title(f"Token probability, {len(corpora[0].probability.hist_fine.shares)} bins")
    ax.legend()
    return _save(fig, out, "prob_fine")


def plot_perplexity(corpora: list[CorpusEntry], out: Path) -> str:
    fig, (ax,) = new_figure(8, 3.6)
    for c in corpora:
        h = c.perplexity.log10_hist
        counts = np.asarray(h.counts, dtype=float)
        ax.stairs(counts / max(counts.sum(), 1), h.edges, label=c.label)
    ax.set_xlabel("log10 perplexity of a document")
    ax.set_ylabel("share of documents")
    ax.set_title("Per-document perplexity")
    ax.legend()
    return _save(fig, out, "perplexity")


def plot_concentration(corpora: list[CorpusEntry], max_n: int, out: Path) -> str:
    ns = list(range(1, max_n + 1))
    metrics = [
        ("distinct_ratio", "distinct-n (unique / total)"),
        ("entropy_bits", "entropy (bits)"),
        ("top1pct_share", "mass of the top 1 %"),
    ]
    fig, axes = new_figure(11, 3.4, ncols=3)
    for ax, (key, title) in zip(axes, metrics, strict=True):
        for c in corpora:
            ax.plot(ns, [getattr(c.ngrams[str(n)], key) for n in ns], marker="o", label=c.label)
        ax.set_xticks(ns)
        ax.set_xlabel("n")
        ax.set_title(title)
    axes[0].legend()
    return _save(fig, out, "ngram_concentration")


def plot_rank_frequency(corpora: list[CorpusEntry], out: Path) -> str:
    fig, axes = new_figure(10, 3.6, ncols=2)
    for ax, n in zip(axes, (1, 2), strict=True):
        for c in corpora:
            rf = c.ngrams[str(n)].rank_frequency
            if rf.rank:
                ax.loglog(rf.rank, rf.count, label=c.label)
        ax.set_xlabel("rank")
        ax.set_ylabel("count")
        ax.set_title(f"{n}-gram rank / frequency")
    axes[0].legend()
    return _save(fig, out, "rank_frequency")


def plot_tail(corpora: list[CorpusEntry], max_n: int, out: Path) -> str:
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
            vals = [getattr(c.tail[str(n)], key) for n in ns]
            ax.plot(ns, [np.nan if v is None else v for v in vals], marker="o", label=c.label)
        ax.set_xticks(ns)
        ax.set_xlabel("n")
        ax.set_title(title, fontsize=10)
    axes[0].legend()
    return _save(fig, out, "tail_coverage")


def plot_edits(corpora: list[CorpusEntry], out: Path) -> str:
    fig, (ax,) = new_figure(7, 3.4)
    keys = [("above_share", "above p"), ("changed_share", "changed"), ("skipped_share", "skipped")]
    width = 0.8 / len(corpora)
    for j, c in enumerate(corpora):
        e = c.edits
        x = np.arange(len(keys)) + j * width - 0.4 + width / 2
        ax.bar(x, [100 * (getattr(e, k) or 0) for k, _ in keys], width=width, label=c.label)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([t for _, t in keys])
    ax.set_ylabel("% of scored tokens")
    ax.set_title("Edits")
    ax.legend()
    return _save(fig, out, "edits")


# --- page -------------------------------------------------------------------------------------

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
TEMPLATE = "report.html.j2"


def prob_class(p: float | None) -> str:
    """CSS classes of a probability: its decile ``p0``..``p9``, ``hi`` above 0.99."""
    if p is None:
        return "np"
    cls = f"p{min(int(p * 10), 9)}"
    return cls + " hi" if p > HIGH_P else cls


def visible(text: str) -> str:
    """An edit's text with its white space made visible (a struck-through newline is none)."""
    if text.strip() == "":
        return text.replace(" ", "·").replace("\t", "→").replace("\n", "↵\n")
    return text.replace("\n", "↵\n")


def _prob_title(p: float | None, tokens: int) -> str:
    if p is None:
        return "no probability (no scores, or no context)" if tokens else "not a token"
    more = f" ({tokens} tokens of one character; product)" if tokens > 1 else ""
    return f"P = {p:.4f}{more}"


def replacement(edit: SegmentEdit) -> str:
    """The text shown for an edit's replacement (``<token id>`` when it has none)."""
    return edit.new if edit.new is not None else f"<token {edit.new_id}>"


def segment_title(seg: Segment) -> str:
    """The hover text of a token-view segment: its P, and what its edit did."""
    if seg.edit is None:
        return _prob_title(seg.p, seg.tokens)
    head, e = _prob_title(seg.p, 1), seg.edit
    if e.deleted:
        return f"{head} · deleted {seg.text!r} (token {e.orig_id})"
    return f"{head} · {seg.text!r} (token {e.orig_id}) → {replacement(e)!r} (token {e.new_id})"


def numeric_keys(values: dict) -> list[str]:
    """The keys of a dict keyed by numbers (``"5"``, ``"25"``), in numeric order: the order
    of the rows does not depend on the order of ``report.json``'s keys."""
    return sorted(values, key=float)


def _statuses(statuses: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in statuses.items())


@functools.cache
def environment():
    """The Jinja environment of the report's templates (``tokedit/analysis/templates``),
    autoescape on: a value is escaped unless a macro of the templates made it."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("tokedit.analysis", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        num=fmt,
        repr=repr,
        statuses=_statuses,
        numeric_keys=numeric_keys,
        prob_class=prob_class,
        segment_title=segment_title,
        replacement=replacement,
        visible=visible,
    )
    env.globals.update(top_shown=TOP_SHOWN, high_p=HIGH_P, prob_colours=PROB_COLOURS)
    return env


def draw_plots(report: Report, out: Path) -> dict[str, str | None]:
    """Every plot of the page into ``out/plots``: {name: relative path, None when not drawn}."""
    (out / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
    corpora, max_n = report.corpora, report.max_n
    scored = [c for c in corpora if c.probability is not None]
    edited = [c for c in corpora if c.edits is not None]
    plots = dict.fromkeys(("prob_hist10", "prob_fine", "perplexity", "edits"))
    if scored:
        plots["prob_hist10"] = plot_prob_hist10(scored, out)
        plots["prob_fine"] = plot_prob_fine(scored, out)
        if all(c.perplexity.log10_hist for c in scored):
            plots["perplexity"] = plot_perplexity(scored, out)
    plots["ngram_concentration"] = plot_concentration(corpora, max_n, out)
    plots["rank_frequency"] = plot_rank_frequency(corpora, out)
    plots["tail_coverage"] = plot_tail(corpora, max_n, out)
    if edited:
        plots["edits"] = plot_edits(edited, out)
    return plots


def page(report: Report, plots: dict[str, str | None]) -> str:
    """``report.html`` of a report whose plots are ``plots`` (see :func:`draw_plots`)."""
    return (
        environment()
        .get_template(TEMPLATE)
        .render(
            report=report,
            scored=[c for c in report.corpora if c.probability is not None],
            edited=[c for c in report.corpora if c.edits is not None],
            plots=plots,
        )
    )


def render_html(report: Report, out: Path) -> Path:
    """Write the plots and ``report.html`` into ``out``; returns the HTML path."""
    out = Path(out)
    plots = draw_plots(report, out)
    path = out / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page(report, plots), encoding="utf-8")
    return path
