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

    Read through :class:`~search_space.rundir.RunDir` (a run directory is untrusted input: no link out of it is
    followed, every file is size-limited and type-checked); every read of a run directory for a model is here."""
    from .rundir import RunDir

    if not Path(run).is_dir():
        raise SpecError("run", f"{str(run)!r} is not a run directory")
    rd = RunDir(run)
    if rd.exists("run.json"):
        rd.info()  # a damaged or hostile run.json is refused here, as report and show refuse it
    best_trial = _best_trial(rd)
    if rd.exists("final/arch.yaml") and rd.exists("final/weights.pt"):
        final_trial = (rd.metrics(0, "final/metrics.json") or {}).get("trial")
        if best_trial is None or final_trial in (None, best_trial):  # not the final of an earlier best
            return RunModel(rd.file("final/arch.yaml"), rd.file("final/weights.pt"), "final")
    if rd.exists("arch.yaml") and not rd.exists("best.yaml"):  # a `search train` directory
        weights = rd.file("weights.pt") if rd.exists("weights.pt") else None
        return RunModel(rd.file("arch.yaml"), weights, "search train")
    if rd.exists("best.yaml"):
        kept = f"trials/{best_trial}/weights.pt"
        if best_trial is not None and rd.exists(kept):
            return RunModel(rd.file("best.yaml"), rd.file(kept), f"trial {best_trial}")
        return RunModel(rd.file("best.yaml"), None, "best.yaml")
    pareto = sorted((rd.root / "pareto").glob("*.yaml")) if rd.exists("pareto") else []
    if pareto:
        rd.file_dir("pareto")
        best = min(pareto, key=lambda p: _first_objective_rank(rd, p))
        number = best.stem.rsplit("_", 1)[-1]
        kept = f"trials/{number}/weights.pt"
        if number.isdigit() and rd.exists(kept):
            return RunModel(rd.file(Path("pareto") / best.name), rd.file(kept), f"trial {number}")
        return RunModel(rd.file(Path("pareto") / best.name), None, best.name)
    raise SpecError("run", f"{str(run)!r} has no best.yaml, pareto/, final/ or arch.yaml yet (is the search "
                           f"finished?)")


def _best_trial(rd) -> Optional[int]:
    """The trial ``best.json`` names (written with best.yaml), or None where there is none."""
    if not rd.exists("best.json"):
        return None
    best = rd.read_json("best.json")
    number = best.get("trial") if isinstance(best, dict) else None
    if number is None:
        return None
    if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number < 10**9:
        raise SpecError("", f"{rd.path / 'best.json'}: field 'trial' is {str(number)[:40]!r}; expected a trial "
                            f"number")
    return number


def _first_objective_rank(rd, arch: Path) -> float:
    """Sort key of a Pareto member (``pareto/trial_N.yaml``): its first objective, best first (a member whose
    metrics cannot be read sorts last; reading them is refused like any damaged run file)."""
    objective = rd.info().get("objectives", ["val_accuracy"])[0]
    number = arch.stem.rsplit("_", 1)[-1]
    metrics = rd.metrics(int(number)) if number.isdigit() else None
    value = ((metrics or {}).get("values") or {}).get(objective)
    if not isinstance(value, (int, float)):
        return float("inf")
    return -value if objective == "val_accuracy" else value


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
