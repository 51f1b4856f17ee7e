"""Gaussian refit experiment: eta(a) against tabulated normal values, the measured tail-fit
variance ratio against eta(a) within sampling error, MLE collapse, report and plot."""

import json
import math

import numpy as np
import pytest

from tokedit.experiments.gaussian import (
    eta,
    gaussian_report,
    plot_gaussian,
    run_gaussian_experiment,
    tail_fourth_moment,
)

# standard normal table values: (a, phi(a), 1 - Phi(a))
TABLE = [
    (0.5, 0.3520653267642995, 0.3085375387259869),
    (1.0, 0.24197072451914337, 0.15865525393145707),
    (2.0, 0.05399096651318806, 0.022750131948179195),
    (3.0, 0.0044318484119380075, 0.0013498980316300933),
]


def test_eta_known_values():
    assert eta(0.0) == 1.0  # no truncation: the variance is unchanged
    for a, pdf, sf in TABLE:
        assert eta(a) == pytest.approx(1 + a * pdf / sf, rel=1e-12)
    assert eta(1.0) == pytest.approx(2.525135276, rel=1e-9)
    assert eta(2.0) == pytest.approx(5.746431066, rel=1e-9)
    # large a: eta(a) = a^2 + 2 - 2/a^2 + O(a^-4); the continued fraction takes over past 30
    for a in (10.0, 29.0, 31.0, 60.0):
        assert eta(a) - a * a == pytest.approx(2 - 2 / a**2, abs=10 / a**4)
    assert eta(30.0 - 1e-9) == pytest.approx(eta(30.0 + 1e-9), rel=1e-9)
    vals = [eta(a / 4) for a in range(40)]
    assert all(b > a for a, b in zip(vals, vals[1:], strict=False))
    with pytest.raises(ValueError):
        eta(-0.1)


@pytest.mark.parametrize("a", [0.5, 1.0, 2.0, 3.0])
def test_one_generation_tail_variance_ratio_matches_eta(a):
    n = 200_000
    res = run_gaussian_experiment(generations=1, n=n, a=a, seed=11)
    ratio = res["tail"]["var"][1] / res["tail"]["var"][0]
    # standard error of the sample variance of the m tail samples: sqrt(Var(z^2|tail) / m)
    m = res["tail"]["n_used"][0]
    assert m == pytest.approx(n * 2 * 0.5 * math.erfc(a / math.sqrt(2)), rel=0.05)
    se = math.sqrt((tail_fourth_moment(a) - eta(a) ** 2) / m)
    assert abs(ratio - eta(a)) < 5 * se
    # and it is clearly not the MLE ratio (n-1)/n ~ 1
    assert abs(res["mle"]["var"][1] - 1.0) < 5 * math.sqrt(2 / n)
    assert ratio > 1 + 0.3 * (eta(a) - 1)


def test_tail_variance_grows_like_eta_power():
    res = run_gaussian_experiment(generations=4, n=100_000, a=1.0, seed=3)
    growth = res["tail"]["var"] / res["theory"]["tail"]
    assert np.allclose(growth, 1.0, rtol=0.05)
    assert res["tail"]["var"][-1] > 30  # eta(1)^4 = 40.7


def test_mle_collapses_with_small_n():
    n, G, reps = 10, 20, 4000
    res = run_gaussian_experiment(generations=G, n=n, a=1.0, seed=0, reps=reps)
    final = res["mle"]["var_reps"][-1]
    want = ((n - 1) / n) ** G  # E[var_G] = 0.9^20 = 0.1216
    se = final.std(ddof=1) / math.sqrt(reps)
    assert abs(final.mean() - want) < 5 * se
    assert final.mean() < 0.25
    # the typical chain collapses much faster than the mean: E[log(chi2_9/10)] ~ -0.22 a step
    assert np.median(final) < 0.05
    # mean variance goes down generation after generation (up to noise)
    v = res["mle"]["var"]
    assert v[5] < v[0] and v[10] < v[5] and v[20] < v[10]


def test_same_seed_same_result_and_config():
    a = run_gaussian_experiment(5, 50, 1.5, seed=7, reps=3)
    b = run_gaussian_experiment(5, 50, 1.5, seed=7, reps=3)
    c = run_gaussian_experiment(5, 50, 1.5, seed=8, reps=3)
    assert np.array_equal(a["tail"]["var_reps"], b["tail"]["var_reps"])
    assert not np.array_equal(a["tail"]["var_reps"], c["tail"]["var_reps"])
    assert a["mle"]["var_reps"].shape == (6, 3)
    assert len(a["tail"]["n_used"]) == 5


def test_too_few_tail_samples_keep_the_previous_fit():
    # a = 6 with n = 20: essentially never two samples in the tail, the fit stays N(0, 1)
    res = run_gaussian_experiment(generations=3, n=20, a=6.0, seed=0)
    assert list(res["tail"]["var"]) == [1.0, 1.0, 1.0, 1.0]
    assert list(res["tail"]["n_used"]) == [0.0, 0.0, 0.0]


def test_report_is_json_and_consistent():
    res = run_gaussian_experiment(generations=3, n=1000, a=2.0, seed=1, reps=4)
    rep = gaussian_report(res)
    back = json.loads(json.dumps(rep, allow_nan=False))
    assert back["eta"] == pytest.approx(5.746431066)
    assert back["generation"] == [0, 1, 2, 3]
    assert back["arms"]["tail"]["var"] == pytest.approx(list(res["tail"]["var"]))
    assert back["arms"]["mle"]["var"][0] == 1.0
    assert len(back["arms"]["mle"]["var_se"]) == 4
    assert back["one_generation_ratio"]["tail_theory_eta"] == pytest.approx(5.746431066)
    assert back["one_generation_ratio"]["mle_theory"] == pytest.approx(0.999)
    assert back["theory_var"]["tail"][3] == pytest.approx(5.746431066**3)


def test_report_maps_overflow_to_null():
    res = run_gaussian_experiment(generations=1, n=100, a=1.0, seed=0)
    res["tail"]["var"] = np.array([1.0, np.inf])
    rep = gaussian_report(res)
    assert rep["arms"]["tail"]["var"] == [1.0, None]
    json.dumps(rep, allow_nan=False)


def test_plot_writes_a_png(tmp_path):
    from matplotlib.image import imread

    res = run_gaussian_experiment(generations=10, n=50, a=1.0, seed=0, reps=5)
    path = tmp_path / "gaussian.png"
    plot_gaussian(res, path)
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] == 420 and img.shape[1] == 640
    assert img.std() > 0.01  # something is drawn
