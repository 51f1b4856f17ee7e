"""1-D Gaussian refit loop: model collapse and tail truncation in closed form.

The smallest model of recursive training: a "model" is a Gaussian N(mu, sigma^2); each
generation draws ``n`` samples from the current fit and refits on them.

* ``mle`` arm: refit mean and variance by maximum likelihood on all samples. The variance
  estimate is biased (E = (n-1)/n sigma^2) and its logarithm drifts down, so the fit
  collapses: E[sigma_g^2] = ((n-1)/n)^g, and the typical (median) variance falls faster.
* ``tail`` arm: refit only on the non-confident samples ``|x - mu| >= a*sigma``: the
  analogue of Truncated Cross Entropy, which trains only where the model is not confident.
  For large ``n`` one generation multiplies the variance by

      eta(a) = E[z^2 | |z| >= a] = 1 + a*phi(a) / (1 - Phi(a)),   z ~ N(0, 1)

  (phi / Phi: standard normal pdf / cdf), so eta(0) = 1 and eta(a) > 1 for a > 0: dropping
  the confident centre pushes the fit *away* from collapse, and the push is known exactly.

Pure numpy; chains are vectorised over ``reps`` independent repetitions (memory about
``3 * reps * n`` float64). Both arms use the same standard-normal draws (common random
numbers) so their difference is not sampling noise between arms.
"""

from __future__ import annotations

import math

import numpy as np

ARMS = ("mle", "tail")


def normal_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def normal_sf(x: float) -> float:
    """1 - Phi(x) via erfc: no cancellation in the upper tail, unlike 1 - erf-based cdf."""
    return 0.5 * math.erfc(x / math.sqrt(2.0))


def _mills_inverse(a: float) -> float:
    """phi(a) / (1 - Phi(a)); a continued fraction where both underflow (a > 30)."""
    if a <= 30.0:
        return normal_pdf(a) / normal_sf(a)
    frac = 0.0
    for k in range(60, 0, -1):  # (1-Phi)/phi = 1/(a + 1/(a + 2/(a + 3/(a + ...))))
        frac = k / (a + frac)
    return a + frac


def eta(a: float) -> float:
    """Variance amplification of one tail-only refit: ``1 + a*phi(a)/(1 - Phi(a))``."""
    if a < 0:
        raise ValueError(f"a must be >= 0, got {a}")
    return 1.0 + a * _mills_inverse(a)


def tail_fourth_moment(a: float) -> float:
    """E[z^4 | |z| >= a] = 3 + (a^3 + 3a) phi(a)/(1 - Phi(a)): gives the sampling error of
    the tail-fit variance, Var(z^2 | tail) = this - eta(a)^2."""
    return 3.0 + (a**3 + 3.0 * a) * _mills_inverse(a)


def _refit(x: np.ndarray, keep: np.ndarray, mu: np.ndarray, var: np.ndarray):
    """MLE mean / variance per row over the kept samples; rows with < 2 kept samples keep
    their previous fit (a fit needs two points)."""
    m = keep.sum(axis=1)
    ok = m >= 2
    denom = np.maximum(m, 1)
    new_mu = np.where(keep, x, 0.0).sum(axis=1) / denom
    dev = np.where(keep, x - new_mu[:, None], 0.0)
    new_var = (dev * dev).sum(axis=1) / denom
    return np.where(ok, new_mu, mu), np.where(ok, new_var, var), m


def run_gaussian_experiment(
    generations: int = 50, n: int = 100, a: float = 1.0, seed: int = 0, reps: int = 1
) -> dict:
    """Run both arms from N(0, 1) for ``generations`` refits of ``n`` samples each.

    Returns a dict with ``config``, ``eta``, ``generation`` (0..G), and per arm
    ``var_reps`` / ``mean_reps`` (arrays ``[G+1, reps]``) plus ``var`` (mean over reps),
    ``var_median``; the tail arm also has ``n_used`` (mean kept samples per refit, length
    G). ``theory`` holds E[var_g] for the MLE arm, ``((n-1)/n)^g``, and the large-``n``
    tail prediction ``eta(a)^g`` (finite ``n`` adds the MLE bias of the ~``n*2(1-Phi(a))``
    kept samples). Use :func:`gaussian_report` for a JSON-able summary.
    """
    if generations < 0 or n < 2 or reps < 1:
        raise ValueError("need generations >= 0, n >= 2, reps >= 1")
    eta_a = eta(a)  # validates a
    rng = np.random.default_rng(seed)
    state = {arm: (np.zeros(reps), np.ones(reps)) for arm in ARMS}
    hist = {arm: {"mean": [state[arm][0]], "var": [state[arm][1]], "n_used": []} for arm in ARMS}
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(generations):
            z = rng.standard_normal((reps, n))
            for arm in ARMS:
                mu, var = state[arm]
                sigma = np.sqrt(var)[:, None]
                x = mu[:, None] + sigma * z
                keep = np.ones_like(z, dtype=bool) if arm == "mle" else np.abs(z) >= a
                mu, var, m = _refit(x, keep, mu, var)
                state[arm] = (mu, var)
                hist[arm]["mean"].append(mu)
                hist[arm]["var"].append(var)
                hist[arm]["n_used"].append(float(m.mean()))

    g = np.arange(generations + 1)
    result = {
        "config": {"generations": generations, "n": n, "a": float(a), "seed": seed, "reps": reps},
        "eta": eta_a,
        "generation": g,
        "theory": {"mle": ((n - 1) / n) ** g.astype(float), "tail": eta_a ** g.astype(float)},
    }
    for arm in ARMS:
        var_reps = np.stack(hist[arm]["var"])
        result[arm] = {
            "var_reps": var_reps,
            "mean_reps": np.stack(hist[arm]["mean"]),
            "var": var_reps.mean(axis=1),
            "var_median": np.median(var_reps, axis=1),
            "n_used": np.asarray(hist[arm]["n_used"]),
        }
    return result


def _jsonable(values) -> list:
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, dtype=float)]


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def gaussian_report(result: dict) -> dict:
    """JSON-able summary of :func:`run_gaussian_experiment` (non-finite numbers -> null).

    ``arms.<arm>.var`` is the mean variance per generation over reps, ``var_se`` its
    standard error, ``var_median`` the median; ``one_generation_ratio`` compares the first
    refit's measured variance ratio with theory (``eta(a)`` for the tail arm, ``(n-1)/n``
    for MLE).
    """
    reps = result["config"]["reps"]
    arms = {}
    for arm in ARMS:
        r = result[arm]
        with np.errstate(invalid="ignore"):
            se = r["var_reps"].std(axis=1, ddof=1) / math.sqrt(reps) if reps > 1 else None
        arms[arm] = {
            "var": _jsonable(r["var"]),
            "var_se": _jsonable(se) if se is not None else None,
            "var_median": _jsonable(r["var_median"]),
            "mean": _jsonable(r["mean_reps"].mean(axis=1)),
            "final_var": _num(r["var"][-1]),
            "mean_samples_used": _jsonable(r["n_used"]),
        }
    one = None
    if result["config"]["generations"] >= 1:
        n = result["config"]["n"]
        one = {
            "tail": _num(result["tail"]["var"][1]),
            "tail_theory_eta": result["eta"],
            "mle": _num(result["mle"]["var"][1]),
            "mle_theory": (n - 1) / n,
        }
    return {
        "experiment": "gaussian",
        "config": dict(result["config"]),
        "eta": result["eta"],
        "generation": [int(g) for g in result["generation"]],
        "theory_var": {arm: _jsonable(v) for arm, v in result["theory"].items()},
        "arms": arms,
        "one_generation_ratio": one,
    }


def plot_gaussian(result: dict, path) -> None:
    """Variance per generation (log scale), measured vs theory, as a PNG at ``path``.

    Uses ``Figure`` directly (Agg canvas) so it never touches pyplot's global state.
    """
    from tokedit.analysis.html import new_figure

    cfg = result["config"]
    g = result["generation"]
    fig, (ax,) = new_figure(6.4, 4.2)
    colours = {"mle": "tab:blue", "tail": "tab:red"}
    labels = {
        "mle": "MLE refit (all samples)",
        "tail": f"tail-only refit, |x-mu| >= {cfg['a']:g} sigma",
    }
    for arm in ARMS:
        var = np.asarray(result[arm]["var"], dtype=float)
        ok = np.isfinite(var) & (var > 0)
        ax.plot(g[ok], var[ok], color=colours[arm], label=f"{labels[arm]} (mean of {cfg['reps']})")
        if cfg["reps"] > 1:
            med = np.asarray(result[arm]["var_median"], dtype=float)
            okm = np.isfinite(med) & (med > 0)
            ax.plot(g[okm], med[okm], color=colours[arm], alpha=0.5, lw=1, label=f"{arm} median")
        theory = np.asarray(result["theory"][arm], dtype=float)
        okt = np.isfinite(theory) & (theory > 0)
        ax.plot(
            g[okt],
            theory[okt],
            color=colours[arm],
            ls="--",
            lw=1,
            label=f"{arm} theory" + (" (large n)" if arm == "tail" else ""),
        )
    ax.set_yscale("log")
    ax.set_xlabel("generation")
    ax.set_ylabel("fitted variance")
    ax.set_title(f"Gaussian refit, n={cfg['n']}, eta({cfg['a']:g})={result['eta']:.3f}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
