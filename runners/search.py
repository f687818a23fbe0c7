"""The Optuna backend of ``search run``: storage, study, objective, recovery and results.

One study per run directory (``runs/<name>/``). Every process that runs the same command on the same storage
joins the same study and runs trials until the study holds ``search.trials`` finished ones, so a rerun resumes,
several processes share the work, and a killed process loses only the trial it was running:

* storage: a SQLite file by default (optuna-dashboard reads it); any RDB URL, or a journal file for several
  processes (SQLite's file locking does not suit many writers, so ``workers > 1`` on SQLite is refused);
* faults: RDB storages run Optuna's heartbeats (a trial whose process stopped beating is failed and retried);
  on any storage, a RUNNING trial whose process on this host is gone is failed and retried at once, so a rerun
  after ``kill -9`` picks the trial up again without waiting for a grace period;
* a trial's outcome is in its user attrs (``status``, ``reason``, ``epochs``, ``params`` ...) and in
  ``trials/<number>/`` (``arch.yaml``, ``metrics.json``); training failures (diverged, oom, error) are FAIL
  trials, infeasible and over-budget samples are pruned in milliseconds without training, weak trials are
  pruned on their per-epoch validation accuracy; the test split is never used for a search trial.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import socket
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from search_space.config import SearchConfig
from search_space.cost import architecture_cost, stage_blocks
from search_space.sampling import FixedSuggester, OutsideSpace, params_for, resolve_dataclass, sample
from search_space.schema import SpecError, is_choice
from search_space.spec import Spec, dump_spec, load_spec

from .progress import Progress, bar, count, duration

HEARTBEAT_S = 20  # RDB storages: seconds between heartbeats of a running trial
GRACE_S = 60  # ... and the silence after which it counts as lost
MAX_RETRY = 2  # a lost (killed, interrupted) trial is run again at most this often
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
SHORT_TYPES = {"split_attention": "sa", "grouped": "grp", "res2net": "r2n", "rexnet": "rex"}


class TrialFailed(Exception):
    """Raised by the objective so Optuna records the trial as FAIL (its reason is in the user attrs)."""


# ----------------------------------------------------------------------------------------------------------------
# Storage
# ----------------------------------------------------------------------------------------------------------------


def storage_url(search: SearchConfig, out: Path) -> str:
    """The storage URL a run uses, with file paths made absolute so ``search show`` works from anywhere."""
    url = search.storage or f"sqlite:///{out / 'study.db'}"
    if url.startswith("journal:") or (url.endswith(".log") and "://" not in url):
        return "journal:" + str(Path(url.removeprefix("journal:")).expanduser().resolve())
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        return "sqlite:///" + str(Path(url.removeprefix("sqlite:///")).resolve())
    if "://" not in url:
        if url.endswith((".db", ".sqlite", ".sqlite3")):
            return "sqlite:///" + str(Path(url).expanduser().resolve())
        raise SpecError("search.storage", f"{url!r} is not a storage: use sqlite:///FILE.db, postgresql://..., "
                                          f"mysql://..., journal:FILE or FILE.log")
    return url


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:")


def open_storage(url: str) -> BaseStorage:
    """A journal file, or an RDB storage with heartbeats (lost trials are failed and retried)."""
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if is_sqlite(url) and url.startswith("sqlite:////"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeats and their retry callback are "experimental"
            return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
    except ImportError as e:
        raise SpecError("search.storage", f"{url.split(':')[0]} needs a driver that is not installed ({e})") from None
    except Exception as e:  # noqa: BLE001 - a wrong URL or an unreachable server is bad input
        raise SpecError("search.storage", f"cannot open {url}: {str(e).splitlines()[0]}") from None


def check_workers(url: str, workers: int, out: Path) -> None:
    if workers > 1 and is_sqlite(url):
        raise SpecError("search.workers", f"{workers} workers cannot share a SQLite study (its file lock does not "
                        f"suit several writers); use --storage journal:{out / 'journal.log'} (a journal file) "
                        f"or a postgresql:// or mysql:// URL")


# ----------------------------------------------------------------------------------------------------------------
# Sampler and pruner
# ----------------------------------------------------------------------------------------------------------------


def make_sampler(search: SearchConfig, n_objectives: int, parallel: bool, seed: int) -> optuna.samplers.BaseSampler:
    startup = search.startup_trials if search.startup_trials is not None else min(10, max(3, search.trials // 4))
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


def make_pruner(search: SearchConfig, epochs: int, n_objectives: int) -> tuple[optuna.pruners.BasePruner, str]:
    """The pruner and a note for the user ('' when none is needed)."""
    if search.pruner == "none":
        return optuna.pruners.NopPruner(), ""
    if n_objectives > 1:
        return optuna.pruners.NopPruner(), (f"note: pruning works on one objective only; pruner "
                                            f"'{search.pruner}' is off for {n_objectives} objectives")
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
# Workers: who runs a trial, and whether that process is still alive
# ----------------------------------------------------------------------------------------------------------------


def _process_started(pid: int) -> Optional[int]:
    """Start time of a process in clock ticks since boot (Linux), to tell a reused pid from the original."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def worker_identity() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": _process_started(pid)}


def process_alive(host: str, pid: int, started: Optional[int]) -> Optional[bool]:
    """True/False for a process on this host; None for another host (its heartbeat decides)."""
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    return started is None or _process_started(pid) == started


def recover_lost_trials(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials whose process on this host is gone, and enqueue them again (at most MAX_RETRY times).

    Returns the numbers of the trials recovered. Another process may recover the same trial at the same moment;
    the storage lets only one of them finish it, and only that one re-enqueues it.
    """
    recovered = []
    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = t.user_attrs.get("worker_info")
        if not who or who.get("trial") != t.number:
            continue  # not claimed yet (a retried trial carries its predecessor's attrs until its worker writes)
        if process_alive(who["host"], who["pid"], who.get("started")) is not False:
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "status", "lost")
            storage.set_trial_user_attr(t._trial_id, "reason", f"its process {who['host']}:{who['pid']} died; retried")
            if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        retry_trial(study, storage.get_trial(t._trial_id))
        recovered.append(t.number)
    return recovered


def retry_trial(study: optuna.Study, failed: FrozenTrial) -> None:
    """Enqueue a failed trial's params again (Optuna's heartbeat retry, so both paths leave the same record)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the callback is "experimental"
        RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, failed)


@dataclass
class Counts:
    done: int  # finished trials that count toward search.trials (a retried lost trial does not)
    running: int
    waiting: int
    complete: int
    pruned: int
    failed: int
    best: Optional[float]  # best first objective among complete trials


def trial_counts(study: optuna.Study) -> Counts:
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    finished = [t for t in trials if t.state in FINISHED and t.number not in retried]
    by = {s: sum(t.state == s for t in finished) for s in FINISHED}
    values = [t.values[0] for t in trials if t.state == TrialState.COMPLETE and t.values]
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    return Counts(done=len(finished), running=sum(t.state == TrialState.RUNNING for t in trials),
                  waiting=sum(t.state == TrialState.WAITING for t in trials), complete=by[TrialState.COMPLETE],
                  pruned=by[TrialState.PRUNED], failed=by[TrialState.FAIL],
                  best=(max(values) if maximize else min(values)) if values else None)


# ----------------------------------------------------------------------------------------------------------------
# Helpers for one trial
# ----------------------------------------------------------------------------------------------------------------


def block_summary(model) -> str:
    """Block types per stage, short: ``sa,sk|plain|se,se``."""
    return "|".join(",".join(SHORT_TYPES.get(b.type, b.type) for b in stage_blocks(s)) for s in model.stages)


def measure_latency_ms(model, channels: int, size: int, device, warmup: int = 3, runs: int = 10) -> float:
    """Median milliseconds per image (batch 1, eval mode, after a few warm runs) on the run's device."""
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    model.eval()
    x = torch.randn(1, channels, size, size, device=device)
    times = []
    with torch.no_grad():
        for i in range(warmup + runs):
            sync()
            t0 = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def constrain(trial: optuna.Trial, key: str, value: float) -> None:
    """A soft constraint for the sampler (<= 0: feasible); a retried trial already carries its predecessor's."""
    if key not in trial.constraints:
        trial.set_constraint(key, value)


def _json_safe(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(_json_safe(data), indent=1) + "\n")
    tmp.replace(path)  # atomic: a reader (search show) never sees half a file


def trial_name(spec_name: str, number: int) -> str:
    return f"{spec_name}_t{number}"


class DataCache:
    """Datasets loaded once per process and reused by every trial (keyed on what changes the data)."""

    def __init__(self):
        self._cache: dict = {}

    def get(self, config, size: int):
        from runners.data import load_dataset

        key = (config.dataset, config.data_dir, size, config.val_fraction, config.test_fraction,
               config.train_fraction, config.seed, config.synthetic_samples, config.synthetic_classes,
               config.synthetic_channels)
        if key not in self._cache:
            self._cache[key] = load_dataset(config, size)
        return self._cache[key]


# ----------------------------------------------------------------------------------------------------------------
# The objective
# ----------------------------------------------------------------------------------------------------------------


class Objective:
    """Samples an architecture from the space (define-by-run), checks it against the budgets, trains it, scores
    it on the validation split and returns the objectives; every outcome is written to ``trials/<number>/``."""

    def __init__(self, run: "SearchRun"):
        self.run = run
        self.spec = run.spec
        self.objectives = list(run.spec.search.objectives)
        self.prune = len(self.objectives) == 1 and run.spec.search.pruner != "none"
        self.current: Optional[optuna.Trial] = None

    # one trial ---------------------------------------------------------------------------------------------

    def __call__(self, trial: optuna.Trial):
        self.current = trial
        self.t0 = time.perf_counter()
        self.info: dict[str, Any] = {"trial": trial.number, "worker": self.run.worker_name}
        trial.set_user_attr("worker", self.run.worker_name)
        trial.set_user_attr("worker_info", {**self.run.identity, "trial": trial.number})
        trial.set_user_attr("status", "running")
        warm = trial.user_attrs.get("warm_start")
        if warm:
            self.info["warm_start"] = warm
        try:
            sampled = self._draw(trial, warm)
        except SpecError as e:  # InfeasibleSample, or a warm-start file that cannot be built
            constrain(trial, "buildable", 1.0)
            return self._end(trial, "pruned", "infeasible", str(e))

        size = sampled.train.image_size or sampled.model.input_size
        data = self.run.data.get(sampled.train, size)
        try:
            cost = architecture_cost(sampled.model, input_size=size, in_channels=data.channels,
                                     num_classes=data.num_classes)
        except SpecError as e:
            constrain(trial, "buildable", 1.0)
            return self._end(trial, "pruned", "infeasible", str(e))
        self.info.update(params=cost.params, macs=cost.macs, blocks=block_summary(sampled.model))
        for key in ("params", "macs", "blocks"):
            trial.set_user_attr(key, self.info[key])
        arch_dir = self.run.trial_dir(trial.number)
        arch_dir.mkdir(parents=True, exist_ok=True)
        (arch_dir / "arch.yaml").write_text(dump_spec(sampled))

        over = self._over_budget(trial, cost)
        if over:
            return self._end(trial, "pruned", "over_budget", over)
        return self._train(trial, sampled, data, size, cost)

    def _draw(self, trial: optuna.Trial, warm: Optional[str]) -> Spec:
        """The trial's spec: sampled from the space, or a warm-start architecture outside it, taken as-is."""
        if warm and not trial.user_attrs.get("in_space", True):
            arch = load_spec(warm)
            size = self.run.image_size or arch.model.input_size
            model = dataclasses.replace(arch.model, input_size=size, in_channels=None, num_classes=None)
            out = dataclasses.replace(self.spec, model=model, train=resolve_dataclass(self.spec.train, "train.", trial))
            architecture_cost(out.model)
        else:
            out = sample(self.spec, trial)
        return dataclasses.replace(out, name=trial_name(self.spec.name, trial.number), search=SearchConfig())

    def _over_budget(self, trial: optuna.Trial, cost) -> str:
        """Set the budget constraints (samplers learn the boundary); the reason when a budget is exceeded."""
        reasons = []
        for key, value, limit in (("max_params", cost.params, self.spec.search.max_params),
                                  ("max_macs", cost.macs, self.spec.search.max_macs)):
            if limit is None:
                continue
            constrain(trial, key, value / max(limit, 1.0) - 1.0)
            if value > limit:
                reasons.append(f"{key.removeprefix('max_')} {count(value)} > {key} {count(limit)}")
        return "over budget: " + ", ".join(reasons) if reasons else ""

    def _train(self, trial: optuna.Trial, sampled: Spec, data, size: int, cost):
        from runners.train import train

        run = self.run
        epochs = sampled.train.epochs

        def on_step(epoch, step, steps):
            run.show_status(f"trial {trial.number}: epoch {epoch}/{epochs} step {step}/{steps}")

        def report(epoch, metrics):
            acc = metrics["val_accuracy"]
            run.show_status(f"trial {trial.number}: epoch {epoch}/{epochs} val {acc:.3f}", force=True)
            if not self.prune or acc is None or not math.isfinite(acc):
                return False
            trial.report(acc, epoch)
            # A trial that has trained its full budget is complete: pruning it then would save nothing and
            # throw its result away (Hyperband's last rung sits at the maximum epoch count).
            return epoch < epochs and trial.should_prune()

        result = train(sampled.model, sampled.train, report=report, on_step=on_step, data=data,
                       device=run.device, image_size=size)
        self.info.update(epochs=result.epochs, history=result.history, val_accuracy=result.val_accuracy,
                         best_val_accuracy=result.best_val_accuracy, train_seconds=result.seconds)
        trial.set_user_attr("epochs", result.epochs)
        if result.val_accuracy is not None:
            trial.set_user_attr("val_accuracy", result.val_accuracy)
        if result.status == "interrupted":
            self._end(trial, "failed", "interrupted", result.reason, raise_=False)
            raise KeyboardInterrupt
        if result.status == "stopped":
            return self._end(trial, "pruned", "pruned", f"pruned by {self.spec.search.pruner} after epoch "
                                                         f"{result.epochs} (val {result.val_accuracy:.3f})")
        if result.status != "ok":
            return self._end(trial, "failed", result.status, result.reason)
        if result.val_accuracy is None or not math.isfinite(result.val_accuracy):
            return self._end(trial, "failed", "error", "no epoch finished, so there is no validation accuracy")
        values = {"val_accuracy": result.val_accuracy, "params": float(cost.params), "macs": float(cost.macs)}
        if "latency" in self.objectives:
            values["latency"] = measure_latency_ms(result.model, data.channels, size, run.device)
            trial.set_user_attr("latency_ms", values["latency"])
            self.info["latency_ms"] = values["latency"]
        out = [values[o] for o in self.objectives]
        return self._end(trial, "complete", "ok", "", values=out)

    def _end(self, trial: optuna.Trial, state: str, status: str, reason: str, values=None, raise_: bool = True):
        """Record the outcome (user attrs, metrics.json, a progress line), then return or raise for Optuna."""
        seconds = time.perf_counter() - self.t0
        trial.set_user_attr("status", status)
        trial.set_user_attr("reason", reason)
        trial.set_user_attr("seconds", round(seconds, 3))
        trial.set_user_attr("epochs", self.info.get("epochs", 0))
        self.info.update(state=state, status=status, reason=reason, seconds=round(seconds, 3),
                         epochs=self.info.get("epochs", 0), optuna_params=dict(trial.params),
                         values=dict(zip(self.objectives, values)) if values else None)
        write_json(self.run.trial_dir(trial.number) / "metrics.json", self.info)
        self.run.trial_line(trial.number, state, self.info)
        if not raise_:
            return None
        if state == "complete":
            return values[0] if len(values) == 1 else values
        if state == "pruned":
            raise optuna.TrialPruned(reason)
        raise TrialFailed(reason)


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
        self.directions = ["maximize" if o == "val_accuracy" else "minimize" for o in self.objectives]
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
        self.image_size = self.spec.train.image_size if not is_choice(self.spec.train.image_size) else None
        if self.image_size is None and not is_choice(self.spec.model.input_size):
            self.image_size = self.spec.model.input_size
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
        pruner, self.pruner_note = make_pruner(search, max_epochs(self.spec), len(self.objectives))
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
            "name": self.spec.name, "spec": self.spec_path, "storage": self.url, "study_name": self.study.study_name,
            "objectives": self.objectives, "trials": self.spec.search.trials, "top": self.spec.search.top})

    def trial_dir(self, number: int) -> Path:
        return self.out / "trials" / str(number)

    # progress --------------------------------------------------------------------------------------------------

    def show_status(self, tail: str, force: bool = False) -> None:
        self.progress.status(f"{self.prefix}{self._status_head} | {tail}", force=force)

    def _update_head(self, c: Counts) -> None:
        total = self.spec.search.trials
        best = "-" if c.best is None else f"{c.best:.4g}"
        self._status_head = f"{bar(c.done, total)} trial {min(c.done + 1, total)}/{total}, best {best}"

    def trial_line(self, number: int, state: str, info: dict) -> None:
        acc = info.get("val_accuracy")
        parts = [f"{self.prefix}trial {number:>3} {state:<8}",
                 f"val {acc:.4f}" if acc is not None else "val    -  ",
                 f"params {count(info['params']):>7}" if "params" in info else "params       -",
                 f"{duration(info['seconds']):>7}", f"{info.get('epochs', 0)} ep"]
        if "latency_ms" in info:
            parts.append(f"{info['latency_ms']:.2f} ms")
        if info.get("blocks"):
            parts.append(info["blocks"])
        if info.get("warm_start"):
            parts.append(f"warm start {Path(info['warm_start']).name}")
        if info.get("reason"):
            status = info.get("status")
            parts.append(f"({status}: {info['reason']})" if state == "failed" and status else f"({info['reason']})")
        self.progress.line("  ".join(parts))

    # the loop --------------------------------------------------------------------------------------------------

    def run_trials(self) -> Counts:
        """Run trials until the study holds enough (counting those in flight elsewhere) or the timeout passes."""
        search = self.spec.search
        deadline = time.monotonic() + search.timeout if search.timeout is not None else None
        while True:
            for n in recover_lost_trials(self.study):
                self.progress.line(f"{self.prefix}trial {n:>3} lost     (its process died; enqueued again)")
            c = trial_counts(self.study)
            self._update_head(c)
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

    ``threads``: torch threads per worker process on the CPU (default: :func:`cpu_threads`).
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
                  f"{search.sampler} + {search.pruner if len(run.objectives) == 1 else 'no pruning'}, "
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
    summary = write_results(study, spec, out, progress)
    summary["seconds"] = time.perf_counter() - start
    if search.final_epochs and summary.get("best_trial") is not None:
        summary["final"] = final_training(study, spec, out, summary["best_trial"], search.final_epochs, run, progress)
    return summary


# ----------------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------------


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Complete trials, best first on the first objective (ties: fewer params)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    sign = -1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1
    return sorted(done, key=lambda t: (sign * t.values[0], t.user_attrs.get("params", 0), t.number))


def pareto_numbers(study: optuna.Study) -> set[int]:
    return {t.number for t in study.best_trials} if len(study.directions) > 1 else set()


def results_table(study: optuna.Study, top: int = 10) -> str:
    """The top trials: rank, trial, val accuracy, params, MACs, (latency), seconds, epochs, block types."""
    ranked = ranked_trials(study)[:top]
    pareto = pareto_numbers(study)
    latency = any("latency_ms" in t.user_attrs for t in ranked)
    head = ["rank", "trial", "val_acc", "params", "MACs"] + (["ms/img"] if latency else []) + \
           ["seconds", "epochs", "blocks (per stage)"]
    rows = []
    for i, t in enumerate(ranked, 1):
        u = t.user_attrs
        acc = u.get("val_accuracy")
        row = [str(i), f"{t.number}{'*' if t.number in pareto else ''}", "-" if acc is None else f"{acc:.4f}",
               count(u.get("params", 0)), count(u.get("macs", 0))]
        if latency:
            row.append(f"{u['latency_ms']:.2f}" if "latency_ms" in u else "-")
        row += [f"{u.get('seconds', 0):.1f}", str(u.get("epochs", 0)), u.get("blocks", "")
                + (" (warm start)" if u.get("warm_start") else "")]
        rows.append(row)
    if not rows:
        return "no complete trials yet"
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i < len(head) - 1 else c for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in [head] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if pareto:
        lines.append("* on the Pareto front of " + ", ".join(_objective_names(study)))
    return "\n".join(lines)


def _objective_names(study: optuna.Study) -> list[str]:
    return list(study.user_attrs.get("objectives", [])) or [str(d.name.lower()) for d in study.directions]


def summary_line(c: Counts, total: int) -> str:
    extra = f", {c.running} running" if c.running else ""
    return (f"{c.done}/{total} trials: {c.complete} complete, {c.pruned} pruned or rejected, {c.failed} failed"
            f"{extra}")


def trial_spec(study: optuna.Study, spec: Spec, out: Path, trial: FrozenTrial) -> Spec:
    """A trial's architecture: its arch.yaml, or rebuilt from its params (a trial run on another machine)."""
    path = out / "trials" / str(trial.number) / "arch.yaml"
    if path.exists():
        return load_spec(path)
    warm = trial.user_attrs.get("warm_start")
    if warm and not trial.user_attrs.get("in_space", True):
        arch = load_spec(warm)
        rebuilt = dataclasses.replace(spec, model=arch.model,
                                      train=resolve_dataclass(spec.train, "train.", FixedSuggester(trial.params)))
    else:
        rebuilt = sample(spec, FixedSuggester(trial.params))
    return dataclasses.replace(rebuilt, name=trial_name(spec.name, trial.number), search=SearchConfig())


def write_results(study: optuna.Study, spec: Spec, out: Path, progress: Progress) -> dict:
    """Print the table; write best.yaml (one objective) or pareto/ (several); return a summary."""
    c = trial_counts(study)
    progress.line(summary_line(c, spec.search.trials))
    table = results_table(study, spec.search.top)
    print(table, flush=True)
    ranked = ranked_trials(study)
    summary = {"trials": c.done, "complete": c.complete, "pruned": c.pruned, "failed": c.failed,
               "best_trial": None, "best_value": None}
    if not ranked:
        progress.line("no trial completed, so there is no best architecture")
        return summary
    best = ranked[0]
    summary.update(best_trial=best.number, best_value=best.values[0])
    if len(study.directions) == 1:
        best_spec = dataclasses.replace(trial_spec(study, spec, out, best), name=f"{spec.name}_best")
        (out / "best.yaml").write_text(dump_spec(best_spec))
        progress.line(f"best: trial {best.number}, val accuracy {best.values[0]:.4f} -> {out / 'best.yaml'}")
    else:
        folder = out / "pareto"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        front = sorted(study.best_trials, key=lambda t: t.number)
        for t in front:
            (folder / f"trial_{t.number}.yaml").write_text(dump_spec(trial_spec(study, spec, out, t)))
        summary["pareto"] = [t.number for t in front]
        progress.line(f"Pareto front: {len(front)} trial(s) -> {folder}/")
    return summary


def final_training(study: optuna.Study, spec: Spec, out: Path, number: int, epochs: int, run: SearchRun,
                   progress: Progress) -> Optional[dict]:
    """Train the best architecture at full fidelity and score it once on the test split (``final/``: arch.yaml,
    weights.pt and metrics.json, as ``search train`` writes them)."""
    from runners.train import save_run, train

    folder = out / "final"
    done = folder / "metrics.json"
    if done.exists():
        old = json.loads(done.read_text())
        if old.get("trial") == number and old.get("epochs_asked") == epochs and old.get("status") == "ok":
            progress.line(f"final: trial {number} was already trained {epochs} epochs: test accuracy "
                          f"{old['test_accuracy']:.4f} ({done})")
            return old
    others = trial_counts(study).running
    if others:
        progress.line(f"final: skipped, {others} trial(s) still run elsewhere; the last process to finish trains it")
        return None
    best = trial_spec(study, spec, out, next(t for t in study.get_trials(deepcopy=False) if t.number == number))
    config = dataclasses.replace(best.train, epochs=epochs)
    best = dataclasses.replace(best, train=config, name=f"{spec.name}_final")
    size = config.image_size or best.model.input_size
    data = run.data.get(config, size)

    def report(epoch, metrics):
        progress.status(f"final: trial {number} epoch {epoch}/{epochs} val {metrics['val_accuracy']:.3f}", force=True)

    result = train(best.model, config, report=report, data=data, device=run.device, image_size=size,
                   evaluate_test=True)
    save_run(folder, best, result, trial=number, epochs_asked=epochs)
    info = json.loads(done.read_text())
    if result.ok:
        progress.line(f"final: trial {number} trained {result.epochs} epochs in {duration(result.seconds)}: val "
                      f"{result.val_accuracy:.4f}, test {result.test_accuracy:.4f} -> {folder}/")
    else:
        progress.line(f"final: trial {number} training {result.status}: {result.reason}")
    return info


def find_run(target: str) -> Path:
    """A run directory from a run directory, its run.json, or the spec that made it (runs/<name>/)."""
    path = Path(target)
    if path.is_dir():
        run_dir = path
    elif path.name == "run.json":
        run_dir = path.parent
    elif path.is_file():
        run_dir = Path("runs") / load_spec(path).name
    else:
        raise SpecError("", f"{target}: no such run directory or spec file")
    if not (run_dir / "run.json").exists():
        raise SpecError("", f"{run_dir}: no run.json here; is this a run directory (made by `search run`)?")
    return run_dir


def show(target: str, top: Optional[int] = None, progress: Optional[Progress] = None) -> str:
    """The results table of a finished or running study, read from the storage its run.json names."""
    run_dir = find_run(target)
    info = json.loads((run_dir / "run.json").read_text())
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(info["storage"])
    try:
        study = optuna.load_study(study_name=info["study_name"], storage=storage)
    except KeyError:
        raise SpecError("", f"{run_dir}: study {info['study_name']!r} not found in {info['storage']}") from None
    c = trial_counts(study)
    lines = [f"{info['name']}: study '{info['study_name']}' in {info['storage']}",
             summary_line(c, info.get("trials", c.done)), results_table(study, top or info.get("top", 10))]
    return "\n".join(lines)
