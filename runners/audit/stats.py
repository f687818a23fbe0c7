"""Statistics of a proxy-fidelity audit: how well a cheap score ranks architectures as longer training does.

Pure functions of a table of numbers (no training, no files), so they are tested on fixed toy tables. A
*predictor* is any per-architecture score where higher should mean better (proxy accuracy, accuracy after k
epochs of the long schedule, the parameter count, MACs); the *truth* is the accuracy after the long, complete
schedule. Rank correlations come from scipy; their 95% intervals from a paired percentile bootstrap over
architectures, seeded so a report is repeatable.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 2000


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return _nan_if_constant(x, y, lambda a, b: stats.spearmanr(a, b).statistic)


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either list are allowed)."""
    return _nan_if_constant(x, y, lambda a, b: stats.kendalltau(a, b).statistic)


def _nan_if_constant(x, y, fn) -> float:
    a, b = np.asarray(x, float), np.asarray(y, float)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")  # a constant list has no ranking
    return float(fn(a, b))


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of two 2-D arrays (average ranks for ties; nan for a constant row)."""
    return _pearson_rows(stats.rankdata(a, axis=1), stats.rankdata(b, axis=1))


def kendall_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair, from the signs of all pairwise differences (n is tens, so n^2 is cheap)."""
    sa = np.sign(a[:, :, None] - a[:, None, :])
    sb = np.sign(b[:, :, None] - b[:, None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sa * sb).sum((1, 2)) / np.sqrt((sa * sa).sum((1, 2)) * (sb * sb).sum((1, 2)))


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


ROW_STATISTICS = {"spearman": spearman_rows, "kendall": kendall_rows}


def bootstrap_interval(x: Sequence[float], y: Sequence[float], statistic: str = "spearman", seed: int = 0,
                       resamples: int = RESAMPLES) -> tuple[float, float]:
    """Paired percentile-bootstrap 95% interval of Spearman's or Kendall's coefficient, resampling architectures.

    Resamples where the coefficient is undefined (one that draws a single architecture n times has no ranking)
    are left out; ``scipy.stats.bootstrap`` would turn the whole interval into nan for one of those, which at
    n = 10-24 happens, and calling scipy once per resample is slow, so all resamples are ranked at once here.
    (nan, nan) below 3 pairs.
    """
    a, b = np.asarray(x, float), np.asarray(y, float)
    if len(a) < 3:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(resamples, len(a)))
    values = ROW_STATISTICS[statistic](a[idx], b[idx])
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = (1 - CONFIDENCE) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def top_k(scores: Sequence[float], k: int) -> set[int]:
    """Indices of the k highest scores (ties broken by position, first wins)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return set(order[:k])


def top_k_overlap(predictor: Sequence[float], truth: Sequence[float], k: int) -> int:
    """How many of the predictor's k best are among the truth's k best."""
    return len(top_k(predictor, k) & top_k(truth, k))


def regret(predictor: Sequence[float], truth: Sequence[float]) -> float:
    """Truth of the best architecture minus truth of the one the predictor picks: what trusting it costs."""
    pick = max(range(len(predictor)), key=lambda i: (predictor[i], -i))
    return float(max(truth) - truth[pick])


def agreement(predictor: Sequence[float], truth: Sequence[float], k: int, seed: int = 0) -> dict:
    """Every figure of one predictor against the truth."""
    s_lo, s_hi = bootstrap_interval(predictor, truth, "spearman", seed)
    k_lo, k_hi = bootstrap_interval(predictor, truth, "kendall", seed)
    k = min(k, len(truth))
    return {"spearman": spearman(predictor, truth), "spearman_ci": [s_lo, s_hi],
            "kendall": kendall(predictor, truth), "kendall_ci": [k_lo, k_hi],
            "top_k": k, "top_k_overlap": top_k_overlap(predictor, truth, k),
            "regret": regret(predictor, truth)}


def fidelity_report(predictors: dict[str, Sequence[float]], long_runs: Sequence[Sequence[float]], k: int = 5,
                    seed: int = 0) -> dict:
    """The audit's figures.

    ``long_runs`` holds one list of long-schedule accuracies per seed (same architectures, same order); the truth
    is their mean over seeds. The noise ceiling compares seed 0 with seed 1: how well the long run ranks itself,
    the bound no predictor of a single run can beat by more than chance. ``spread`` is the range of the truth:
    a task where it is a handful of validation images cannot rank anything.
    """
    runs = [np.asarray(r, float) for r in long_runs]
    if not runs or any(len(r) != len(runs[0]) for r in runs):
        raise ValueError("long_runs must hold one equally long list per seed")
    truth = np.mean(runs, axis=0)
    report = {"n": int(len(truth)), "truth": truth.tolist(),
              "spread": float(np.ptp(truth)) if len(truth) else float("nan"),
              "predictors": {name: agreement(list(map(float, p)), truth.tolist(), k, seed)
                             for name, p in predictors.items()}}
    if len(runs) >= 2:
        report["noise_ceiling"] = agreement(runs[0].tolist(), runs[1].tolist(), k, seed)
    return report


def seeds_needed(sd: float, difference: float) -> int:
    """Seeds a paired test needs to detect a true ``difference`` when paired differences have this ``sd`` (80%
    power, 5% two-sided, normal approximation); at least 1."""
    return max(1, math.ceil(((1.96 + 0.84) * sd / difference) ** 2))


def search_headroom(proxy: Sequence[float], long_runs: Sequence[Sequence[float]], trials: int,
                    resamples: int = 4000, seed: int = 0) -> dict:
    """About the most a search could gain over random search with ``trials`` proxy runs, on this sample.

    Random search draws ``trials`` architectures (with replacement: the sample stands in for the space) and
    returns the one with the best proxy accuracy; the oracle returns the sample's best architecture by the truth
    (the mean of its long runs). Each resample judges both on one long run drawn at random, so the sd of the
    differences (and the seeds a paired benchmark needs to show the mean one) includes judging noise; it leans a
    little high against a benchmark that judges every architecture with the same seeds. The gain leans high too
    (the oracle was chosen on the runs that judge it), but it is the gain of returning the best of ``n`` random
    architectures, a top 1/n one: a search over the whole space may find better, most of all when ``trials``
    come near or above ``n``.

    A search sees the proxy, not the truth: the same figures for the sample's best architecture *by the proxy*
    (``best_by_proxy``, ``proxy_headroom``) say what a search that maximised this proxy would gain. Where they
    are far below the oracle's, the proxy, not the search, is what falls short.

    Returns the mean judged accuracy of random search's pick and of the oracle's (``best``), their mean
    difference (the headroom), its sd over resamples, and the seeds a paired benchmark would need to show it;
    and the same for the best by the proxy.
    """
    runs = np.asarray(long_runs, float)
    scores = np.asarray(proxy, float)
    if runs.ndim != 2 or runs.shape[1] != len(scores) or len(scores) < 2 or trials < 1:
        raise ValueError("need one long-run list per seed, each as long as the proxy list, and trials >= 1")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(scores), size=(resamples, trials))
    picks = draws[np.arange(resamples), np.argmax(scores[draws], axis=1)]  # ties: the first drawn
    judge = rng.integers(0, len(runs), size=resamples)
    random_pick = runs[judge, picks]

    def against_random(best: int) -> tuple[float, float, float, int | None]:
        diffs = runs[judge, best] - random_pick
        mean, sd = float(diffs.mean()), float(diffs.std(ddof=1))
        return float(runs[judge, best].mean()), mean, sd, seeds_needed(sd, mean) if mean > 1e-9 else None

    best, headroom, sd, need = against_random(int(np.argmax(runs.mean(axis=0))))
    by_proxy, proxy_headroom, proxy_sd, proxy_need = against_random(int(np.argmax(scores)))
    return {"trials": trials, "random_pick": float(random_pick.mean()),
            "best": best, "headroom": headroom, "sd": sd, "seeds_needed": need,
            "best_by_proxy": by_proxy, "proxy_headroom": proxy_headroom, "proxy_sd": proxy_sd,
            "proxy_seeds_needed": proxy_need}


def finite(value):
    """The report as strict JSON data: nan and inf become None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value

