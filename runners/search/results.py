"""What a search leaves behind, whatever engine ran it: counts, the table of the best trials, ``best.yaml`` or
``pareto/``, the final training of the winner, and ``search show``.

Every function works on :class:`TrialRecord` lists; an engine turns its own trials into records (Optuna's
study, or the ``trials/<n>/metrics.json`` files a Ray run writes).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Optional

from search_space.config import SearchConfig
from search_space.sampling import FixedSuggester, resolve_dataclass, sample
from search_space.rundir import RunDir, printable
from search_space.schema import SpecError
from search_space.spec import Spec, dump_spec, load_spec

from runners.common.progress import Progress, count, duration
from runners.search.records import Counts, TrialRecord, counts, pareto_front, ranked
from runners.search.storage import masked
from runners.search.trial import DataCache, fixed_image_size, trial_dir, trial_name, with_io, write_text


def results_table(records: list[TrialRecord], objectives: list[str], top: int = 10) -> str:
    """The top trials: rank, trial, val accuracy, params, MACs, (latency), seconds, epochs, block types."""
    best = ranked(records, objectives)[:top]
    pareto = {r.number for r in pareto_front(records, objectives)}
    latency = any("latency_ms" in r.attrs for r in best)
    head = ["rank", "trial", "val_acc", "params", "MACs"] + (["ms/img"] if latency else []) + \
           ["seconds", "epochs", "blocks (per stage)"]
    rows = []
    for i, r in enumerate(best, 1):
        u = r.attrs
        acc = u.get("val_accuracy")
        row = [str(i), f"{r.number}{'*' if r.number in pareto else ''}", "-" if acc is None else f"{acc:.4f}",
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
        lines.append("* on the Pareto front of " + ", ".join(objectives))
    return "\n".join(lines)


def summary_line(c: Counts, total: int) -> str:
    extra = f", {c.running} running" if c.running else ""
    return (f"{c.done}/{total} trials: {c.complete} complete, {c.pruned} pruned or rejected, {c.failed} failed"
            f"{extra}")


def objective_label(objective: str) -> str:
    return {"val_accuracy": "val accuracy", "latency": "latency (ms)"}.get(objective, objective)


def format_value(objective: str, value: float) -> str:
    return f"{value:.4f}" if objective in ("val_accuracy", "latency") else count(value)


def trial_spec(spec: Spec, out: Path, record: TrialRecord) -> Spec:
    """A trial's architecture: its arch.yaml, or rebuilt from its params (a trial run on another machine), as the
    trial built it: at the run's image size, with the data's channels and classes (its "io" attribute)."""
    path = trial_dir(out, record.number) / "arch.yaml"
    if path.exists():
        return load_spec(path)
    warm = record.attrs.get("warm_start")
    if warm and not record.attrs.get("in_space", True):
        arch = load_spec(warm)
        model = dataclasses.replace(arch.model, input_size=fixed_image_size(spec) or arch.model.input_size,
                                    in_channels=None, num_classes=None)
        rebuilt = dataclasses.replace(spec, model=model,
                                      train=resolve_dataclass(spec.train, "train.", FixedSuggester(record.params)))
    else:
        rebuilt = sample(spec, FixedSuggester(record.params))
    io = record.attrs.get("io")
    if isinstance(io, (list, tuple)) and len(io) == 2:
        rebuilt = with_io(rebuilt, int(io[0]), int(io[1]))
    return dataclasses.replace(rebuilt, name=trial_name(spec.name, record.number), search=SearchConfig())


def write_results(records: list[TrialRecord], spec: Spec, out: Path, progress: Progress) -> dict:
    """Print the table; write best.yaml (one objective) or pareto/ (several); return a summary."""
    objectives = list(spec.search.objectives)
    c = counts(records, objectives)
    progress.line(summary_line(c, spec.search.trials))
    print(results_table(records, objectives, spec.search.top), flush=True)
    best_first = ranked(records, objectives)
    summary = {"trials": c.done, "complete": c.complete, "pruned": c.pruned, "failed": c.failed,
               "best_trial": None, "best_value": None}
    if not best_first:
        progress.line("no trial completed, so there is no best architecture")
        return summary
    best = best_first[0]
    summary.update(best_trial=best.number, best_value=best.values[0])
    if len(objectives) == 1:
        best_spec = dataclasses.replace(trial_spec(spec, out, best), name=f"{spec.name}_best")
        write_text(out / "best.yaml", dump_spec(best_spec))
        progress.line(f"best: trial {best.number}, {objective_label(objectives[0])} "
                      f"{format_value(objectives[0], best.values[0])} -> {out / 'best.yaml'}")
    else:
        folder = out / "pareto"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        front = pareto_front(records, objectives)
        for r in front:
            (folder / f"trial_{r.number}.yaml").write_text(dump_spec(trial_spec(spec, out, r)))
        summary["pareto"] = [r.number for r in front]
        progress.line(f"Pareto front: {len(front)} trial(s) -> {folder}/")
    return summary


def final_training(records: list[TrialRecord], spec: Spec, out: Path, number: int, epochs: int, device,
                   data: DataCache, progress: Progress) -> Optional[dict]:
    """Train the best architecture at full fidelity and score it once on the test split (``final/``: arch.yaml,
    weights.pt and metrics.json, as ``search train`` writes them)."""
    from runners.training.loop import save_run, train

    folder = out / "final"
    done = folder / "metrics.json"
    if done.exists():
        old = json.loads(done.read_text())
        if old.get("trial") == number and old.get("epochs_asked") == epochs and old.get("status") == "ok":
            progress.line(f"final: trial {number} was already trained {epochs} epochs: test accuracy "
                          f"{old['test_accuracy']:.4f} ({done})")
            return old
    others = sum(r.state == "running" for r in records)
    if others:
        progress.line(f"final: skipped, {others} trial(s) still run elsewhere; the last process to finish trains it")
        return None
    best = trial_spec(spec, out, next(r for r in records if r.number == number))
    config = dataclasses.replace(best.train, epochs=epochs)
    best = dataclasses.replace(best, train=config, name=f"{spec.name}_final")
    size = config.image_size or best.model.input_size
    dataset = data.get(config, size)

    def report(epoch, metrics):
        progress.status(f"final: trial {number} epoch {epoch}/{epochs} val {metrics['val_accuracy']:.3f}", force=True)

    result = train(best.model, config, report=report, data=dataset, device=device, image_size=size,
                   evaluate_test=True)
    save_run(folder, best, result, trial=number, epochs_asked=epochs)
    info = json.loads(done.read_text())
    if result.ok:
        progress.line(f"final: trial {number} trained {result.epochs} epochs in {duration(result.seconds)}: val "
                      f"{result.val_accuracy:.4f}, test {result.test_accuracy:.4f} -> {folder}/")
    else:
        progress.line(f"final: trial {number} training {result.status}: {result.reason}")
    return info


# ----------------------------------------------------------------------------------------------------------------
# Reading a run directory back (search show, reports)
# ----------------------------------------------------------------------------------------------------------------


def find_run(target: str) -> Path:
    """A run directory from a run directory, its run.json, or the spec that made it (runs/<name>/)."""
    return RunDir.find(target).path


def read_run_info(run_dir: Path) -> dict:
    """``run.json``, read as untrusted input (:class:`search_space.rundir.RunDir`): one line for anything odd."""
    return RunDir(run_dir).info()


def records_from_files(run_dir: Path) -> list[TrialRecord]:
    """Trials as their ``trials/<n>/metrics.json`` files tell them (the record of an engine without a study),
    read through :class:`search_space.rundir.RunDir`: a damaged or hostile file is refused with one line."""
    run = RunDir(run_dir)
    out = []
    for number in run.trial_numbers():
        m = run.metrics(number)
        if m is None:
            continue
        values = list((m.get("values") or {}).values())
        values = values if values and all(isinstance(v, (int, float)) for v in values) else None
        out.append(TrialRecord(number=m.get("trial", number), state=m.get("state", "failed"), values=values,
                               params=m.get("optuna_params") or {}, attrs=m, counted=m.get("counted", True)))
    return out


def load_records(run_dir: Path, info: dict) -> list[TrialRecord]:
    """The trials of a run, from its engine's own record."""
    if info.get("backend", "optuna") == "optuna":
        from runners.search.records import records_from_storage

        return records_from_storage(info, run_dir)
    return records_from_files(run_dir)


def show(target: str, top: Optional[int] = None) -> str:
    """The results table of a finished or running search."""
    if top is not None and top < 1:
        raise SpecError("--top", f"{top} must be at least 1")
    run_dir = find_run(target)
    info = read_run_info(run_dir)
    records = load_records(run_dir, info)
    objectives = list(info.get("objectives") or ["val_accuracy"])
    c = counts(records, objectives)
    where = f"study '{info['study_name']}' in {masked(info['storage'])}" \
        if info.get("backend", "optuna") == "optuna" else \
        f"Ray Tune experiment in {info.get('storage_path') or run_dir}"
    lines = [f"{info['name']}: {where}", summary_line(c, info.get("trials", c.done)),
             results_table(records, objectives, top or info.get("top", 10))]
    return printable("\n".join(lines))  # names and reasons come from files: no terminal escape reaches it raw


def trial_line(number: int, state: str, info: dict, prefix: str = "") -> str:
    """The permanent progress line of a finished trial."""
    acc = info.get("val_accuracy")
    parts = [f"{prefix}trial {number:>3} {state:<8}",
             f"val {acc:.4f}" if acc is not None else "val    -  ",
             f"params {count(info['params']):>7}" if "params" in info else "params       -",
             f"{duration(info.get('seconds', 0)):>7}", f"{info.get('epochs', 0)} ep"]
    if "latency_ms" in info:
        parts.append(f"{info['latency_ms']:.2f} ms")
    if info.get("blocks"):
        parts.append(info["blocks"])
    if info.get("warm_start"):
        parts.append(f"warm start {Path(info['warm_start']).name}")
    if info.get("reason"):
        status = info.get("status")
        parts.append(f"({status}: {info['reason']})" if state == "failed" and status else f"({info['reason']})")
    return "  ".join(parts)


def status_head(c: Counts, total: int) -> str:
    from runners.common.progress import bar

    best = "-" if c.best is None else f"{c.best:.4g}"
    return f"{bar(c.done, total)} trial {min(c.done + 1, total)}/{total}, best {best}"
