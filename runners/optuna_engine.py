"""The Optuna engine of ``search run``: a study per run directory, driving the trial core define-by-run.

Every process that runs the same command on the same storage joins the same study and runs trials until the
study holds ``search.trials`` finished ones, so a rerun resumes, several processes share the work, and a killed
process loses only the trial it was running (see :mod:`runners.storage`). A trial's outcome is in its user
attrs (``status``, ``reason``, ``epochs``, ``params`` ...) and in ``trials/<number>/``; failures are FAIL trials,
infeasible and over-budget samples are pruned in milliseconds, weak trials are pruned on their per-epoch
validation accuracy.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import warnings
from pathlib import Path
from typing import Optional

import optuna
from optuna.trial import TrialState

from search_space.config import SearchConfig
from search_space.sampling import OutsideSpace, params_for
from search_space.schema import SpecError, is_choice
from search_space.spec import Spec, load_spec

from .progress import Progress
from .results import (Counts, TrialRecord, counts, final_training, status_head, summary_line, trial_line,
                      write_results)
from .storage import (check_workers, is_sqlite, open_storage, recover_lost_trials, retry_trial, storage_url,
                      worker_identity)
from .trial import DataCache, Evaluator, Outcome, TrialHooks, direction, trial_dir, write_json

STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
          TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}


class TrialFailed(Exception):
    """Raised by the objective so Optuna records the trial as FAIL (its reason is in the user attrs)."""


# ----------------------------------------------------------------------------------------------------------------
# Sampler and pruner
# ----------------------------------------------------------------------------------------------------------------


def startup_trials(search: SearchConfig) -> int:
    return search.startup_trials if search.startup_trials is not None else min(10, max(3, search.trials // 4))


def make_sampler(search: SearchConfig, n_objectives: int, parallel: bool, seed: int) -> optuna.samplers.BaseSampler:
    startup = startup_trials(search)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate / group TPE and GPSampler warn that they are experimental
        if search.sampler == "tpe":
            # multivariate + group: per-block choices exist only in some trials and must be modelled jointly;
            # constant liar: parallel workers do not all pick the same promising point.
            return optuna.samplers.TPESampler(multivariate=True, group=True, seed=seed, n_startup_trials=startup,
                                              constant_liar=parallel, warn_independent_sampling=False)
        if search.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if search.sampler == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, startup))


def make_pruner(search: SearchConfig, epochs: int, objectives: list[str]) -> tuple[optuna.pruners.BasePruner, str]:
    """The pruner and a note for the user ('' when none is needed). Pruning reads the per-epoch validation
    accuracy, so it serves a search on ``val_accuracy`` alone."""
    if search.pruner == "none":
        return optuna.pruners.NopPruner(), ""
    if len(objectives) > 1:
        return optuna.pruners.NopPruner(), (f"note: pruning works on one objective only; pruner "
                                            f"'{search.pruner}' is off for {len(objectives)} objectives")
    if objectives != ["val_accuracy"]:
        return optuna.pruners.NopPruner(), (f"note: pruning reads validation accuracy; pruner '{search.pruner}' "
                                            f"is off for objective {objectives[0]}")
    first = min(search.pruner_min_epochs, epochs)
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=search.pruner_startup_trials, n_warmup_steps=first), ""
    if search.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=3), ""
    return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=max(epochs, first), reduction_factor=3), ""


def max_epochs(spec: Spec) -> int:
    e = spec.train.epochs
    if not is_choice(e):
        return e
    return max(e.options) if hasattr(e, "options") else e.high


# ----------------------------------------------------------------------------------------------------------------
# Records: the study's trials as the results see them
# ----------------------------------------------------------------------------------------------------------------


def records_from_study(study: optuna.Study) -> list[TrialRecord]:
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return [TrialRecord(number=t.number, state=STATES.get(t.state, "failed"),
                        values=list(t.values) if t.state == TrialState.COMPLETE and t.values else None,
                        params=dict(t.params), attrs=dict(t.user_attrs), counted=t.number not in retried)
            for t in trials]


def trial_counts(study: optuna.Study) -> Counts:
    objectives = list(study.user_attrs.get("objectives", [])) or \
        ["val_accuracy" if d == optuna.study.StudyDirection.MAXIMIZE else "params" for d in study.directions]
    return counts(records_from_study(study), objectives)


def records_from_storage(info: dict, run_dir: Path) -> list[TrialRecord]:
    """The records of a run's study, read from the storage its run.json names (never creating one)."""
    url = info.get("storage", "")
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists() or path.stat().st_size == 0:
            raise SpecError("", f"{run_dir}: its study file {path} is missing or empty")
    if url.startswith("journal:") and not Path(url.removeprefix("journal:")).exists():
        raise SpecError("", f"{run_dir}: its journal file {url.removeprefix('journal:')} is missing")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(url)
    try:
        study = optuna.load_study(study_name=info["study_name"], storage=storage)
    except KeyError:
        raise SpecError("", f"{run_dir}: study {info['study_name']!r} not found in {url}") from None
    return records_from_study(study)


# ----------------------------------------------------------------------------------------------------------------
# The objective: the trial core, answered by an Optuna trial
# ----------------------------------------------------------------------------------------------------------------


class OptunaHooks(TrialHooks):
    def __init__(self, run: "SearchRun", trial: optuna.Trial):
        self.run = run
        self.trial = trial

    def set_attr(self, key, value):
        self.trial.set_user_attr(key, value)

    def constrain(self, key, value):
        if key not in self.trial.constraints:  # a retried trial already carries its predecessor's
            self.trial.set_constraint(key, value)

    def on_arch(self, number, arch_yaml):
        from .trial import write_text

        write_text(trial_dir(self.run.out, number) / "arch.yaml", arch_yaml)

    def report(self, epoch, metrics):
        self.trial.report(metrics["val_accuracy"], epoch)
        return self.trial.should_prune()

    def status(self, text):
        self.run.show_status(text)

    def params(self):
        return self.trial.params


class Objective:
    """Optuna's objective: the trial core's outcome as a value, ``TrialPruned`` or :class:`TrialFailed`."""

    def __init__(self, run: "SearchRun"):
        self.run = run
        self.current: Optional[optuna.Trial] = None

    def __call__(self, trial: optuna.Trial):
        self.current = trial
        run = self.run
        trial.set_user_attr("worker", run.worker_name)
        trial.set_user_attr("worker_info", {**run.identity, "trial": trial.number})
        trial.set_user_attr("status", "running")
        warm = trial.user_attrs.get("warm_start")
        hooks = OptunaHooks(run, trial)
        outcome = run.evaluator.evaluate(trial.number, trial, hooks, warm=warm,
                                         in_space=trial.user_attrs.get("in_space", True))
        outcome.info["distributions"] = {k: optuna.distributions.distribution_to_json(d)
                                         for k, d in trial.distributions.items()}
        write_json(trial_dir(run.out, trial.number) / "metrics.json", outcome.info)
        run.progress.line(trial_line(trial.number, outcome.state, outcome.info, run.prefix))
        return self._finish(outcome)

    @staticmethod
    def _finish(outcome: Outcome):
        if outcome.status == "interrupted":
            raise KeyboardInterrupt
        if outcome.state == "complete":
            return outcome.values[0] if len(outcome.values) == 1 else outcome.values
        if outcome.state == "pruned":
            raise optuna.TrialPruned(outcome.reason)
        raise TrialFailed(outcome.reason)


# ----------------------------------------------------------------------------------------------------------------
# The run: one process's share of the study
# ----------------------------------------------------------------------------------------------------------------


class SearchRun:
    """Opens (or joins) the study of a spec and runs trials until the study holds ``search.trials``."""

    def __init__(self, spec: Spec, out: Path, progress: Optional[Progress] = None, worker_index: int = 0,
                 spec_path: Optional[str] = None):
        self.spec = spec
        self.out = Path(out)
        self.progress = progress or Progress()
        self.worker_index = worker_index
        self.spec_path = spec_path
        self.identity = worker_identity()
        self.worker_name = f"{self.identity['host']}:{self.identity['pid']}"
        self.prefix = f"[worker {worker_index}] " if worker_index else ""
        self.url = storage_url(spec.search, self.out)
        self.objectives = list(spec.search.objectives)
        self.directions = [direction(o) for o in self.objectives]
        self.data = DataCache()
        self.study: Optional[optuna.Study] = None
        self._status_head = ""

    # setup -----------------------------------------------------------------------------------------------------

    def open(self, create: bool = True) -> optuna.Study:
        from runners.train import resolve_device

        search = self.spec.search
        if len(set(self.objectives)) != len(self.objectives) or not self.objectives:
            raise SpecError("search.objectives", f"{self.objectives} must name each objective once")
        check_workers(self.url, search.workers, self.out)
        self.device = resolve_device(self.spec.train.device)
        self.evaluator = Evaluator(self.spec, self.device, self.data, worker=self.worker_name)
        warm = [self._warm_start_params(p) for p in search.warm_start]  # bad files fail before anything runs
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines say what happened to each trial
        storage = open_storage(self.url)
        name = search.study_name or self.spec.name
        if not create:
            try:
                study = optuna.load_study(study_name=name, storage=storage)
            except KeyError:
                raise SpecError("search.study_name", f"no study {name!r} in {self.url}") from None
        else:
            study = optuna.create_study(storage=storage, study_name=name, directions=self.directions,
                                        load_if_exists=True)
        if create and "objectives" not in study.user_attrs:
            study.set_user_attr("objectives", self.objectives)
        have = [d.name.lower() for d in study.directions]
        if have != self.directions:
            raise SpecError("search.objectives", f"study {name!r} in {self.url} optimises {have}, not "
                            f"{self.directions} ({self.objectives}); use another --study-name or --out")
        existing = len(study.get_trials(deepcopy=False))
        parallel = search.workers > 1 or not is_sqlite(self.url)
        seed = search.seed + 7919 * existing + 104729 * self.worker_index
        if parallel:  # processes started at once on one storage must not draw the same random trials
            seed = hash((seed, self.identity["host"], self.identity["pid"])) % 2**31
        pruner, self.pruner_note = make_pruner(search, max_epochs(self.spec), self.objectives)
        self.study = optuna.load_study(study_name=name, storage=storage, pruner=pruner,
                                       sampler=make_sampler(search, len(self.objectives), parallel, seed))
        self.objective = Objective(self)
        if create:
            self._enqueue_warm_starts(warm)
            self.write_run_json()
        return self.study

    def _warm_start_params(self, path: str) -> tuple[str, Optional[dict]]:
        arch = load_spec(path)
        if not arch.is_fixed():
            raise SpecError("search.warm_start", f"{path} is a search space; warm starts are fixed architectures")
        try:
            return path, params_for(self.spec, arch)
        except OutsideSpace:
            return path, None  # evaluated as written, with the space's training recipe

    def _enqueue_warm_starts(self, warm: list[tuple[str, Optional[dict]]]) -> None:
        seen = {t.user_attrs.get("warm_start") for t in self.study.get_trials(deepcopy=False)}
        for path, params in warm:
            if path not in seen:
                self.study.enqueue_trial(params or {}, user_attrs={"warm_start": path, "in_space": params is not None})

    def write_run_json(self) -> None:
        write_json(self.out / "run.json", {
            "name": self.spec.name, "backend": "optuna", "spec": self.spec_path, "storage": self.url,
            "study_name": self.study.study_name, "objectives": self.objectives, "trials": self.spec.search.trials,
            "top": self.spec.search.top})

    def trial_dir(self, number: int) -> Path:
        return trial_dir(self.out, number)

    # progress --------------------------------------------------------------------------------------------------

    def show_status(self, tail: str, force: bool = False) -> None:
        self.progress.status(f"{self.prefix}{self._status_head} | {tail}", force=force)

    # the loop --------------------------------------------------------------------------------------------------

    def run_trials(self) -> Counts:
        """Run trials until the study holds enough (counting those in flight elsewhere) or the timeout passes."""
        search = self.spec.search
        deadline = time.monotonic() + search.timeout if search.timeout is not None else None
        while True:
            for n in recover_lost_trials(self.study):
                self.progress.line(f"{self.prefix}trial {n:>3} lost     (its process died; enqueued again)")
            c = trial_counts(self.study)
            self._status_head = status_head(c, search.trials)
            if c.done >= search.trials or (c.done + c.running >= search.trials and c.waiting == 0):
                return c
            if deadline is not None and time.monotonic() >= deadline:
                self.progress.line(f"{self.prefix}timeout of {search.timeout:g}s reached; no new trials")
                return c
            self.show_status("sampling", force=True)
            try:
                self.study.optimize(self.objective, n_trials=1, catch=(TrialFailed,))
            except KeyboardInterrupt:
                self._retry_current()
                raise

    def _retry_current(self) -> None:
        """An interrupted trial is failed and enqueued again, so rerunning the command picks it up."""
        trial = self.objective.current
        if trial is None:
            return
        frozen = self.study._storage.get_trial(trial._trial_id)
        if frozen.user_attrs.get("status") not in ("running", "interrupted"):
            return  # it had finished when the interrupt came
        if frozen.state == TrialState.RUNNING:
            try:
                self.study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass
            frozen = self.study._storage.get_trial(trial._trial_id)
        if frozen.state == TrialState.FAIL:
            retry_trial(self.study, frozen)


def _worker_main(spec: Spec, out: str, index: int, threads: int) -> None:
    """A local worker process (``--workers N``): joins the study and shares its trials."""
    import torch

    torch.set_num_threads(threads)
    try:
        run = SearchRun(spec, Path(out), worker_index=index)
        run.open(create=False)
        run.run_trials()
    except KeyboardInterrupt:
        pass
    except SpecError as e:
        print(f"[worker {index}] error: {e}", flush=True)


def run_search(spec: Spec, out: Path, spec_path: Optional[str] = None, progress: Optional[Progress] = None,
               threads: Optional[int] = None) -> dict:
    """Run (or resume, or join) the study of ``spec``; write the results; return a summary dict.

    ``threads``: torch threads per worker process on the CPU (default: :func:`runners.train.cpu_threads`).
    """
    import torch

    progress = progress or Progress()
    out = Path(out)
    run = SearchRun(spec, out, progress, spec_path=spec_path)
    study = run.open()
    search = spec.search
    if run.device.type == "cpu" or threads:
        from runners.train import cpu_threads

        threads = threads or cpu_threads(search.workers)
        torch.set_num_threads(threads)
    else:
        threads = max(1, (os.cpu_count() or 1) // search.workers)
    c = trial_counts(study)
    progress.line(f"search {spec.name}: study '{study.study_name}' in {run.url}, {search.trials} trials, "
                  f"{search.sampler} + {search.pruner if not run.pruner_note else 'no pruning'}, "
                  f"objectives {', '.join(run.objectives)}, device {run.device}"
                  + (f" ({threads} thread{'s' * (threads > 1)})" if run.device.type == "cpu" else "")
                  + (f", {search.workers} workers" if search.workers > 1 else ""))
    if run.pruner_note:
        progress.line(run.pruner_note)
    if c.done:
        progress.line(f"resuming: {c.done} of {search.trials} trials done ({c.complete} complete, {c.pruned} pruned, "
                      f"{c.failed} failed)")
    children = []
    if search.workers > 1:
        ctx = multiprocessing.get_context("spawn")
        for i in range(1, search.workers):
            p = ctx.Process(target=_worker_main, args=(spec, str(out), i, threads), daemon=False)
            p.start()
            children.append(p)
    start = time.perf_counter()
    try:
        run.run_trials()
    finally:
        for p in children:
            p.join()
    progress.clear()
    records = records_from_study(study)
    summary = write_results(records, spec, out, progress)
    summary["seconds"] = time.perf_counter() - start
    if search.final_epochs and summary.get("best_trial") is not None:
        summary["final"] = final_training(records, spec, out, summary["best_trial"], search.final_epochs,
                                          run.device, run.data, progress)
    return summary
