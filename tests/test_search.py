"""`search run` / `search show`: the Optuna backend really trains, prunes, rejects, fails, resumes and shares.

Every search here uses a tiny inline space on the digits data at 8x8 with one or two epochs, and one torch thread
(a loaded CI machine with several threads per process is many times slower, not faster).
"""

from __future__ import annotations

import dataclasses
import io
import json
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from runners.common.progress import Progress
from runners.search.optuna_engine import run_search
from runners.search.records import trial_counts
from search_space.api import create_model
from search_space.cli import main
from search_space.compiler import build_model
from search_space.sampling import FixedSuggester, OutsideSpace, RandomSuggester, params_for, sample
from search_space.spec import dump_spec, load_spec

from conftest import SUBPROCESS_ENV, TINY, write_space  # noqa: F401 - test_faults and test_postgres take them from here

ROOT = Path(__file__).resolve().parents[1]
ENV = SUBPROCESS_ENV

# Only the learning rate is searched: for trials whose outcome must not depend on the sampled architecture.
LR_ONLY = """
name: tiny
model:
  input_size: 8
  stem: {type: cifar, width: 8}
  stages:
    - {depth: 1, width: 16, block: {type: plain, bottleneck: false}}
train: {dataset: digits, epochs: 2, batch_size: 64, warmup_epochs: 0, lr: {choice: [0.3, 0.0, 1.0e6]}}
search: {trials: 2, sampler: random, pruner: none}
"""


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(path: Path, out: Path) -> tuple[dict, str]:
    stream = io.StringIO()
    summary = run_search(load_spec(path), out, spec_path=str(path), progress=Progress(stream=stream, tty=False))
    return summary, stream.getvalue()


def load(out: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def test_run_writes_trials_table_and_best(tmp_path, capsys):
    out = tmp_path / "run"
    summary, log = run(write_space(tmp_path), out)
    study = load(out)
    assert trial_counts(study).done == 4 and summary["best_trial"] is not None
    for t in study.trials:
        assert t.state == TrialState.COMPLETE and t.user_attrs["epochs"] == 2
        metrics = json.loads((out / "trials" / str(t.number) / "metrics.json").read_text())
        assert metrics["val_accuracy"] == pytest.approx(t.values[0])
        assert metrics["state"] == "complete" and len(metrics["history"]) == 2
        assert load_spec(out / "trials" / str(t.number) / "arch.yaml").is_fixed()
        assert f"trial {t.number:>3} complete" in log
    best, winner = load_spec(out / "best.yaml"), study.trials[summary["best_trial"]]
    assert winner.values[0] == study.best_value  # ties are broken by fewer params, not by Optuna's order
    assert best.is_fixed() and best.train.lr == winner.params["train.lr"]
    # the architecture names the data it was trained on: it compiles and exports with 1 channel and 10 classes
    assert (best.model.in_channels, best.model.num_classes) == (1, 10)
    assert main(["compile", str(out / "best.yaml")]) == 0
    size = best.model.input_size
    assert create_model(run=out).eval()(torch.zeros(2, 1, size, size)).shape == (2, 10)
    # a trial whose arch.yaml is elsewhere (run on another machine) is rebuilt from its params, shape included
    from runners.search.results import records_from_files, trial_spec

    (out / "trials" / str(winner.number) / "arch.yaml").rename(tmp_path / "elsewhere.yaml")
    record = next(r for r in records_from_files(out) if r.number == winner.number)
    assert trial_spec(load_spec(tmp_path / "space.yaml"), out, record).model == best.model
    table = capsys.readouterr().out
    assert "rank" in table and "blocks (per stage)" in table

    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "4/4 trials: 4 complete" in shown and f"  {winner.number}  " in shown


def test_rerun_resumes_and_counts_finished_trials(tmp_path):
    path, out = write_space(tmp_path, search__trials=2), tmp_path / "run"
    run(path, out)
    first = {t.number: t.values for t in load(out).trials}
    path = write_space(tmp_path, search__trials=3)
    _, log = run(path, out)
    study = load(out)
    assert len(study.trials) == 3 and "resuming: 2 of 3 trials done" in log
    assert {t.number: t.values for t in study.trials if t.number in first} == first


def test_pruning_stops_weak_trials_early(tmp_path):
    # lr 0 cannot learn: behind the first (learning) trial after epoch 1, the median pruner stops it there.
    path, out = write_space(tmp_path, LR_ONLY, search__pruner="median", search__pruner_startup_trials=1,
                            search__trials=3, train__epochs=3), tmp_path / "run"
    out.mkdir()
    study = optuna.create_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}", direction="maximize")
    for lr in (0.3, 0.0, 0.0):
        study.enqueue_trial({"train.lr": lr})
    _, log = run(path, out)
    trials = load(out).trials
    assert trials[0].state == TrialState.COMPLETE and trials[0].user_attrs["epochs"] == 3
    for t in trials[1:]:
        assert t.state == TrialState.PRUNED and t.user_attrs["epochs"] < 3, t.user_attrs
        assert t.user_attrs["status"] == "pruned" and "pruned by median after epoch 1" in t.user_attrs["reason"]
    assert "pruned" in log


def test_budget_rejects_samples_without_training(tmp_path):
    path, out = write_space(tmp_path, search__max_params=400, search__trials=5), tmp_path / "run"
    start = time.perf_counter()
    summary, log = run(path, out)
    assert time.perf_counter() - start < 15  # no training: milliseconds per trial, plus loading the data once
    study = load(out)
    assert summary["best_trial"] is None and len(study.trials) == 5
    for t in study.trials:
        assert t.state == TrialState.PRUNED and t.user_attrs["status"] == "over_budget"
        assert t.user_attrs["epochs"] == 0 and t.user_attrs["seconds"] < 0.5
        assert "max_params 400" in t.user_attrs["reason"] and t.constraints["max_params"] > 0
        assert "history" not in json.loads((out / "trials" / str(t.number) / "metrics.json").read_text())


def test_infeasible_sample_ends_at_once(tmp_path):
    # radix 2 with cardinality 3 on a 4-wide mid: the cost model rejects it before anything is built.
    space = TINY.replace("radix: 2}", "radix: 2, cardinality: 3}").replace(
        "type: {choice: [plain, se, split_attention]}", "type: split_attention")
    path, out = write_space(tmp_path, space, search__trials=2), tmp_path / "run"
    run(path, out)
    for t in load(out).trials:
        assert t.state == TrialState.PRUNED and t.user_attrs["status"] == "infeasible"
        assert t.user_attrs["seconds"] < 0.5 and "does not divide" in t.user_attrs["reason"]


def test_failing_trial_is_recorded_and_search_goes_on(tmp_path):
    path, out = write_space(tmp_path, LR_ONLY), tmp_path / "run"
    out.mkdir()
    study = optuna.create_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}", direction="maximize")
    study.enqueue_trial({"train.lr": 1.0e6})
    study.enqueue_trial({"train.lr": 0.3})
    summary, log = run(path, out)
    failed, ok = load(out).trials
    assert failed.state == TrialState.FAIL and failed.user_attrs["status"] == "diverged"
    assert "nan" in failed.user_attrs["reason"] and "diverged" in log
    assert ok.state == TrialState.COMPLETE and summary["best_trial"] == ok.number


def test_sqlite_refuses_several_workers(tmp_path, capsys):
    assert main(["run", str(write_space(tmp_path)), "--workers", "2", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "SQLite" in err and "journal:" in err and len(err.strip().splitlines()) == 1


def test_bad_flag_value_exits_2(tmp_path, capsys):
    assert main(["run", str(write_space(tmp_path)), "--trials", "0", "--out", str(tmp_path / "run")]) == 2
    assert "--trials" in capsys.readouterr().err


def test_multi_objective_gives_a_pareto_set(tmp_path):
    path, out = write_space(tmp_path, search__objectives=["val_accuracy", "params"], search__pruner="median",
                            train__epochs=1, search__sampler="nsga2"), tmp_path / "run"
    summary, log = run(path, out)
    study = load(out)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    front = {t.number for t in study.best_trials}
    assert front and sorted(front) == summary["pareto"]
    assert sorted(p.name for p in (out / "pareto").iterdir()) == sorted(f"trial_{n}.yaml" for n in front)
    assert "note: pruning" not in log  # several objectives prune by non-dominated rank (runners.search.mo_pruning)


@pytest.mark.parametrize("sampler,pruner", [("tpe", "hyperband"), ("gp", "successive_halving")])
def test_model_based_samplers_run(tmp_path, sampler, pruner):
    path, out = write_space(tmp_path, search__sampler=sampler, search__pruner=pruner, search__startup_trials=2,
                            train__epochs=1), tmp_path / "run"
    run(path, out)
    assert trial_counts(load(out)).done == 4


def test_model_based_samplers_start_with_the_trials_random_search_draws_at_that_seed():
    """Common random numbers: at one seed, TPE's and GP's startup trials are random search's first trials, so a
    paired comparison of samplers (benchmarks/search_efficiency.py) differs only in what the sampler learned."""
    from runners.search.rules import PerTrialSeed, make_sampler
    from search_space.sampling import InfeasibleSample

    space = load_spec(ROOT / "spaces" / "resnest.yaml")
    startup = 4

    def draws(sampler: str, seed: int) -> list[dict]:
        search = dataclasses.replace(space.search, sampler=sampler, startup_trials=startup)
        study = optuna.create_study(direction="maximize",
                                    sampler=PerTrialSeed(make_sampler(search, 1, False, seed), seed))
        params = []
        for _ in range(startup + 2):
            trial = study.ask()
            try:
                sample(space, trial)
                study.tell(trial, trial.params["train.lr"])
            except InfeasibleSample:
                study.tell(trial, state=TrialState.FAIL)
            params.append(trial.params)
        return params

    for seed in (0, 5):
        random = draws("random", seed)
        for sampler in ("tpe", "gp"):
            learned = draws(sampler, seed)
            assert learned[:startup] == random[:startup], sampler
            assert learned[startup:] != random[startup:], sampler  # after startup the sampler draws its own
    assert draws("random", 0) != draws("random", 5)


def test_latency_objective_is_measured(tmp_path):
    path, out = write_space(tmp_path, search__objectives=["latency"], search__trials=2, train__epochs=1), \
        tmp_path / "run"
    run(path, out)
    for t in load(out).trials:
        assert t.values[0] == t.user_attrs["latency_ms"] > 0


def test_warm_start_runs_listed_architectures_first(tmp_path):
    space = load_spec(write_space(tmp_path))
    inside = sample(space, RandomSuggester(3))
    (tmp_path / "inside.yaml").write_text(dump_spec(inside))
    outside = textwrap.dedent("""
        name: outside
        model:
          input_size: 32
          stem: {type: cifar, width: 12}
          stages: [{depth: 1, width: 24, block: {type: plain, bottleneck: false}}]
        """)
    (tmp_path / "outside.yaml").write_text(outside)
    path = write_space(tmp_path, search__warm_start=["inside.yaml", "outside.yaml"], search__trials=3,
                       train__epochs=1)
    out = tmp_path / "run"
    _, log = run(path, out)
    first, second, _ = load(out).trials
    assert first.user_attrs["warm_start"].endswith("inside.yaml") and first.user_attrs["in_space"]
    assert first.params == params_for(space, inside)
    recorded = load_spec(out / "trials/0/arch.yaml").model  # with the data's shape written in
    assert recorded == dataclasses.replace(inside.model, in_channels=1, num_classes=10)
    assert second.user_attrs["warm_start"].endswith("outside.yaml") and not second.user_attrs["in_space"]
    got = load_spec(out / "trials/1/arch.yaml").model
    assert got.stem.width == 12 and got.stages[0].width == 24 and got.input_size == 8  # trained at the run's size
    from runners.search.results import records_from_files, trial_spec

    (out / "trials/1/arch.yaml").rename(tmp_path / "elsewhere.yaml")
    assert trial_spec(load_spec(path), out, next(r for r in records_from_files(out) if r.number == 1)).model == got
    (tmp_path / "elsewhere.yaml").rename(out / "trials/1/arch.yaml")
    assert "warm start inside.yaml" in log
    run(path, out)  # a rerun does not enqueue them again
    assert sum("warm_start" in t.user_attrs for t in load(out).trials) == 2


def test_arch_suggester_round_trips_the_shipped_space():
    space = load_spec(ROOT / "spaces" / "resnest.yaml")
    for seed in range(10):
        drawn = sample(space, RandomSuggester(seed), check=False)
        again = load_spec(dump_spec(drawn))
        assert sample(space, FixedSuggester(params_for(space, again)), check=False).model == drawn.model
    with pytest.raises(OutsideSpace, match="stem.width"):
        params_for(space, load_spec(ROOT / "spaces" / "zoo" / "resnet18.yaml"))


# ----------------------------------------------------------------------------------------------------------------
# Processes: kill -9 and resume, two workers on one journal file
# ----------------------------------------------------------------------------------------------------------------


def command(path: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "search_space.cli", "run", str(path), "--out", str(out), *extra]


def wait_for(predicate, timeout: float, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def test_sigkill_loses_no_completed_trial_and_rerun_retries_the_lost_one(tmp_path):
    # Trials of 30 epochs last several seconds, so a poll (which may take a while on a loaded machine) cannot
    # miss the window and the trial cannot finish between the look and the kill.
    path, out = write_space(tmp_path, search__trials=4, train__epochs=30), tmp_path / "run"
    proc = subprocess.Popen(command(path, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    storage = f"sqlite:///{out / 'study.db'}"

    def one_done_one_running():
        try:
            trials = optuna.load_study(study_name="tiny", storage=storage).trials
        except Exception:  # noqa: BLE001 - not created yet
            return False
        states, last = [t.state for t in trials], trials[-1] if trials else None
        # kill early in a trial (it runs >1 s), so it cannot finish between this look and the kill
        return (TrialState.COMPLETE in states and last.state == TrialState.RUNNING and "worker_info" in last.user_attrs
                and (datetime.now() - last.datetime_start).total_seconds() < 1.5)

    try:
        assert wait_for(one_done_one_running, 240, proc), proc.stderr.read().decode() if proc.poll() else "timeout"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    before = optuna.load_study(study_name="tiny", storage=storage).trials
    completed = {t.number: t.values for t in before if t.state == TrialState.COMPLETE}
    lost = [t.number for t in before if t.state == TrialState.RUNNING]
    assert completed and len(lost) == 1

    rerun = subprocess.run(command(path, out), env=ENV, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"trial {lost[0]:>3} lost" in rerun.stderr
    study = optuna.load_study(study_name="tiny", storage=storage)
    after = {t.number: t for t in study.trials}
    assert {n: after[n].values for n in completed} == completed  # nothing completed was lost or changed
    killed = after[lost[0]]
    assert killed.state == TrialState.FAIL and killed.user_attrs["status"] == "lost"
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == lost[0]]
    # the retry keeps every choice the killed trial had made (it may have died while still sampling the rest)
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert killed.params.items() <= retried[0].params.items()
    assert trial_counts(study).done == 4 and not [t for t in study.trials if not t.state.is_finished()]


def test_two_workers_share_one_journal_study(tmp_path):
    path, out = write_space(tmp_path, search__trials=8, train__epochs=6), tmp_path / "run"
    # one thread each: two processes started together on an idle machine would otherwise both take every core
    args = command(path, out, "--storage", f"journal:{tmp_path / 'journal.log'}", "--threads", "1")
    procs = [subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1] for r in results]
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "journal.log")))
    study = optuna.load_study(study_name="tiny", storage=storage)
    trials = study.trials
    numbers = [t.number for t in trials]
    # Two processes that both see 7 of 8 trials may each start one: a study can end workers - 1 over its count.
    assert len(numbers) == len(set(numbers)) and 8 <= len(numbers) <= 9 and trial_counts(study).done == len(numbers)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2 and workers == {f"{socket_host()}:{p.pid}" for p in procs}
    for t in trials:  # every completed trial's files are there, and agree with the study
        metrics = json.loads((out / "trials" / str(t.number) / "metrics.json").read_text())
        assert metrics["values"]["val_accuracy"] == pytest.approx(t.values[0])


def socket_host() -> str:
    import socket

    return socket.gethostname()


@pytest.mark.slow
def test_shipped_resnest_search_with_its_defaults(tmp_path):
    """The headline command end to end (a few minutes on a 2-core CPU): table, best.yaml that compiles."""
    out = tmp_path / "resnest"
    done = subprocess.run([sys.executable, "-m", "search_space.cli", "run", str(ROOT / "spaces" / "resnest.yaml"),
                           "--out", str(out)], env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "rank" in done.stdout and "20/20 trials" in done.stderr
    assert main(["compile", str(out / "best.yaml"), "--in-channels", "1", "--num-classes", "10"]) == 0
    assert json.loads((out / "run.json").read_text())["trials"] == 20


def test_final_training_scores_the_best_once_on_test_and_saves_it(tmp_path):
    out = tmp_path / "run"
    summary, log = run(write_space(tmp_path, search__final_epochs=2), out)
    final = summary["final"]
    assert final["trial"] == summary["best_trial"] and final["status"] == "ok" and final["epochs"] == 2
    assert 0.0 <= final["test_accuracy"] <= 1.0 and "test" in log
    state = torch.load(out / "final" / "weights.pt", weights_only=True)
    model = build_model(load_spec(out / "final" / "arch.yaml").model, in_channels=1, num_classes=10)
    model.load_state_dict(state)  # the saved weights fit the saved architecture
    _, again = run(write_space(tmp_path, search__final_epochs=2), out)
    assert "already trained" in again  # a rerun does not train (or test) it twice


def test_pruners_read_the_averaged_weights_with_rung_ema(tmp_path):
    """With train.rung_ema_epochs the value a pruner reads at a rung (Optuna's intermediate value) is the
    averaged weights' accuracy, rung_accuracy, while the trial's result stays the trained weights' accuracy."""
    out = tmp_path / "run"
    run(write_space(tmp_path, search__pruner="median", search__trials=3, train__epochs=3,
                    train__rung_ema_epochs=0.5), out)
    for t in load(out).trials:
        history = json.loads((out / "trials" / str(t.number) / "metrics.json").read_text())["history"]
        rungs = {h["epoch"]: h["rung_accuracy"] for h in history if "rung_accuracy" in h}
        assert rungs and all(t.intermediate_values[epoch] == acc for epoch, acc in rungs.items()
                             if epoch in t.intermediate_values)
        assert 1 in t.intermediate_values  # every trial reaches the first rung
        if t.state == TrialState.COMPLETE:
            assert t.values[0] == history[-1]["val_accuracy"] and "rung_accuracy" not in history[-1]
            assert set(rungs) == {1, 2}
