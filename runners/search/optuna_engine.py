"""The Optuna engine of ``search run``: a study per run directory, driving the trial core define-by-run.

Every process that runs the same command on the same storage joins the same study and runs trials until the
study holds ``search.trials`` finished ones, so a rerun resumes, several processes share the work, and a killed
process loses only the trial it was running (see :mod:`runners.search.storage`). The loop asks and tells Optuna itself
so that the order of the records is fixed: a trial is claimed by its worker the moment it is created, the study
records its result first, and ``trials/<n>/metrics.json`` is written after that (from a ``metrics.pending.json``
kept since the trial ended), so the files never claim more than the study; on resume and at the end the files
are reconciled with the study, which is the truth. Failures are FAIL trials with a status and a reason;
infeasible and over-budget samples are pruned in milliseconds; weak trials are pruned on their per-epoch
validation accuracy (single-objective searches on ``val_accuracy``, never before warmup has ended).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Optional

import optuna
from optuna.trial import TrialState

from search_space.config import SearchConfig
from search_space.sampling import warm_starts
from search_space.schema import SpecError
from search_space.spec import Spec

from runners.common.progress import Progress
from runners.search.records import STATES, Counts, records_from_study, trial_attrs, trial_counts
from runners.search.rules import (
    MO_REDUCTION_FACTOR, PerTrialSeed, first_rung, make_sampler, max_epochs, mo_rungs, warmup_end)
from runners.search.results import final_training, prune_weights, status_head, trial_line, write_results
from runners.common import signals
from runners.common.signals import Interrupted, StopSignals, die_with_parent, processes_beside, stop_error
from runners.search.recipe import recipe
from runners.search.storage import (
    RunLock, check_study_known, check_study_present, check_workers, claim, heartbeat, is_sqlite, masked,
    open_storage, recover_lost_trials, retry_trial, sqlite_path, storage_url, without_password, worker_identity)
from runners.search.trial import (
    DataCache, Evaluator, Outcome, TrialHooks, copy_spec, direction, first_line, is_disk_full, preflight, trial_dir,
    write_json, write_text)

TELL = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}
WAIT_S = 2.0  # how often a process with nothing left to start looks at the trials running elsewhere


# ----------------------------------------------------------------------------------------------------------------
# Sampler and pruner
# ----------------------------------------------------------------------------------------------------------------


def make_pruner(search: SearchConfig, epochs: int, objectives: list[str],
                first_epoch: int = 1) -> tuple[optuna.pruners.BasePruner, str]:
    """The pruner and a note for the user ('' when none is needed). Pruning reads the per-epoch validation
    accuracy, so it serves a search on ``val_accuracy`` alone, and never before ``first_epoch`` (the end of
    warmup: accuracy during warmup is near chance and ranks nothing)."""
    if search.pruner == "none":
        return optuna.pruners.NopPruner(), ""
    if len(objectives) > 1:
        if "val_accuracy" in objectives:  # Optuna cannot: successive halving by non-dominated rank, in OptunaHooks
            return optuna.pruners.NopPruner(), ""
        return optuna.pruners.NopPruner(), (f"note: pruning reads validation accuracy; pruner '{search.pruner}' "
                                            f"is off for objectives {', '.join(objectives)}")
    if objectives != ["val_accuracy"]:
        return optuna.pruners.NopPruner(), (f"note: pruning reads validation accuracy; pruner '{search.pruner}' "
                                            f"is off for objective {objectives[0]}")
    first = first_rung(search, epochs, first_epoch)
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=search.pruner_startup_trials, n_warmup_steps=first), ""
    if search.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=3), ""
    return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=max(epochs, first), reduction_factor=3), ""


# ----------------------------------------------------------------------------------------------------------------
# Records: the study's trials as the results see them
# ----------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------
# trials/<n>/ agrees with the study
# ----------------------------------------------------------------------------------------------------------------


def pending_path(out: Path, number: int) -> Path:
    return trial_dir(out, number) / "metrics.pending.json"


def _read(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def write_metrics(out: Path, frozen, info: Optional[dict] = None) -> None:
    """``trials/<n>/metrics.json`` as the study records the trial: the trial core's full outcome when it is at
    hand (``info`` or the pending file), else what the study's user attrs keep."""
    state = STATES.get(frozen.state, "failed")
    attrs = trial_attrs(frozen)
    base = info or _read(pending_path(out, frozen.number)) or {
        "trial": frozen.number, **{k: v for k, v in attrs.items() if k not in ("worker_info",)},
        "optuna_params": dict(frozen.params)}
    values = None
    if frozen.state == TrialState.COMPLETE and frozen.values:
        objectives = (base.get("values") or {}).keys() or [f"objective_{i}" for i in range(len(frozen.values))]
        values = dict(zip(objectives, frozen.values))
    data = {**base, "state": state, "status": attrs.get("status", base.get("status")),
            "reason": attrs.get("reason", base.get("reason", "")), "values": values}
    if not frozen.user_attrs.get("counted", True):
        data["counted"] = False
    write_json(trial_dir(out, frozen.number) / "metrics.json", data)
    pending_path(out, frozen.number).unlink(missing_ok=True)


def reconcile_files(study: optuna.Study, out: Path, numbers: Optional[set[int]] = None) -> int:
    """Rewrite the ``metrics.json`` of every finished trial whose file is missing or disagrees with the study (a
    kill between the two writes, a trial lost or failed by another process). Returns how many were rewritten."""
    fixed = 0
    for t in study.get_trials(deepcopy=False):
        if not t.state.is_finished() or (numbers is not None and t.number not in numbers):
            continue
        have = _read(trial_dir(out, t.number) / "metrics.json")
        agree = have is not None and have.get("state") == STATES[t.state] and \
            have.get("status") == trial_attrs(t).get("status") and \
            (t.state != TrialState.COMPLETE or list((have.get("values") or {}).values()) == list(t.values))
        if agree:
            pending_path(out, t.number).unlink(missing_ok=True)
            continue
        write_metrics(out, t)
        fixed += 1
    return fixed


# ----------------------------------------------------------------------------------------------------------------
# The trial core, answered by an Optuna trial
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
        write_text(trial_dir(self.run.out, number) / "arch.yaml", arch_yaml)

    def report(self, epoch, metrics):
        if len(self.run.objectives) > 1:
            return self._stop_by_nondominated_rank(epoch, metrics["val_accuracy"])
        self.trial.report(metrics["val_accuracy"], epoch)
        return self.trial.should_prune()

    def _stop_by_nondominated_rank(self, epoch, accuracy):
        """Several objectives (Optuna refuses trial.report there): at a rung, this trial's (accuracy, params/MACs)
        against every trial that reached the rung, by :func:`runners.search.mo_pruning.should_stop`. Costs are known
        before training; latency is not, so MACs stand in for it."""
        from runners.search.mo_pruning import should_stop

        if epoch not in self.run.mo_rungs:
            return False
        key = f"rung_{epoch}"
        self.trial.set_user_attr(key, accuracy)

        def point(acc, attrs):
            return [-acc if o == "val_accuracy" else float(attrs.get("macs" if o == "latency" else o, 0))
                    for o in self.run.objectives]

        others = [point(t.user_attrs[key], t.user_attrs) for t in self.trial.study.get_trials(deepcopy=False)
                  if t.number != self.trial.number and key in t.user_attrs]
        return should_stop(point(accuracy, self.trial.user_attrs), others, eta=MO_REDUCTION_FACTOR)

    def status(self, text):
        signals.check()  # a signal whose exception Python dropped still stops the trial
        self.run.show_status(text)

    def params(self):
        return self.trial.params

    def trial_folder(self, number):
        return trial_dir(self.run.out, number)

    def engine_error(self, error):
        return isinstance(error, (optuna.exceptions.StorageInternalError, OSError)) or \
            type(error).__module__.startswith("sqlalchemy")


# ----------------------------------------------------------------------------------------------------------------
# The run: one process's share of the study
# ----------------------------------------------------------------------------------------------------------------


class SearchRun:
    """Opens (or joins) the study of a spec and runs trials until the study holds ``search.trials``."""

    def __init__(self, spec: Spec, out: Path, progress: Optional[Progress] = None, worker_index: int = 0,
                 spec_path: Optional[str] = None, parent_pid: Optional[int] = None):
        self.spec = spec
        self.out = Path(out)
        self.progress = progress or Progress()
        self.worker_index = worker_index
        self.spec_path = spec_path
        self.parent_pid = parent_pid
        self.identity = worker_identity()
        self.worker_name = f"{self.identity['host']}:{self.identity['pid']}"
        self.prefix = f"[worker {worker_index}] " if worker_index else ""
        self.url = storage_url(spec.search, self.out)
        self.objectives = list(spec.search.objectives)
        self.directions = [direction(o) for o in self.objectives]
        self.data = DataCache()
        self.study: Optional[optuna.Study] = None
        self.lock: Optional[RunLock] = None
        self.current: Optional[optuna.Trial] = None
        self._status_head = ""

    # setup -----------------------------------------------------------------------------------------------------

    def open(self, create: bool = True) -> optuna.Study:
        """Join the study (``create``: the first process of a run, which also checks the data, takes the SQLite
        lock and writes run.json). Bad input raises :class:`SpecError` before any trial exists."""
        from runners.training.device import resolve_device

        search = self.spec.search
        if len(set(self.objectives)) != len(self.objectives) or not self.objectives:
            raise SpecError("search.objectives", f"{self.objectives} must name each objective once")
        check_workers(self.url, search.workers, self.out)
        self.device = resolve_device(self.spec.train.device)
        self.evaluator = Evaluator(self.spec, self.device, self.data, worker=self.worker_name)
        if search.trials_per_gpu is not None:  # trials share the device by the memory model (runners.search.packing)
            from runners.search.packing import Ledger, Packing, device_capacity, ledger_path

            capacity = device_capacity(self.device, search.device_memory_mb, search.workers)
            self.evaluator.packing = Packing(Ledger(ledger_path(self.device), capacity), self.device)
        warm = warm_starts(self.spec)  # bad files fail before anything runs
        if create:
            self._check_out()
            preflight(self.spec, self.device, self.data)  # data and recipe, before the study holds any trial
            check_study_present(self.url, self.out)
            if is_sqlite(self.url):
                self.lock = RunLock(sqlite_path(self.url)).acquire()
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines say what happened to each trial
        storage = open_storage(self.url)
        name = search.study_name or self.spec.name
        if not create:
            try:
                study = optuna.load_study(study_name=name, storage=storage)
            except KeyError:
                raise SpecError("search.study_name", f"no study {name!r} in {masked(self.url)}") from None
        else:
            check_study_known(optuna.get_all_study_names(storage), name, self.url, self.out)
            study = optuna.create_study(storage=storage, study_name=name, directions=self.directions,
                                        load_if_exists=True)
        if create and "objectives" not in study.user_attrs:
            study.set_user_attr("objectives", self.objectives)
        have = [d.name.lower() for d in study.directions]
        if have != self.directions:
            raise SpecError("search.objectives", f"study {name!r} in {masked(self.url)} optimises {have}, not "
                            f"{self.directions} ({self.objectives}); use another --study-name or --out")
        parallel = search.workers > 1 or not is_sqlite(self.url)
        pruner, self.pruner_note = make_pruner(search, max_epochs(self.spec), self.objectives, warmup_end(self.spec))
        self.mo_rungs = mo_rungs(search, max_epochs(self.spec), self.objectives, warmup_end(self.spec))
        sampler = PerTrialSeed(make_sampler(search, len(self.objectives), parallel, search.seed), search.seed)
        self.study = optuna.load_study(study_name=name, storage=storage, pruner=pruner, sampler=sampler)
        if create:
            self._enqueue_warm_starts(warm)
            self.write_run_json()
        return self.study

    def _check_out(self) -> None:
        """The run directory can be made and written (a read-only place, a file in the way) before anything runs."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            import errno

            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            advice = "free space (or raise the quota) and rerun" if full else "choose a writable --out"
            raise SpecError("--out", f"cannot write the run directory {self.out}: {e.strerror or e}; "
                                     f"{advice}") from None

    def _enqueue_warm_starts(self, warm: list[tuple[str, Optional[dict]]]) -> None:
        seen = {t.user_attrs.get("warm_start") for t in self.study.get_trials(deepcopy=False)}
        for path, params in warm:
            if path not in seen:
                self.study.enqueue_trial(params or {}, user_attrs={"warm_start": path, "in_space": params is not None})

    def write_run_json(self) -> None:
        """run.json names the storage without its password (libpq reads PGPASSWORD or ~/.pgpass on resume)."""
        write_json(self.out / "run.json", {
            "name": self.spec.name, "backend": "optuna", "spec": self.spec_path,
            "storage": without_password(self.url), "study_name": self.study.study_name,
            "objectives": self.objectives, "trials": self.spec.search.trials, "top": self.spec.search.top,
            "recipe": recipe(self.spec)})
        copy_spec(self.spec_path, self.out)

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def trial_dir(self, number: int) -> Path:
        return trial_dir(self.out, number)

    # progress --------------------------------------------------------------------------------------------------

    def show_status(self, tail: str, force: bool = False) -> None:
        self.progress.status(f"{self.prefix}{self._status_head} | {tail}", force=force)

    # the loop --------------------------------------------------------------------------------------------------

    def recover(self) -> None:
        """Fail and re-enqueue the trials of dead workers, and give them (and any file a kill left behind) a
        ``metrics.json`` that agrees with the study."""
        lost = recover_lost_trials(self.study, exclusive=self.lock is not None, own=self.identity,
                                   current=self.current._trial_id if self.current else None)
        for n in lost:
            self.progress.line(f"{self.prefix}trial {n:>3} lost     (its process died; enqueued again)")
        if lost:
            reconcile_files(self.study, self.out, set(lost))

    def run_trials(self, stop_when_idle: bool = False) -> Counts:
        """Run trials until the study holds enough or the timeout passes. While the trials still missing are
        running in other processes, wait for them: a dead one is failed and retried (by its host's pid, its
        heartbeat or its age), and this process then runs it. ``stop_when_idle``: return instead of waiting."""
        search = self.spec.search
        deadline = time.monotonic() + search.timeout if search.timeout is not None else None
        reconcile_files(self.study, self.out)
        while True:
            signals.check()
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                raise Interrupted(15)  # the parent is gone (where PR_SET_PDEATHSIG does not exist)
            self.recover()
            c = trial_counts(self.study)
            self._status_head = status_head(c, search.trials)
            if c.done >= search.trials:
                return c
            if deadline is not None and time.monotonic() >= deadline:
                self.progress.line(f"{self.prefix}timeout of {search.timeout:g}s reached; no new trials")
                return c
            if c.done + c.running >= search.trials and c.waiting == 0:
                if stop_when_idle:
                    return c
                self.show_status(f"waiting for {c.running} trial(s) running in other processes", force=True)
                time.sleep(WAIT_S)
                continue
            self.show_status("sampling", force=True)
            self.run_one()

    def run_one(self) -> Optional[Outcome]:
        """Ask for a trial, claim it, evaluate it, tell the study, then write its files."""
        study = self.study
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeats outside study.optimize warn
            trial = study.ask()
        self.current = trial
        try:
            claim(trial._trial_id, trial.number, study._storage, self.identity)
            hooks = OptunaHooks(self, trial)
            with heartbeat(trial._trial_id, study._storage):
                outcome = self.evaluator.evaluate(trial.number, trial, hooks, warm=trial.user_attrs.get("warm_start"),
                                                  in_space=trial.user_attrs.get("in_space", True))
                outcome.info["distributions"] = {k: optuna.distributions.distribution_to_json(d)
                                                 for k, d in trial.distributions.items()}
                if outcome.status != "interrupted":
                    write_json(pending_path(self.out, trial.number), outcome.info)
        except KeyboardInterrupt as e:
            signals.acknowledge()
            signals.release(e)  # a stop inside a SQLite read must not leave its lock behind
            self._stop(trial, "interrupted", f"interrupted by {e if str(e).startswith('SIG') else 'the user'}")
            raise
        except SpecError as e:  # bad input only a trial could find (the data of a sampled recipe)
            trial.set_user_attr("counted", False)
            self._stop(trial, "bad_input", str(e), retry=False)
            raise
        except OSError as e:
            reason = f"cannot write {e.filename or 'the trial directory'}: {e.strerror or e}"
            if is_disk_full(e):  # writing again will not help: stop with one line; the trial runs again later
                self._leave_for_retry(trial, reason)
                raise SpecError("--out", f"{reason}; free space (or fix the permissions) and rerun the same "
                                         f"command to resume") from None
            self._stop(trial, "error", reason, retry=False)
            return None
        except Exception as e:  # the storage failing (a full disk: run again later), or a bug: record why, surface
            full = write_failure(e)
            if full:
                self._leave_for_retry(trial, full)
            else:
                self._stop(trial, "error", f"{type(e).__name__}: {first_line(e)}", retry=False)
            raise
        if outcome.status == "interrupted":
            signals.acknowledge()
            self._stop(trial, "interrupted", outcome.reason)
            raise stop_error(outcome.reason)
        values = outcome.values if outcome.state == "complete" else None
        try:
            frozen = study.tell(trial, values, state=TELL[outcome.state], skip_if_finished=True)
        except ValueError as e:  # a value Optuna refuses (NaN): a failure with its reason, not a crash
            trial.set_user_attr("status", "error")
            trial.set_user_attr("reason", f"Optuna refused the result: {first_line(e)}")
            frozen = study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        self.current = None
        frozen = study._storage.get_trial(trial._trial_id)
        write_metrics(self.out, frozen, outcome.info if frozen.state == TELL[outcome.state] else None)
        if outcome.info.get("weights"):
            prune_weights(self.out, records_from_study(self.study), self.objectives, self.spec.search.keep_weights)
        self.progress.line(trial_line(trial.number, STATES[frozen.state], trial_attrs(frozen) | {
            k: v for k, v in outcome.info.items() if k in ("val_accuracy", "params", "seconds", "epochs",
                                                            "latency_ms", "blocks", "warm_start")}, self.prefix))
        return outcome

    def _stop(self, trial: optuna.Trial, status: str, reason: str, retry: bool = True) -> None:
        """End a trial that did not finish on its own: record why, fail it, enqueue it again (``retry``), and
        write its metrics.json. Runs while further signals are ignored (see :mod:`runners.common.signals`)."""
        storage = self.study._storage
        self.current = None
        try:
            frozen = storage.get_trial(trial._trial_id)
            if frozen.state == TrialState.RUNNING:
                storage.set_trial_user_attr(trial._trial_id, "status", status)
                storage.set_trial_user_attr(trial._trial_id, "reason", reason + ("; retried" if retry else ""))
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            frozen = storage.get_trial(trial._trial_id)
            if retry and frozen.state == TrialState.FAIL and frozen.user_attrs.get("status") == status:
                retry_trial(self.study, frozen)
        except optuna.exceptions.UpdateFinishedTrialError:
            frozen = storage.get_trial(trial._trial_id)
        try:
            write_metrics(self.out, frozen)
        except OSError:
            pass  # the study holds the record; the next run reconciles the file


    def _leave_for_retry(self, trial: optuna.Trial, reason: str) -> None:
        """A trial a full disk stopped: note why if the storage still takes it, and leave the trial RUNNING. The
        process then ends, and the next run's recovery fails it as lost (keeping the reason) and retries it, all
        writes a full disk could have cut in half here."""
        self.current = None
        try:
            self.study._storage.set_trial_user_attr(trial._trial_id, "reason", reason)
        except Exception:  # noqa: BLE001 - the disk is full; recovery says "its process stopped" instead
            pass


def _worker_main(spec: Spec, out: str, index: int, threads: int, parent_pid: int) -> None:
    """A local worker process (``--workers N``): joins the study and shares its trials; stops with its parent."""
    import torch

    torch.set_num_threads(threads)
    with StopSignals():
        try:
            die_with_parent(parent_pid)
            run = SearchRun(spec, Path(out), worker_index=index, parent_pid=parent_pid)
            run.open(create=False)
            run.run_trials(stop_when_idle=True)
        except KeyboardInterrupt:
            pass
        except SpecError as e:
            print(f"[worker {index}] error: {e}", flush=True)


def run_search(spec: Spec, out: Path, spec_path: Optional[str] = None, progress: Optional[Progress] = None,
               threads: Optional[int] = None) -> dict:
    """Run (or resume, or join) the study of ``spec``; write the results; return a summary dict.

    ``threads``: torch threads per worker process on the CPU (default: :func:`runners.training.device.cpu_threads`).
    SIGINT, SIGTERM and SIGHUP raise :class:`~runners.common.signals.Interrupted` (a KeyboardInterrupt) after the
    running trial is recorded and enqueued again.
    """
    spec = packed_spec(spec, Path(out))
    with StopSignals():
        run = SearchRun(spec, Path(out), progress or Progress(), spec_path=spec_path)
        try:
            return _run(run, threads)
        except SpecError:
            raise  # already one line with its own advice
        except Exception as e:  # noqa: BLE001 - a full disk or a damaged study file ends with one line
            why = write_failure(e)
            if why is not None:
                raise SpecError("--out", f"{why}; {write_advice(why, out)}") from None
            damaged = damage(e)
            if damaged is None:
                raise
            raise SpecError("search.storage", f"the study in {masked(run.url)} is damaged ({damaged}); restore it "
                                              f"from a copy, or start fresh with another --out") from None
        finally:
            run.close()


def packed_spec(spec: Spec, out: Path) -> Spec:
    """With ``search.trials_per_gpu``: as many worker processes as trials share the device, on a journal file in
    the run directory when no storage is named (SQLite does not suit several writers)."""
    import dataclasses

    from search_space.config import check_search

    from runners.search.packing import resolve_trials_per_gpu
    from runners.training.device import resolve_device

    search = spec.search
    if search.trials_per_gpu is None:
        return spec
    n = resolve_trials_per_gpu(search.trials_per_gpu, resolve_device(spec.train.device).type)
    storage = search.storage
    if storage is None and n > 1 and not (out / "study.db").exists():
        storage = f"journal:{out / 'study.log'}"
    search = dataclasses.replace(search, workers=n, storage=storage)
    check_search(search)
    return dataclasses.replace(spec, search=search)


DISK_FULL_WORDS = ("disk is full", "disk i/o error", "readonly database", "read-only file system",
                   "no space left", "file too large", "quota exceeded")


def write_advice(why: str, out: Path) -> str:
    """Advice that works for a write that failed: room for a full disk; permissions for a read-only place (where a
    plain rerun would be refused until they are fixed)."""
    lower = why.lower()
    if any(w in lower for w in ("read-only", "readonly", "permission", "not permitted")):
        return (f"make {out} writable again and rerun the same command to resume (or start fresh with a writable "
                f"--out)")
    return "free space (or raise the quota) and rerun the same command to resume"


def damage(error: BaseException) -> Optional[str]:
    """SQLite's words when the study file is damaged (a bad page met during the search), else None."""
    seen = error
    while seen is not None:
        text = first_line(seen)
        if any(w in text.lower() for w in ("malformed", "not a database", "database corrupt")):
            return text.removeprefix("(sqlite3.DatabaseError) ")
        seen = seen.__cause__ or seen.__context__
    return None


def write_failure(error: BaseException) -> Optional[str]:
    """What a write that cannot succeed again said (the disk or quota is full, the place is read-only), whether it
    came as an OSError or wrapped by SQLite, SQLAlchemy and Optuna; None for any other error."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and is_disk_full(seen):
            return f"cannot write {seen.filename or 'the run directory'}: {seen.strerror or seen}"
        text = first_line(seen)
        if any(w in text.lower() for w in DISK_FULL_WORDS):
            return f"cannot write the study: {text.removeprefix('(sqlite3.OperationalError) ')}"
        seen = seen.__cause__ or seen.__context__
    return None


def _run(run: SearchRun, threads: Optional[int]) -> dict:
    import torch

    spec, out, progress, search = run.spec, run.out, run.progress, run.spec.search
    study = run.open()
    if run.device.type == "cpu" or threads:
        from runners.training.device import cpu_threads

        threads = threads or cpu_threads(search.workers)
        torch.set_num_threads(threads)
    else:
        threads = max(1, (os.cpu_count() or 1) // search.workers)
    c = trial_counts(study)
    progress.line(f"search {spec.name}: study '{study.study_name}' in {masked(run.url)}, {search.trials} trials, "
                  f"{search.sampler} + {search.pruner if not run.pruner_note else 'no pruning'}, "
                  f"objectives {', '.join(run.objectives)}, device {run.device}"
                  + (f" ({threads} thread{'s' * (threads > 1)})" if run.device.type == "cpu" else "")
                  + (f", {search.workers} workers" if search.workers > 1 else "")
                  + (f", packed by memory ({run.evaluator.packing.capacity / 2**20:,.0f} MiB in "
                     f"{run.evaluator.packing.ledger.path})" if run.evaluator.packing is not None else ""))
    if run.pruner_note:
        progress.line(run.pruner_note)
    if c.done:
        progress.line(f"resuming: {c.done} of {search.trials} trials done ({c.complete} complete, {c.pruned} pruned, "
                      f"{c.failed} failed)")
    start = time.perf_counter()
    # on an error or Ctrl-C here, SIGTERM: each worker records its trial as interrupted and enqueues it again
    with processes_beside(_worker_main, lambda i: (spec, str(out), i, threads, os.getpid()), search.workers - 1):
        run.run_trials()
    run.recover()  # a child that died at the very end
    reconcile_files(study, out)
    progress.clear()
    records = records_from_study(study)
    summary = write_results(records, spec, out, progress)
    summary["seconds"] = time.perf_counter() - start
    if search.final_epochs and summary.get("best_trial") is not None:
        summary["final"] = final_training(records, spec, out, summary["best_trial"], search.final_epochs,
                                          run.device, run.data, progress)
    return summary
