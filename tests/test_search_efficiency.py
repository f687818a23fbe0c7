"""The statistics of benchmarks/search_efficiency.py on fixed tables: hypervolume, its anytime value, the records
a comparison keeps, and the multi-objective summary read at exactly the budget."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("search_efficiency", ROOT / "benchmarks" / "search_efficiency.py")
se = importlib.util.module_from_spec(spec)
spec.loader.exec_module(se)


def test_hypervolume_by_hand():
    # front (0.2, 0.5), (0.4, 0.2): strips 0.8 x 0.5 and 0.6 x 0.3; (0.5, 0.6) is dominated, (1.2, 0.1) lies
    # beyond the reference point
    assert se.hypervolume_2d([(0.2, 0.5), (0.4, 0.2), (0.5, 0.6), (1.2, 0.1)]) == pytest.approx(0.4 + 0.18)
    assert se.hypervolume_2d([]) == 0.0


def test_anytime_hypervolume_and_epochs_to_reach():
    trajectory = [[12, 0.40], [15, 0.40], [27, 0.55], [39, 0.70], [51, 0.72]]
    assert se.hypervolume_at(trajectory, 11) == 0.0  # no trial had ended
    assert se.hypervolume_at(trajectory, 27) == 0.55
    assert se.hypervolume_at(trajectory, 48) == 0.70  # the trial ending at 51 crossed 48: not counted
    assert se.epochs_to_reach(trajectory, 0.55) == 27
    assert se.epochs_to_reach(trajectory, 0.71) == 51
    assert se.epochs_to_reach(trajectory, 0.9) is None


def test_records_of_another_comparison_are_skipped(tmp_path):
    path = tmp_path / "r.jsonl"
    rows = [{"method": "a", "seed": 0, "budget": 96, "epochs_per_trial": 12},
            {"method": "a", "seed": 1, "budget": 48, "epochs_per_trial": 12},   # another budget
            {"method": "b", "seed": 0}]                                         # older row without the keys: kept
    for row in rows:
        se.append_record(str(path), row)
    kept = se.read_record(str(path), budget=96, epochs_per_trial=12)
    assert sorted(kept) == [("a", 0), ("b", 0)]
    # a comparison with a restart and a rung keeps only its own rows: older rows trained without either
    se.append_record(str(path), {"method": "a", "seed": 2, "budget": 96, "epochs_per_trial": 12,
                                 "restart_epochs": [3], "first_rung": 3})
    assert sorted(se.read_record(str(path), budget=96, restart_epochs=[3], first_rung=3)) == [("a", 2)]
    assert ("a", 2) not in se.read_record(str(path), budget=96, restart_epochs=[], first_rung=None)
    # rows whose sampler drew its startup trials from another seed than random search's are another comparison
    se.append_record(str(path), {"method": "a", "seed": 3, "budget": 96, "startup": se.STARTUP})
    assert sorted(se.read_record(str(path), budget=96, startup=se.STARTUP)) == [("a", 3)]
    assert ("a", 3) not in se.read_record(str(path), budget=96, startup="own seed")


def test_multi_objective_summary_reads_the_hypervolume_at_the_budget(capsys):
    """The pruned arm's last trial crosses the budget (99 of 96 epochs): its final 0.90 is not what is compared."""
    plain, pruned = "no pruning", "pruning"
    done = {
        (plain, 0): {"hypervolume": 0.80, "epochs": 96, "trials": 8,
                     "trajectory": [[48, 0.70], [96, 0.80]]},
        (pruned, 0): {"hypervolume": 0.90, "epochs": 99, "trials": 15,
                      "trajectory": [[24, 0.75], [48, 0.82], [99, 0.90]]},
        (plain, 1): {"hypervolume": 0.85, "epochs": 96, "trials": 8,
                     "trajectory": [[48, 0.60], [96, 0.85]]},
        (pruned, 1): {"hypervolume": 0.84, "epochs": 96, "trials": 14,
                      "trajectory": [[30, 0.50], [96, 0.84]]},
    }
    space = SimpleNamespace(search=SimpleNamespace(sampler="tpe"), train=SimpleNamespace(epochs=12))
    se.print_multi_objective([plain, pruned], done, space, 96)
    out = capsys.readouterr().out
    assert "0.8250 +- " in out and "0.8300 +- " in out  # (0.80 + 0.85) / 2 and (0.82 + 0.84) / 2
    assert "hypervolume at 96 epochs: mean +0.0050; pruned higher in 1 of 2 seeds" in out
    # anytime means after 24, 48, 72 and 96 epochs
    assert "0.0000  0.6500  0.6500  0.8250" in out and "0.3750  0.6600  0.6600  0.8300" in out
    # seed 0: 0.80 reached at 48 epochs pruned, 96 unpruned; seed 1: 0.85 never reached by the pruned search
    assert "(per seed; -: not within the budget): 48/96, -/96" in out
    assert "pruned reached it in 1 of 2 seeds, with fewer epochs in 1; pruned / unpruned epochs 50% on average" in out


def test_a_candidate_default_changes_the_pruner_and_restarts_both_methods_at_the_rung():
    import dataclasses

    from search_space.spec import load_spec

    space = load_spec(ROOT / "spaces" / "resnest.yaml")
    space = dataclasses.replace(space, train=dataclasses.replace(space.train, epochs=12))
    candidate, name = se.candidate_spec(space, "successive_halving", 3, restart=True)
    assert name == "default (tpe+successive_halving)"
    assert candidate.search.pruner_min_epochs == 3 and list(candidate.train.restart_epochs) == [3]
    assert se.candidate_spec(space, None, None, restart=False) == (space, "default (tpe+none)")
    with pytest.raises(SystemExit, match="does not fit a 12-epoch trial"):
        se.candidate_spec(space, "successive_halving", 12, restart=True)


def test_processes_sharing_a_record_each_take_seeds_no_other_has(tmp_path):
    """Two processes' shares, as ``--workers`` runs them: a process takes both searches of a seed (so one judge
    cache serves both picks), skips a seed another process holds and a search recorded meanwhile, and lets a
    seed go when it is done with it."""
    args = SimpleNamespace(record=str(tmp_path / "r.jsonl"), first_seed=0, seeds=2)
    settings = {"budget": 6}
    methods = ["tpe", "random"]
    first = se.my_share(methods, args, {}, settings)
    assert next(first) == (0, "tpe", 0)                   # seed 0 is the first process's now
    second = se.my_share(methods, args, {}, settings)
    assert next(second) == (0, "tpe", 1)                  # the second skips it
    se.append_record(args.record, {"method": "tpe", "seed": 1, **settings})     # the second's result
    se.append_record(args.record, {"method": "random", "seed": 1, **settings})  # as if run elsewhere meanwhile
    assert list(second) == []                             # seed 1's other search is recorded
    assert next(first) == (1, "random", 0)
    assert list(first) == []                              # seed 1 is free now, and all recorded
    # nothing was recorded for seed 0: both processes have let it go, so a third takes it from the start
    third = se.my_share(methods, args, {}, settings)
    assert next(third) == (0, "tpe", 0)
    third.close()
    # another comparison (another budget) in the same record is not held up by these locks
    assert next(se.my_share(methods, args, {}, {"budget": 12})) == (0, "tpe", 0)


def test_a_line_being_appended_is_not_read_as_a_row(tmp_path):
    path = tmp_path / "r.jsonl"
    se.append_record(str(path), {"method": "a", "seed": 0, "budget": 6})
    with open(path, "a") as f:
        f.write('{"method": "b", "se')                   # another process is writing this line
    assert sorted(se.read_record(str(path), budget=6)) == [("a", 0)]


def test_workers_run_every_search_once_and_the_first_process_prints_the_summary(tmp_path):
    import json
    import subprocess
    import sys

    from conftest import SUBPROCESS_ENV

    record = tmp_path / "r.jsonl"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "search_efficiency.py"), "--seeds", "2",
                        "--budget-epochs", "2", "--epochs", "1", "--factor", "2", "--dataset", "digits",
                        "--workers", "2", "--record", str(record)],
                       capture_output=True, text=True, env=SUBPROCESS_ENV, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr  # the worker process ran (or had nothing left) without an error
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    assert sorted((row["method"], row["seed"]) for row in rows) == [
        ("default (tpe+none)", 0), ("default (tpe+none)", 1), ("random, no pruning", 0), ("random, no pruning", 1)]
    assert "2 workers" in r.stdout and "2x-trained accuracy of the architecture each search returns (2 seeds)" \
        in r.stdout and r.stdout.count("Wilcoxon") == 1
