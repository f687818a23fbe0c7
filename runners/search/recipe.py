"""Which run directory a ``search run`` may resume: one engine per directory, and one recipe per study.

A trial's value means something only against its recipe: the space it was drawn from, how it was trained
(epochs, dataset, image size, splits, learning rate ...), which objectives it was scored on and which budgets
rejected it. Rerunning with other flags against an existing study would mix trials that do not compare, and the
table, ``best.yaml`` and the sampler would treat them as one population. So ``run.json`` keeps the recipe of the
run, and a rerun whose recipe differs is refused with one line naming what differs, unless the user asks to
continue anyway (``--continue-anyway``). Settings that change only how fast a trial runs (device, torch.compile,
channels_last), where the data lives (``data_dir``: a cluster mounts it elsewhere) and how the search proceeds
(trials, timeout, sampler, pruner, seeds, storage, workers, warm starts, final training, table rows) may change
freely.

A run directory also belongs to one engine: the Optuna engine keeps its study in ``study.db`` (or the storage
``run.json`` names), the Ray engine its experiment under ``ray/``; neither can read the other's, so each refuses a
directory the other made.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Optional

from search_space.schema import SpecError, short, to_yaml
from search_space.spec import Spec, model_to_yaml

SPEED_ONLY = ("device", "compile", "channels_last", "data_dir")  # train fields that leave a trial's value alone
SEARCH_KEYS = ("objectives", "max_params", "max_macs")  # search fields that say what a value is
MAX_RUN_JSON = 1 << 20  # bytes: a run.json is a few hundred


def recipe(spec: Spec) -> dict:
    """What a trial's value depends on, as plain data (stored in run.json)."""
    train = {k: v for k, v in to_yaml(spec.train).items() if k not in SPEED_ONLY}
    search = {k: v for k, v in to_yaml(spec.search).items() if k in SEARCH_KEYS}
    return {"model": model_to_yaml(spec.model), "train": train, "search": search}


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def differences(old: dict, new: dict) -> list[str]:
    """'path old -> new' for each value that differs, the training and search settings first (a list, such as
    the stages of the space, compares as one value)."""
    a, b = _flat(old), _flat(new)
    diffs = []
    for key in sorted(set(a) | set(b), key=lambda k: (not k.startswith(("train.", "search.")), k)):
        if a.get(key, "(unset)") != b.get(key, "(unset)"):
            diffs.append(f"{key} {short(json.dumps(a.get(key, '(unset)')), 40)} -> "
                         f"{short(json.dumps(b.get(key, '(unset)')), 40)}")
    return diffs


def read_run_json(out: Path) -> Optional[dict]:
    """run.json of a run directory (None when there is none), read as untrusted input: a regular file, not
    followed through a link, of bounded size, holding a JSON object."""
    path = out / "run.json"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SpecError("--out", f"{path}: cannot read ({e.strerror or e}); a run directory's run.json must be a "
                                 f"plain file: move it away, or start fresh with another --out") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_RUN_JSON:
            raise SpecError("--out", f"{path}: not a run description (not a plain file of at most "
                                     f"{MAX_RUN_JSON:,} bytes); start fresh with another --out")
        raw = f.read(MAX_RUN_JSON + 1)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise SpecError("--out", f"{path}: not a run description (damaged JSON); start fresh with another --out, "
                                 f"or remove it to resume the study as it is")
    return data


def check_engine(out: Path, backend: str, info: Optional[dict]) -> None:
    """Refuse a run directory another engine made (run.json says so, or its study or experiment is there)."""
    other = {"optuna": "ray", "ray": "optuna"}[backend]
    have = info.get("backend") if info else None
    if have is None and info is None:
        if backend == "ray" and (out / "study.db").exists():
            have = "optuna"
        elif backend == "optuna" and (out / "ray").is_dir():
            have = "ray"
    if have == other:
        raise SpecError("--backend", f"{out} is a run directory of the {other} engine, and a run directory belongs "
                                     f"to one engine (neither reads the other's study); give this {backend} run its "
                                     f"own --out")


def check_run_dir(out: Path, spec: Spec, continue_anyway: bool = False) -> Optional[str]:
    """Refuse to resume ``out`` with another engine or another recipe (see the module docstring). Returns a note
    to print when ``continue_anyway`` let a changed recipe through, else None."""
    info = read_run_json(out)
    check_engine(out, spec.search.backend, info)
    if not info or not isinstance(info.get("recipe"), dict):
        return None  # a new run directory, or one from before recipes were kept: nothing to compare
    diffs = differences(info["recipe"], json.loads(json.dumps(recipe(spec))))  # compared as run.json holds it
    if not diffs:
        return None
    more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
    what = "; ".join(diffs[:3]) + more
    if continue_anyway:
        return f"note: continuing the study in {out} with a changed recipe: {what}"
    raise SpecError("--out", f"{out} holds a study made with another recipe ({what}), and a resumed study must not "
                             f"mix trials whose values do not compare: start fresh with another --out, or add "
                             f"--continue-anyway to resume with the new recipe")
