"""End-to-end runs of the collapse experiments on the seconds-sized ``test`` preset.

They assert behaviour (files, keys, finite numbers, shared generation-0 data, a probe that
really corrupts) and never tuned outcomes.
"""

from __future__ import annotations

import json
import math

import matplotlib.image
import pytest
from click.testing import CliRunner

from tokedit.cli import main
from tokedit.experiments.data import real_documents
from tokedit.experiments.metrics import make_probe
from tokedit.experiments.presets import PRESETS, get_preset
from tokedit.experiments.recursive import run_recursive


def finite(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


# The TCE arm's gamma: the test preset's 0.1M-parameter model, 3 steps from random init,
# gives its tokens P of about 1/300, so at the preset's gamma 0.9 TCE masks nothing and
# trains to the same bits as CE; at 0.005 it masks ~10-30 % of the tokens.
GAMMA = 0.005
TCE_ARM = f"tce-{GAMMA:g}"


@pytest.fixture(scope="module")
def recursive(tmp_path_factory, corpus_dir):
    out = tmp_path_factory.mktemp("recursive")
    preset = get_preset("test", gammas=(GAMMA,))
    run_recursive(str(corpus_dir), str(out), preset, seed=0, log=lambda m: None)
    return out, json.loads((out / "recursive.json").read_text())


@pytest.fixture(scope="module")
def mixture(tmp_path_factory, corpus_dir):
    """Through the CLI, so the command's wiring is covered too."""
    out = tmp_path_factory.mktemp("mixture")
    args = ["experiment", "mixture", str(corpus_dir), "--out", str(out), "--preset", "test", "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "mixture.json").read_text())


def test_recursive_outputs_every_key_finite(recursive):
    out, r = recursive
    preset = get_preset("test")
    assert set(r["arms"]) == {"ce", TCE_ARM, "toedit"}
    for name, rows in r["arms"].items():
        assert [row["generation"] for row in rows] == list(range(preset.generations + 1))
        for row in rows:
            for key in ("held_out_ppl", "probe_accuracy"):
                assert finite(row[key]), (name, key)
            assert 0 <= row["probe_accuracy"] <= 1
            gen = row["generated"]
            for key in ("unigram_kl", "distinct_1", "distinct_2"):
                assert finite(gen[key]), (name, key)
            shares = gen["hist10"]["shares"]
            assert len(shares) == 10 and all(finite(s) for s in shares)
            assert sum(shares) == pytest.approx(1.0)
            assert row["train"]["steps"] == preset.steps
            masked = row["train"]["tce_masked_share_last"]
            if name.startswith("tce"):
                assert finite(masked) and 0 <= masked <= 1
            elif not (name == "toedit" and row["generation"] == 0):
                assert masked is None
            if name == "toedit":
                assert finite(row["edit"]["p"]) and 0 < row["edit"]["p"] < 1
    assert (out / "recursive.html").is_file()
    html = (out / "recursive.html").read_text()
    for png in r["plots"].values():
        assert png in html
        assert matplotlib.image.imread(out / png).ndim == 3


def test_recursive_arms_share_generation_zero_data(recursive):
    _, r = recursive
    gen0 = {name: rows[0]["train_data_sha"] for name, rows in r["arms"].items()}
    assert len(set(gen0.values())) == 1
    n = get_preset("test").docs_per_slice
    for rows in r["arms"].values():
        assert rows[0]["train_docs"] == n
        assert rows[1]["train_docs"] == 2 * n  # regenerated slice 0 + fresh real slice 1
    # generation 1 trains on regenerated text, not on generation 0's data again
    assert r["arms"]["ce"][1]["train_data_sha"] != r["arms"]["ce"][0]["train_data_sha"]


def test_probe_pairs_differ(corpus_dir):
    docs = real_documents(str(corpus_dir), get_preset("test"), seed=0)
    pairs = make_probe(docs[:20], docs[20:80], n_pairs=50, seed=0)
    assert len(pairs) == 50
    for true, corrupted in pairs:
        assert true != corrupted
        assert len(true.split()) == len(corrupted.split())  # one word replaced, nothing else
        assert sum(a != b for a, b in zip(true.split(), corrupted.split(), strict=True)) == 1


def test_mixture_outputs_every_key_finite(mixture):
    out, r = mixture
    preset = get_preset("test")
    expected = ["human"] + [f"synthetic-{round(100 * f)}%" for f in preset.fractions] + ["toedit"]
    assert list(r["arms"]) == expected
    for name, arm in r["arms"].items():
        assert finite(arm["held_out_ppl"]), name
        assert arm["docs"] == preset.mixture_docs
        for key in ("unigram_kl", "distinct_1", "distinct_2"):
            assert finite(arm["data"][key]), (name, key)
    assert r["arms"]["synthetic-100%"]["synthetic_share"] == 1.0
    assert finite(r["prior"]["held_out_ppl"]) and finite(r["edit"]["p"])
    assert (out / "mixture.html").is_file()
    for png in r["plots"].values():
        assert matplotlib.image.imread(out / png).ndim == 3


def test_gaussian_cli(tmp_path):
    result = CliRunner().invoke(
        main,
        ["experiment", "gaussian", "--out", str(tmp_path), "--generations", "5", "--reps", "20"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "gaussian.json").read_text())
    assert report["generation"] == list(range(6))
    assert finite(report["eta"]) and report["eta"] > 1
    assert matplotlib.image.imread(tmp_path / "gaussian.png").ndim == 3


def test_arms_use_their_loss(recursive):
    """The arms train with the loss they name: from the same initial weights, seed and
    generation-0 data, the TCE arm masks tokens and ends in another model than CE; the
    toedit arm's generation 0 is the CE model. Catches: a TCE arm that trains with plain
    cross entropy (no loss function, gamma dropped, or the mask computed but not applied)."""
    _, r = recursive
    losses = {a["name"]: (a["loss"], a["gamma"], a["data"]) for a in r["arm_definitions"]}
    assert losses == {
        "ce": ("ce", None, "regenerate"),
        TCE_ARM: ("tce", GAMMA, "regenerate"),
        "toedit": ("ce", None, "toedit"),
    }
    ce, tce, toedit = r["arms"]["ce"][0], r["arms"][TCE_ARM][0], r["arms"]["toedit"][0]
    assert tce["train_data_sha"] == ce["train_data_sha"]
    for row in r["arms"][TCE_ARM]:
        masked = row["train"]["tce_masked_share_last"]
        assert masked is not None and 0 < masked < 1, f"the TCE arm masked {masked} of its tokens"
    assert ce["train"]["tce_masked_share_last"] is None
    assert tce["held_out_ppl"] != ce["held_out_ppl"], "the TCE arm trained the CE model"
    assert tce["train"]["train_loss"] != ce["train"]["train_loss"]
    assert toedit["held_out_ppl"] == ce["held_out_ppl"]  # same data, loss and seed


def test_corpus_metrics_of_the_reference_itself(corpus_dir, tiny_prior):
    from tokedit.experiments.metrics import corpus_metrics, unigram_tables
    from tokedit.scoring.hf import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_prior))
    texts = real_documents(str(corpus_dir), get_preset("test"), seed=0)[:30]
    same = corpus_metrics(tokenizer, texts, unigram_tables(tokenizer, texts))
    other = corpus_metrics(
        tokenizer, ["the the the the the"] * 30, unigram_tables(tokenizer, texts)
    )
    assert same["unigram_kl"] == pytest.approx(0.0, abs=1e-9)
    assert other["unigram_kl"] > same["unigram_kl"]
    assert other["distinct_2"] < same["distinct_2"]


def test_presets():
    from tokedit.errors import InputError

    assert get_preset("tiny", steps=7).steps == 7
    from tokedit.training.prior import PRESETS as MODEL_SIZES

    # every experiment preset names a model size of the one table of sizes
    assert {p.model for p in PRESETS.values()} <= set(MODEL_SIZES)
    assert MODEL_SIZES[get_preset("gpu-1b").model]["hidden_size"] == 2048
    with pytest.raises(InputError):
        get_preset("nope")
