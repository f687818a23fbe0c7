"""Trial records: what the results, ``search show`` and the report know of a trial, whichever engine ran it.

A record is built from an Optuna study (``records_from_study``; ``records_from_storage`` opens the study a run
directory names, read-only) or, on the Ray engine, from the trial files (``results.records_from_files``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import optuna
from optuna.trial import TrialState

from search_space.schema import SpecError

from .storage import masked, open_storage
from .trial import direction, first_line


FINISHED = ("complete", "pruned", "failed")


@dataclass
class TrialRecord:
    """One trial as the results see it. ``state``: complete | pruned | failed | running | waiting; ``attrs``:
    what the trial recorded (params, macs, blocks, val_accuracy, seconds, epochs, status, reason, ...);
    ``counted``: False for a lost trial that was retried under another number."""

    number: int
    state: str
    values: Optional[list[float]] = None
    params: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    counted: bool = True


@dataclass
class Counts:
    done: int  # finished trials that count toward search.trials (a retried lost trial does not)
    running: int
    waiting: int
    complete: int
    pruned: int
    failed: int
    best: Optional[float]  # best first objective among complete trials


def counts(records: list[TrialRecord], objectives: list[str]) -> Counts:
    finished = [r for r in records if r.state in FINISHED and r.counted]
    by = {s: sum(r.state == s for r in finished) for s in FINISHED}
    values = [r.values[0] for r in records if r.state == "complete" and r.values]
    maximize = direction(objectives[0]) == "maximize"
    return Counts(done=len(finished), running=sum(r.state == "running" for r in records),
                  waiting=sum(r.state == "waiting" for r in records), complete=by["complete"],
                  pruned=by["pruned"], failed=by["failed"],
                  best=(max(values) if maximize else min(values)) if values else None)


def ranked(records: list[TrialRecord], objectives: list[str]) -> list[TrialRecord]:
    """Complete trials, best first on the first objective (ties: fewer params, then the earlier trial)."""
    done = [r for r in records if r.state == "complete" and r.values]
    sign = -1 if direction(objectives[0]) == "maximize" else 1
    return sorted(done, key=lambda r: (sign * r.values[0], r.attrs.get("params", 0), r.number))


def pareto_front(records: list[TrialRecord], objectives: list[str]) -> list[TrialRecord]:
    """Complete trials no other complete trial dominates (all objectives at least as good, one better)."""
    if len(objectives) < 2:
        return []
    signs = [-1 if direction(o) == "maximize" else 1 for o in objectives]
    done = [r for r in records if r.state == "complete" and r.values and len(r.values) == len(objectives)]
    keys = {r.number: [s * v for s, v in zip(signs, r.values)] for r in done}

    def dominates(a, b):
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    return sorted((r for r in done if not any(dominates(keys[o.number], keys[r.number]) for o in done)),
                  key=lambda r: r.number)


STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
          TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}


def trial_attrs(t) -> dict:
    attrs = dict(t.user_attrs)
    if t.state == TrialState.FAIL and attrs.get("status") in (None, "running"):
        # failed by Optuna's heartbeat (its worker stopped) before anyone could write why
        attrs.update(status="lost", reason=attrs.get("reason") or "its worker stopped (no heartbeat); retried")
    return attrs


def records_from_study(study: optuna.Study) -> list[TrialRecord]:
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return [TrialRecord(number=t.number, state=STATES.get(t.state, "failed"),
                        values=list(t.values) if t.state == TrialState.COMPLETE and t.values else None,
                        params=dict(t.params), attrs=trial_attrs(t),
                        counted=t.number not in retried and t.user_attrs.get("counted", True))
            for t in trials]


def trial_counts(study: optuna.Study) -> Counts:
    objectives = list(study.user_attrs.get("objectives", [])) or \
        ["val_accuracy" if d == optuna.study.StudyDirection.MAXIMIZE else "params" for d in study.directions]
    return counts(records_from_study(study), objectives)


def damage_line(error: BaseException) -> str:
    """What a storage error says, from its deepest cause: Optuna wraps a damaged SQLite file's "database disk
    image is malformed" into "An exception is raised during the commit ... exceeding max length", which misleads."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return first_line(error).removeprefix("(sqlite3.DatabaseError) ").removeprefix("(sqlite3.OperationalError) ")


def records_from_storage(info: dict, run_dir: Path) -> list[TrialRecord]:
    """The records of a run's study, read from the storage its run.json names (read-only, never creating one)."""
    url = info.get("storage", "")
    if not isinstance(url, str) or not isinstance(info.get("study_name"), str):
        raise SpecError("", f"{run_dir / 'run.json'}: no storage or study_name; rerun `search run` to rewrite it")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        storage = open_storage(url, read_only=True)
        study = optuna.load_study(study_name=info["study_name"], storage=storage)
        return records_from_study(study)  # reading the trials can meet a damaged page the opening did not
    except SpecError as e:
        raise SpecError("", f"{run_dir}: {e.message if hasattr(e, 'message') else e}") from None
    except KeyError:
        raise SpecError("", f"{run_dir}: study {info['study_name']!r} not found in {masked(url)}") from None
    except Exception as e:  # noqa: BLE001 - a damaged study file
        raise SpecError("", f"{run_dir}: cannot read its study in {masked(url)}: {damage_line(e)}") from None

