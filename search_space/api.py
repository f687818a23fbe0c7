"""One call from a spec to a ``torch.nn.Module``, like ``timm.create_model``.

``create_model`` takes whatever a user has at hand: a path to a spec or architecture file, YAML text, a dict,
a :class:`Spec`/``ModelSpec``, the name of a zoo model (``"resnest50d"``) or a run directory (its best
trial, with ``final/weights.pt`` when the run trained one). Its errors are the project's one-line
:class:`SpecError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .schema import SpecError

ZOO = Path(__file__).resolve().parent.parent / "spaces" / "zoo"


def zoo_names() -> list[str]:
    return sorted(p.stem for p in ZOO.glob("*.yaml"))


def resolve_run(run: str | Path) -> tuple[Path, Path | None]:
    """The architecture file and the weights (None if not trained) a run directory stands for, read through
    :class:`~search_space.rundir.RunDir` (a run directory is untrusted input: no link out of it is followed)."""
    from .rundir import RunDir

    if not Path(run).is_dir():
        raise SpecError("run", f"{str(run)!r} is not a run directory")
    rd = RunDir(run)
    if rd.exists("run.json"):
        rd.info()  # a damaged or hostile run.json is refused here, as report and show refuse it
    if rd.exists("final/arch.yaml") and rd.exists("final/weights.pt"):
        return rd.file("final/arch.yaml"), rd.file("final/weights.pt")
    if rd.exists("best.yaml"):
        return rd.file("best.yaml"), None
    pareto = sorted((rd.root / "pareto").glob("*.yaml")) if rd.exists("pareto") else []
    if pareto:
        rd.file_dir("pareto")
        best = min(pareto, key=lambda p: _first_objective_rank(rd, p))
        return rd.file(Path("pareto") / best.name), None
    raise SpecError("run", f"{str(run)!r} has no best.yaml, pareto/ or final/ yet (is the search finished?)")


def _first_objective_rank(rd, arch: Path) -> float:
    """Sort key of a Pareto member (``pareto/trial_N.yaml``): its first objective, best first (a member whose
    metrics cannot be read sorts last; reading them is refused like any damaged run file)."""
    objective = rd.info().get("objectives", ["val_accuracy"])[0]
    number = arch.stem.rsplit("_", 1)[-1]
    metrics = rd.metrics(int(number)) if number.isdigit() else None
    value = (metrics or {}).get("values", {}).get(objective)
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
        if text in zoo_names():
            return load_spec(ZOO / f"{text}.yaml")
        raise SpecError("model", f"{text!r} is neither a spec file, YAML text, a run directory nor a zoo model; "
                                 f"zoo: {', '.join(zoo_names())}")
    raise SpecError("model", f"{type(source).__name__} is not a spec; give a path, YAML text, a dict, a Spec or a "
                             f"zoo name")


def create_model(model: Any = None, *, run: str | Path | None = None, weights: str | Path | None = None,
                 num_classes: int | None = None, in_channels: int | None = None, sample_seed: int | None = None):
    """Build the ``nn.Module`` an architecture describes, optionally with trained weights.

    ``model``: spec path, YAML text, dict, Spec, zoo name or run directory; ``run``: a run directory instead
    (its best architecture, and ``final/weights.pt`` when present); ``weights``: a ``state_dict`` file;
    ``num_classes``/``in_channels`` override the spec; ``sample_seed``: draw one architecture from a space.
    """
    import torch

    from .cli import sample_feasible
    from .compiler import build_model
    from .spec import choices_in

    if (model is None) == (run is None):
        raise SpecError("model", "give exactly one of a spec (model) or a run directory (run=)")
    if run is not None:
        arch_path, run_weights = resolve_run(run)
        spec = load_any(arch_path)
        weights = weights if weights is not None else run_weights
    else:
        if isinstance(model, (str, Path)) and "\n" not in str(model) and Path(str(model)).is_dir():
            _, run_weights = resolve_run(model)
            weights = weights if weights is not None else run_weights
        spec = load_any(model)
    if not spec.is_fixed():
        if sample_seed is None:
            raise SpecError(choices_in(spec)[0], "this is a search space (a choice is left); pass sample_seed=N "
                                                 "to draw one architecture, or give an architecture")
        spec = sample_feasible(spec, sample_seed)
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SpecError(name, f"{value!r} is not allowed; expected an integer >= 1")
    net = build_model(spec.model, in_channels=in_channels, num_classes=num_classes)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise SpecError("weights", f"{str(path)!r}: no such file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
            raise SpecError("weights", f"{str(path)!r} is not a readable state_dict ({type(e).__name__})") from None
        if not isinstance(state, dict):
            raise SpecError("weights", f"{str(path)!r} holds a {type(state).__name__}, not a state_dict")
        own = net.state_dict()
        bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        missing, unexpected = set(own) - set(state), set(state) - set(own)
        if bad or missing or unexpected:
            what = (f"shape of {bad[0]} is {tuple(state[bad[0]].shape)}, the model has {tuple(own[bad[0]].shape)}"
                    if bad else f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
            raise SpecError("weights", f"{str(path)!r} does not fit this architecture: {what} (num_classes or "
                                       f"in_channels differ from training?)")
        net.load_state_dict(state)
    return net.eval() if weights is not None else net
