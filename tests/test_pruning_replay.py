"""benchmarks/so_pruning_replay.py on fixed curves: its pruning rule is Optuna's successive halving, and a
replayed search spends, prunes and judges as described."""

from __future__ import annotations

import importlib.util
import random

import optuna
import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("so_pruning_replay", ROOT / "benchmarks" / "so_pruning_replay.py")
replay_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(replay_module)


@pytest.mark.parametrize("eta", [2, 3, 4])
def test_rule_is_optunas_successive_halving(eta):
    """Trial by trial, the replay's rule decides as a real study with SuccessiveHalvingPruner does at its first
    rung."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=eta))
    rng, seen = random.Random(eta), []
    for _ in range(30):
        value = round(rng.random(), 2)  # ties happen, as they do with accuracies on a small split
        trial = study.ask()
        trial.report(value, 1)
        seen.append(value)
        assert trial.should_prune() is (not replay_module.promotable(value, seen, eta))
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)


def test_replayed_search_spends_prunes_and_judges_on_the_other_seed():
    models = [{"curves": [[0.5, 0.6, 0.7, 0.8], [0.5, 0.6, 0.7, 0.75]]},
              {"curves": [[0.3, 0.4, 0.9, 0.95], [0.3, 0.4, 0.9, 0.90]]},   # slow start: cut at rung 2
              {"curves": [[0.6, 0.7, 0.8, 0.85], [0.6, 0.7, 0.8, 0.82]]}]
    order = [(0, 0), (1, 0), (2, 0)]
    # random search: all three to the end; the best final (model 1, 0.95) is judged on its other seed
    assert replay_module.replay(models, order, 100, (), 3) == (0.90, 12, 3, True)
    # pruned at epoch 2, eta 3: the first trial goes on, the second (0.4 < 0.6) stops, the third (0.7) is best
    judged, epochs, trials, ran_out = replay_module.replay(models, order, 100, (2,), 3)
    assert (judged, epochs, trials, ran_out) == (0.82, 4 + 2 + 4, 3, True)
    # a budget is spent trial by trial; the trial that crosses it finishes
    assert replay_module.replay(models, order, 5, (), 3) == (0.90, 8, 2, False)


def test_compare_on_one_architecture_is_a_tie():
    models = [{"curves": [[0.5, 0.6, 0.7, 0.8], [0.5, 0.6, 0.7, 0.8]]}] * 3
    r = replay_module.compare(models, 8, (2,), 3, reps=20)
    assert r["diff"] == 0 and r["wins"] == 0 and r["seeds_needed"] is None
