"""The report's types: one dataclass per section of ``report.json`` (keys: docs/report.md;
where the report is made: docs/architecture.md, "The report").

A section's fields are its JSON keys, in the same nesting, with two exceptions marked in the
field's metadata so the JSON stays as docs/report.md defines it:

* :func:`flat` — a group of keys that the JSON keeps in its parent object but that are all
  there or all absent (the divergences of the 1- and 2-gram tail, the advice of a threshold,
  the tokenizer or the word pattern of the units): a nested dataclass here, or None when
  absent;
* :func:`omitted_when_none` — one key that is there or absent (``ids`` of an n-gram in token
  units, ``shares`` of the counts-only perplexity histogram): None here when absent.

:func:`to_json` writes a section as the JSON-able dict ``report.json`` holds and
:func:`from_json` reads it back (:meth:`Report.to_json`, :meth:`Report.from_json`): for every
report, ``Report.from_json(r.to_json()) == r`` and the JSON of both is the same. Numbers are
neither rounded nor converted on the way, so the bytes of ``report.json`` do not change.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from tokedit.analysis.tokenview import DEFAULT_EXAMPLE_CHARS, DEFAULT_EXAMPLES
from tokedit.errors import InputError
from tokedit.io import DEFAULT_BATCH_ROWS

_FLAT = "tokedit_flat"
_OMITTED = "tokedit_omitted_when_none"


def flat(**kwargs):
    """A nested dataclass whose keys the JSON keeps in the parent object (None: absent)."""
    return field(default=None, metadata={_FLAT: True}, **kwargs)


def omitted_when_none(**kwargs):
    """A key the JSON leaves out when the value is None."""
    return field(default=None, metadata={_OMITTED: True}, **kwargs)


# --- options ----------------------------------------------------------------------------------


@dataclass
class ReportOptions:
    """The options of ``tokedit report`` (``report.json``'s ``options``)."""

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


# --- units and documents ----------------------------------------------------------------------


@dataclass
class TokenUnitsInfo:
    tokenizer: str | None
    tokenizer_hash: str | None


@dataclass
class WordUnitsInfo:
    pattern: str
    lowercase: bool


@dataclass
class UnitsInfo:
    """``units``: what an n-gram is made of."""

    kind: str
    vocab_size: int
    id_bits: int
    key_encoding: dict[str, str]
    tokens: TokenUnitsInfo | None = flat()
    words: WordUnitsInfo | None = flat()


@dataclass
class Documents:
    total: int
    used: int
    sampled: bool
    statuses: dict[str, int]


# --- token probability and perplexity ---------------------------------------------------------


@dataclass
class Histogram:
    edges: list[float]
    counts: list[int]
    shares: list[float | None] | None = omitted_when_none()


@dataclass
class Probability:
    scored_tokens: int
    no_context_tokens: int
    mean_logprob: float | None
    token_perplexity: float | None
    hist10: Histogram
    hist_fine: Histogram
    share_above: dict[str, float | None]


@dataclass
class ThresholdAdvice:
    """What to run to edit at a suggested threshold (see :mod:`.thresholds`)."""

    p_text: str
    candidates_min_p: float | None
    scores_can_edit: bool | None
    command: str


@dataclass
class Threshold:
    target_rate: float
    p: float | None
    estimated_rate: float | None
    at_resolution_limit: bool
    advice: ThresholdAdvice | None = flat()


@dataclass
class Perplexity:
    documents: int
    percentiles: dict[str, float] | None
    mean: float | None
    log10_hist: Histogram | None


@dataclass
class PreviewRow:
    """One edit setting of the edit preview (see :mod:`.preview`)."""

    setting: str
    p: float
    top_k: int | None
    temperature: float
    strategy: str
    exclude_original: bool
    drop_below: float | None
    scored_tokens: int
    share_above: float
    expected_share_changed: float
    expected_share_as_itself: float
    share_deleted: float
    above_without_candidates: int
    candidates_limited_by_stored_k: bool


@dataclass
class PreviewSection:
    stored_k: int
    settings: list[PreviewRow]


# --- n-grams and tail coverage ----------------------------------------------------------------


@dataclass
class TopNgram:
    text: str
    units: list[str]
    count: int
    share: float
    ids: list[int] | None = omitted_when_none()  # token units only


@dataclass
class RankFrequency:
    rank: list[int]
    count: list[int]


@dataclass
class NgramStats:
    total: int
    distinct: int
    distinct_ratio: float | None
    entropy_bits: float
    top1pct_count: int
    top1pct_share: float | None
    top100_share: float | None
    singleton_share: float | None
    top: list[TopNgram]
    rank_frequency: RankFrequency


@dataclass
class Divergences:
    kl_ref_to_corpus: float | None
    kl_corpus_to_ref: float | None
    js: float | None
    support: int


@dataclass
class TailCoverage:
    reference_rare: int
    rare_coverage: float | None
    tail_mass: float | None
    reference_tail_mass: float | None
    distinct_coverage: float | None
    reference_mass_covered: float | None
    novel_mass: float | None
    divergences: Divergences | None = flat()  # n in DIVERGENCE_N only


# --- edits --------------------------------------------------------------------------------------


@dataclass
class ReplacedToken:
    id: int
    text: str
    count: int
    share: float


@dataclass
class ReplacementPair:
    orig_id: int
    new_id: int
    orig: str
    new: str
    count: int
    share: float


@dataclass
class Edits:
    documents: int
    documents_changed: int
    scored_tokens: int | None
    scored_tokens_basis: str | None
    threshold: float | None
    above: int
    changed: int
    skipped: int
    redrawn_original: int
    deleted: int
    recorded_edits: int
    recorded_same_token: int
    above_share: float | None
    changed_share: float | None
    skipped_share: float | None
    deleted_share: float | None
    changed_per_above: float | None
    skipped_per_above: float | None
    skipped_reasons: dict[str, int] | None
    top_replaced: list[ReplacedToken]
    top_pairs: list[ReplacementPair]


# --- token view ---------------------------------------------------------------------------------


@dataclass
class SegmentEdit:
    pos: int
    orig_id: int
    new_id: int
    new: str | None
    deleted: bool


@dataclass
class Segment:
    text: str
    p: float | None
    tokens: int
    edit: SegmentEdit | None


@dataclass
class Window:
    start: int
    end: int


@dataclass
class TokenView:
    """What :func:`~tokedit.analysis.tokenview.view_segments` shows of one document."""

    chars: int
    window: Window
    truncated: bool
    edits_valid: int
    edits_invalid: int
    edits_shown: int
    segments: list[Segment]


@dataclass
class Example:
    """One document of the token view: where it is, and its view."""

    row: int
    shard: str
    row_in_shard: int
    id: str
    text_source: str | None
    scores: str | None
    tokens: int | None
    edits: int | None
    verified: bool | None
    view: TokenView = flat()


# --- the report ---------------------------------------------------------------------------------


@dataclass
class CorpusEntry:
    """One corpus of the report (``corpora[]``)."""

    label: str
    path: str
    kind: str
    text_column: str | None
    is_reference: bool
    documents: Documents
    units: int
    seconds: float
    probability: Probability | None
    thresholds: list[Threshold] | None
    perplexity: Perplexity | None
    edit_preview: PreviewSection | None
    ngrams: dict[str, NgramStats]
    tail: dict[str, TailCoverage]
    edits: Edits | None
    examples: list[Example] | None = None


@dataclass
class Report:
    """The whole report: what ``report.json`` holds and ``report.html`` shows."""

    tool: str
    version: str
    command: str
    options: ReportOptions
    units: UnitsInfo
    max_n: int
    reference: str
    sampled: bool
    corpora: list[CorpusEntry]
    seconds: float

    def to_json(self) -> dict:
        return to_json(self)

    @classmethod
    def from_json(cls, data: dict, where: str = "report.json") -> Report:
        return from_json(cls, data, where)


# --- JSON ---------------------------------------------------------------------------------------


@functools.cache
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def to_json(value):
    """A section (or a list / dict / value of them) as the JSON-able value report.json holds."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for name, _, flat_cls, omitted in _plan(type(value)):
            v = getattr(value, name)
            if flat_cls is not None:
                out.update(to_json(v) if v is not None else {})
            elif not (v is None and omitted):
                out[name] = to_json(v)
        return out
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


@functools.cache
def _keys(cls) -> frozenset[str]:
    """The JSON keys of a dataclass, its flat groups' keys included."""
    hints, keys = _hints(cls), set()
    for f in dataclasses.fields(cls):
        keys |= _keys(_dataclass_of(hints[f.name])) if f.metadata.get(_FLAT) else {f.name}
    return frozenset(keys)


def _dataclass_of(tp):
    """The dataclass in ``tp`` (``X`` or ``X | None``), or None."""
    args = typing.get_args(tp) if _is_union(tp) else (tp,)
    found = [a for a in args if dataclasses.is_dataclass(a)]
    return found[0] if found else None


def _is_union(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _bad(where: str, what: str) -> InputError:
    return InputError(
        f"{where}: {what}",
        remedy="this is not a report.json of this tokedit version: make it again with "
        "`tokedit report`",
    )


def from_json(tp, value, where: str = "report.json"):
    """``value`` (as :func:`to_json` writes it) read back into the type ``tp``."""
    return _reader(tp)(value, where)


def _same(value, where):
    return value


def _expect(value, kind, where: str) -> None:
    if not isinstance(value, kind):
        what = "a list" if kind is list else "an object"
        raise _bad(where, f"{what} expected, got {type(value).__name__}")


@functools.cache
def _reader(tp):
    """A function ``(value, where) -> object`` reading JSON into ``tp`` (made once per type)."""
    if _is_union(tp):
        optional = type(None) in typing.get_args(tp)
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        sub = _reader(inner[0]) if len(inner) == 1 else _same
        if sub is _same:  # a value or None: read as it is
            return _same
        return lambda value, where: None if value is None and optional else sub(value, where)
    if dataclasses.is_dataclass(tp):
        return functools.partial(_dataclass_from_json, tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple) and args:
        item, make = _reader(args[0]), origin

        def read_list(value, where):
            _expect(value, list, where)
            if item is _same:
                return make(value)
            return make(item(v, f"{where}[{i}]") for i, v in enumerate(value))

        return read_list
    if origin is dict and args:
        item = _reader(args[1])

        def read_dict(value, where):
            _expect(value, dict, where)
            return {k: item(v, f"{where}.{k}") for k, v in value.items()}

        return read_dict
    return _same


@functools.cache
def _plan(cls) -> tuple:
    """Per field of ``cls``: (name, reader, flat dataclass or None, omitted when None)."""
    hints = _hints(cls)
    return tuple(
        (
            f.name,
            _reader(hints[f.name]),
            _dataclass_of(hints[f.name]) if f.metadata.get(_FLAT) else None,
            bool(f.metadata.get(_OMITTED)),
        )
        for f in dataclasses.fields(cls)
    )


def _dataclass_from_json(cls, value, where: str):
    _expect(value, dict, where)
    unknown = value.keys() - _keys(cls)
    if unknown:
        raise _bad(where, f"unknown key(s) {', '.join(map(repr, sorted(unknown)))}")
    kwargs = {}
    for name, read, flat_cls, omitted in _plan(cls):
        if flat_cls is not None:
            part = {k: value[k] for k in _keys(flat_cls) if k in value}
            kwargs[name] = _dataclass_from_json(flat_cls, part, where) if part else None
        elif name in value:
            kwargs[name] = read(value[name], f"{where}.{name}")
        elif not omitted:
            raise _bad(where, f"missing key {name!r}")
    return cls(**kwargs)
