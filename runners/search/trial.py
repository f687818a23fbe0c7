"""One candidate, evaluated the same way whatever engine asked for it.

The flow of a trial: sample the architecture through the suggest interface (an Optuna trial answers it, or the
fixed parameters a Ray Tune searcher chose) -> feasibility and budgets from the analytic cost model (no module is
built for a rejected candidate) -> train with a report after every epoch (the engine decides whether to stop)
-> an :class:`Outcome`, written to ``trials/<number>/`` as ``arch.yaml`` and ``metrics.json``.

An engine talks to the core through :class:`TrialHooks` (record an attribute, set a soft constraint, report an
epoch and hear whether to stop) and turns the outcome into its own terms (a returned value, ``TrialPruned``, a
failed trial, a final ``tune.report``). Nothing here imports Optuna or Ray.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from search_space.config import SearchConfig
from search_space.cost import architecture_cost, stage_blocks
from search_space.sampling import resolve_dataclass, sample
from search_space.schema import SpecError
from search_space.spec import Spec, dump_spec, load_spec

SHORT_TYPES = {"split_attention": "sa", "grouped": "grp", "res2net": "r2n", "rexnet": "rex"}
MAXIMIZED = ("val_accuracy",)  # every other objective (params, macs, latency) is minimised


def direction(objective: str) -> str:
    return "maximize" if objective in MAXIMIZED else "minimize"


@dataclass
class Outcome:
    """How a trial ended: ``state`` complete | pruned | failed; ``status`` says why (ok, infeasible, over_budget,
    pruned, diverged, oom, error, interrupted); ``values`` are the objectives of a complete trial, in order."""

    state: str
    status: str
    reason: str
    values: Optional[list[float]] = None
    info: dict = field(default_factory=dict)


class TrialHooks:
    """What the core asks of an engine while it evaluates one trial. The defaults do nothing."""

    every_epoch = False  # report every epoch, not only when the trial core prunes (Ray's schedulers decide)

    def set_attr(self, key: str, value: Any) -> None:
        """Keep a fact about the trial where the engine keeps them (Optuna user attrs)."""

    def constrain(self, key: str, value: float) -> None:
        """A soft constraint for the sampler (<= 0: feasible)."""

    def on_arch(self, number: int, arch_yaml: str) -> None:
        """The sampled architecture, before training (Optuna writes it at once; Ray sends it with its reports)."""

    def report(self, epoch: int, metrics: dict) -> bool:
        """One finished epoch; True stops the training (a pruner's or scheduler's decision)."""
        return False

    def status(self, text: str) -> None:
        """A transient progress line (the epoch the trial is in)."""

    def params(self) -> dict:
        """The choices sampled for this trial, by path."""
        return {}

    def trial_folder(self, number: int) -> Optional[Path]:
        """Where this trial's weights may be kept (``trials/<n>/`` of the run directory), or None where the run
        directory cannot be reached from here (a Ray worker on another machine without shared storage)."""
        return None

    def engine_error(self, error: BaseException) -> bool:
        """True for an error of the engine itself (its storage cannot be written): it ends the evaluation instead
        of being recorded as the candidate's failure."""
        return False


# ----------------------------------------------------------------------------------------------------------------
# Small pieces used by the core and by the engines
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


def json_safe(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, data: dict) -> None:
    """Write atomically: a reader (``search show``, a report) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(json_safe(data), indent=1) + "\n")
    tmp.replace(path)


def copy_spec(spec_path: Optional[str], out: Path) -> None:
    """``<out>/spec.yaml``: the spec file a run was started from, for the report (which embeds only files of the
    run directory, never a path that run.json names). URL passwords in it are replaced by ``***``."""
    from search_space.schema import redact
    from search_space.spec import MAX_SPEC_BYTES

    try:
        path = Path(spec_path) if spec_path else None
        if path is None or not path.is_file() or path.stat().st_size > MAX_SPEC_BYTES:
            return
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError):
        return  # the spec was read once already; a copy is a convenience, never a reason to stop a run
    write_text(out / "spec.yaml", redact(text))


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


def is_disk_full(error: OSError) -> bool:
    """A write error that writing again will not cure: the disk or quota is full, or the place is read-only."""
    import errno

    return error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM)


def preflight(spec: Spec, device, data: "DataCache") -> None:
    """Check what every trial of ``spec`` shares before the first one starts: the run's data loads and splits with
    its recipe (a missing ``data_dir``, a ``train_fraction`` that leaves no rows...). Raises :class:`SpecError`,
    so bad input ends the command with one line and is never recorded as a trial. Where a data setting is a
    choice, each of its options (the ends of a range) is checked; the data loaded stays in ``data`` for the
    trials."""
    import itertools

    from search_space.schema import is_choice

    keys = ("dataset", "data_dir", "val_fraction", "test_fraction", "train_fraction", "seed", "synthetic_samples",
            "synthetic_classes", "synthetic_channels", "image_size")
    options = {}
    for key in keys:
        value = getattr(spec.train, key)
        if is_choice(value):
            options[key] = list(value.options) if hasattr(value, "options") else [value.low, value.high]
    combos = list(itertools.islice(itertools.product(*options.values()), 16))
    size = fixed_image_size(spec)
    if size is None and is_choice(spec.model.input_size):
        m = spec.model.input_size
        size = min(m.options) if hasattr(m, "options") else m.low
    for combo in combos:
        config = dataclasses.replace(spec.train, **dict(zip(options, combo)))  # the data reads no other key
        data.get(config, config.image_size or size)


def trial_name(spec_name: str, number: int) -> str:
    return f"{spec_name}_t{number}"


def trial_dir(out: Path, number: int) -> Path:
    return Path(out) / "trials" / str(number)


def write_trial(out: Path, number: int, info: dict, arch_yaml: Optional[str] = None) -> None:
    """``trials/<number>/``: ``arch.yaml`` (when the trial got that far) and ``metrics.json``."""
    folder = trial_dir(out, number)
    if arch_yaml is not None:
        write_text(folder / "arch.yaml", arch_yaml)
    write_json(folder / "metrics.json", info)


class DataCache:
    """Datasets loaded once per process and reused by every trial (keyed on what changes the data). Each process
    (an Optuna worker, a Ray trial's worker) loads its own, on the machine where it runs."""

    def __init__(self):
        self._cache: dict = {}

    def get(self, config, size: int):
        from runners.training.data import load_dataset

        key = (config.dataset, config.data_dir, size, config.val_fraction, config.test_fraction,
               config.train_fraction, config.seed, config.synthetic_samples, config.synthetic_classes,
               config.synthetic_channels)
        if key not in self._cache:
            self._cache[key] = load_dataset(config, size)
        return self._cache[key]


def with_io(spec: Spec, in_channels: int, num_classes: int) -> Spec:
    """``spec`` with the input channels and classes of the data it is trained on written into its model."""
    return dataclasses.replace(spec, model=dataclasses.replace(spec.model, in_channels=in_channels,
                                                               num_classes=num_classes))


def fixed_image_size(spec: Spec) -> Optional[int]:
    """The input size every trial of a space trains at, when the space fixes it."""
    from search_space.schema import is_choice

    size = spec.train.image_size if not is_choice(spec.train.image_size) else None
    if size is None and not is_choice(spec.model.input_size):
        size = spec.model.input_size
    return size


# ----------------------------------------------------------------------------------------------------------------
# The core
# ----------------------------------------------------------------------------------------------------------------


class Evaluator:
    """Evaluates candidates of one space: sample -> budgets -> train -> outcome. One per process.

    ``prune``: report each epoch to the engine and let it stop the trial (searches on ``val_accuracy``, alone or
    with cost objectives, where the engine prunes by non-dominated rank; pruning on accuracy for any other single
    objective would stop trials in the wrong direction).
    """

    def __init__(self, spec: Spec, device, data: Optional[DataCache] = None, worker: str = ""):
        self.spec = spec
        self.device = device
        self.data = data or DataCache()
        self.worker = worker
        self.objectives = list(spec.search.objectives)
        self.prune = spec.search.pruner != "none" and (self.objectives == ["val_accuracy"] or (
            len(self.objectives) > 1 and "val_accuracy" in self.objectives))  # several: runners.search.mo_pruning
        self.image_size = fixed_image_size(spec)
        self.packing = None  # a runners.search.packing.Packing when trials share a device by the memory model

    def evaluate(self, number: int, suggest, hooks: TrialHooks, warm: Optional[str] = None,
                 in_space: bool = True) -> Outcome:
        """Evaluate trial ``number``; ``suggest`` answers the sampling questions (an Optuna trial, a
        ``FixedSuggester``). A warm start outside the space (``in_space`` False) is trained as written."""
        t0 = time.perf_counter()
        info: dict[str, Any] = {"trial": number, "worker": self.worker}
        if warm:
            info.update(warm_start=warm, in_space=in_space)
        arch_yaml = None

        def end(state, status, reason, values=None) -> Outcome:
            info.update(state=state, status=status, reason=reason, seconds=round(time.perf_counter() - t0, 3),
                        epochs=info.get("epochs", 0), optuna_params=dict(hooks.params()),
                        values=dict(zip(self.objectives, values)) if values else None)
            for key in ("status", "reason", "seconds", "epochs"):
                hooks.set_attr(key, info[key])
            out = Outcome(state, status, reason, values, info)
            out.arch_yaml = arch_yaml  # type: ignore[attr-defined]
            return out

        try:
            sampled = self._draw(number, suggest, warm, in_space)
        except SpecError as e:  # InfeasibleSample, or a warm-start file that cannot be built
            hooks.constrain("buildable", 1.0)
            return end("pruned", "infeasible", str(e))
        except Exception as e:  # noqa: BLE001 - a sampler or spec bug fails this trial, not the search
            if hooks.engine_error(e):
                raise
            return end("failed", "error", f"sampling failed: {type(e).__name__}: {first_line(e)}")

        size = sampled.train.image_size or sampled.model.input_size
        try:
            data = self.data.get(sampled.train, size)  # a SpecError here is bad input: the engine stops on it
        except (MemoryError, RuntimeError) as e:
            from runners.training.device import is_oom

            if not is_oom(e):
                raise
            return end("failed", "oom", f"out of memory loading the data: {first_line(e)}")
        try:
            cost = architecture_cost(sampled.model, input_size=size, in_channels=data.channels,
                                     num_classes=data.num_classes)
        except SpecError as e:
            hooks.constrain("buildable", 1.0)
            return end("pruned", "infeasible", str(e))
        except Exception as e:  # noqa: BLE001
            return end("failed", "error", f"cost model failed: {type(e).__name__}: {first_line(e)}")
        # the recorded architecture names the data's shape (in_channels, num_classes), so best.yaml compiles and
        # exports as it was trained; "io" lets results rebuild it for a trial whose arch.yaml is elsewhere
        sampled = with_io(sampled, data.channels, data.num_classes)
        info.update(params=cost.params, macs=cost.macs, blocks=block_summary(sampled.model),
                    io=[data.channels, data.num_classes])
        for key in ("params", "macs", "blocks", "io"):
            hooks.set_attr(key, info[key])
        arch_yaml = dump_spec(sampled)
        hooks.on_arch(number, arch_yaml)

        over = self._over_budget(hooks, cost)
        if over:
            return end("pruned", "over_budget", over)
        return self._train(number, sampled, data, size, cost, hooks, info, end)

    def _train_packed(self, number: int, sampled: Spec, data, hooks: TrialHooks, info: dict, run):
        """Train under the device's ledger (runners.search.packing): reserve the predicted memory (waiting while
        the card is full), and retry alone a trial that ran out of memory beside others. None (with
        ``info["reason_oom"]``) when the trial cannot fit even alone; it is then never started."""
        from runners.search.packing import MIB

        packing = self.packing
        need = packing.need(sampled, data)
        info["memory"] = need.to_json()
        hooks.set_attr("reserved_mb", info["memory"]["reserved_mb"])
        if need.reserve > packing.capacity:
            info["reason_oom"] = (f"predicted training memory {need.predicted / MIB:,.1f} MiB (+ margin: "
                                  f"{need.reserve / MIB:,.1f} MiB) exceeds the {packing.capacity / MIB:,.1f} MiB the "
                                  f"device has for trials; it cannot fit even alone, so it was not started")
            return None
        trial_bytes = need.reserve - need.resident  # the data's share stays with the process between trials
        with packing.hold(number, trial_bytes, hooks.status, resident=need.resident) as held:
            result = run()
        if result.status == "oom" and held.shared:
            # beside other trials: the card, not the architecture, was short. Again, alone; only that OOM counts.
            info["memory"]["oom_shared"] = result.reason
            hooks.status(f"trial {number}: out of memory beside other trials; retrying alone")
            with packing.hold(number, trial_bytes, hooks.status, alone=True, resident=need.resident):
                result = run()
            info["memory"]["retried_alone"] = True
        return result

    def _draw(self, number: int, suggest, warm: Optional[str], in_space: bool) -> Spec:
        """The trial's spec: sampled from the space, or a warm-start architecture outside it, taken as-is."""
        if warm and not in_space:
            arch = load_spec(warm)
            size = self.image_size or arch.model.input_size
            model = dataclasses.replace(arch.model, input_size=size, in_channels=None, num_classes=None)
            out = dataclasses.replace(self.spec, model=model,
                                      train=resolve_dataclass(self.spec.train, "train.", suggest))
            architecture_cost(out.model)
        else:
            out = sample(self.spec, suggest)
        return dataclasses.replace(out, name=trial_name(self.spec.name, number), search=SearchConfig())

    def _over_budget(self, hooks: TrialHooks, cost) -> str:
        """Set the budget constraints (samplers learn the boundary); the reason when a budget is exceeded."""
        from runners.common.progress import count

        reasons = []
        for key, value, limit in (("max_params", cost.params, self.spec.search.max_params),
                                  ("max_macs", cost.macs, self.spec.search.max_macs)):
            if limit is None:
                continue
            hooks.constrain(key, value / max(limit, 1.0) - 1.0)
            if value > limit:
                reasons.append(f"{key.removeprefix('max_')} {count(value)} > {key} {count(limit)}")
        return "over budget: " + ", ".join(reasons) if reasons else ""

    def _train(self, number: int, sampled: Spec, data, size: int, cost, hooks: TrialHooks, info: dict,
               end: Callable[..., Outcome]) -> Outcome:
        from runners.training.loop import train

        epochs = sampled.train.epochs
        hooks.epochs = epochs  # the engine may treat the last epoch differently (Ray's final report carries it)

        def on_step(epoch, step, steps):
            hooks.status(f"trial {number}: epoch {epoch}/{epochs} step {step}/{steps}")

        def report(epoch, metrics):
            acc = metrics["val_accuracy"]
            hooks.status(f"trial {number}: epoch {epoch}/{epochs} val {acc:.3f}")
            if not (self.prune or hooks.every_epoch) or acc is None or not math.isfinite(acc):
                return False
            # A trial that has trained its full budget is complete: stopping it then would save nothing and
            # throw its result away (Hyperband's last rung sits at the maximum epoch count).
            if metrics.get("rung_accuracy") is not None:  # train.rung_ema_epochs: pruners read the average
                metrics = {**metrics, "val_accuracy": metrics["rung_accuracy"]}
            return hooks.report(epoch, metrics) and epoch < epochs

        def run():
            return train(sampled.model, sampled.train, report=report, on_step=on_step, data=data,
                         device=self.device, image_size=size)

        if self.packing is None:
            result = run()
        else:
            result = self._train_packed(number, sampled, data, hooks, info, run)
            if result is None:
                return end("failed", "oom", info.pop("reason_oom"))
        info.update(epochs=result.epochs, history=result.history, val_accuracy=result.val_accuracy,
                    best_val_accuracy=result.best_val_accuracy, train_seconds=result.seconds)
        hooks.set_attr("epochs", result.epochs)
        if result.val_accuracy is not None:
            hooks.set_attr("val_accuracy", result.val_accuracy)
        if result.status == "interrupted":
            return end("failed", "interrupted", result.reason)
        if result.status == "stopped":
            return end("pruned", "pruned", f"pruned by {self.spec.search.pruner} after epoch {result.epochs} "
                                           f"(val {result.val_accuracy:.3f})")
        if result.status != "ok":
            return end("failed", result.status, result.reason)
        if result.val_accuracy is None or not math.isfinite(result.val_accuracy):
            return end("failed", "error", "no epoch finished, so there is no validation accuracy")
        values = {"val_accuracy": result.val_accuracy, "params": float(cost.params), "macs": float(cost.macs)}
        if "latency" in self.objectives:
            values["latency"] = measure_latency_ms(result.model, data.channels, size, self.device)
            hooks.set_attr("latency_ms", values["latency"])
            info["latency_ms"] = values["latency"]
        self._keep_weights(number, hooks, result.model, data, info)
        return end("complete", "ok", "", [values[o] for o in self.objectives])

    def _keep_weights(self, number: int, hooks: TrialHooks, model, data, info: dict) -> None:
        """A complete trial's preprocessing goes to ``trials/<n>/preprocess.json`` and into ``info`` (its
        metrics.json), and its weights to ``trials/<n>/weights.pt`` (``search.keep_weights`` > 0), of which the
        results keep only the best k (:func:`runners.search.results.prune_weights`)."""
        from runners.training.loop import preprocess_of, save_weights

        pre = preprocess_of(data)
        info["preprocess"] = pre.to_json()
        folder = hooks.trial_folder(number)
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        pre.write(folder)
        if self.spec.search.keep_weights < 1 or model is None:
            return
        save_weights(folder / "weights.pt", model)
        info["weights"] = "weights.pt"
