"""``tokedit report``: distribution statistics of one or several corpora, side by side.

:func:`build_report` streams every directory once and returns a JSON-able dict (every key is
defined in ``docs/report.md``); :func:`write_report` writes ``report.json``, the PNG plots and
``report.html``. The reference corpus (``--reference``, default the first) is read first and
its n-gram tables are kept; every other corpus is compared with it and then dropped, so
memory holds the distinct n-grams of two corpora at most.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tokedit import __version__
from tokedit.analysis.corpus import (
    DEFAULT_BATCH_ROWS,
    KIND_EDITED,
    KIND_SCORES,
    CorpusSource,
    CorpusStats,
    accumulate,
    open_corpus,
)
from tokedit.analysis.ngrams import MAX_N, NgramTable, compare, concentration, rank_frequency
from tokedit.analysis.thresholds import advise, format_thresholds
from tokedit.analysis.tokenview import DEFAULT_EXAMPLE_CHARS, DEFAULT_EXAMPLES, collect_examples
from tokedit.analysis.units import TokenUnits, WordUnits
from tokedit.errors import InputError, arg
from tokedit.io.manifest import read_manifest
from tokedit.io.storage import as_path, is_remote
from tokedit.io.write import remove_stale_temp_files, upload_tree, write_json

logger = logging.getLogger(__name__)

DIVERGENCE_N = (1, 2)


@dataclass
class ReportOptions:
    labels: list[str] | None = None
    reference: str | None = None  # a directory; default: the first corpus
    max_docs: int | None = None
    seed: int = 0
    target_edit_rates: tuple[float, ...] = (0.1,)
    units: str = "auto"  # auto | tokens | words
    tokenizer: str | None = None
    text_column: str = "text"
    rare_max_count: int = 2
    smoothing_alpha: float = 0.5
    top_ngrams: int = 20
    batch_rows: int = DEFAULT_BATCH_ROWS
    examples: int = DEFAULT_EXAMPLES  # token view: documents per scores / edited corpus (0: off)
    example_chars: int = DEFAULT_EXAMPLE_CHARS  # characters shown per document at most
    # Edit preview of scores directories: the presets, and these values when any is given
    # (keys p, top_k, temperature, drop_below, strategy, exclude_original; None: preset's).
    preview: bool = True
    preview_values: dict = field(
        default_factory=lambda: dict.fromkeys(("p", "top_k", "temperature", "drop_below"))
    )


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


def corpus_entry(
    stats: CorpusStats,
    units,
    ref: CorpusStats,
    options: ReportOptions,
    tokenizers: _Tokenizers,
    seconds: float,
) -> dict:
    src = stats.source
    entry = {
        "label": src.label,
        "path": str(src.path),
        "kind": KIND_EDITED if stats.edits is not None else src.kind,
        "text_column": src.text_column,
        "is_reference": stats is ref,
        "documents": {
            "total": stats.documents_total,
            "used": stats.documents_used,
            "sampled": stats.sampled,
            "statuses": dict(sorted(stats.statuses.items())),
        },
        "units": stats.units,
        "seconds": seconds,
        "probability": None,
        "thresholds": None,
        "perplexity": None,
        "edits": None,
    }
    if stats.probs is not None:
        entry["probability"] = stats.probs.summary()
        entry["thresholds"] = [
            advise(
                stats.probs.suggest(t), src.path, src.manifest if src.kind == KIND_SCORES else None
            )
            for t in options.target_edit_rates
        ]
        entry["perplexity"] = stats.ppl.summary()
    entry["edit_preview"] = _edit_preview(src, options, tokenizers)
    entry["ngrams"] = {
        str(n): {
            **concentration(t),
            "top": top_ngrams(t, units, options.top_ngrams),
            "rank_frequency": rank_frequency(t),
        }
        for n, t in stats.tables.items()
    }
    entry["tail"] = {
        str(n): compare(
            ref.tables[n],
            t,
            options.rare_max_count,
            options.smoothing_alpha if n in DIVERGENCE_N else None,
        )
        for n, t in stats.tables.items()
    }
    if stats.edits is not None:
        # the edit manifest's totals per threshold: {"p": {"0.99": {"scored": ..., ...}}}
        totals = ((src.manifest or {}).get("totals") or {}).get("p", {}).get(src.edit_p) or {}
        whole = not stats.sampled and bool(totals)
        scored, basis = (totals.get("scored"), "manifest") if whole else (None, None)
        if not scored and units.kind == "tokens":
            scored, basis = stats.units, "retokenized"
        entry["edits"] = stats.edits.summary(
            scored or None, _edit_decoder(src, units, options, tokenizers), options.top_ngrams
        )
        entry["edits"]["scored_tokens_basis"] = basis if scored else None
        entry["edits"]["threshold"] = float(src.edit_p) if src.edit_p else None
        reasons = totals.get("skipped") if whole else None
        entry["edits"]["skipped_reasons"] = reasons if isinstance(reasons, dict) else None
    return entry


def _edit_preview(source: CorpusSource, options: ReportOptions, tokenizers) -> dict | None:
    """What each edit setting would do to a scores directory (see :mod:`.preview`)."""
    if source.kind != KIND_SCORES or not options.preview:
        return None
    from tokedit.analysis.preview import default_settings, preview_scores_dir
    from tokedit.editor.rules import banned_mask

    named = model_of(source)
    banned = banned_mask(tokenizers.load(*named)) if named else None
    return preview_scores_dir(source.path, default_settings(options.preview_values), banned=banned)


def build_report(dirs: list[str], options: ReportOptions | None = None, log=None) -> dict:
    """Read every directory once and compute the report (a JSON-able dict)."""
    options = options or ReportOptions()
    log = log or logger.info
    if not dirs:
        raise InputError("no corpus given", remedy="pass one or more directories")
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
    started = time.perf_counter()
    labels = _labels(dirs, options.labels)
    sources = [
        open_corpus(d, lab, options.text_column) for d, lab in zip(dirs, labels, strict=True)
    ]
    ref_index = 0
    if options.reference is not None:
        ref_path = as_path(options.reference).resolve()
        matches = [i for i, s in enumerate(sources) if s.path.resolve() == ref_path]
        if matches:
            ref_index = matches[0]
        else:
            label = "reference"
            while label in labels:
                label = "_" + label
            sources.insert(0, open_corpus(options.reference, label, options.text_column))
    tokenizers = _Tokenizers()
    units = resolve_units(sources, options, tokenizers)
    log(f"units: {units.kind}" + (f" ({units.source})" if getattr(units, "source", None) else ""))

    def read(source: CorpusSource) -> tuple[CorpusStats, float]:
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

    def examples(source: CorpusSource) -> list[dict] | None:
        def tokenizer():
            try:
                if options.tokenizer:
                    return tokenizers.load(options.tokenizer)
                m = model_of(source)
                return tokenizers.load(*m) if m else None
            except InputError:
                return None

        return collect_examples(source, options.examples, options.example_chars, tokenizer)

    ref_stats, ref_seconds = read(sources[ref_index])
    entries: list[dict | None] = [None] * len(sources)
    entries[ref_index] = corpus_entry(ref_stats, units, ref_stats, options, tokenizers, ref_seconds)
    for i, source in enumerate(sources):
        if i == ref_index:
            continue
        stats, seconds = read(source)
        entries[i] = corpus_entry(stats, units, ref_stats, options, tokenizers, seconds)
        del stats  # only the reference's tables stay in memory
    for entry, source in zip(entries, sources, strict=True):
        entry["examples"] = examples(source)
    unit_info = units.describe()
    unit_info["id_bits"] = ref_stats.tables[1].codec.bits
    unit_info["key_encoding"] = {str(n): t.codec.encoding for n, t in ref_stats.tables.items()}
    opts = asdict(options)
    opts["target_edit_rates"] = list(options.target_edit_rates)
    report = {
        "tool": "tokedit",
        "version": __version__,
        "command": "report",
        "options": opts,
        "units": unit_info,
        "max_n": MAX_N,
        "reference": sources[ref_index].label,
        "sampled": any(e["documents"]["sampled"] for e in entries),
        "corpora": entries,
        "seconds": time.perf_counter() - started,
    }
    return json_safe(report)


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


def write_report(report: dict, out_dir: str | os.PathLike) -> dict:
    """Write ``report.json``, ``plots/*.png`` and ``report.html`` into ``out_dir``."""
    from tokedit.analysis.html import render_html

    out = as_path(out_dir)
    if is_remote(out):  # rendered locally, then each file published
        import tempfile

        with tempfile.TemporaryDirectory(prefix="tokedit-report-") as local:
            write_report(report, local)
            upload_tree(Path(local), out)
        return {"json": str(out / "report.json"), "html": str(out / "report.html")}
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out)  # those of a report killed while writing here
    write_json(out / "report.json", report)
    html = render_html(report, out)
    return {"json": str(out / "report.json"), "html": str(html)}


def run_report(
    dirs: list[str], out_dir: str, options: ReportOptions | None = None, log=None
) -> dict:
    report = build_report(dirs, options, log)
    paths = write_report(report, out_dir)
    return {"report": report, **paths}


def load_report(out_dir: str | os.PathLike) -> dict:
    return json.loads((as_path(out_dir) / "report.json").read_text())


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
