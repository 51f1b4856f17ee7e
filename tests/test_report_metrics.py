"""Report metrics on corpora small enough to compute every number by hand."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokedit.analysis.edits import EditAccumulator
from tokedit.analysis.ngrams import (
    KeyCodec,
    NgramCounter,
    NgramCounterSet,
    compare,
    concentration,
    valid_starts,
)
from tokedit.analysis.probs import (
    PerplexityAccumulator,
    ProbabilityAccumulator,
)
from tokedit.analysis.report import ReportOptions, build_report
from tokedit.analysis.units import WordUnits
from tokedit.errors import InputError
from tokedit.io.manifest import manifest_path
from tokedit.io.write import write_json


def _jsonl(path, texts):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


def _table(ids, lengths, n, bits=8, buffer_keys=1 << 20):
    c = NgramCounter(n, bits, buffer_keys=buffer_keys)
    c.add(np.asarray(ids, np.uint32), np.asarray(lengths))
    return c.finish()


def reference_counts(ids: np.ndarray, lengths: np.ndarray, n: int) -> dict:
    """n-gram counts within each document, with a Counter of tuples (the reference)."""
    expected = Counter()
    off = 0
    for length in lengths:
        doc = ids[off : off + length].tolist()
        off += length
        expected.update(zip(*[doc[k:] for k in range(n)], strict=False))
    return dict(expected)


def _as_dict(table):
    rows = table.ids(np.arange(table.distinct))
    return {tuple(int(x) for x in r): int(c) for r, c in zip(rows, table.counts, strict=True)}


# --- counting ---------------------------------------------------------------------------------


def test_ngrams_never_cross_documents():
    # docs [0 1 0] [1 0]: the bigram (0, 1) at the boundary must not be counted
    assert valid_starts(np.array([3, 2]), 2).tolist() == [0, 1, 3]
    assert valid_starts(np.array([3, 2]), 3).tolist() == [0]
    assert valid_starts(np.array([3, 0, 2]), 4).tolist() == []
    t2 = _table([0, 1, 0, 1, 0], [3, 2], 2)
    assert _as_dict(t2) == {(0, 1): 1, (1, 0): 2}
    assert _as_dict(_table([0, 1, 0, 1, 0], [3, 2], 3)) == {(0, 1, 0): 1}
    assert _table([0, 1, 0, 1, 0], [3, 2], 4).total == 0


@pytest.mark.parametrize("bits", [2, 20])  # 20 bits: 4-grams are hashed, 1..3 packed
def test_counts_across_batches_and_flushes(bits):
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 12, 300)
    ids = rng.integers(0, 3 if bits == 2 else 1 << bits, lengths.sum()).astype(np.uint32)
    for n in range(1, 5):
        c = NgramCounter(n, bits, buffer_keys=50)  # many merges
        off = 0
        for part in np.array_split(lengths, 9):
            c.add(ids[off : off + part.sum()], part)
            off += part.sum()
        t = c.finish()
        assert t.codec.encoding == ("hashed" if n * bits > 64 else "packed")
        assert _as_dict(t) == reference_counts(ids, lengths, n)
        assert np.all(np.diff(t.keys.astype(np.float64)) >= 0)


@pytest.mark.parametrize(
    "id_limit, top", [(3, 4), (16383, 4), (16384, 4), (1 << 20, 3), (2**32 - 1, 2)]
)
def test_counter_set_derives_lower_orders_exactly(id_limit, top):
    """Orders below the top packed one come from prefix sums with sentinel padding."""
    rng = np.random.default_rng(1)
    lengths = rng.integers(0, 7, 400)  # many documents shorter than the n-gram order
    ids = rng.integers(0, min(id_limit, 5), lengths.sum()).astype(np.uint32)
    ids[::7] = id_limit - 1  # the largest id must not be mistaken for padding
    cs = NgramCounterSet(id_limit, buffer_keys=64)
    off = 0
    for part in np.array_split(lengths, 5):
        cs.add(ids[off : off + part.sum()], part)
        off += part.sum()
    assert cs.top == top
    tables = cs.finish()
    for n in range(1, 5):
        assert _as_dict(tables[n]) == reference_counts(ids, lengths, n), n
        assert tables[n].codec.encoding == ("packed" if n <= top else "hashed")


def test_packed_keys_roundtrip_and_order():
    codec = KeyCodec(3, 4)
    ids = np.array([1, 2, 3, 15, 0, 7], np.uint32)
    keys = codec.encode(ids, np.array([0, 3]))
    assert keys.tolist() == [(1 << 8) | (2 << 4) | 3, (15 << 8) | (0 << 4) | 7]
    assert codec.decode(keys).tolist() == [[1, 2, 3], [15, 0, 7]]


# --- a hand-computed corpus -------------------------------------------------------------------
# reference "ref": documents "a b a" and "B a" (lower-cased): words [a b a] [b a]
#   unigrams a:3 b:2 (5);  bigrams (b,a):2 (a,b):1 (3);  trigrams (a,b,a):1;  no 4-gram
# corpus "other": document "a c": unigrams a:1 c:1; bigram (a,c):1


@pytest.fixture()
def hand_report(tmp_path):
    _jsonl(tmp_path / "ref" / "x.jsonl", ["a b a", "B a"])
    _jsonl(tmp_path / "other" / "x.jsonl", ["a c"])
    opts = ReportOptions(units="words", rare_max_count=2, smoothing_alpha=0.5)
    return build_report([str(tmp_path / "ref"), str(tmp_path / "other")], opts)


def test_concentration_by_hand(hand_report):
    ref, other = hand_report["corpora"]
    assert ref["units"] == 5 and other["units"] == 2
    u, b, t, q = (ref["ngrams"][k] for k in "1234")
    assert (u["total"], u["distinct"]) == (5, 2)
    assert u["distinct_ratio"] == pytest.approx(2 / 5)
    assert u["entropy_bits"] == pytest.approx(-(0.6 * math.log2(0.6) + 0.4 * math.log2(0.4)))
    assert u["top1pct_count"] == 1  # ceil(1 % of 2 distinct)
    assert u["top1pct_share"] == pytest.approx(3 / 5)
    assert u["top100_share"] == pytest.approx(1.0)
    assert u["singleton_share"] == 0.0
    assert [(x["text"], x["count"]) for x in u["top"]] == [("a", 3), ("b", 2)]
    assert u["top"][0]["share"] == pytest.approx(0.6)
    assert (b["total"], b["distinct"]) == (3, 2)
    assert b["distinct_ratio"] == pytest.approx(2 / 3)
    assert b["entropy_bits"] == pytest.approx(
        -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    )
    assert b["top1pct_share"] == pytest.approx(2 / 3)
    assert b["singleton_share"] == pytest.approx(1 / 2)
    assert [(x["text"], x["units"], x["count"]) for x in b["top"]] == [
        ("b a", ["b", "a"], 2),
        ("a b", ["a", "b"], 1),
    ]
    assert (t["total"], t["distinct"], t["entropy_bits"]) == (1, 1, 0.0)
    assert t["top"][0]["text"] == "a b a"
    assert q["total"] == 0 and q["distinct_ratio"] is None and q["top"] == []


def test_tail_and_divergences_by_hand(hand_report):
    ref, other = hand_report["corpora"]
    assert hand_report["reference"] == "ref"
    t1 = other["tail"]["1"]
    # rare in ref (count <= 2): {b}; "other" has no b
    assert t1["reference_rare"] == 1
    assert t1["rare_coverage"] == 0.0
    assert t1["tail_mass"] == 0.0
    assert t1["reference_tail_mass"] == pytest.approx(2 / 5)
    assert t1["distinct_coverage"] == pytest.approx(1 / 2)  # a of {a, b}
    assert t1["reference_mass_covered"] == pytest.approx(3 / 5)
    assert t1["novel_mass"] == pytest.approx(1 / 2)  # c
    # add-0.5 smoothing over the union {a, b, c}: ref (3, 2, 0) / 5, other (1, 0, 1) / 2
    rs = [3.5 / 6.5, 2.5 / 6.5, 0.5 / 6.5]
    cs = [1.5 / 3.5, 0.5 / 3.5, 1.5 / 3.5]
    assert t1["support"] == 3
    assert t1["kl_ref_to_corpus"] == pytest.approx(
        sum(p * math.log2(p / q) for p, q in zip(rs, cs, strict=True))
    )
    assert t1["kl_corpus_to_ref"] == pytest.approx(
        sum(q * math.log2(q / p) for p, q in zip(rs, cs, strict=True))
    )
    js = 0.5 * (0.6 * math.log2(0.6 / 0.55) + 0.4 * math.log2(0.4 / 0.2)) + 0.5 * (
        0.5 * math.log2(0.5 / 0.55) + 0.5 * math.log2(0.5 / 0.25)
    )
    assert t1["js"] == pytest.approx(js)
    t2 = other["tail"]["2"]
    assert (t2["reference_rare"], t2["rare_coverage"], t2["tail_mass"], t2["novel_mass"]) == (
        2,
        0.0,
        0.0,
        1.0,
    )
    # bigrams: union {(a,b), (b,a), (a,c)}: JS of (1/3, 2/3, 0) and (0, 0, 1) is 1 bit
    assert t2["js"] == pytest.approx(1.0)
    assert "js" not in other["tail"]["3"]
    # the reference against itself
    r1 = ref["tail"]["1"]
    assert (r1["rare_coverage"], r1["distinct_coverage"], r1["novel_mass"]) == (1.0, 1.0, 0.0)
    assert r1["tail_mass"] == pytest.approx(2 / 5)
    assert (r1["kl_ref_to_corpus"], r1["kl_corpus_to_ref"], r1["js"]) == (0.0, 0.0, 0.0)
    assert ref["is_reference"] and not other["is_reference"]


def test_reference_outside_the_corpora(tmp_path):
    _jsonl(tmp_path / "ref" / "x.jsonl", ["a b a", "B a"])
    _jsonl(tmp_path / "other" / "x.jsonl", ["a c"])
    opts = ReportOptions(units="words", reference=str(tmp_path / "ref"))
    r = build_report([str(tmp_path / "other")], opts)
    assert [c["label"] for c in r["corpora"]] == ["reference", "other"]
    assert r["reference"] == "reference"
    assert r["corpora"][1]["tail"]["1"]["novel_mass"] == pytest.approx(1 / 2)


def test_divergence_and_tail_functions_direct():
    ref = _table([0, 0, 0, 1, 1], [5], 1)
    same = _table([1, 0, 0, 1, 0], [5], 1)
    d = compare(ref, same, 2, alpha=1.0)
    assert d["kl_ref_to_corpus"] == pytest.approx(0.0, abs=1e-12)
    assert d["js"] == pytest.approx(0.0, abs=1e-12)
    assert (d["rare_coverage"], d["tail_mass"]) == (1.0, 0.4)  # rare: id 1 (twice)
    disjoint = _table([2, 3], [2], 1)
    tc = compare(ref, disjoint, rare_max_count=2, alpha=1.0)
    assert tc["js"] == pytest.approx(1.0)
    assert tc["rare_coverage"] == 0.0 and tc["novel_mass"] == 1.0
    assert "js" not in compare(ref, disjoint, 2)
    c = concentration(_table([], [], 2))
    assert c["total"] == 0 and c["distinct_ratio"] is None and c["entropy_bits"] == 0.0


def test_top_share_uses_one_percent_of_distinct():
    # 250 distinct unigrams: the top 1 % is the 3 most frequent (ceil(2.5))
    ids = np.concatenate(
        [np.repeat(np.arange(250), 1), np.full(7, 5), np.full(4, 9), np.full(2, 1)]
    )
    t = _table(ids, [len(ids)], 1, bits=8)
    c = concentration(t)
    assert c["top1pct_count"] == 3
    assert c["top1pct_share"] == pytest.approx((8 + 5 + 3) / len(ids))
    assert c["top100_share"] == pytest.approx((8 + 5 + 3 + 97) / len(ids))


# --- words ------------------------------------------------------------------------------------


def test_word_units_pattern_and_vocabulary():
    w = WordUnits()
    ids, lengths = w.encode(["Hello, world! Héllo hello", "", "don't"])
    assert lengths.tolist() == [6, 0, 3]
    assert w.unit_texts(ids) == ["hello", ",", "world", "!", "héllo", "hello", "don", "'", "t"]
    ids2, _ = w.encode(["WORLD new"])  # the vocabulary is shared across batches
    assert ids2[0] == ids[2] and w.unit_texts(ids2) == ["world", "new"]
    assert w.vocab_size == 9


# --- probabilities ----------------------------------------------------------------------------


def test_probability_histograms_by_hand():
    acc = ProbabilityAccumulator()
    probs = [0.053, 0.157, 0.953, 0.995, 0.9995, 1.0]  # away from bin edges
    acc.add(np.log(np.array(probs, np.float32)), n_no_context=2)
    s = acc.summary()
    assert s["scored_tokens"] == 6 and s["no_context_tokens"] == 2
    assert s["hist10"]["counts"] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 4]
    assert s["hist10"]["shares"][9] == pytest.approx(4 / 6)
    fine = s["hist_fine"]["counts"]
    assert fine[5] == 1 and fine[15] == 1 and fine[95] == 1 and fine[99] == 3 and sum(fine) == 6
    assert s["share_above"] == {
        "0.9": pytest.approx(4 / 6),
        "0.99": pytest.approx(3 / 6),
        "0.999": pytest.approx(2 / 6),
    }
    mean_lp = sum(math.log(float(np.float32(p))) if p < 1 else 0.0 for p in probs) / 6
    assert s["mean_logprob"] == pytest.approx(mean_lp, rel=1e-6)
    assert s["token_perplexity"] == pytest.approx(math.exp(-mean_lp), rel=1e-6)
    # target 1/2: the 3 most probable tokens (1.0, 0.9995, 0.995): p just below 0.995
    sug = acc.suggest(0.5)
    assert 0.95 < sug["p"] < 0.995
    assert 1 - sug["p"] == pytest.approx(0.005, rel=0.003)
    assert sug["at_resolution_limit"] is False


def test_threshold_suggestion_matches_exact_share():
    rng = np.random.default_rng(0)
    q = 10.0 ** rng.uniform(-7, 0, 200_000)  # 1 - P spread over many decades
    p = np.concatenate([1 - q, rng.uniform(size=50_000)])
    lp = np.log1p(-(1 - p)).astype(np.float32)
    acc = ProbabilityAccumulator()
    for part in np.array_split(lp, 7):
        acc.add(part)
    pf = np.exp(lp.astype(np.float64))
    for target in (0.01, 0.1, 0.3, 0.7):
        sug = acc.suggest(target)
        assert (pf > sug["p"]).mean() == pytest.approx(target, abs=2e-3)
    for t, share in acc.summary()["share_above"].items():
        assert share == pytest.approx((pf > float(t)).mean())
    # a quarter of the tokens at exactly P = 1: a lower target cannot be reached
    ties = ProbabilityAccumulator()
    ties.add(np.concatenate([np.zeros(250, np.float32), lp[:750]]))
    sug = ties.suggest(0.1)
    assert sug["at_resolution_limit"] is True and sug["estimated_rate"] == pytest.approx(0.25)


def test_perplexity_percentiles_by_hand():
    acc = PerplexityAccumulator()
    acc.add(np.array([3.0, 1.0, np.nan]))
    acc.add(np.array([5.0, 2.0, 4.0, np.inf]))
    s = acc.summary()
    assert s["documents"] == 5
    assert s["percentiles"] == {
        "5": pytest.approx(1.2),
        "25": 2.0,
        "50": 3.0,
        "75": 4.0,
        "95": pytest.approx(4.8),
    }
    assert s["mean"] == 3.0
    assert sum(s["log10_hist"]["counts"]) == 5


# --- edits ------------------------------------------------------------------------------------


def test_edit_statistics_by_hand():
    acc = EditAccumulator()
    edit = lambda pos, o, n: {"pos": pos, "char_start": 0, "char_end": 1, "orig_id": o, "new_id": n}  # noqa: E731
    acc.add([3, 0], [2, 0], [1, 0], [[edit(1, 5, 6), edit(4, 5, 6)], []])
    acc.add([2], [2], [0], [[edit(0, 7, 5), edit(2, 5, 9), edit(3, 8, 8)]])
    s = acc.summary(100, lambda ids: [f"t{int(i)}" for i in ids], top=5)
    assert (s["documents"], s["documents_changed"]) == (3, 2)
    assert (s["above"], s["changed"], s["skipped"]) == (5, 4, 1)
    assert (s["above_share"], s["changed_share"], s["skipped_share"]) == (0.05, 0.04, 0.01)
    assert s["changed_per_above"] == pytest.approx(0.8) and s["skipped_per_above"] == pytest.approx(
        0.2
    )
    assert (s["recorded_edits"], s["recorded_same_token"]) == (5, 1)
    assert [(x["id"], x["text"], x["count"]) for x in s["top_replaced"]] == [
        (5, "t5", 3),
        (7, "t7", 1),
    ]
    assert [(x["orig_id"], x["new_id"], x["count"]) for x in s["top_pairs"]] == [
        (5, 6, 2),
        (5, 9, 1),
        (7, 5, 1),
    ]
    assert s["top_pairs"][0]["share"] == pytest.approx(0.5)
    assert acc.summary(None, lambda ids: [], top=0)["above_share"] is None


def test_edited_directory_detected(tmp_path):
    """An edited-like directory (manifest command "edit", tokedit_* columns) gets edit stats."""
    root = tmp_path / "edited"  # a sweep: one dataset per threshold, the manifest above them
    d = root / "p=0.99"
    d.mkdir(parents=True)
    edits_type = pa.list_(
        pa.struct(
            [
                ("pos", pa.int32()),
                ("char_start", pa.int32()),
                ("char_end", pa.int32()),
                ("orig_id", pa.int32()),
                ("new_id", pa.int32()),
            ]
        )
    )
    table = pa.table(
        {
            "text": ["a b", "c"],
            "tokedit_n_above": pa.array([2, 1], pa.int32()),
            "tokedit_n_changed": pa.array([1, 0], pa.int32()),
            "tokedit_n_skipped": pa.array([0, 1], pa.int32()),
            "tokedit_edits": pa.array(
                [[{"pos": 0, "char_start": 0, "char_end": 1, "orig_id": 3, "new_id": 4}], []],
                edits_type,
            ),
        }
    )
    pq.write_table(table, d / "x.parquet")
    write_json(
        manifest_path(root),
        {
            "command": "edit",
            "options": {"text_column": "text", "p": [0.9, 0.99]},
            "shards": {},
            "totals": {"p": {"0.9": {"scored": 99}, "0.99": {"scored": 10}}},
        },
    )
    with pytest.raises(InputError, match="one edited dataset per threshold"):
        build_report([str(root)], ReportOptions(units="words"))
    r = build_report([str(d)], ReportOptions(units="words"))
    e = r["corpora"][0]["edits"]
    assert r["corpora"][0]["kind"] == "edited"
    assert (e["above"], e["changed"], e["skipped"], e["scored_tokens"]) == (3, 1, 1, 10)
    assert e["changed_share"] == pytest.approx(0.1) and e["scored_tokens_basis"] == "manifest"
    assert (e["threshold"], e["redrawn_original"], e["skipped_reasons"]) == (0.99, 1, None)
    assert e["top_pairs"][0]["orig"] == "<3>"  # no tokenizer known: ids shown as <id>


# --- options ----------------------------------------------------------------------------------


def test_bad_options_are_input_errors(tmp_path):
    _jsonl(tmp_path / "a" / "x.jsonl", ["a"])
    a = str(tmp_path / "a")
    with pytest.raises(InputError, match="^labels has 2 name"):
        build_report([a], ReportOptions(labels=["x", "y"], units="words"))
    with pytest.raises(InputError, match=r"^1\.5 in target_edit_rates=\(1\.5,\) is not in"):
        build_report([a], ReportOptions(target_edit_rates=(1.5,), units="words"))
    with pytest.raises(InputError, match="^max_docs=0 must be at least 1"):
        build_report([a], ReportOptions(max_docs=0, units="words"))
    with pytest.raises(InputError, match="tokenizer"):
        build_report([a], ReportOptions(units="tokens"))
    with pytest.raises(InputError, match="no such dataset"):
        build_report([str(tmp_path / "missing")], ReportOptions(units="words"))


def test_sampling_is_deterministic_and_reported(tmp_path):
    texts = [f"doc {i} " + "w" * (i % 7) for i in range(100)]
    _jsonl(tmp_path / "a" / "x.jsonl", texts[:60])
    _jsonl(tmp_path / "a" / "y.jsonl", texts[60:])
    a = str(tmp_path / "a")
    r1 = build_report([a], ReportOptions(units="words", max_docs=10, seed=3))
    r2 = build_report([a], ReportOptions(units="words", max_docs=10, seed=3))
    r3 = build_report([a], ReportOptions(units="words", max_docs=10, seed=4))
    d = r1["corpora"][0]["documents"]
    assert (d["used"], d["total"], d["sampled"], r1["sampled"]) == (10, 100, True, True)
    assert r1["corpora"][0]["ngrams"] == r2["corpora"][0]["ngrams"]
    assert r1["corpora"][0]["ngrams"] != r3["corpora"][0]["ngrams"]
    full = build_report([a], ReportOptions(units="words", max_docs=1000))
    assert full["sampled"] is False and full["corpora"][0]["documents"]["used"] == 100
