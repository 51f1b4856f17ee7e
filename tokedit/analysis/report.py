"""``tokedit report``: distribution statistics of one or several corpora, side by side.

:func:`compute_report` streams every directory once and returns a
:class:`~tokedit.analysis.sections.Report` (every key is defined in ``docs/report.md``; its
JSON dict is :func:`build_report`'s); :func:`write_report` writes ``report.json``, the PNG
plots and ``report.html``; :func:`load_report` reads ``report.json`` back. The reference corpus (``--reference``, default the first) is read first and
its n-gram tables are kept; every other corpus is compared with it and then dropped, so
memory holds the distinct n-grams of two corpora at most.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tokedit import __version__
from tokedit.analysis.corpus import (
    KIND_EDITED,
    KIND_SCORES,
    CorpusSource,
    CorpusStats,
    accumulate,
    open_corpus,
)
from tokedit.analysis.ngrams import MAX_N, NgramTable, compare, concentration, rank_frequency
from tokedit.analysis.sections import (
    CorpusEntry,
    Documents,
    Edits,
    Example,
    NgramStats,
    Perplexity,
    PreviewSection,
    Probability,
    Report,
    ReportOptions,
    TailCoverage,
    Threshold,
    UnitsInfo,
    from_json,
)
from tokedit.analysis.thresholds import advise, format_thresholds
from tokedit.analysis.tokenview import collect_examples
from tokedit.analysis.units import TokenUnits, WordUnits
from tokedit.errors import InputError, arg
from tokedit.io.manifest import read_manifest
from tokedit.io.storage import as_path, is_remote
from tokedit.io.write import remove_stale_temp_files, upload_tree, write_json

logger = logging.getLogger(__name__)

DIVERGENCE_N = (1, 2)


# --- tokenizers -------------------------------------------------------------------------------


class _Tokenizers:
    """Tokenizers named by manifests or ``--tokenizer``, loaded once each."""

    def __init__(self):
        self._cache: dict[tuple, object] = {}

    def load(self, model: str, revision: str | None = None):
        key = (model, revision)
        if key not in self._cache:
            from tokedit.scoring.hf import load_tokenizer

            self._cache[key] = load_tokenizer(model, revision)
        return self._cache[key]


def model_of(source: CorpusSource) -> tuple[str, str | None] | None:
    """The prior named by a scores / edited manifest (an edit manifest may name its scores)."""
    opts = source.options
    if opts.get("model"):
        return str(opts["model"]), opts.get("revision")
    scores = opts.get("scores")
    if scores:
        m = read_manifest(scores) if as_path(scores).is_dir() else None
        if m and (m.get("options") or {}).get("model"):
            return str(m["options"]["model"]), m["options"].get("revision")
    return None


def resolve_units(sources: list[CorpusSource], options: ReportOptions, tokenizers: _Tokenizers):
    """Choose token or word units for every corpus of the report (see docs/report.md)."""
    if options.units not in ("auto", "tokens", "words"):
        raise InputError(
            f"unknown {arg('units', options.units)}", remedy="use auto, tokens or words"
        )
    if options.units == "words" and not options.tokenizer:
        return WordUnits()  # no tokenizer to load (and no transformers, no torch to import)
    from tokedit.scoring.hf import tokenizer_hash

    scores = [s for s in sources if s.kind == KIND_SCORES]
    hashes = {s.options.get("tokenizer_hash") for s in scores} - {None}
    tok, name, load_error = None, None, None
    if options.tokenizer:
        tok, name = tokenizers.load(options.tokenizer), options.tokenizer
    else:
        for s in scores + [s for s in sources if s.kind == KIND_EDITED]:
            m = model_of(s)
            if m is None:
                continue
            try:
                tok, name = tokenizers.load(*m), m[0]
                break
            except InputError as e:
                load_error = e
    h = tokenizer_hash(tok) if tok is not None else None
    if options.tokenizer and hashes and hashes != {h}:
        raise InputError(
            f"{arg('tokenizer', options.tokenizer)} (hash {h}) is not the tokenizer of the scores "
            f"({', '.join(sorted(hashes))})",
            remedy=f"pass the prior the scores were made with, or leave {arg('tokenizer')} out",
        )
    consistent = len(hashes) <= 1 and (h is None or not hashes or h in hashes)
    if options.units != "words":
        if tok is not None and consistent:
            return TokenUnits(tok, name, h)
        if tok is None and scores and len(scores) == len(sources) and len(hashes) <= 1:
            return TokenUnits(None, None, next(iter(hashes), None))
        if options.units == "tokens":
            why = (
                "the scores directories were made with different tokenizers"
                if not consistent
                else f"no tokenizer could be loaded ({load_error})"
                if load_error
                else "no tokenizer is known for the text corpora"
            )
            raise InputError(
                f"cannot count token n-grams: {why}",
                remedy=f"pass {arg('tokenizer')}, or use {arg('units', 'words')}",
            )
    return WordUnits()


def _decoder_for(source, options, tokenizers) -> TokenUnits:
    """A scores directory's own tokenizer, to decode its token ids when words are counted."""
    if options.tokenizer:
        return TokenUnits(tokenizers.load(options.tokenizer), options.tokenizer)
    m = model_of(source)
    if m is None:
        raise InputError(
            f"{source.path}: the manifest names no model to decode the scored tokens",
            remedy=f"pass {arg('tokenizer')}",
        )
    return TokenUnits(tokenizers.load(*m), m[0])


# --- the report -------------------------------------------------------------------------------


def _labels(dirs: list[str], labels: list[str] | None) -> list[str]:
    if labels is not None:
        if len(labels) != len(dirs):
            raise InputError(
                f"{arg('labels')} has {len(labels)} name(s) for {len(dirs)} director(ies)",
                remedy="give one label per directory",
            )
        if len(set(labels)) != len(labels):
            raise InputError(f"{arg('labels')} must be distinct", remedy="rename the duplicates")
        return list(labels)
    out: list[str] = []
    for d in dirs:
        base = as_path(d).resolve().name or str(d)
        name, i = base, 2
        while name in out:
            name, i = f"{base}-{i}", i + 1
        out.append(name)
    return out


def top_ngrams(table: NgramTable, units, k: int) -> list[dict]:
    idx = table.top(k)
    rows = table.ids(idx)
    total = table.total
    out = []
    for row, c in zip(rows, table.counts[idx], strict=True):
        item = {
            "text": units.decode_ngram(row),
            "units": units.unit_texts(row),
            "count": int(c),
            "share": int(c) / total,
        }
        if units.kind == "tokens":
            item["ids"] = [int(i) for i in row]
        out.append(item)
    return out


def _edit_decoder(source, units, options, tokenizers):
    if units.kind == "tokens":
        return units.unit_texts
    try:
        return _decoder_for(source, options, tokenizers).unit_texts
    except InputError:  # no tokenizer to decode with: ids shown as <id>
        return TokenUnits(None).unit_texts


def section(tp, value, where: str):
    """A section of the report from what a core computed (numpy scalars and NaN made JSON)."""
    return from_json(tp, json_safe(value), where)


def _probability_sections(stats: CorpusStats, options: ReportOptions):
    """``probability``, ``thresholds`` and ``perplexity`` of a scores corpus (else None)."""
    if stats.probs is None:
        return None, None, None
    src, where = stats.source, stats.source.label
    manifest = src.manifest if src.kind == KIND_SCORES else None
    thresholds = [
        advise(stats.probs.suggest(t), src.path, manifest) for t in options.target_edit_rates
    ]
    return (
        section(Probability, stats.probs.summary(), f"{where}: probability"),
        section(list[Threshold], thresholds, f"{where}: thresholds"),
        section(Perplexity, stats.ppl.summary(), f"{where}: perplexity"),
    )


def _ngram_sections(stats: CorpusStats, units, ref: CorpusStats, options: ReportOptions):
    """``ngrams`` and ``tail`` (against the reference) of a corpus, per n."""
    where = stats.source.label
    ngrams = {
        str(n): section(
            NgramStats,
            {
                **concentration(t),
                "top": top_ngrams(t, units, options.top_ngrams),
                "rank_frequency": rank_frequency(t),
            },
            f"{where}: ngrams.{n}",
        )
        for n, t in stats.tables.items()
    }
    tail = {
        str(n): section(
            TailCoverage,
            compare(
                ref.tables[n],
                t,
                options.rare_max_count,
                options.smoothing_alpha if n in DIVERGENCE_N else None,
            ),
            f"{where}: tail.{n}",
        )
        for n, t in stats.tables.items()
    }
    return ngrams, tail


def _edits_section(stats: CorpusStats, units, options: ReportOptions, tokenizers) -> Edits | None:
    """``edits`` of an edited corpus: its provenance sums, shares of the scored tokens."""
    if stats.edits is None:
        return None
    src = stats.source
    # the edit manifest's totals per threshold: {"p": {"0.99": {"scored": ..., ...}}}
    totals = ((src.manifest or {}).get("totals") or {}).get("p", {}).get(src.edit_p) or {}
    whole = not stats.sampled and bool(totals)
    scored, basis = (totals.get("scored"), "manifest") if whole else (None, None)
    if not scored and units.kind == "tokens":
        scored, basis = stats.units, "retokenized"
    summary = stats.edits.summary(
        scored or None, _edit_decoder(src, units, options, tokenizers), options.top_ngrams
    )
    reasons = totals.get("skipped") if whole else None
    summary["scored_tokens_basis"] = basis if scored else None
    summary["threshold"] = float(src.edit_p) if src.edit_p else None
    summary["skipped_reasons"] = reasons if isinstance(reasons, dict) else None
    return section(Edits, summary, f"{src.label}: edits")


def corpus_entry(
    stats: CorpusStats,
    units,
    ref: CorpusStats,
    options: ReportOptions,
    tokenizers: _Tokenizers,
    seconds: float,
) -> CorpusEntry:
    """One corpus of the report, its token view left to :func:`_examples`."""
    src = stats.source
    probability, thresholds, perplexity = _probability_sections(stats, options)
    ngrams, tail = _ngram_sections(stats, units, ref, options)
    return CorpusEntry(
        label=src.label,
        path=str(src.path),
        kind=KIND_EDITED if stats.edits is not None else src.kind,
        text_column=src.text_column,
        is_reference=stats is ref,
        documents=Documents(
            total=int(stats.documents_total),
            used=int(stats.documents_used),
            sampled=bool(stats.sampled),
            statuses=dict(sorted(stats.statuses.items())),
        ),
        units=int(stats.units),
        seconds=seconds,
        probability=probability,
        thresholds=thresholds,
        perplexity=perplexity,
        edit_preview=_edit_preview(src, options, tokenizers),
        ngrams=ngrams,
        tail=tail,
        edits=_edits_section(stats, units, options, tokenizers),
    )


def _edit_preview(source: CorpusSource, options: ReportOptions, tokenizers):
    """What each edit setting would do to a scores directory (see :mod:`.preview`)."""
    if source.kind != KIND_SCORES or not options.preview:
        return None
    from tokedit.analysis.preview import default_settings, preview_scores_dir
    from tokedit.editor.rules import banned_mask

    named = model_of(source)
    banned = banned_mask(tokenizers.load(*named)) if named else None
    preview = preview_scores_dir(
        source.path, default_settings(options.preview_values), banned=banned
    )
    return section(PreviewSection, preview, f"{source.label}: edit_preview")


def _examples(source: CorpusSource, options: ReportOptions, tokenizers) -> list[Example] | None:
    """The token-view documents of a scores or edited corpus (see :mod:`.tokenview`)."""

    def tokenizer():
        try:
            if options.tokenizer:
                return tokenizers.load(options.tokenizer)
            m = model_of(source)
            return tokenizers.load(*m) if m else None
        except InputError:
            return None

    found = collect_examples(source, options.examples, options.example_chars, tokenizer)
    return None if found is None else section(list[Example], found, f"{source.label}: examples")


# --- building the report ------------------------------------------------------------------------


def check_options(options: ReportOptions) -> None:
    """Refuse options no report can be made with, naming the option and a remedy."""
    for t in options.target_edit_rates:
        if not 0 < t < 1:
            raise InputError(
                f"{t} in {arg('target_edit_rates', tuple(options.target_edit_rates))} is not in "
                "(0, 1)",
                remedy="e.g. 0.1",
            )
    if options.max_docs is not None and options.max_docs < 1:
        raise InputError(
            f"{arg('max_docs', options.max_docs)} must be at least 1",
            remedy=f"e.g. {arg('max_docs', 10000)}",
        )
    if options.examples < 0 or options.example_chars < 1:
        raise InputError(
            f"{arg('examples')} must be >= 0 and {arg('example_chars')} >= 1",
            remedy=f"e.g. {arg('examples', 3)}",
        )
    if options.rare_max_count < 1 or options.smoothing_alpha <= 0:
        raise InputError(
            f"{arg('rare_max_count')} must be >= 1 and {arg('smoothing_alpha')} > 0",
            remedy="use the defaults",
        )


def open_sources(dirs: list[str], options: ReportOptions) -> tuple[list[CorpusSource], int]:
    """The corpora of the report and the index of the reference among them (a
    ``--reference`` that is none of ``dirs`` is added first, labelled ``reference``)."""
    labels = _labels(dirs, options.labels)
    sources = [
        open_corpus(d, lab, options.text_column) for d, lab in zip(dirs, labels, strict=True)
    ]
    if options.reference is None:
        return sources, 0
    ref_path = as_path(options.reference).resolve()
    matches = [i for i, s in enumerate(sources) if s.path.resolve() == ref_path]
    if matches:
        return sources, matches[0]
    label = "reference"
    while label in labels:
        label = "_" + label
    return [open_corpus(options.reference, label, options.text_column), *sources], 0


def read_corpus(source: CorpusSource, units, options: ReportOptions, tokenizers, log):
    """Stream one corpus: its :class:`CorpusStats` and the seconds it took."""
    t0 = time.perf_counter()
    decoder = None
    if source.kind == KIND_SCORES and units.kind == "words":
        decoder = _decoder_for(source, options, tokenizers)
    stats = accumulate(
        source,
        units,
        decoder=decoder,
        max_docs=options.max_docs,
        seed=options.seed,
        batch_rows=options.batch_rows,
    )
    dt = time.perf_counter() - t0
    log(
        f"{source.label}: {stats.documents_used} documents"
        + (f" (sampled of {stats.documents_total})" if stats.sampled else "")
        + f", {stats.units} {units.kind} in {dt:.1f}s"
    )
    return stats, dt


def _units_info(units, ref_stats: CorpusStats) -> UnitsInfo:
    info = units.describe()
    info["id_bits"] = ref_stats.tables[1].codec.bits
    info["key_encoding"] = {str(n): t.codec.encoding for n, t in ref_stats.tables.items()}
    return section(UnitsInfo, info, "units")


def compute_report(dirs: list[str], options: ReportOptions | None = None, log=None) -> Report:
    """Read every directory once and compute the report (see :mod:`.sections`)."""
    options = options or ReportOptions()
    log = log or logger.info
    if not dirs:
        raise InputError("no corpus given", remedy="pass one or more directories")
    check_options(options)
    started = time.perf_counter()
    sources, ref_index = open_sources(dirs, options)
    tokenizers = _Tokenizers()
    units = resolve_units(sources, options, tokenizers)
    log(f"units: {units.kind}" + (f" ({units.source})" if getattr(units, "source", None) else ""))
    ref_stats, ref_seconds = read_corpus(sources[ref_index], units, options, tokenizers, log)
    entries: list[CorpusEntry | None] = [None] * len(sources)
    entries[ref_index] = corpus_entry(ref_stats, units, ref_stats, options, tokenizers, ref_seconds)
    for i, source in enumerate(sources):
        if i == ref_index:
            continue
        stats, seconds = read_corpus(source, units, options, tokenizers, log)
        entries[i] = corpus_entry(stats, units, ref_stats, options, tokenizers, seconds)
        del stats  # only the reference's tables stay in memory
    for entry, source in zip(entries, sources, strict=True):
        entry.examples = _examples(source, options, tokenizers)
    return Report(
        tool="tokedit",
        version=__version__,
        command="report",
        options=section(ReportOptions, asdict(options), "options"),
        units=_units_info(units, ref_stats),
        max_n=MAX_N,
        reference=sources[ref_index].label,
        sampled=any(e.documents.sampled for e in entries),
        corpora=entries,
        seconds=time.perf_counter() - started,
    )


def build_report(dirs: list[str], options: ReportOptions | None = None, log=None) -> dict:
    """:func:`compute_report` as the JSON-able dict ``report.json`` holds."""
    return compute_report(dirs, options, log).to_json()


def json_safe(value):
    """Replace NaN / infinity by None and numpy scalars by Python numbers, recursively."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(report: Report | dict, out_dir: str | os.PathLike) -> dict:
    """Write ``report.json``, ``plots/*.png`` and ``report.html`` into ``out_dir``
    (``report``: a :class:`Report`, or the dict :func:`build_report` returns)."""
    from tokedit.analysis.html import render_html

    if not isinstance(report, Report):
        report = Report.from_json(report, "report")
    out = as_path(out_dir)
    if is_remote(out):  # rendered locally, then each file published
        import tempfile

        with tempfile.TemporaryDirectory(prefix="tokedit-report-") as local:
            write_report(report, local)
            upload_tree(Path(local), out)
        return {"json": str(out / "report.json"), "html": str(out / "report.html")}
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out)  # those of a report killed while writing here
    write_json(out / "report.json", report.to_json())
    html = render_html(report, out)
    return {"json": str(out / "report.json"), "html": str(html)}


def run_report(
    dirs: list[str], out_dir: str, options: ReportOptions | None = None, log=None
) -> dict:
    """Compute and write a report: ``{"report": its dict, "json": path, "html": path}``."""
    report = compute_report(dirs, options, log)
    paths = write_report(report, out_dir)
    return {"report": report.to_json(), **paths}


def load_report(out_dir: str | os.PathLike) -> Report:
    """The :class:`Report` of a ``report.json`` (in ``out_dir``) that tokedit wrote: JSON
    only (never unpickled), refused naming the file if it is anything else."""
    path = as_path(out_dir) / "report.json"
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(
            f"{path}: not a report.json tokedit wrote (not JSON: {e})",
            remedy=f"make it again with `tokedit report ... --out {out_dir}`",
        ) from e
    return Report.from_json(data, str(path))


def format_report_summary(result: dict) -> str:
    """A few headline numbers per corpus, for the terminal."""
    r = result["report"]
    lines = [
        f"report of {len(r['corpora'])} corpora ({r['units']['kind']}), reference {r['reference']}:"
    ]
    for c in r["corpora"]:
        ng, tail = c["ngrams"], c["tail"]
        parts = [
            f"{c['documents']['used']} docs" + (" (sampled)" if c["documents"]["sampled"] else ""),
            f"{c['units']} {r['units']['kind']}",
            "distinct-1..4 "
            + "/".join(
                "-"
                if ng[str(n)]["distinct_ratio"] is None
                else f"{ng[str(n)]['distinct_ratio']:.3f}"
                for n in range(1, r["max_n"] + 1)
            ),
        ]
        if tail["2"]["rare_coverage"] is not None:
            parts.append(f"rare 2-gram coverage {tail['2']['rare_coverage']:.3f}")
        if c["probability"]:
            parts.append(f"P>0.99 {100 * (c['probability']['share_above']['0.99'] or 0):.2f}%")
        if c["edits"]:
            e = c["edits"]
            parts.append(
                f"edits: above {e['above']}, changed {e['changed']}, skipped {e['skipped']}"
            )
        lines.append(f"  {c['label']} [{c['kind']}]: " + ", ".join(parts))
        lines += format_thresholds(c["label"], c.get("thresholds") or [])
        if c.get("edit_preview"):
            from tokedit.analysis.preview import format_preview

            lines.append(f"  what an edit would do to {c['label']}, from its scores:")
            lines.append(format_preview(c["edit_preview"]))
    lines.append(f"wrote {result['json']} and {result['html']}")
    return "\n".join(lines)
