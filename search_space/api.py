"""One call from a spec to a ``torch.nn.Module``, like ``timm.create_model``.

``create_model`` takes whatever a user has at hand: a path to a spec or architecture file, YAML text, a dict,
a :class:`Spec`/``ModelSpec``, the name of a zoo model (``"resnest50d"``) or a run directory (its best
trial, with ``final/weights.pt`` when the run trained one). Its errors are the project's one-line
:class:`SpecError`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .schema import SpecError

WEIGHTLESS = ("no trained weights (keep them with search.keep_weights, or train the winner with --final-epochs N "
              "or `search train`)")


def zoo_names() -> list[str]:
    from .zoo import names

    return names()


def list_models(pattern: str = "*") -> list[str]:
    """The zoo's model names matching ``pattern`` (shell-style, like ``timm.list_models('resne*')``), sorted."""
    import fnmatch

    return [n for n in zoo_names() if fnmatch.fnmatchcase(n, pattern)]


@dataclass
class RunModel:
    """What a run directory stands for: the architecture file, the weights (None when the run kept none) and the
    preprocessing record beside them (None when there is none), and which of the run's artefacts it is."""

    arch: Path
    weights: Optional[Path]
    source: str  # "final", "trial N" or "best.yaml"


def resolve_run(run: str | Path) -> tuple[Path, Path | None]:
    """The architecture file and the weights (None if not trained) a run directory stands for."""
    found = run_model(run)
    return found.arch, found.weights


def run_model(run: str | Path) -> RunModel:
    """The trained winner of a run directory, best first: ``final/`` (the winner retrained by ``--final-epochs``,
    unless it retrained an earlier best), a ``search train`` directory's own ``arch.yaml`` and ``weights.pt``, the
    best trial's kept weights (``best.json`` names it; a multi-objective run: the Pareto member best on the first
    objective), else the architecture alone.

    Every read of a run directory for a model goes through here (one place to harden)."""
    run = Path(run)
    if not run.is_dir():
        raise SpecError("run", f"{str(run)!r} is not a run directory")
    final = run / "final"
    best_trial = _json_field(run / "best.json", "trial")
    if (final / "arch.yaml").is_file() and (final / "weights.pt").is_file() and (
            best_trial is None or _json_field(final / "metrics.json", "trial") in (None, best_trial)):
        return RunModel(final / "arch.yaml", final / "weights.pt", "final")  # not a final of an earlier best
    if (run / "arch.yaml").is_file() and not (run / "best.yaml").exists():  # a `search train` directory
        weights = run / "weights.pt"
        return RunModel(run / "arch.yaml", weights if weights.is_file() else None, "search train")
    if (run / "best.yaml").is_file():
        number = best_trial
        if isinstance(number, int) and not isinstance(number, bool) and number >= 0:
            weights = run / "trials" / str(number) / "weights.pt"
            if weights.is_file():
                return RunModel(run / "best.yaml", weights, f"trial {number}")
        return RunModel(run / "best.yaml", None, "best.yaml")
    pareto = sorted((run / "pareto").glob("*.yaml")) if (run / "pareto").is_dir() else []
    if pareto:
        arch = min(pareto, key=lambda p: _first_objective_rank(run, p))
        number = arch.stem.rsplit("_", 1)[-1]
        weights = run / "trials" / number / "weights.pt"
        if number.isdigit() and weights.is_file():
            return RunModel(arch, weights, f"trial {number}")
        return RunModel(arch, None, arch.name)
    raise SpecError("run", f"{str(run)!r} has no best.yaml, pareto/, final/ or arch.yaml yet (is the search "
                           f"finished?)")


def _json_field(path: Path, key: str):
    """``key`` of a small JSON mapping in a run directory, or None when the file is missing or unreadable."""
    import json

    try:
        data = json.loads(_small_text(path))
    except (OSError, ValueError, RecursionError):
        return None
    return data.get(key) if isinstance(data, dict) else None


def _small_text(path: Path, limit: int = 1 << 20) -> str:
    """A small JSON file of a run directory: regular files only, at most ``limit`` bytes."""
    import stat

    info = path.stat()
    if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
        raise ValueError(f"{path} is not a small regular file")
    return path.read_text()


def _first_objective_rank(run: Path, arch: Path) -> float:
    """Sort key of a Pareto member (``pareto/trial_N.yaml``): its first objective, best first."""
    import json

    try:
        objective = (json.loads(_small_text(run / "run.json")).get("objectives") or ["val_accuracy"])[0]
        number = arch.stem.rsplit("_", 1)[-1]
        value = json.loads(_small_text(run / "trials" / number / "metrics.json"))["values"][objective]
        return -value if objective == "val_accuracy" else value
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError):
        return float("inf")


def load_any(source: Any):
    """A :class:`Spec` from a path, YAML text, a dict, a zoo name, or a Spec/ModelSpec."""
    from .spec import ModelSpec, Spec, load_spec, parse_spec

    if isinstance(source, Spec):
        return source
    if isinstance(source, ModelSpec):
        return Spec(name="model", model=source)
    if isinstance(source, dict):
        return parse_spec(source, "<dict>")
    if isinstance(source, (str, Path)):
        text = str(source)
        if "\n" in text:
            return load_spec(text)
        if Path(text).exists():
            if Path(text).is_dir():
                return load_spec(resolve_run(text)[0])
            return load_spec(text)
        from .zoo import path_of

        if path_of(text) is not None:
            return load_spec(path_of(text))
        raise SpecError("model", f"{text!r} is neither a spec file, YAML text, a run directory nor a zoo model; "
                                 f"zoo: {', '.join(zoo_names())}")
    raise SpecError("model", f"{type(source).__name__} is not a spec; give a path, YAML text, a dict, a Spec or a "
                             f"zoo name")


def create_model(model: Any = None, *, run: str | Path | None = None, weights: str | Path | None = None,
                 num_classes: int | None = None, in_channels: int | None = None, sample_seed: int | None = None,
                 pretrained: bool = False, training: bool = False, seed: int | None = None):
    """Build the ``nn.Module`` an architecture describes, optionally with trained weights.

    ``model``: spec path, YAML text, dict, Spec, zoo name (:func:`list_models`) or run directory; ``run``: a run
    directory instead (its trained winner: ``final/`` when ``--final-epochs`` trained one, else the best trial's
    kept weights; a run without weights warns and gives a seeded, untrained network); ``weights``: a
    ``state_dict`` file; ``num_classes``/``in_channels`` override the spec (with a run's weights they come from
    the weights; a weights file that does not fit is named); ``sample_seed``: draw one architecture from a space;
    ``seed``: seed of the initialisation (so two calls give the same untrained network).

    The network comes back in **eval mode** (BN uses its running statistics, dropout is off), as a model for
    inference should; pass ``training=True`` for train mode. ``pretrained=True`` is refused with one line: there
    are no hub weights; use ``weights=`` or ``run=``. A run's preprocessing (mean, std, size, class names) is on
    the returned module as ``model.preprocess`` (a :class:`search_space.preprocess.Preprocess`) when the run
    recorded it.
    """
    import torch

    from .cli import sample_feasible
    from .compiler import build_model
    from .spec import choices_in

    if pretrained:
        raise SpecError("pretrained", "there are no hub weights for these architectures; load trained ones with "
                                      "weights=FILE (a state_dict) or run=RUN_DIR (a search's or `search train`'s "
                                      "winner)")
    if (model is None) == (run is None):
        raise SpecError("model", "give exactly one of a spec (model) or a run directory (run=)")
    run_dir = run
    if run is None and isinstance(model, (str, Path)) and "\n" not in str(model) and Path(str(model)).is_dir():
        run_dir = model
    pre = None
    if run_dir is not None:
        found = run_model(run_dir)
        spec = load_any(found.arch)
        if weights is None:
            weights = found.weights
            if weights is None:
                warnings.warn(f"{run_dir}: {WEIGHTLESS}; returning an untrained network (seeded initialisation)",
                              UserWarning, stacklevel=2)
                seed = 0 if seed is None else seed
            else:
                from .preprocess import beside

                pre = beside(weights)
    else:
        spec = load_any(model)
    if not spec.is_fixed():
        if sample_seed is None:
            raise SpecError(choices_in(spec)[0], "this is a search space (a choice is left); pass sample_seed=N "
                                                 "to draw one architecture, or give an architecture")
        spec = sample_feasible(spec, sample_seed)
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("seed", seed)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < (name != "seed")):
            raise SpecError(name, f"{value!r} is not allowed; expected an integer >= {int(name != 'seed')}")
    state = None
    if weights is not None:
        from .weights import budget_for, load_state_dict

        io_spec = spec.model
        budget = budget_for(_with_io(io_spec, in_channels, num_classes))
        state = load_state_dict(weights, "weights", budget)
        if run_dir is not None and in_channels is None and num_classes is None:  # as the run trained it
            in_channels, num_classes = infer_io(state)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_model(spec.model, in_channels=in_channels, num_classes=num_classes)
    else:
        net = build_model(spec.model, in_channels=in_channels, num_classes=num_classes)
    if state is not None:
        own = net.state_dict()
        bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        missing, unexpected = set(own) - set(state), set(state) - set(own)
        if bad or missing or unexpected:
            what = (f"shape of {bad[0]} is {tuple(state[bad[0]].shape)}, the model has {tuple(own[bad[0]].shape)}"
                    if bad else f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
            raise SpecError("weights", f"{str(weights)!r} does not fit this architecture: {what} (num_classes or "
                                       f"in_channels differ from training?)")
        net.load_state_dict(state)
    if pre is not None:
        net.preprocess = pre
    return net.train(training)


def _with_io(model, in_channels, num_classes):
    """``model`` (a ModelSpec) with the input channels and classes given (None: as it says, or the default)."""
    import dataclasses

    changes = {k: v for k, v in (("in_channels", in_channels), ("num_classes", num_classes)) if v is not None}
    return dataclasses.replace(model, **changes) if changes else model


def infer_io(state: dict) -> tuple[int, int]:
    """(in_channels, num_classes) a state_dict was trained with: the stem's first conv and the classifier."""
    convs = [v for k, v in state.items() if k.startswith("stem.") and k.endswith("weight") and v.dim() == 4]
    if not convs or "fc.weight" not in state or state["fc.weight"].dim() != 2:
        raise SpecError("weights", "not a state_dict of this project's networks (no stem conv or fc)")
    return int(convs[0].shape[1]), int(state["fc.weight"].shape[0])
