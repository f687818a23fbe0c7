"""Error EDFs of a design space, as in Radosavovic et al. 2020 ("Designing Network Design Spaces", RegNet).

The EDF of a population of trained models is ``F(e) = sum_i w_i [e_i < e]``: the (weighted) fraction of models
with error below ``e``. Plain EDFs weight every model 1/n. Comparing EDFs split by a design choice (SK blocks
vs SE blocks) can be confounded by size when one choice tends to give bigger models, so the *normalized*
(matched-complexity) EDF reweights each group so that every complexity bucket counts the same:
``w_i = 1 / (B * n_{g,b(i)})`` over the B buckets that every compared group reaches, where ``n_{g,b}`` is the
number of the group's models in bucket b. Bands are percentile bootstrap intervals (models resampled with
replacement). A value's effect is summarised as the share of its models below the population's median error,
with a Jeffreys interval on Kish's effective sample size. No library computes these EDFs, so the few lines live
here, with tests against hand computations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def edf(errors, grid, weights=None) -> np.ndarray:
    """``F(e)`` at every ``e`` of ``grid``: the weighted fraction of ``errors`` strictly below ``e``."""
    errors = np.asarray(errors, dtype=float)
    grid = np.asarray(grid, dtype=float)
    if errors.size == 0:
        return np.full(grid.shape, np.nan)
    w = np.full(errors.shape, 1.0 / errors.size) if weights is None else np.asarray(weights, dtype=float)
    below = errors[None, :] < grid[:, None]
    return below.astype(float) @ w / w.sum()


def buckets(complexity, n_buckets: int) -> np.ndarray:
    """Bucket index of each model: quantile buckets of log complexity (params or MACs) over the whole population,
    so each bucket holds about the same number of models."""
    c = np.log(np.asarray(complexity, dtype=float))
    if c.size == 0:
        return np.zeros(0, dtype=int)
    edges = np.quantile(c, np.linspace(0, 1, n_buckets + 1)[1:-1])
    return np.searchsorted(edges, c, side="right")


def matched_weights(groups: dict, bucket_of) -> dict:
    """Per group, the weight of each of its models so that each bucket every group reaches counts equally.

    ``groups`` maps a value to the indices of its models; ``bucket_of`` gives each model's bucket. Models in a
    bucket some group does not reach get weight 0 (their complexity has nothing to be compared with)."""
    bucket_of = np.asarray(bucket_of)
    shared = None
    for idx in groups.values():
        reached = set(bucket_of[list(idx)].tolist())
        shared = reached if shared is None else shared & reached
    shared = sorted(shared or ())
    out = {}
    for value, idx in groups.items():
        b = bucket_of[list(idx)]
        w = np.zeros(len(idx))
        for k in shared:
            inside = b == k
            w[inside] = 1.0 / (len(shared) * inside.sum())
        out[value] = w
    return out


def bootstrap_band(errors, grid, weights=None, n_boot: int = 500, level: float = 0.9, seed: int = 0):
    """(low, high) percentile bootstrap band of the EDF at ``level`` (models resampled with replacement)."""
    errors = np.asarray(errors, dtype=float)
    w = np.full(errors.shape, 1.0) if weights is None else np.asarray(weights, dtype=float)
    if errors.size == 0:
        nan = np.full(np.shape(grid), np.nan)
        return nan, nan
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, errors.size, size=(n_boot, errors.size))
    curves = []
    for d in draws:
        if w[d].sum() > 0:
            curves.append(edf(errors[d], grid, w[d]))
    curves = np.array(curves)
    alpha = (1 - level) / 2
    return np.quantile(curves, alpha, axis=0), np.quantile(curves, 1 - alpha, axis=0)


# Below this many trials a value gets no verdict: 3 lucky trials out of 3 would otherwise "help", and a report
# holds dozens of values, so some would by chance.
MIN_TRIALS = 5


def effective_n(weights) -> float:
    """Kish's effective sample size of weighted models: (sum w)^2 / sum w^2 (n when all weights are equal)."""
    w = np.asarray(weights, dtype=float)
    return float(w.sum() ** 2 / (w ** 2).sum()) if (w ** 2).sum() > 0 else 0.0


def share_interval(share: float, n: float, level: float = 0.9) -> tuple[float, float]:
    """Jeffreys interval of a proportion observed as ``share`` of ``n`` (effective) trials: honest for a handful
    of trials, where a bootstrap of 3 models that all did well would claim certainty."""
    from scipy.stats import beta

    k = share * n
    alpha = (1 - level) / 2
    low = 0.0 if k <= 0 else float(beta.ppf(alpha, k + 0.5, n - k + 0.5))
    high = 1.0 if k >= n else float(beta.ppf(1 - alpha, k + 0.5, n - k + 0.5))
    return low, high


@dataclass
class Effect:
    """What one value of a choice does: the (weighted) share of its models whose error is below the median
    error of all models, with a Jeffreys interval on the effective number of models. Above 0.5 with the whole
    interval: the value helps; below: it hurts."""

    value: object
    trials: int
    median_error: float
    share_below_median: float
    low: float
    high: float

    @property
    def verdict(self) -> str:
        if self.trials < MIN_TRIALS:
            return "too few trials"
        if self.low > 0.5:
            return "helps"
        if self.high < 0.5:
            return "hurts"
        return "no clear effect"


# The design-space view is read from DESIGN_VALUES * trials_to_tell() complete trials on: a choice of four values
# then gives each about trials_to_tell() trials, the fewest at which a value whose trials beat the median error 3
# times in 4 (a strong effect) is told from no effect. Below that the report folds the view away with a note.
DESIGN_VALUES = 4
STRONG_SHARE = 0.75


def trials_to_tell(share: float = STRONG_SHARE, level: float = 0.9, most: int = 1000) -> int:
    """The fewest trials of one value whose Jeffreys interval (at ``level``) excludes 0.5 when ``share`` of them
    beat the median error."""
    for n in range(MIN_TRIALS, most):
        if share_interval(share, n, level)[0] > 0.5:
            return n
    return most


def min_design_trials() -> int:
    """Complete trials from which the design-space view is shown unfolded (see :data:`DESIGN_VALUES`)."""
    return DESIGN_VALUES * trials_to_tell()


def reliability(effect: "Effect") -> tuple:
    """Sort key, most reliable first: clear verdicts (helps, hurts) by how far their interval stays from 0.5,
    then values without a clear effect by their number of trials, then those with too few trials."""
    tier = {"helps": 0, "hurts": 0, "no clear effect": 1}.get(effect.verdict, 2)
    margin = max(effect.low - 0.5, 0.5 - effect.high)
    return (tier, -margin if tier == 0 else -effect.trials, -effect.trials)


def effects(errors, groups: dict, weights: dict | None = None, level: float = 0.9) -> list[Effect]:
    """One :class:`Effect` per value of ``groups`` (value -> model indices), against the median error of all
    models; ``weights`` (value -> per-model weights) gives the matched-complexity version."""
    errors = np.asarray(errors, dtype=float)
    median = float(np.median(errors))
    out = []
    for value, idx in groups.items():
        e = errors[list(idx)]
        w = np.ones(len(e)) if weights is None else np.asarray(weights[value], dtype=float)
        if w.sum() == 0:
            continue
        share = float(edf(e, [median], w)[0])
        low, high = share_interval(share, effective_n(w), level)
        out.append(Effect(value, int((w > 0).sum()), float(np.median(e[w > 0])), share, low, high))
    return out
