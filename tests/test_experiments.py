"""End-to-end runs of the collapse experiments on the seconds-sized ``test`` preset, and the
metrics against independent computations on small fixed inputs.

They assert behaviour (files, keys, finite numbers, shared generation-0 data, checkpoints
continued generation after generation, a TCE arm that masks, a probe that really corrupts)
and never tuned outcomes. Each test's docstring names the broken implementation it catches.
"""

from __future__ import annotations

import copy
import json
import math
import statistics

import matplotlib.image
import numpy as np
import pytest
from click.testing import CliRunner
from scale_helpers import independent_weights_sha

from tokedit.cli import main
from tokedit.experiments.data import real_documents
from tokedit.experiments.metrics import make_probe
from tokedit.experiments.presets import PRESETS, get_preset
from tokedit.experiments.recursive import run_recursive


def finite(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


# The TCE arm's gamma: the test preset's 0.1M-parameter base, pretrained 3 steps from random
# init, gives its tokens P of about 1/300, so at the preset's gamma 0.9 TCE masks nothing and
# trains to the same bits as CE; at 0.005 it masks ~50-70 % of the tokens.
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
            assert row["train"]["steps"] == preset.finetune_steps
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
        # what generation 0 produced (beam: one text per window) + fresh real slice 1
        assert rows[1]["train_docs"] == rows[0]["generated"]["docs"] + n
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


def test_each_generation_continues_the_previous_checkpoint(recursive):
    """Generation 0 starts from the pretrained base and generation g + 1 from generation g's
    saved checkpoint (its weights before the first step, recorded by the trainer, equal the
    fingerprint of the checkpoint on disk). Catches: every generation retrained from the
    base or from a random initialisation (tokedit's old design), a trainer that ignores the
    model it is given, or a next generation started from another arm's checkpoint."""
    out, r = recursive
    base = independent_weights_sha(out / "base" / "model")
    assert r["base"]["weights_sha"] == base
    preset = get_preset("test")
    assert r["base"]["train"]["steps"] == preset.base_steps
    for name, rows in r["arms"].items():
        assert rows[0]["train"]["initial_weights_sha"] == base, name
        # each generation fine-tunes for the preset's fine-tuning steps, not the general ones
        assert {row["train"]["steps"] for row in rows} == {preset.finetune_steps} != {preset.steps}
        for g in range(1, len(rows)):
            before = independent_weights_sha(out / rows[g - 1]["model_dir"])
            assert rows[g]["train"]["initial_weights_sha"] == before, (name, g)
            assert before != base  # training moved the weights: the check can tell them apart
    # the arms' generation-1 runs start from different checkpoints (CE's vs TCE's)
    assert (
        r["arms"]["ce"][1]["train"]["initial_weights_sha"]
        != r["arms"][TCE_ARM][1]["train"]["initial_weights_sha"]
    )


def test_tce_arm_masks_and_ce_does_not_from_checkpoints(recursive):
    """Read from each saved checkpoint's own training record (tokedit_train.json): the TCE
    arm trained with loss tce at its gamma and masked a share > 0 of its tokens in every
    logged interval; the CE arm trained with ce and masked nothing. Catches: a TCE arm whose
    gamma never reaches the trainer (masks nothing) or a CE arm that truncates."""
    out, r = recursive
    for name, rows in r["arms"].items():
        for row in rows:
            record = json.loads((out / row["model_dir"] / "tokedit_train.json").read_text())
            if name == TCE_ARM:
                assert record["config"]["loss"] == "tce"
                assert record["config"]["gamma"] == GAMMA
                assert record["tce_masked_share"] and min(record["tce_masked_share"]) > 0
            else:
                assert record["config"]["loss"] == "ce"
                assert record["tce_masked_share"] == []


def test_kl_nats_with_floor_matches_hand_computation():
    """ForTIFAI's KL(synthetic || real): normalise, floor zeros at 1e-10, natural log.
    Catches: bits instead of nats, the direction reversed, add-0.5 smoothing, a floor applied
    before normalising, zeros dropped instead of floored."""
    from tokedit.experiments.metrics import kl_nats_with_floor

    synthetic, real = [3, 1, 0, 0], [1, 1, 2, 0]
    # p = (.75, .25, 1e-10, 1e-10), q = (.25, .25, .5, 1e-10)
    expected = 0.75 * math.log(0.75 / 0.25) + 1e-10 * math.log(1e-10 / 0.5) + 0.0
    assert kl_nats_with_floor(synthetic, real) == pytest.approx(expected, rel=1e-12)
    assert kl_nats_with_floor(real, real) == 0.0
    # real has a token the synthetic corpus lacks, and the other way round: finite, floored
    assert kl_nats_with_floor([0, 4], [4, 0]) == pytest.approx(
        1e-10 * math.log(1e-10) + math.log(1 / 1e-10), rel=1e-12
    )


def test_knowledge_test_matches_a_direct_computation(tiny_prior):
    """The knowledge test scores each variant by the mean log-prob of its answer tokens
    (ForTIFAI's span: from the end of the context to the shorter variant's end), computed
    here directly from the model's logits. Catches: a span shifted by one (scoring the
    context's last token or dropping the answer's first), a sum instead of a mean, scoring
    the whole text, or true and false swapped."""
    import torch

    from tokedit.experiments.metrics import knowledge_test, kt_accuracy_of
    from tokedit.scoring.hf import load_causal_lm, load_tokenizer

    model, tok = load_causal_lm(str(tiny_prior)), load_tokenizer(str(tiny_prior))
    items = [
        {
            "context": "To be, or not to be.",
            "true": "That is the question.",
            "false": "That is the little answer.",
        },
        {
            "context": "Now is the winter of our discontent.",
            "true": "Made glorious summer.",
            "false": "Made glorious thunder.",
        },
    ]
    got = knowledge_test(model, tok, items)

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    expected = []
    for it in items:
        texts = [it["context"] + " " + it["true"], it["context"] + " " + it["false"]]
        start, end = len(ids(it["context"])), min(len(ids(t)) for t in texts)
        pair = []
        for t in texts:
            x = torch.tensor([ids(t)])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=x).logits[0].double(), -1)
            pair.append(sum(float(logp[j - 1, x[0, j]]) for j in range(start, end)) / (end - start))
        expected.append(pair)
    assert np.ravel(got["scores"]) == pytest.approx(np.ravel(expected), rel=1e-5)
    assert got["accuracy"] == np.mean([a > b for a, b in expected])
    assert kt_accuracy_of([[-1.0, -2.0], [-3.0, -2.0], [-1.0, -1.0]]) == pytest.approx(1 / 3)


def test_time_to_failure():
    """The first generation at or past the line, None when none crosses. Catches: an index
    off by one, a strict comparison, the direction ignored."""
    from tokedit.experiments.metrics import time_to_failure

    assert time_to_failure([0.1, 0.3, 0.6, 0.2], "above", 0.5) == 2
    assert time_to_failure([0.4, 0.5], "above", 0.5) == 1
    assert time_to_failure([0.8, 0.7, 0.55, 0.5], "below", 0.55) == 2
    assert time_to_failure([0.8, 0.7], "below", 0.55) is None
    assert time_to_failure([0.1, 0.2], "above", 0.5) is None


def test_beam_windows_and_settings(tiny_prior):
    """ForTIFAI's generation: blocks of new_tokens, windows of context_tokens at a stride of
    one block, len(blocks) - blocks_before of them, 5 beams and repetition penalty 3.0 by
    default; the corpus equals a direct ``generate`` call with those settings. Catches:
    non-overlapping windows, a window count off by one, sampling instead of beam search, the
    repetition penalty dropped."""
    import torch

    from tokedit.scoring.hf import load_causal_lm, load_tokenizer
    from tokedit.training.generate import BeamOptions, beam_windows, generate_beam_corpus

    assert beam_windows(list(range(20)), 8, 4) == [
        list(range(0, 8)),
        list(range(4, 12)),
        list(range(8, 16)),
    ]
    d = BeamOptions()
    assert (d.context_tokens, d.new_tokens, d.num_beams, d.repetition_penalty) == (512, 32, 5, 3.0)
    model, tok = load_causal_lm(str(tiny_prior)), load_tokenizer(str(tiny_prior))
    texts = ["To be, or not to be, that is the question: whether 'tis nobler in the mind"]
    options = BeamOptions(context_tokens=8, new_tokens=4, num_beams=3, repetition_penalty=3.0)
    got = generate_beam_corpus(model, tok, texts, options)
    stream = tok(texts, add_special_tokens=False)["input_ids"][0] + [tok.eos_token_id]
    windows = beam_windows(stream, 8, 4)
    assert len(got) == len(windows) > 0
    x = torch.tensor(windows[:1])
    direct = model.generate(
        input_ids=x,
        attention_mask=torch.ones_like(x),
        do_sample=False,
        num_beams=3,
        repetition_penalty=3.0,
        max_new_tokens=4,
        min_new_tokens=4,
        pad_token_id=tok.eos_token_id,
    )[0, 8:]
    assert got[0] == tok.decode(direct.tolist(), skip_special_tokens=True)


def test_mixture_corpora_are_independent(mixture, corpus_dir):
    """The second corpus is other plays than the arms train on, and the synthetic corpus is
    sampled from generic prompts, not from the human documents. Catches: an "other corpus"
    drawn from the training plays, or synthetic documents that continue human prefixes."""
    from tokedit.experiments.data import split_by_group
    from tokedit.experiments.mixture import GENERIC_PROMPTS

    _, r = mixture
    main, other, groups = split_by_group(str(corpus_dir), get_preset("test"), seed=0)
    assert groups and r["other_corpus"]["groups"] == groups and other
    assert not set(main) & set(other)
    ids = pq_ids(corpus_dir)
    assert {i.split("/")[0] for i in ids} > set(groups)  # some plays are left to train on
    for arm in r["arms"].values():
        assert finite(arm["other_corpus_ppl"])
    for text in r["synthetic_corpus"]["examples"]:
        assert text.startswith(GENERIC_PROMPTS)
        assert not any(text[:20] == doc[:20] for doc in main)


def pq_ids(corpus_dir) -> list[str]:
    from tokedit.io.read import read_ok_texts

    return read_ok_texts(str(corpus_dir), "text", "id")[0]


def write_seed_runs(tmp_path, result: dict, name: str, shifts: dict[int, float], get) -> list:
    """Copies of one run's result as runs of other seeds, written in a scrambled seed order:
    each copy moves the metric ``get`` returns a container of by ``shift`` for the CE (or
    first) arm and by twice that for every other arm, so paired differences depend on the
    seed."""
    runs = []
    for seed, shift in shifts.items():
        other = copy.deepcopy(result)
        other["seed"] = seed
        for k, arm in enumerate(other["arms"].values()):
            for holder, key in get(arm):
                holder[key] += shift * (1 if k == 0 else 2)
        run = tmp_path / f"seed{seed}"
        run.mkdir()
        (run / name).write_text(json.dumps(other))
        runs.append(str(run))
    return runs


SHIFTS = {2: 3.0, 0: 0.0, 1: 1.0}  # seed: shift, in the order the runs are passed


def test_summary_over_seeds_matches_an_independent_computation(recursive, tmp_path):
    """`experiment summary` over three seeds: per arm and generation, the values in seed order,
    their mean and sample standard deviation, and each arm minus CE *of the same seed*, equal
    numpy / statistics on the same numbers. Catches: a population standard deviation, runs
    left in the order given, an arm paired with another seed's CE, generations mixed up."""
    _, r = recursive
    runs = write_seed_runs(
        tmp_path, r, "recursive.json", SHIFTS, lambda rows: [(row, "held_out_ppl") for row in rows]
    )
    result = CliRunner().invoke(
        main, ["experiment", "summary", *runs, "--out", str(tmp_path / "s.json")]
    )
    assert result.exit_code == 0, result.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["seeds"] == [0, 1, 2] and s["runs"] == sorted(runs)
    for k, (arm, rows) in enumerate(r["arms"].items()):
        scale = 1 if k == 0 else 2
        for g, row in enumerate(rows):
            expect = [row["held_out_ppl"] + scale * d for d in (0.0, 1.0, 3.0)]
            got = s["arms"][arm][g]["held_out_ppl"]
            assert got["values"] == pytest.approx(expect)
            assert got["mean"] == pytest.approx(np.mean(expect))
            assert got["std"] == pytest.approx(statistics.stdev(expect))
            if arm != "ce":
                base = row["held_out_ppl"] - r["arms"]["ce"][g]["held_out_ppl"]
                paired = s["paired_vs_ce"][arm][g]["held_out_ppl"]["values"]
                assert paired == pytest.approx([base + d for d in (0.0, 1.0, 3.0)])
    assert set(s["paired_vs_ce"]) == set(r["arms"]) - {"ce"}
    for arm, metrics in r["time_to_failure"].items():
        for metric, g in metrics.items():
            assert s["time_to_failure"][arm][metric] == [g, g, g]
    assert (
        f"| ce | 0 | {np.mean([r['arms']['ce'][0]['held_out_ppl'] + d for d in (0, 1, 3)]):.4g} ± "
        in result.output
    )


def test_summary_of_mixture_seeds(mixture, tmp_path):
    """The mixture branch: per arm, the other-corpus perplexity over seeds in seed order.
    Catches: a summary that reads only recursive results or the wrong metric."""
    _, r = mixture
    runs = write_seed_runs(
        tmp_path, r, "mixture.json", SHIFTS, lambda arm: [(arm, "other_corpus_ppl")]
    )
    result = CliRunner().invoke(
        main, ["experiment", "summary", *runs, "--out", str(tmp_path / "s.json")]
    )
    assert result.exit_code == 0, result.output
    s = json.loads((tmp_path / "s.json").read_text())
    for k, (arm, a) in enumerate(r["arms"].items()):
        expect = [a["other_corpus_ppl"] + (1 if k == 0 else 2) * d for d in (0.0, 1.0, 3.0)]
        assert s["arms"][arm]["other_corpus_ppl"]["values"] == pytest.approx(expect)
        assert s["arms"][arm]["held_out_ppl"]["std"] == pytest.approx(0.0)


def test_summary_refuses_runs_that_are_not_one_experiment(recursive, mixture, tmp_path):
    """Spread is only meaningful over seeds of one setting: other settings, another
    experiment, a seed twice or a directory without a result exit 2 and name the runs.
    Catches: a summary that silently averages different presets or double-counts a seed."""
    _, r = recursive
    cases = {
        "steps": {**r, "seed": 1, "preset": {**r["preset"], "steps": 99}},
        "recursive run": {**mixture[1], "seed": 1},
        "seed 0 appears more than once": {**r},
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "recursive.json").write_text(json.dumps(r))
    for needle, other in cases.items():
        b = tmp_path / needle.replace(" ", "-")
        b.mkdir()
        name = "recursive.json" if other["experiment"] == "recursive" else "mixture.json"
        (b / name).write_text(json.dumps(other))
        result = CliRunner().invoke(main, ["experiment", "summary", str(tmp_path / "a"), str(b)])
        assert result.exit_code == 2, (needle, result.output)
        assert needle in result.output and str(b) in result.output, result.output
    result = CliRunner().invoke(main, ["experiment", "summary", str(tmp_path)])
    assert result.exit_code == 2 and f"{tmp_path}: no recursive.json" in result.output


def test_mixture_samples_and_edits_with_a_pretrained_prior(corpus_dir, tiny_prior, tmp_path):
    """`mixture --model DIR`: the given pretrained model is the prior. No prior is trained in
    OUT, the synthetic corpus is what that model samples from the generic prompts (sampled
    again here with the same seed) and ToEdit scored with it. Catches: --model ignored by
    mixture (a prior trained here instead), a synthetic corpus from another model, ToEdit
    scoring with the arms' initial model."""
    from tokedit.experiments.mixture import GENERIC_PROMPTS
    from tokedit.experiments.models import load, prompted
    from tokedit.io.manifest import read_manifest

    args = ["experiment", "mixture", str(corpus_dir), "--out", str(tmp_path), "--preset", "test"]
    result = CliRunner().invoke(main, [*args, "--model", str(tiny_prior), "-q"])
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "mixture.json").read_text())
    assert r["prior"]["path"] == str(tiny_prior) and r["prior"]["pretrained_here"] is False
    assert not (tmp_path / "prior").exists()
    preset = get_preset("test")
    n = r["synthetic_corpus"]["docs"]
    prompts = [GENERIC_PROMPTS[i % len(GENERIC_PROMPTS)] for i in range(n)]
    model, tok = load(tiny_prior)
    again = prompted(model, tok, prompts, preset.doc_tokens, preset, seed=0)
    assert r["synthetic_corpus"]["examples"] == again[:3]
    scores = read_manifest(tmp_path / "toedit-work" / "to-edit-scores")
    assert scores["options"]["model"] == str(tiny_prior)
