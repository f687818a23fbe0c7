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


@pytest.mark.parametrize("first", [2, 3])
def test_whole_curves_stop_where_a_real_study_stops_them(first):
    """12-epoch curves reported epoch by epoch to a study with the pruner ``search run`` builds
    (SuccessiveHalvingPruner, eta 3, never at the last epoch): every trial stops at the epoch the replay says,
    at the first rung or a later one (first * 3, ...)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.SuccessiveHalvingPruner(
        min_resource=first, reduction_factor=replay_module.ETA))
    rungs = replay_module.rungs_of(first, 12)
    assert rungs == {2: (2, 6), 3: (3, 9)}[first]
    rng, at, stops = random.Random(first), {k: [] for k in rungs}, set()
    for _ in range(40):
        curve = [round(min(1.0, 0.1 + e * rng.uniform(0.02, 0.09) + rng.gauss(0, 0.03)), 2) for e in range(1, 13)]
        trial, stopped = study.ask(), None
        for epoch, value in enumerate(curve, start=1):
            trial.report(value, epoch)
            if epoch < len(curve) and trial.should_prune():
                stopped = epoch
                break
        study.tell(trial, state=optuna.trial.TrialState.PRUNED if stopped else optuna.trial.TrialState.COMPLETE,
                   values=None if stopped else [curve[-1]])
        assert replay_module.stop_epoch(curve, rungs, replay_module.ETA, at) == stopped
        stops.add(stopped)
    assert {None, *rungs} <= stops  # some go to the end, some stop at each rung


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


def test_headroom_is_the_pools_best_against_random_search():
    """The oracle always returns the architecture with the best mean final accuracy (model 1: 0.95 and 0.90),
    judged on one of its curves; random search with a one-trial budget returns whichever it drew first, judged on
    its other curve."""
    models = [{"curves": [[0.5, 0.8], [0.5, 0.75]]}, {"curves": [[0.4, 0.95], [0.4, 0.90]]},
              {"curves": [[0.6, 0.85], [0.6, 0.82]]}]
    h = replay_module.headroom(models, budget=2, reps=3000)
    assert h["oracle"] == pytest.approx(0.925, abs=0.005)
    assert h["random"] == pytest.approx((0.775 + 0.925 + 0.835) / 3, abs=0.005)
    assert h["diff"] == pytest.approx(h["oracle"] - h["random"]) and h["losses"] < h["wins"]
    # one architecture (three copies): nothing to gain over random search
    same = [{"curves": [[0.5, 0.8], [0.5, 0.8]]}] * 3
    assert replay_module.headroom(same, budget=6, reps=50)["seeds_needed"] is None


def test_a_directory_that_is_no_audit_exits_2_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        replay_module.main([str(tmp_path / "nope")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no fidelity.json" in err and "nope" in err
    (tmp_path / "fidelity.json").write_text("{")
    with pytest.raises(SystemExit) as e:
        replay_module.main([str(tmp_path)])
    assert e.value.code == 2 and "not a fidelity report" in capsys.readouterr().err


def test_the_audit_kept_in_the_repository_replays(capsys, tmp_path):
    """The documented command runs as written on the curves kept under docs/results/ and writes its record."""
    import json

    out = tmp_path / "replay.json"
    assert replay_module.main([str(ROOT / "docs" / "results" / "audit-resnet-2026-12-08"), "--budget-epochs", "60",
                               "--reps", "200", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["architectures"] == 24 and record["epochs"] == 12 and record["seeds"] == 2
    assert [r["rungs"] for r in record["rows"]] == [[2, 6], [3, 9], [4], "oracle"]
    assert "oracle all" in capsys.readouterr().out
