"""The audit's statistics on fixed toy tables, against numbers worked out by hand."""

import math

import pytest

import numpy as np

from runners.audit.stats import (
    agreement, bootstrap_interval, fidelity_report, kendall, kendall_rows, regret, search_headroom, seeds_needed,
    spearman, spearman_rows, top_k_overlap)

# five architectures: the predictor ranks them 1..5, the truth swaps two neighbouring pairs
PREDICTOR = [1.0, 2.0, 3.0, 4.0, 5.0]
TRUTH = [0.5, 0.7, 0.6, 0.9, 0.8]


def test_rank_correlations_by_hand():
    # truth ranks 1,3,2,5,4: sum of squared rank differences 4, so rho = 1 - 6*4 / (5*(25-1)) = 0.8
    assert spearman(PREDICTOR, TRUTH) == pytest.approx(0.8)
    # 10 pairs, 2 discordant ((2,3) and (4,5)): tau = (8 - 2) / 10 = 0.6
    assert kendall(PREDICTOR, TRUTH) == pytest.approx(0.6)
    assert spearman(PREDICTOR[::-1], TRUTH) == pytest.approx(-0.8)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))  # a constant predictor ranks nothing


def test_top_k_overlap_and_regret_by_hand():
    assert top_k_overlap(PREDICTOR, TRUTH, 2) == 2  # {4, 5} both ways
    assert top_k_overlap(PREDICTOR, TRUTH, 3) == 2  # {3, 4, 5} vs {2, 4, 5}
    assert top_k_overlap(PREDICTOR, TRUTH, 1) == 0  # the predictor's best (5th) is the truth's second
    # trusting the predictor picks the 5th architecture (0.8) while the 4th reaches 0.9
    assert regret(PREDICTOR, TRUTH) == pytest.approx(0.1)
    assert regret(TRUTH, TRUTH) == 0.0


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate():
    lo, hi = bootstrap_interval(PREDICTOR, TRUTH, "spearman", seed=3)
    assert -1.0 <= lo <= 0.8 <= hi <= 1.0
    assert (lo, hi) == bootstrap_interval(PREDICTOR, TRUTH, "spearman", seed=3)
    assert bootstrap_interval(PREDICTOR, PREDICTOR, "spearman") == (pytest.approx(1.0), pytest.approx(1.0))
    assert all(math.isnan(v) for v in bootstrap_interval([1, 2], [1, 2]))


def test_report_averages_seeds_and_gives_the_noise_ceiling():
    seed0 = [0.5, 0.7, 0.6, 0.9, 0.8]
    seed1 = [0.5, 0.6, 0.7, 0.8, 0.9]
    report = fidelity_report({"proxy": PREDICTOR, "params": PREDICTOR[::-1]}, [seed0, seed1], k=2)
    assert report["n"] == 5
    assert report["truth"] == pytest.approx([0.5, 0.65, 0.65, 0.85, 0.85])
    assert report["spread"] == pytest.approx(0.35)
    # seed 1 ranks 1..5, seed 0 as TRUTH: the ceiling is the same 0.8 / 0.6 as above
    assert report["noise_ceiling"]["spearman"] == pytest.approx(0.8)
    assert report["noise_ceiling"]["kendall"] == pytest.approx(0.6)
    proxy = report["predictors"]["proxy"]
    # truth ranks with ties: 1, 2.5, 2.5, 4.5, 4.5 -> Pearson of ranks = 0.9486832980505138
    assert proxy["spearman"] == pytest.approx(0.9486832980505138)
    assert proxy["top_k_overlap"] == 2 and proxy["regret"] == pytest.approx(0.0)
    assert report["predictors"]["params"]["spearman"] == pytest.approx(-0.9486832980505138)
    assert report["predictors"]["params"]["regret"] == pytest.approx(0.35)


def test_agreement_caps_k_at_n():
    a = agreement([1, 2, 3], [1, 2, 3], k=5)
    assert a["top_k"] == 3 and a["top_k_overlap"] == 3


def test_report_rejects_ragged_seeds():
    with pytest.raises(ValueError):
        fidelity_report({"proxy": [1, 2, 3]}, [[1, 2, 3], [1, 2]])


def test_row_statistics_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, size=(20, 7)).astype(float)  # many ties
    b = rng.integers(0, 4, size=(20, 7)).astype(float)
    for rows, scalar in ((spearman_rows, spearman), (kendall_rows, kendall)):
        got = rows(a, b)
        want = [scalar(x, y) for x, y in zip(a, b)]
        assert np.allclose(got, want, equal_nan=True)


# three architectures, two long runs each: model 1 is the best by the truth (0.85), model 2 the proxy's favourite
LONG_RUNS = [[0.5, 0.9, 0.7], [0.6, 0.8, 0.7]]


def test_search_headroom_by_hand():
    # one trial: random search returns a uniformly drawn architecture, judged on a uniformly drawn run: 0.70 on
    # average; the best (model 1) is judged 0.85 on average
    one = search_headroom([0.1, 0.2, 0.3], LONG_RUNS, trials=1, resamples=20000)
    assert one["random_pick"] == pytest.approx(0.70, abs=0.005)
    assert one["best"] == pytest.approx(0.85, abs=0.005)
    assert one["headroom"] == pytest.approx(one["best"] - one["random_pick"])
    assert one["trials"] == 1 and one["seeds_needed"] == seeds_needed(one["sd"], one["headroom"])
    # the proxy's favourite is model 2 (0.70), the average of a uniform draw too: nothing to gain by the proxy
    assert one["best_by_proxy"] == pytest.approx(0.70)
    assert one["proxy_headroom"] == pytest.approx(0.0, abs=0.005)
    # many trials: random search nearly always draws the proxy's favourite, model 2 (0.70)
    many = search_headroom([0.1, 0.2, 0.3], LONG_RUNS, trials=40)
    assert many["random_pick"] == pytest.approx(0.70)  # its two runs agree
    assert many["headroom"] == pytest.approx(0.15, abs=0.005)  # the best's runs (0.9, 0.8) drawn at random
    # a search that maximised this proxy would return what random search does: the proxy is what falls short
    assert many["proxy_headroom"] == pytest.approx(0.0) and many["proxy_seeds_needed"] is None
    # a proxy that favours the best: with many trials nothing is left to gain, and no benchmark can show a gain
    solved = search_headroom([0.1, 0.3, 0.2], LONG_RUNS, trials=40)
    assert solved["headroom"] == pytest.approx(0.0) and solved["seeds_needed"] is None
    assert solved["best_by_proxy"] == solved["best"]
    assert search_headroom([0.1, 0.2, 0.3], LONG_RUNS, trials=3) == search_headroom([0.1, 0.2, 0.3], LONG_RUNS, 3)


def test_search_headroom_rejects_a_ragged_table():
    with pytest.raises(ValueError):
        search_headroom([0.1, 0.2], LONG_RUNS, trials=5)
    with pytest.raises(ValueError):
        search_headroom([0.1, 0.2, 0.3], LONG_RUNS, trials=0)


def test_seeds_needed_by_hand():
    assert seeds_needed(0.01, 0.01) == 8  # (2.8 x 1)^2 = 7.84
    assert seeds_needed(0.0, 0.01) == 1
