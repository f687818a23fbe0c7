"""The proxy-fidelity audit (``search fidelity``): does the space's proxy recipe rank architectures as longer
training does?

A search is only as good as its proxy (DESIGN.md section 8). The audit draws an unbiased random sample of
feasible, in-budget architectures of a space (a seeded :class:`~search_space.sampling.RandomSuggester`, each
with its sampled recipe; infeasible and over-budget samples are rejected by the analytic cost model, never
trained), then trains each one

* with the proxy recipe as the space writes it (``train.epochs``),
* with a complete schedule ``factor`` times longer (warmup and decay over all its epochs), and
* with that long schedule again under other seeds (init and augmentation; the validation split stays), whose
  agreement with the first is the noise ceiling.

Every training run is saved as it ends (``models/<i>/<kind>-e<epochs>-s<seed>.json``), so a killed audit loses
only the run in flight and a rerun resumes. After each run the figures of what is complete so far are written
to ``fidelity.json`` and ``fidelity.png``; :mod:`runners.audit.stats` computes them.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from search_space.config import SearchConfig
from search_space.cost import architecture_cost
from search_space.sampling import InfeasibleSample, RandomSuggester, sample
from search_space.schema import SpecError, is_choice
from search_space.spec import Spec, dump_spec, load_spec

from runners.audit import stats as fidelity_stats
from runners.common.progress import Progress, duration
from runners.common.signals import die_with_parent, failed_processes, processes_beside
from runners.search.trial import with_io

MAX_TRIES_PER_MODEL = 200  # random draws per accepted architecture before the space is called too tight


@dataclass(frozen=True)
class Run:
    """One training run of the audit: which model, which recipe length, which seed."""

    model: int
    kind: str  # "proxy" or "long"
    epochs: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.kind}-e{self.epochs}-s{self.seed}"


def draw_architectures(spec: Spec, n: int, channels: int, num_classes: int, seed: int = 0) -> list[Spec]:
    """``n`` feasible, in-budget samples of the space, in the order a seeded random sampler draws them."""
    suggester = RandomSuggester(seed)
    chosen, tries = [], 0
    while len(chosen) < n:
        tries += 1
        if tries > MAX_TRIES_PER_MODEL * n:
            raise SpecError("search.max_params", f"only {len(chosen)} of {tries - 1} random samples were feasible "
                                                 f"and within budget; {n} were asked for")
        try:
            arch = sample(spec, suggester)
            size = arch.train.image_size or arch.model.input_size
            cost = architecture_cost(arch.model, input_size=size, in_channels=channels, num_classes=num_classes)
        except InfeasibleSample:
            continue
        except SpecError:
            continue  # a sample the cost model cannot build is infeasible too
        if spec.search.max_params is not None and cost.params > spec.search.max_params:
            continue
        if spec.search.max_macs is not None and cost.macs > spec.search.max_macs:
            continue
        # with the data's shape, so models/<i>/arch.yaml compiles as it was trained
        arch = with_io(arch, channels, num_classes)
        chosen.append(dataclasses.replace(arch, name=f"{spec.name}_f{len(chosen)}", search=SearchConfig()))
    return chosen


def plan_runs(n: int, proxy_epochs: int, factor: int, seeds: int, base_seed: int) -> list[Run]:
    """All runs, cheapest first: every proxy, then the long runs seed by seed, so an early stop still leaves
    complete pairs for the figures."""
    runs = [Run(i, "proxy", proxy_epochs, base_seed) for i in range(n)]
    for s in range(seeds):
        runs += [Run(i, "long", proxy_epochs * factor, base_seed + s) for i in range(n)]
    return runs


MAX_N = 10_000  # architectures in one audit
MAX_SEEDS = 10  # long runs per architecture
MAX_WORKERS = 256  # processes, as search.workers
MAX_EPOCHS = 100_000  # a long run's epochs: train.epochs' limit


class Audit:
    """One audit's run directory: what is planned, what is done, the figures."""

    def __init__(self, spec: Spec, out: Path, n: int = 24, factor: int = 4, seeds: int = 2, top_k: int = 5,
                 progress: Optional[Progress] = None, device=None, workers: int = 1, worker_index: int = 0):
        if n < 3:
            raise SpecError("--n", f"{n} architectures cannot be ranked; use at least 3")
        if n > MAX_N:
            raise SpecError("--n", f"{n} architectures, each trained {1 + seeds} times; at most {MAX_N:,}")
        if factor < 2:
            raise SpecError("--factor", f"{factor} must be at least 2 (the long schedule is factor x the proxy's)")
        if seeds < 1:
            raise SpecError("--seeds", f"{seeds} must be at least 1 (2 or more give the noise ceiling)")
        if seeds > MAX_SEEDS:
            raise SpecError("--seeds", f"{seeds} long runs per architecture; at most {MAX_SEEDS} (2 give the noise "
                                       f"ceiling)")
        if not 1 <= top_k <= MAX_N:
            raise SpecError("--top-k", f"{top_k} must be at least 1 (the overlap of the top k) and at most "
                                       f"{MAX_N:,}")
        top_k = min(top_k, n - 1)  # capped below n: the top n of n architectures always overlap fully
        if workers < 1:
            raise SpecError("--workers", f"{workers} must be at least 1")
        if workers > MAX_WORKERS:
            raise SpecError("--workers", f"{workers} processes; at most {MAX_WORKERS} (each holds a model and its "
                                         f"data; one per core, or a few per GPU)")
        if is_choice(spec.train.epochs):
            raise SpecError("train.epochs", "the audit needs a fixed proxy epoch count, not a choice")
        if spec.train.epochs * factor > MAX_EPOCHS:
            raise SpecError("--factor", f"{factor} x {spec.train.epochs} proxy epochs is a "
                                        f"{spec.train.epochs * factor:,}-epoch long run; at most {MAX_EPOCHS:,} "
                                        f"(train.epochs' own limit)")
        self.spec, self.out, self.n, self.factor, self.seeds, self.top_k = spec, Path(out), n, factor, seeds, top_k
        # with workers, lines only: their lines would land inside a status line redrawn in place
        self.progress = progress or Progress(tty=False if workers > 1 else None)
        self.device = device
        self.workers, self.worker_index = workers, worker_index
        self.prefix = f"[worker {worker_index}] " if worker_index else ""
        from runners.search.trial import DataCache

        self.data = DataCache()

    # ------------------------------------------------------------------------------------------------------------

    def run(self, threads: Optional[int] = None) -> dict:
        """Train every run not done yet (with ``workers - 1`` more processes sharing the directory, each with
        ``threads`` torch threads on the CPU), then write and print the figures."""
        runs = self._prepare(write=True)
        done = sum(self.load(r) is not None for r in runs)
        self.progress.line(f"fidelity {self.spec.name}: {self.n} architectures x (proxy {self.spec.train.epochs} "
                           f"epochs + {self.seeds} x {self.spec.train.epochs * self.factor} epochs), device "
                           f"{self.device}{f', {self.workers} workers' if self.workers > 1 else ''}; "
                           f"{done} of {len(runs)} runs already done in "
                           f"{self.out}")
        import torch

        threads = threads or torch.get_num_threads()  # what this process runs with (the CLI divides the cores)
        others = self.workers - 1 if done < len(runs) else 0  # none to start for a finished audit
        with processes_beside(_worker_main, lambda i: (self.spec, str(self.out), self.n, self.factor, self.seeds,
                                                       self.top_k, self.workers, i, threads, str(self.device),
                                                       os.getpid()), others) as children:
            self.train_runs(runs)
        failed = failed_processes(children)
        for i, code in failed:
            self.progress.line(f"[worker {i}] stopped with exit code {code}; the runs it had not finished are "
                               f"trained here")
        if failed:
            self.train_runs(runs)
        busy, lost = self._missing(runs)
        if busy:
            self.progress.line(f"{busy} runs are still being trained by another process sharing {self.out}; "
                               f"rerun when it is done for the complete figures")
        if lost:  # another process held them and stopped before it finished them
            self.progress.line(f"{lost} runs are missing (another process stopped before finishing them, or a run "
                               f"was not recorded); rerun to train them")
        report = self.write_report()
        self.progress.clear()
        print(summary(report), flush=True)  # the results on stdout; progress stays on stderr
        return report

    def _prepare(self, write: bool) -> list[Run]:
        """Draw the sample (the same in every process: the sampler is seeded) and plan the runs; ``write``: save
        each architecture and the settings (the first process only, before any worker starts)."""
        from runners.training.device import resolve_device

        self.device = resolve_device(self.device if self.device is not None else self.spec.train.device)
        base = self.spec.train
        probe = self.data.get(dataclasses.replace(base, lr=0.1) if is_choice(base.lr) else base,
                              self._size(self.spec))
        self.models = draw_architectures(self.spec, self.n, probe.channels, probe.num_classes,
                                         seed=self.spec.search.seed)
        self.chance = 1.0 / probe.num_classes
        if write:
            self._refuse_another_audit()
            for i, arch in enumerate(self.models):
                path = self._arch_path(i)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(dump_spec(arch), encoding="utf-8")
            self._write_settings()
        return plan_runs(self.n, base.epochs, self.factor, self.seeds, base.seed)

    def train_runs(self, runs: list[Run]) -> None:
        """Train the runs no process has done or holds, in plan order, writing the figures after each."""
        todo = [r for r in runs if self.load(r) is None]
        spent_epochs, spent_s = 0, 0.0
        for done_now, r in enumerate(todo):
            claim = self._claim(r)
            if claim is None:
                continue  # another process sharing this run directory trains it now
            try:
                if self.load(r) is not None:
                    continue  # another process sharing this run directory trained it meanwhile
                left = sum(t.epochs for t in todo[done_now:]) / self.workers  # the workers share what is left
                eta = f", ETA {duration(left * spent_s / spent_epochs)}" if spent_epochs else ""
                head = f"{self.prefix}[{len(runs) - len(todo) + done_now + 1}/{len(runs)}] model {r.model} " \
                       f"{r.kind} {r.epochs} epochs seed {r.seed}{eta}"
                result = self._train(r, head)
            finally:
                os.close(claim)
            spent_epochs += r.epochs
            spent_s += result["seconds"]
            acc = result["val_accuracy"]
            self.progress.line(f"{head}: {result['status']}, val "
                               f"{'-' if acc is None else f'{acc:.4f}'} in {duration(result['seconds'])}")
            self.write_report()

    def _size(self, arch: Spec) -> int:
        return arch.train.image_size or arch.model.input_size

    def _train(self, r: Run, head: str) -> dict:
        from runners.training.loop import preprocess_of, train
        from runners.search.trial import write_json

        arch = self.models[r.model]
        config = dataclasses.replace(arch.train, epochs=r.epochs)
        size = self._size(arch)
        data = self.data.get(config, size)  # the split follows the base seed; other seeds change init/augmentation
        config = dataclasses.replace(config, seed=r.seed)

        def on_step(epoch, step, steps):
            self.progress.status(f"{head}: epoch {epoch}/{r.epochs} step {step}/{steps}")

        result = train(arch.model, config, data=data, device=self.device, image_size=size, on_step=on_step)
        if result.status == "interrupted":
            raise KeyboardInterrupt
        if result.status == "oom" and self.workers > 1:
            # beside other workers the memory may have been theirs: not recorded, so a rerun trains it again
            return {"status": "out of memory beside other workers, not recorded (rerun, with fewer --workers if "
                              "it happens again)", "val_accuracy": None, "seconds": result.seconds}
        record = {"model": r.model, "kind": r.kind, "epochs": r.epochs, "seed": r.seed, "status": result.status,
                  "reason": result.reason, "val_accuracy": result.val_accuracy, "seconds": result.seconds,
                  "lr": config.lr, "device": result.device, "worker": self.worker_index,
                  "history": [h["val_accuracy"] for h in result.history], "preprocess": preprocess_of(data).to_json(),
                  "rung_history": [h.get("rung_accuracy") for h in result.history]}
        write_json(self._path(r), fidelity_stats.finite(record))  # atomic: a kill never leaves half a record
        return record

    def _claim(self, r: Run) -> Optional[int]:
        """An exclusive ``flock`` on the run's lock file, so several processes can share one audit directory
        (one per core or GPU) without training the same run twice; the lock dies with its process."""
        import fcntl

        path = self._path(r).with_suffix(".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    def _missing(self, runs: list[Run]) -> tuple[int, int]:
        """Runs without a result: (held by another process now, held by none)."""
        busy = lost = 0
        for r in runs:
            if self.load(r) is not None:
                continue
            claim = self._claim(r)
            if claim is None:
                busy += 1
            else:
                os.close(claim)
                lost += 1
        return busy, lost

    def _arch_path(self, model: int) -> Path:
        return self.out / "models" / str(model) / "arch.yaml"

    def _path(self, r: Run) -> Path:
        return self.out / "models" / str(r.model) / f"{r.name}.json"

    def load(self, r: Run) -> Optional[dict]:
        path = self._path(r)
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def _refuse_another_audit(self) -> None:
        """Resuming reads every run file in the directory as this audit's, by name alone; so a directory that holds
        an audit of another space, dataset or recipe (whose files have the same names) is refused, not mixed in.
        More seeds or architectures than before are fine: the sample is drawn in the same order."""
        settings = self.out / "audit.json"
        if settings.exists():
            try:
                old = json.loads(settings.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = {}
            new = self._settings()
            for key in ("space", "factor", "proxy_epochs", "sample_seed"):  # n and seeds may grow
                value = new[key]
                if key in old and old[key] != value:
                    raise SpecError("--out", f"{self.out} holds an audit with {key} {old[key]!r}, not {value!r}: its "
                                             f"runs would be read as this audit's; pass another --out")
        for i, arch in enumerate(self.models):
            path = self._arch_path(i)
            if not path.exists():
                continue
            try:
                same = load_spec(path) == arch
            except (OSError, SpecError):
                same = False
            if not same:
                raise SpecError("--out", f"{path} is not the architecture this audit draws as model {i} (another "
                                         f"space, dataset or recipe): its runs would be read as this audit's; pass "
                                         f"another --out")

    def _settings(self) -> dict:
        """What audit.json records: the settings that name this audit's runs."""
        return {"space": self.spec.name, "n": self.n, "factor": self.factor, "seeds": self.seeds,
                "proxy_epochs": self.spec.train.epochs, "sample_seed": self.spec.search.seed}

    def _write_settings(self) -> None:
        from runners.search.trial import write_json

        write_json(self.out / "audit.json", self._settings())

    # ------------------------------------------------------------------------------------------------------------

    def table(self) -> list[dict]:
        """Per-model numbers of the models whose proxy run and every long run are done (failed runs score chance:
        a recipe that diverges is as useless as a random guess)."""
        base = self.spec.train
        long_epochs = base.epochs * self.factor
        rows = []
        for i in range(len(self.models)):
            proxy = self.load(Run(i, "proxy", base.epochs, base.seed))
            longs = [self.load(Run(i, "long", long_epochs, base.seed + s)) for s in range(self.seeds)]
            if proxy is None or any(x is None for x in longs):
                continue
            rows.append({"model": i, "proxy": self._acc(proxy), "long": [self._acc(x) for x in longs],
                         "truncated": self._acc_at(longs[0], base.epochs), "lr": proxy["lr"],
                         "rungs": [self._rung_at(proxy, k) for k in range(1, base.epochs)],
                         "long_rungs": [self._rung_at(longs[0], k) for k in range(1, long_epochs)],
                         "failed": sum(x["status"] != "ok" for x in [proxy, *longs]),
                         "devices": [x.get("device") or "unrecorded" for x in [proxy, *longs]]})
        return rows

    def _acc(self, record: dict) -> float:
        acc = record.get("val_accuracy")
        return acc if record["status"] == "ok" and acc is not None and math.isfinite(acc) else self.chance

    def _acc_at(self, record: dict, epoch: int) -> float:
        value = _after(record.get("history"), epoch)
        return self.chance if value is None else value

    def _rung_at(self, record: dict, epoch: int) -> float:
        """What a pruner reads after ``epoch``: the averaged weights' accuracy with train.rung_ema_epochs."""
        value = _after(record.get("rung_history"), epoch)
        return self._acc_at(record, epoch) if value is None else value

    def write_report(self) -> dict:
        from runners.search.trial import write_json

        base = self.spec.train
        probe = self.data.get(dataclasses.replace(base, lr=0.1) if is_choice(base.lr) else base,
                              self._size(self.spec))
        rows = []
        for row in self.table():
            arch = self.models[row["model"]]
            cost = architecture_cost(arch.model, input_size=self._size(arch), in_channels=probe.channels,
                                     num_classes=probe.num_classes)
            rows.append({**row, "params": cost.params, "macs": cost.macs})
        report = {"space": self.spec.name, "n_planned": self.n, "factor": self.factor, "seeds": self.seeds,
                  "proxy_epochs": base.epochs, "long_epochs": base.epochs * self.factor,
                  "complete": len(rows) == self.n}
        if len(rows) >= 3:
            # What a pruner sees: the proxy run after k of its epochs (a rung), and the long schedule cut at the
            # proxy's length (what a rung of a longer search schedule would measure).
            rungs = {f"proxy_at_epoch_{k}": [r["rungs"][k - 1] for r in rows] for k in range(1, base.epochs)}
            predictors = {"proxy": [r["proxy"] for r in rows], **rungs,
                          f"long_at_epoch_{base.epochs}": [r["truncated"] for r in rows],
                          "params": [r["params"] for r in rows], "macs": [r["macs"] for r in rows]}
            report.update(fidelity_stats.fidelity_report(predictors, [[r["long"][s] for r in rows]
                                                                      for s in range(self.seeds)], k=self.top_k))
            # Could a search beat random search here? At the space's trial count and at a half and a quarter
            trials = self.spec.search.trials
            report["search_headroom"] = [
                fidelity_stats.search_headroom([r["proxy"] for r in rows],
                                               [[r["long"][s] for r in rows] for s in range(self.seeds)], k)
                for k in sorted({max(1, trials // 4), max(1, trials // 2), trials})]
            # What a pruner reads after every epoch of the long schedule (the weight average with
            # rung_ema_epochs), ranked against the truth (point estimates): where a longer search should cut.
            truth = [sum(r["long"]) / len(r["long"]) for r in rows]
            report["long_rung_at_epoch"] = {
                str(k): fidelity_stats.spearman([r["long_rungs"][k - 1] for r in rows], truth)
                for k in range(1, base.epochs * self.factor)}
        # Processes on several machines may share an audit: say which device type (cpu, cuda) trained its runs
        report["devices"] = dict(collections.Counter(d for r in rows for d in r["devices"]))
        report["models"] = rows
        report = fidelity_stats.finite(report)
        write_json(self.out / "fidelity.json", report)  # atomic: processes sharing the directory never mix writes
        if len(rows) >= 3:
            png = self.out / f"fidelity.{os.getpid()}.png"
            plot(report, png)
            png.replace(self.out / "fidelity.png")
        return report


def _worker_main(spec: Spec, out: str, n: int, factor: int, seeds: int, top_k: int, workers: int, index: int,
                 threads: int, device: str, parent_pid: int) -> None:
    """A worker process of ``search fidelity --workers N``: trains the runs no other process holds; stops with
    its parent. Its lines carry ``[worker i]``; only the parent prints the figures."""
    import sys

    import torch

    torch.set_num_threads(threads)
    try:
        die_with_parent(parent_pid)
        audit = Audit(spec, Path(out), n=n, factor=factor, seeds=seeds, top_k=top_k, device=device,
                      workers=workers, worker_index=index, progress=Progress(tty=False))
        audit.train_runs(audit._prepare(write=False))
    except KeyboardInterrupt:  # Ctrl-C reaches every process of the group; the parent says how to resume
        pass
    except Exception as e:  # noqa: BLE001 - one line; the parent trains what this worker left
        print(f"[worker {index}] error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


def _after(values: Optional[list], epoch: int) -> Optional[float]:
    """A per-epoch series' finite value after ``epoch`` (1-based), or None."""
    value = values[epoch - 1] if values and len(values) >= epoch else None
    return value if value is not None and math.isfinite(value) else None


def summary(report: dict) -> str:
    """A few lines a person reads: the proxy's figures, the baselines, the noise ceiling and the search headroom."""
    if "predictors" not in report:
        return f"fidelity: {len(report.get('models', []))} complete model(s) so far; at least 3 are needed"
    lines = [f"fidelity of {report['space']} ({report['n']} of {report['n_planned']} architectures; proxy "
             f"{report['proxy_epochs']} epochs vs a complete {report['long_epochs']}-epoch schedule, mean of "
             f"{report['seeds']} seed(s)); long-run accuracies span {report['spread']:.3f}"]
    rows = dict(report["predictors"])
    if "noise_ceiling" in report:
        rows["noise ceiling (seed vs seed)"] = report["noise_ceiling"]
    for name, a in rows.items():
        lines.append(f"  {name:<30} Spearman {_fmt(a['spearman'])} [{_fmt(a['spearman_ci'][0])}, "
                     f"{_fmt(a['spearman_ci'][1])}]  Kendall {_fmt(a['kendall'])}  top-{a['top_k']} "
                     f"{a['top_k_overlap']}/{a['top_k']}  regret {_fmt(a['regret'])}")
    devices = report.get("devices", {})
    if len(set(devices) - {"unrecorded"}) > 1:  # runs of older versions did not record theirs
        runs = ", ".join(f"{n} on {d}" for d, n in sorted(devices.items()))
        lines.append(f"  runs trained on several devices ({runs}): their numerics differ, which adds to seed noise")
    if report.get("search_headroom"):
        lines.append(f"  search headroom, about the most a search gains over random search's pick by the proxy (each "
                     f"judged on one long run), if it returned the best of these {report['n']} architectures by the "
                     f"proxy, or by the truth (an oracle):")
        for h in report["search_headroom"]:
            lines.append(f"    {h['trials']:>4} trials: random {_fmt(h['random_pick'])}; best by the proxy "
                         f"{_fmt(h['best_by_proxy'])}, {_gain(h['proxy_headroom'], h['proxy_seeds_needed'])}; best "
                         f"{_fmt(h['best'])}, {_gain(h['headroom'], h['seeds_needed'])}")
    if report.get("long_rung_at_epoch"):
        cut = ", ".join(f"{k}: {_fmt(v).strip()}" for k, v in report["long_rung_at_epoch"].items())
        lines.append(f"  the {report['long_epochs']}-epoch schedule cut after epoch k ranks the truth (Spearman; a "
                     f"rung of a longer search): {cut}")
    return "\n".join(lines)


def _gain(gain: float, seeds: Optional[int]) -> str:
    """A gain over random search and the seeds a paired benchmark needs to show it."""
    if seeds is None:
        return f"{gain:+.3f} (nothing to show)"
    return f"{gain:+.3f} ({seeds} seed{'s' * (seeds != 1)} to show it)"


def _fmt(x) -> str:
    return "  nan" if x is None else f"{x:.3f}"


def plot(report: dict, path: Path) -> None:
    """Proxy vs long run, truncated long run vs long run, params vs long run, and seed vs seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = report["models"]
    truth = report["truth"]
    column = {"proxy": "proxy", "params": "params"}  # any other predictor is the truncated long run
    panels = [(k, [r[column.get(k, "truncated")] for r in rows]) for k in report["predictors"]
              if k != "macs" and not k.startswith("proxy_at_epoch_")]  # rungs: in fidelity.json only
    if "noise_ceiling" in report:
        panels.append(("noise_ceiling", [r["long"][1] for r in rows]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (name, xs) in zip(axes[0], panels):
        ys = [r["long"][0] for r in rows] if name == "noise_ceiling" else truth
        a = report["noise_ceiling"] if name == "noise_ceiling" else report["predictors"][name]
        ax.scatter(xs, ys, s=18)
        for r, x, y in zip(rows, xs, ys):
            ax.annotate(str(r["model"]), (x, y), fontsize=7, alpha=0.6)
        if name == "params":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        proxy, long = report["proxy_epochs"], report["long_epochs"]
        label = {"noise_ceiling": f"long-run val accuracy, seed 2 ({long} epochs)",
                 "params": "parameters (log scale)",
                 "proxy": f"proxy val accuracy ({proxy} epochs)"}.get(
                     name, f"val accuracy of the {long}-epoch run after epoch {name.rsplit('_', 1)[-1]}"
                     if name.startswith("long_at_epoch_") else name.replace("_", " "))
        ax.set_xlabel(label)
        ax.set_ylabel(f"long-run val accuracy, seed 1 ({long} epochs)" if name == "noise_ceiling"
                      else f"long-run val accuracy ({long} epochs, mean of {report['seeds']} seed(s))")
        rho = a["spearman"]
        ax.set_title(f"{name.replace('_', ' ')}: Spearman {'nan' if rho is None else f'{rho:.2f}'}", fontsize=10)
    fig.suptitle(f"{report['space']}: proxy {report['proxy_epochs']} vs {report['long_epochs']} epochs, "
                 f"n={report['n']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_fidelity(space: str, out: Optional[str] = None, n: int = 24, factor: int = 4, seeds: int = 2,
                 top_k: int = 5, progress: Optional[Progress] = None, overrides=None, workers: int = 1,
                 threads: Optional[int] = None) -> dict:
    """Load the space, apply ``overrides(spec)`` (the CLI's flags), and run or resume its audit."""
    spec = load_spec(space)
    if overrides is not None:
        spec = overrides(spec)
    from runners.common.outdir import removed_if_failed

    folder = Path(out) if out else Path("runs") / f"{spec.name}-fidelity"
    with removed_if_failed(folder):  # bad input found after the directory was made leaves none behind
        return Audit(spec, folder, n=n, factor=factor, seeds=seeds, top_k=top_k, progress=progress,
                     workers=workers).run(threads)
