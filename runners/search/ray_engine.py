"""The Ray Tune engine of ``search run --backend ray``: the same space and trial core, on a Ray cluster.

* **Sampling**: Optuna's TPE (the sampler the Optuna engine uses, same settings) inside Ray's ``OptunaSearch``,
  driven by the same define-by-run :func:`search_space.sampling.sample`; the searcher only chooses parameters,
  and each trial rebuilds its architecture from them with a ``FixedSuggester``, so conditional per-block choices,
  infeasible samples and budgets behave as on the Optuna engine. Warm starts are enqueued on the searcher's
  study (Ray does not pass ``points_to_evaluate`` to a define-by-run space with their user attributes).
* **Pruning**: the Optuna pruner names map to Ray schedulers on the per-epoch validation accuracy
  (hyperband -> asynchronous HyperBand, successive_halving -> ASHA, median -> median stopping rule).
* **Failures**: a trial that diverges, runs out of memory or raises is reported with its reason and the search
  goes on; ``FailureConfig`` retries a trial whose worker died.
* **Results**: the driver writes ``trials/<n>/arch.yaml`` and ``metrics.json`` from what each trial reports, so
  a worker on another node needs no access to the run directory; the Ray experiment itself (what
  ``Tuner.restore`` resumes) lives under ``storage_path`` (default ``<run>/ray``).
* **Data**: each trial loads its dataset in its own worker process, on its node (once per worker process).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Optional

from search_space.config import SearchConfig
from search_space.sampling import FixedSuggester, resolve_dataclass, sample, warm_starts
from search_space.schema import SpecError
from search_space.spec import Spec

from runners.common.progress import Progress
from runners.search.ray_cluster import RayStops, check_fits_nodes, check_per_trial, connect, quiet_trial_errors
from runners.search.recipe import recipe
from runners.search.records import counts
from runners.search.results import (final_training, prune_weights, records_from_files, status_head, trial_line,
                                    write_results)
from runners.search.trial import (DataCache, Evaluator, TrialHooks, copy_spec, direction, trial_dir, write_json,
                                  write_trial)

EXPERIMENT = "ray"  # the experiment's folder under storage_path
META = "__"  # config keys that are not sampled parameters start with this


# ----------------------------------------------------------------------------------------------------------------
# Driver side: the define-by-run space the searcher calls
# ----------------------------------------------------------------------------------------------------------------


class DefineByRun:
    """Called by ``OptunaSearch`` with an Optuna trial for every new Ray trial: asks the space's questions (the
    same :func:`sample` as the Optuna engine) and returns the trial's number and warm start as constants.

    It runs on the driver and builds nothing; an infeasible sample is still handed to a worker, which rejects it
    in milliseconds and reports why (so the record is the same as on the Optuna engine)."""

    def __init__(self, spec: Spec):
        self.spec = spec

    def __call__(self, ot_trial) -> dict:
        warm = ot_trial.user_attrs.get("warm_start")
        in_space = ot_trial.user_attrs.get("in_space", True)
        try:
            if warm and not in_space:
                resolve_dataclass(self.spec.train, "train.", ot_trial)
            else:
                sample(self.spec, ot_trial)
        except Exception:  # noqa: BLE001 - InfeasibleSample or a sampling error: the worker records the reason
            pass
        from optuna.distributions import distribution_to_json

        distributions = {k: distribution_to_json(d) for k, d in ot_trial.distributions.items()}
        return {f"{META}trial": ot_trial.number, f"{META}warm": warm or "", f"{META}in_space": bool(in_space),
                f"{META}distributions": json.dumps(distributions)}


def make_searcher(spec: Spec, objectives: list[str], seed: int):
    """Ray's ``OptunaSearch`` over the define-by-run space, with the Optuna engine's sampler."""
    from ray.tune.search.optuna import OptunaSearch

    from runners.search.rules import make_sampler

    class SpaceSearch(OptunaSearch):
        """OptunaSearch that records our outcomes: complete trials with their objectives, our pruned and
        rejected ones as PRUNED, failures as FAIL, with the budget constraints the worker computed."""

        def on_trial_result(self, trial_id: str, result: dict):
            if isinstance(self.metric, str) and self.metric in result:
                super().on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False):
            import optuna

            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            ot_trial = self._ot_trials[trial_id]
            result = result or {}
            for key, value in (result.get("constraints") or {}).items():
                if key not in ot_trial.constraints:
                    ot_trial.set_constraint(key, value)
            state, values = result.get("state"), None
            if state == "complete":
                metrics = self.metric if isinstance(self.metric, list) else [self.metric]
                values = [result[m] for m in metrics]
                tell = optuna.trial.TrialState.COMPLETE
            elif state == "failed" or error:
                tell = optuna.trial.TrialState.FAIL
            else:
                tell = optuna.trial.TrialState.PRUNED
            try:
                self._ot_study.tell(ot_trial, values if values is None or len(values) > 1 else values[0],
                                    state=tell)
            except Exception as e:  # noqa: BLE001 - a value Optuna refuses must not stop the search
                logging.getLogger(__name__).warning("optuna could not record trial %s: %s", trial_id, e)
            self._completed_trials.add(trial_id)

    metric = "objective" if len(objectives) == 1 else [f"objective_{i}" for i in range(len(objectives))]
    modes = ["max" if direction(o) == "maximize" else "min" for o in objectives]
    return SpaceSearch(space=DefineByRun(spec), metric=metric, mode=modes[0] if len(modes) == 1 else modes,
                       sampler=make_sampler(spec.search, len(objectives), parallel=True, seed=seed))


def make_scheduler(search: SearchConfig, epochs: int, objectives: list[str], first_epoch: int = 1):
    """The Ray scheduler for the spec's pruner (FIFO when there is nothing to prune on). ``first_epoch``: the end
    of warmup, before which accuracy ranks nothing, so no rung lies there."""
    from ray.tune.schedulers import ASHAScheduler, AsyncHyperBandScheduler, FIFOScheduler, MedianStoppingRule

    from runners.search.rules import MO_REDUCTION_FACTOR, first_rung, mo_rungs

    if search.pruner != "none" and len(objectives) > 1 and "val_accuracy" in objectives:
        rungs = mo_rungs(search, epochs, objectives, first_epoch)
        if rungs:
            return (NondominatedRankScheduler(rungs, objectives, MO_REDUCTION_FACTOR),
                    "non-dominated-rank successive halving")
    if search.pruner == "none" or objectives != ["val_accuracy"]:
        return FIFOScheduler(), "fifo"
    first = max(1, first_rung(search, epochs, first_epoch))
    common = dict(time_attr="training_iteration", metric="val_accuracy", mode="max")
    # a trial reports epochs 1..E-1, then its outcome (with epoch E's accuracy) as report E: max_t is E
    if search.pruner == "median":
        return MedianStoppingRule(grace_period=first, min_samples_required=max(1, search.pruner_startup_trials),
                                  **common), "median stopping"
    if search.pruner == "successive_halving":
        return ASHAScheduler(max_t=epochs, grace_period=first, reduction_factor=3, **common), "ASHA"
    return AsyncHyperBandScheduler(max_t=epochs, grace_period=first, reduction_factor=3, brackets=3,
                                   **common), "async HyperBand"


try:
    from ray.tune.schedulers import FIFOScheduler as _FIFOScheduler
except ImportError:  # Ray is optional: run_ray_search says how to install it
    _FIFOScheduler = object


class NondominatedRankScheduler(_FIFOScheduler):
    """Successive halving by non-dominated rank for several objectives on Ray (Ray's own schedulers read one
    metric): at each rung epoch a trial's (accuracy, params/MACs) point is compared with every trial that reached
    that rung before it, by the same rule as the Optuna engine (:func:`runners.search.mo_pruning.should_stop`), and the
    trial is stopped unless it is among the best ``max(1, n // eta)``. Costs are known before training (the
    worker sends them with each report); latency is not, so MACs stand in for it."""

    def __init__(self, rungs: list[int], objectives: list[str], eta: int):
        super().__init__()
        self.rungs, self.objectives, self.eta = set(rungs), list(objectives), eta
        self.points: dict[int, list[list[float]]] = {r: [] for r in rungs}

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        from runners.search.mo_pruning import should_stop

        epoch = result.get("epoch")
        if "state" in result or epoch not in self.rungs:
            return self.CONTINUE  # an outcome, or an epoch that is no rung
        attrs = json.loads(result.get("attrs") or "{}")
        point = [-float(result["val_accuracy"]) if o == "val_accuracy"
                 else float(attrs.get("macs" if o == "latency" else o, 0)) for o in self.objectives]
        others = self.points[epoch]
        stop = should_stop(point, others, eta=self.eta)
        others.append(point)
        return self.STOP if stop else self.CONTINUE

    def debug_string(self) -> str:
        return f"NondominatedRankScheduler: rungs {sorted(self.rungs)}, eta {self.eta}"


# ----------------------------------------------------------------------------------------------------------------
# --gpus-per-trial auto: each trial asks for the device memory its architecture needs
# ----------------------------------------------------------------------------------------------------------------

GPU_MEMORY = "gpu_memory_mb"  # the custom resource: MiB of device memory a node hands out (ray start --resources)


def request_mb(reserve: int, max_mb: int) -> int:
    """Whole MiB (Ray refuses fractional amounts above 1), at least 1, at most what the largest node has: a trial
    bigger than that still gets scheduled, and is then ``oom`` before it starts (the trial core's rule)."""
    from runners.search.packing import MIB

    return max(1, min(max_mb, -(-reserve // MIB)))


class TrialResources:
    """``tune.with_resources``'s function of a trial's config, evaluated on the driver before the trial is placed:
    the architecture is rebuilt from the sampled parameters (as the worker will) and the memory model gives its
    need, so Ray places a trial only where that much of the ``gpu_memory_mb`` resource is free, and (on GPU nodes)
    with a GPU share in proportion, so a card with several GPUs fills each by memory as well."""

    def __init__(self, spec: Spec, device, cpus: float, max_mb: int, gpu_mb: Optional[float]):
        self.spec, self.device, self.cpus, self.max_mb, self.gpu_mb = spec, device, cpus, max_mb, gpu_mb
        self.data = DataCache()

    def need_mb(self, config: dict) -> int:
        evaluator = Evaluator(self.spec, self.device, self.data)
        params = {k: v for k, v in config.items() if not k.startswith(META)}
        try:
            sampled = evaluator._draw(int(config.get(f"{META}trial", 0)), FixedSuggester(params),
                                      config.get(f"{META}warm") or None, config.get(f"{META}in_space", True))
        except Exception:  # noqa: BLE001 - infeasible: the worker rejects it in milliseconds
            return 1
        from runners.search.packing import trial_need

        size = sampled.train.image_size or sampled.model.input_size
        try:
            data = self.data.get(sampled.train, size)
        except Exception:  # noqa: BLE001 - data only the workers can read: the model's default shape
            data = None
        try:
            return request_mb(trial_need(sampled, data, self.device).reserve, self.max_mb)
        except Exception:  # noqa: BLE001 - the worker finds and records what is wrong with it
            return 1

    def __call__(self, config: dict):
        from ray.tune import PlacementGroupFactory

        mb = self.need_mb(config)
        bundle = {"CPU": self.cpus, GPU_MEMORY: mb}
        if self.gpu_mb:
            bundle["GPU"] = min(1.0, math.ceil(mb / self.gpu_mb * 1e4) / 1e4)
        return PlacementGroupFactory([bundle])


class RayPacking:
    """The trial core's packing gate on a Ray worker: Ray has already reserved the trial's memory (the
    ``gpu_memory_mb`` resource), so there is nothing to wait for; the core still refuses, before training, a trial
    that cannot fit on the largest node."""

    def __init__(self, device, max_mb: int):
        from runners.search.packing import MIB

        self.device = device
        self.capacity = max_mb * MIB

    def need(self, sampled, data):
        from runners.search.packing import trial_need

        return trial_need(sampled, data, self.device)

    @contextlib.contextmanager
    def hold(self, number, nbytes, status, alone=False, resident=0):
        from runners.search.packing import Held

        yield Held(shared=False)  # Ray cannot hold a card for one trial: an OOM here is recorded as it is


# ----------------------------------------------------------------------------------------------------------------
# Worker side: one trial
# ----------------------------------------------------------------------------------------------------------------

_WORKER: dict = {}  # per worker process: the evaluator and its data cache, reused by the trials it runs


class RayHooks(TrialHooks):
    """Reports each epoch with ``tune.report``; Ray's scheduler stops a trial by not letting it continue."""

    every_epoch = True

    def __init__(self, number: int, params: dict, objectives: list[str], node: str, out: Optional[str] = None):
        self.number = number
        self.out = out
        self._params = params
        self.objectives = objectives
        self.attrs: dict[str, Any] = {"node": node}
        self.constraints: dict[str, float] = {}
        self.arch_yaml: Optional[str] = None

    def set_attr(self, key, value):
        self.attrs[key] = value

    def constrain(self, key, value):
        self.constraints[key] = value

    def on_arch(self, number, arch_yaml):
        self.arch_yaml = arch_yaml

    def report(self, epoch, metrics):
        from ray import tune

        if epoch >= getattr(self, "epochs", epoch + 1):
            return False  # the last epoch is reported with the outcome: a scheduler must not stop a finished trial
        acc = metrics["val_accuracy"]
        payload = {"val_accuracy": acc, "epoch": epoch, "trial": self.number,
                   "attrs": json.dumps(self.attrs), "arch_yaml": self.arch_yaml or ""}
        if self.objectives == ["val_accuracy"]:
            payload["objective"] = acc
        tune.report(payload)
        return False

    def params(self):
        return self._params

    def trial_folder(self, number):
        """The run directory's ``trials/<n>/`` when this worker sees the run directory (a local cluster, or storage
        every node mounts at the same path); a worker on another machine keeps no weights."""
        if self.out is None or not Path(self.out).is_dir():
            return None
        return trial_dir(Path(self.out), number)


def replay(number: int, recorded: dict, objectives: list[str]) -> dict:
    """The final report of a trial that had finished before the driver stopped, rebuilt from its record."""
    payload = {"trial": number, "state": recorded["state"], "status": recorded.get("status", ""),
               "reason": recorded.get("reason", ""), "attrs": json.dumps(recorded), "arch_yaml": "",
               "constraints": {}, "replayed": True}
    values = recorded.get("values") or {}
    if recorded["state"] == "complete" and all(o in values for o in objectives):
        if len(objectives) == 1:
            payload["objective"] = values[objectives[0]]
        else:
            payload.update({f"objective_{i}": values[o] for i, o in enumerate(objectives)})
    return payload


def trainable(config: dict, spec: Spec, threads: int, finished: Optional[dict] = None,
              out: Optional[str] = None, packing_mb: Optional[int] = None) -> None:
    """One Ray trial: evaluate the candidate with the trial core and report its outcome.

    ``finished``: trials recorded in ``trials/`` before a resume; Ray's last experiment checkpoint may predate
    them, and such a trial reports its recorded outcome instead of training again."""
    import ray
    import torch
    from ray import tune

    from runners.training.device import resolve_device

    number = int(config[f"{META}trial"])
    if finished and number in finished:
        tune.report(replay(number, finished[number], list(spec.search.objectives)))
        return

    if "evaluator" not in _WORKER:
        torch.set_num_threads(threads)
        node = ray.get_runtime_context().get_node_id()
        device = resolve_device(spec.train.device)
        _WORKER.update(evaluator=Evaluator(spec, device, DataCache(), worker=f"{os.uname().nodename}:{os.getpid()}"),
                       node=node)
    evaluator: Evaluator = _WORKER["evaluator"]
    evaluator.packing = RayPacking(evaluator.device, packing_mb) if packing_mb else None
    started = time.time()
    params = {k: v for k, v in config.items() if not k.startswith(META)}
    objectives = list(spec.search.objectives)
    hooks = RayHooks(number, params, objectives, _WORKER["node"], out)
    if config.get(f"{META}warm"):
        hooks.attrs["warm_start"] = config[f"{META}warm"]
    outcome = evaluator.evaluate(number, FixedSuggester(params), hooks, warm=config.get(f"{META}warm") or None,
                                 in_space=config.get(f"{META}in_space", True))
    info = {**outcome.info, "node": _WORKER["node"],
            "distributions": json.loads(config.get(f"{META}distributions") or "{}")}
    if packing_mb:  # what Ray reserved for it (the driver's TrialResources computed the same) and when it ran
        reserve = info.get("memory", {}).get("reserved_bytes", 0)
        info["ray_memory"] = {"request_mb": request_mb(reserve, packing_mb) if reserve else 1, "started": started,
                              "ended": time.time()}
    final = {"trial": number, "state": outcome.state, "status": outcome.status, "reason": outcome.reason,
             "attrs": json.dumps(info), "arch_yaml": hooks.arch_yaml or "", "constraints": hooks.constraints}
    if info.get("val_accuracy") is not None:
        final["val_accuracy"] = info["val_accuracy"]
    if outcome.state == "complete":
        if len(objectives) == 1:
            final["objective"] = outcome.values[0]
        else:
            final.update({f"objective_{i}": v for i, v in enumerate(outcome.values)})
    tune.report(final)


# ----------------------------------------------------------------------------------------------------------------
# Driver side: results as trials end, and the run
# ----------------------------------------------------------------------------------------------------------------


def make_callback(out: Path, spec: Spec, progress: Progress, scheduler_name: str):
    from ray.tune import Callback

    class ResultsWriter(Callback):
        """Writes ``trials/<n>/`` as each trial ends and keeps the progress line current."""

        def __init__(self):
            self._update_head()

        def _update_head(self) -> None:
            """Trials done and best so far, read from trials/ once per finished trial (not per epoch report)."""
            self.head = status_head(counts(records_from_files(out), list(spec.search.objectives)),
                                    spec.search.trials)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "epoch" in result and "state" not in result:
                running = sum(t.status == "RUNNING" for t in trials)
                progress.status(f"{self.head} | {running} running; trial {result.get('trial')} epoch "
                                f"{result['epoch']} val {result['val_accuracy']:.3f}", force=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._record(trial, trial.last_result or {}, error=None)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._record(trial, trial.last_result or {}, error=_error_line(trial))

        def _record(self, trial, last: dict, error: Optional[str]) -> None:
            number = trial.config.get(f"{META}trial")
            if number is None or last.get("replayed"):
                return  # a replayed trial's record is already in trials/
            attrs = json.loads(last.get("attrs") or "{}")
            attrs.setdefault("trial", number)
            attrs.setdefault("optuna_params", {k: v for k, v in trial.config.items() if not k.startswith(META)})
            attrs["ray_trial_id"] = trial.trial_id
            attrs.setdefault("distributions", json.loads(trial.config.get(f"{META}distributions") or "{}"))
            if "state" in last:  # the trial reported its own outcome
                pass
            elif error:
                attrs.update(state="failed", status="error", reason=error)
            else:  # stopped by the scheduler after an epoch report
                epoch = last.get("epoch", 0)
                attrs.update(state="pruned", status="pruned", epochs=epoch, val_accuracy=last.get("val_accuracy"),
                             seconds=round(last.get("time_total_s", 0.0), 3),
                             reason=f"stopped by {scheduler_name} after epoch {epoch} "
                                    f"(val {last.get('val_accuracy', float('nan')):.3f})")
            if attrs.get("state") == "complete" and not attrs.get("values"):
                attrs["state"] = "failed"
            write_trial(out, int(number), attrs, last.get("arch_yaml") or None)
            if attrs.get("weights"):
                prune_weights(out, records_from_files(out), list(spec.search.objectives), spec.search.keep_weights)
            self._update_head()
            progress.line(trial_line(int(number), attrs["state"], attrs))

    return ResultsWriter()


def _error_line(trial) -> str:
    path = getattr(trial, "error_file", None) or ""
    try:
        text = Path(path).read_text().strip().splitlines() if path else []
    except OSError:
        text = []
    return (text[-1] if text else "the trial's worker failed")[:300]


def run_ray_search(spec: Spec, out: Path, spec_path: Optional[str] = None, progress: Optional[Progress] = None,
                   address: Optional[str] = None, gpus_per_trial: float = 0.0, cpus_per_trial: float = 1.0,
                   max_concurrent: Optional[int] = None, storage_path: Optional[str] = None) -> dict:
    """Run (or resume) the Ray Tune experiment of ``spec``; write the results; return a summary dict."""
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # rejected trials report no accuracy
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1000")
    check_per_trial(cpus_per_trial, "--cpus-per-trial", 0.0)
    check_per_trial(gpus_per_trial, "--gpus-per-trial", 0.0)
    if isinstance(gpus_per_trial, str) and gpus_per_trial != "auto":
        raise SpecError("--gpus-per-trial", f"{gpus_per_trial!r} is not allowed; expected a number or auto")
    if max_concurrent is not None and max_concurrent < 1:
        raise SpecError("--max-concurrent", f"{max_concurrent} must be at least 1")
    check_storage_path(storage_path)
    try:
        import ray.tune  # noqa: F401 - only to say how to install it, before anything runs
    except ImportError:
        raise SpecError("--backend", "ray needs Ray Tune, which is not installed: pip install 'ray[tune]' "
                                     "(or this package's [ray] extra)") from None

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines say what happened to each trial
    progress = progress or Progress()
    out = Path(out).resolve()
    search = spec.search
    objectives = list(search.objectives)
    if len(set(objectives)) != len(objectives) or not objectives:
        raise SpecError("search.objectives", f"{objectives} must name each objective once")
    with RayStops() as stops:  # SIGTERM/SIGHUP: before Tune runs, Interrupted; while it runs, Tune's own stop
        return _run_ray(spec, out, spec_path, progress, address, gpus_per_trial, cpus_per_trial, max_concurrent,
                        storage_path, stops)


def check_storage_path(storage_path: Optional[str]) -> None:
    """--storage-path is a directory (made if missing) or a URI such as s3://bucket/path."""
    if not storage_path or "://" in storage_path:
        return
    path = Path(storage_path).expanduser()
    if path.exists() and not path.is_dir():
        raise SpecError("--storage-path", f"{storage_path}: not a directory; give a directory (every node must "
                                          f"mount it on a multi-node cluster) or a URI such as s3://bucket/path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SpecError("--storage-path", f"{storage_path}: cannot create the directory ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise SpecError("--storage-path", f"{storage_path}: the directory is not writable")


def _run_ray(spec: Spec, out: Path, spec_path, progress, address, gpus_per_trial, cpus_per_trial, max_concurrent,
             storage_path, stops: RayStops) -> dict:
    import ray
    from ray import tune

    from runners.search.rules import max_epochs, warmup_end
    from runners.training.device import resolve_device

    search = spec.search
    objectives = list(search.objectives)
    auto = gpus_per_trial == "auto"
    if auto:
        gpus_per_trial = 0.0  # the GPU share is per trial, from its memory (TrialResources)
    warm = warm_starts(spec)
    if not address:  # the data and recipe every trial shares, checked once before any trial (exit 2 on bad input);
        from runners.search.trial import preflight

        preflight(spec, resolve_device(spec.train.device), DataCache())
    device = resolve_device(spec.train.device)
    memory_mb = None
    if auto and not address:  # our own local Ray: the resource is this machine's device memory
        from runners.search.packing import MIB, device_capacity

        local_cpus = os.cpu_count() or 1
        memory_mb = int(device_capacity(device, search.device_memory_mb,
                                        max(1, int(local_cpus // cpus_per_trial))) // MIB)
    connect(address, None, {GPU_MEMORY: memory_mb} if memory_mb else None)
    stops.install_again()  # ray.init installs a SIGTERM handler that exits mid-call
    quiet_trial_errors()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    check_fits_nodes(nodes, cpus_per_trial, gpus_per_trial)
    if len(nodes) > 1 and not storage_path:
        raise SpecError("--storage-path", f"the Ray cluster has {len(nodes)} nodes, and trials on other nodes need a "
                        f"shared place for the experiment: give --storage-path on storage every node mounts (NFS, "
                        f"a shared disk) or a cloud URI such as s3://bucket/path")
    root = storage_path or str(out)
    if "://" not in root:
        root = str(Path(root).expanduser().resolve())
    exp_dir = os.path.join(root, EXPERIMENT)
    resources = ray.cluster_resources()
    per_trial = {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
    packing_mb = None
    if auto:
        node_mb = [n.get("Resources", {}).get(GPU_MEMORY, 0) for n in nodes]
        if not any(node_mb):
            raise SpecError("--gpus-per-trial", f"auto needs the custom resource {GPU_MEMORY} on the cluster's nodes: "
                            f"start each with ray start --resources='{{\"{GPU_MEMORY}\": N}}' (N: MiB of its GPUs "
                            f"less 512 per trial process; docs/gpus.md)")
        packing_mb = int(max(node_mb))
        gpu_mb = None
        if resources.get("GPU"):  # a GPU's share in proportion to its memory (all GPUs alike)
            gpu_mb = sum(node_mb) / resources["GPU"]
        per_trial = TrialResources(spec, device, cpus_per_trial, packing_mb, gpu_mb)
    fit = [resources.get("CPU", 1) / cpus_per_trial] + ([resources.get("GPU", 0) / gpus_per_trial]
                                                        if gpus_per_trial else [])
    concurrent = max_concurrent or max(1, int(min(fit)))
    threads = max(1, int(cpus_per_trial))
    epochs = max_epochs(spec)
    scheduler, scheduler_name = make_scheduler(search, epochs, objectives, first_epoch=warmup_end(spec))
    if resolve_device(spec.train.device).type == "cuda" and not gpus_per_trial and not auto:
        progress.line("note: this machine has a GPU but --gpus-per-trial is 0, so trials train on the CPU")

    write_json(out / "run.json", {
        "name": spec.name, "backend": "ray", "spec": spec_path, "storage_path": root, "experiment": exp_dir,
        "objectives": objectives, "trials": search.trials, "top": search.top, "address": address or "local",
        "recipe": recipe(spec)})
    copy_spec(spec_path, out)
    done_before = counts(records_from_files(out), objectives)
    progress.line(f"search {spec.name}: Ray Tune on {len(nodes)} node(s) ({resources.get('CPU', 0):g} CPUs, "
                  f"{resources.get('GPU', 0):g} GPUs), {search.trials} trials, {search.sampler} + "
                  f"{scheduler_name}, objectives {', '.join(objectives)}, {cpus_per_trial:g} CPU"
                  + (f" + {gpus_per_trial:g} GPU" if gpus_per_trial else "")
                  + (f" + the MiB of {GPU_MEMORY} its architecture needs (at most {packing_mb:,})" if auto else "")
                  + f" per trial, up to {concurrent} "
                  f"at once; experiment in {exp_dir}")
    if search.sampler != "tpe":
        progress.line(f"note: Ray runs use the {search.sampler} sampler through OptunaSearch as the Optuna engine does")

    finished = {r.number: r.attrs for r in records_from_files(out) if r.state in ("complete", "pruned", "failed")}
    fn = tune.with_resources(tune.with_parameters(trainable, spec=spec, threads=threads, finished=finished,
                                                  out=str(Path(out).absolute()), packing_mb=packing_mb),
                             per_trial)
    callback = make_callback(out, spec, progress, scheduler_name)
    restoring = tune.Tuner.can_restore(exp_dir)
    if restoring:
        progress.line(f"resuming the Ray experiment in {exp_dir}: {done_before.done} of {search.trials} trials done")
        tuner = tune.Tuner.restore(exp_dir, trainable=fn, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False)
        tuner._local_tuner._run_config.callbacks = [callback]  # callbacks are not saved with the experiment
    else:
        searcher = make_searcher(spec, objectives, seed=search.seed)
        for path, params in warm:  # Ray drops a define-by-run space's points_to_evaluate: enqueue them ourselves
            searcher._ot_study.enqueue_trial(params or {}, user_attrs={"warm_start": path,
                                                                       "in_space": params is not None})
        tuner = tune.Tuner(
            fn,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=search.trials,
                                        max_concurrent_trials=concurrent, trial_dirname_creator=trial_dirname,
                                        reuse_actors=True,  # a worker process keeps torch and its data warm
                                        time_budget_s=search.timeout),
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=root, verbose=0, callbacks=[callback],
                                      failure_config=tune.FailureConfig(max_failures=2),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    start = time.perf_counter()
    interrupted = False
    stops.tuning = True
    try:
        tuner.fit()
    except KeyboardInterrupt:
        interrupted = True
    stops.tuning = False
    interrupted = interrupted or stops.signum is not None
    progress.clear()
    records = records_from_files(out)
    c = counts(records, objectives)
    if c.done < search.trials and (interrupted or c.done + c.running < search.trials) and not search.timeout:
        interrupted = True
    summary = write_results(records, spec, out, progress)
    summary["seconds"] = time.perf_counter() - start
    summary["interrupted"] = interrupted
    summary["signal"] = stops.signum
    if not interrupted and search.final_epochs and summary.get("best_trial") is not None:
        device = resolve_device(spec.train.device)
        summary["final"] = final_training(records, spec, out, summary["best_trial"], search.final_epochs, device,
                                          DataCache(), progress)
    return summary


def trial_dirname(trial) -> str:
    """Ray's folder for a trial: its number, not its whole config."""
    return f"trial_{trial.config.get(f'{META}trial', trial.trial_id)}_{trial.trial_id}"


