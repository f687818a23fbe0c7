"""The multi-objective successive-halving rule on fixed tables (all objectives minimised: -accuracy, params)."""

import math

import pytest

from runners.search.mo_pruning import (
    crowding_distances, dominates, keep_count, nondominated_ranks, order, rungs, should_stop)

from conftest import write_space

# (-accuracy, params): a..e as drawn by hand
#   a (-0.90, 100)  b (-0.80, 50)  c (-0.85, 120)  d (-0.70, 40)  e (-0.60, 200)
TABLE = [(-0.90, 100), (-0.80, 50), (-0.85, 120), (-0.70, 40), (-0.60, 200)]


def test_dominance_and_fronts_by_hand():
    assert dominates(TABLE[0], TABLE[2])        # a: more accurate and smaller than c
    assert not dominates(TABLE[0], TABLE[1])    # a more accurate, b smaller: neither wins
    assert not dominates(TABLE[0], TABLE[0])
    # front 0: a, b, d (no one beats them); front 1: c (beaten by a only); front 2: e (beaten by c too)
    assert nondominated_ranks(TABLE) == [0, 0, 1, 0, 2]


def test_crowding_distance_by_hand():
    front = [TABLE[0], TABLE[1], TABLE[3]]  # a, b, d
    # b is inside on both axes: accuracy (0.90 - 0.70) / 0.20 = 1.0, params (100 - 40) / 60 = 1.0
    assert crowding_distances(front) == [math.inf, pytest.approx(2.0), math.inf]
    assert crowding_distances(front[:2]) == [math.inf, math.inf]


def test_order_is_by_front_then_crowding_then_position():
    assert order(TABLE) == [0, 3, 1, 2, 4]


@pytest.mark.parametrize("n, eta, kept", [(1, 3, 1), (2, 3, 1), (3, 3, 1), (5, 3, 1), (6, 3, 2), (9, 3, 3),
                                          (4, 2, 2)])
def test_keep_count(n, eta, kept):
    assert keep_count(n, eta) == kept


def test_should_stop_on_the_table():
    # with eta = 2, two of the five continue: a and d (the extremes of the front)
    for i, point in enumerate(TABLE):
        others = TABLE[:i] + TABLE[i + 1:]
        assert should_stop(point, others, eta=2) == (i not in (0, 3))
    # a dominated newcomer is stopped, a newcomer that dominates everyone continues
    assert should_stop((-0.5, 300), TABLE, eta=2)
    assert not should_stop((-0.95, 10), TABLE, eta=2)
    # the first trial at a rung has nobody to lose to
    assert not should_stop((-0.1, 1e9), [], eta=3)


def test_one_objective_is_asha():
    accs = [(-a,) for a in (0.5, 0.9, 0.7, 0.6, 0.8)]
    # top 5 // 3 = 1 continues: only the best
    assert [should_stop(p, accs[:i] + accs[i + 1:], eta=3) for i, p in enumerate(accs)] == \
        [True, False, True, True, True]


def test_rungs():
    assert rungs(1, 9, eta=3) == [1, 3]
    assert rungs(2, 24, eta=3) == [2, 6, 18]
    assert rungs(5, 5) == []
    with pytest.raises(ValueError):
        should_stop((0,), [], eta=1)


def test_several_objectives_are_cut_once_at_the_first_epoch_after_warmup():
    """A second rung keeps a ninth of the trials, too few for a front: the engines cut once."""
    from runners.search.rules import mo_rungs
    from search_space.config import SearchConfig

    two = ["val_accuracy", "params"]
    assert mo_rungs(SearchConfig(pruner="successive_halving"), 12, two, first_epoch=2) == [2]
    assert mo_rungs(SearchConfig(pruner="hyperband", pruner_min_epochs=3), 12, two, first_epoch=2) == [3]
    assert mo_rungs(SearchConfig(pruner="hyperband"), 2, two, first_epoch=2) == []  # the last epoch is no rung
    assert mo_rungs(SearchConfig(pruner="none"), 12, two) == []
    assert mo_rungs(SearchConfig(pruner="hyperband"), 12, ["val_accuracy"]) == []


def test_a_multi_objective_search_prunes_by_nondominated_rank(tmp_path, single_thread):
    """The Optuna engine stops trials at rung 1 exactly when the rule says so, replayed from the study."""
    import io

    import optuna
    from optuna.trial import TrialState

    from runners.search.optuna_engine import run_search
    from runners.common.progress import Progress
    from search_space.spec import load_spec

    path = write_space(tmp_path, train__epochs=3, search__trials=6, search__pruner="successive_halving",
                       search__objectives=["val_accuracy", "params"], search__seed=1)
    out = tmp_path / "run"
    run_search(load_spec(path), out, progress=Progress(stream=io.StringIO(), tty=False))
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")
    trained = sorted((t for t in study.trials if "rung_1" in t.user_attrs), key=lambda t: t.number)
    assert len(trained) >= 4
    seen = []
    for t in trained:
        point = (-t.user_attrs["rung_1"], t.user_attrs["params"])
        assert (t.state == TrialState.PRUNED) == should_stop(point, seen, eta=3)
        assert t.user_attrs["epochs"] == (1 if t.state == TrialState.PRUNED else 3)
        seen.append(point)
    assert any(t.state == TrialState.PRUNED for t in trained) and any(t.state == TrialState.COMPLETE for t in trained)
