"""Sampling: one define-by-run function turns a search space into an architecture for every backend.

It asks a *suggest* interface (the calls an ``optuna.Trial`` answers) only for the choices that matter: a block's
settings only for blocks within the sampled depth, ``radix`` only for a split-attention block, ``cardinality``
only where groups exist, ``se_ratio`` only with attention. Names are stable paths: ``stages.1.depth``,
``stages.1.blocks.2.type``, ``stem.width``, ``train.lr``.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any, Protocol

from .blocks import get_block_type
from .schema import Categorical, FloatRange, IntRange, SpecError, is_choice
from .spec import BlockSpec, ModelSpec, Spec, StageSpec, canonical_block, canonical_stage


class Suggest(Protocol):
    def suggest_categorical(self, name: str, choices: Any) -> Any: ...
    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int: ...
    def suggest_float(self, name: str, low: float, high: float, step: float | None = None,
                      log: bool = False) -> float: ...


class InfeasibleSample(SpecError):
    """A sample that cannot be built (or is over budget); runners record it with its reason, they do not crash."""


class RandomSuggester:
    """A seeded uniform sampler for tests, fuzzing and quick looks; ``params`` records what was asked."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        self.params: dict[str, Any] = {}

    def suggest_categorical(self, name, choices):
        self.params[name] = value = self.rng.choice(list(choices))
        return value

    def suggest_int(self, name, low, high, step=1, log=False):
        if log:
            value = int(round(math.exp(self.rng.uniform(math.log(low), math.log(high)))))
            value = min(max(value, low), high)
        else:
            value = self.rng.randrange(low, high + 1, step)
        self.params[name] = value
        return value

    def suggest_float(self, name, low, high, step=None, log=False):
        if log:
            value = min(max(math.exp(self.rng.uniform(math.log(low), math.log(high))), low), high)  # exp(log(x)) != x
        elif step:  # the grid low, low + step, ... up to high, never above (Optuna's FloatDistribution too)
            value = min(low + self.rng.randrange(math.floor((high - low) / step + 1e-9) + 1) * step, high)
        else:
            value = self.rng.uniform(low, high)
        self.params[name] = value
        return value


class FixedSuggester:
    """Answers from a dict of parameters (a finished trial's), so a sample can be replayed exactly."""

    def __init__(self, params: dict[str, Any]):
        self.params = dict(params)

    def _get(self, name):
        if name not in self.params:
            raise KeyError(f"no value for parameter {name!r}")
        return self.params[name]

    def suggest_categorical(self, name, choices):
        return self._get(name)

    def suggest_int(self, name, low, high, step=1, log=False):
        return self._get(name)

    def suggest_float(self, name, low, high, step=None, log=False):
        return self._get(name)


def resolve(value: Any, name: str, suggest: Suggest) -> Any:
    """A fixed value as it is; a choice answered by ``suggest`` under ``name``."""
    if isinstance(value, Categorical):
        if len(value.options) == 1:
            return value.options[0]
        return suggest.suggest_categorical(name, list(value.options))
    if isinstance(value, IntRange):
        return suggest.suggest_int(name, value.low, value.high, step=value.step, log=value.log)
    if isinstance(value, FloatRange):
        return suggest.suggest_float(name, value.low, value.high, step=value.step, log=value.log)
    return value


def resolve_dataclass(obj: Any, prefix: str, suggest: Suggest, skip: tuple[str, ...] = ()) -> Any:
    changes = {}
    for f in dataclasses.fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        if is_choice(value):
            changes[f.name] = resolve(value, name, suggest)
        elif dataclasses.is_dataclass(value):
            changes[f.name] = resolve_dataclass(value, f"{name}.", suggest)
    return dataclasses.replace(obj, **changes) if changes else obj


def sample_block(block: BlockSpec, prefix: str, suggest: Suggest) -> BlockSpec:
    """Type first, then only the fields that type reads given the values drawn so far (field order)."""
    block = dataclasses.replace(block, type=resolve(block.type, f"{prefix}type", suggest))
    kind = get_block_type(block.type)
    for f in dataclasses.fields(block):
        if f.name == "type":
            continue
        if f.name in kind.relevant(block):
            block = dataclasses.replace(block, **{f.name: resolve(getattr(block, f.name), f"{prefix}{f.name}",
                                                                  suggest)})
    return canonical_block(block)


def sample_stage(stage: StageSpec, prefix: str, suggest: Suggest) -> StageSpec:
    depth = resolve(stage.depth, f"{prefix}depth", suggest)
    stage = resolve_dataclass(dataclasses.replace(stage, depth=depth), prefix, suggest, skip=("block", "blocks"))
    templates = stage.blocks if stage.blocks is not None else [stage.block] * depth
    blocks = [sample_block(templates[j], f"{prefix}blocks.{j}.", suggest) for j in range(depth)]
    return canonical_stage(dataclasses.replace(stage, blocks=blocks, block=BlockSpec()))


def sample_model(model: ModelSpec, suggest: Suggest) -> ModelSpec:
    fixed = resolve_dataclass(model, "", suggest, skip=("stages",))
    stages = [sample_stage(s, f"stages.{i}.", suggest) for i, s in enumerate(model.stages)]
    return dataclasses.replace(fixed, stages=stages)


def sample(spec: Spec, suggest: Suggest, check: bool = True) -> Spec:
    """Draw one architecture (and training recipe) from a space.

    With ``check`` the sample goes through the cost model and an impossible combination raises
    :class:`InfeasibleSample` naming the field (runners record such a trial as infeasible).
    """
    out = dataclasses.replace(spec, model=sample_model(spec.model, suggest),
                              train=resolve_dataclass(spec.train, "train.", suggest))
    if check:
        from .spec import check_architecture_limits

        try:
            check_architecture_limits(out)
        except SpecError as e:
            raise InfeasibleSample(e.path, e.message) from None
    return out


FEASIBILITY_TRIES = 200  # seeded random samples `search validate` and `search run` draw before calling a space empty


def check_feasible(space: Spec, tries: int = FEASIBILITY_TRIES) -> None:
    """Refuse a search space none of whose architectures can be built (a choice whose every option is impossible,
    such as cardinalities that divide no width the space offers): every trial of a search would be rejected.

    Seeded random samples are drawn until one passes the cost model's checks (the first does, in a sound space:
    milliseconds); when all ``tries`` fail, the field that failed most often is named. A space of which only a
    part is impossible (one block type among several) still validates: its trials there are recorded as
    infeasible, and the rest is searched."""
    if space.is_fixed():
        return
    suggester = RandomSuggester(0)
    seen: dict[str, tuple[int, str]] = {}
    for _ in range(tries):
        try:
            sample(space, suggester)
            return
        except InfeasibleSample as e:
            n, _ = seen.get(e.path, (0, ""))
            seen[e.path] = (n + 1, e.message)
    path, (n, message) = max(seen.items(), key=lambda kv: kv[1][0])
    raise SpecError(path, f"no architecture of this space can be built: {tries} random samples were all "
                          f"infeasible ({n} here, the last: {message}); offer options that fit")


class OutsideSpace(SpecError):
    """A fixed architecture asked for a value its space does not offer (so it cannot be enqueued as params)."""


class ArchSuggester:
    """Answers each suggest call with the value a fixed spec has at that path (``stages.1.blocks.2.type`` reads
    ``model.stages[1].blocks[2].type``, ``train.lr`` reads ``train.lr``), so a known architecture becomes the
    params of a space that a study can enqueue (``params`` records them). Raises :class:`OutsideSpace` when the
    value is not one the choice allows."""

    def __init__(self, arch: Spec):
        self.arch = arch
        self.params: dict[str, Any] = {}

    def _lookup(self, name: str) -> Any:
        parts = name.split(".")
        node: Any = self.arch.train if parts[0] == "train" else self.arch.model
        for part in parts[1:] if parts[0] == "train" else parts:
            try:
                node = node[int(part)] if part.isdigit() else getattr(node, part)
            except (IndexError, AttributeError, TypeError):
                raise OutsideSpace(name, "the architecture has no value here (fewer stages or blocks?)") from None
        if is_choice(node):
            raise OutsideSpace(name, "is a choice in the architecture; it must be a fixed spec")
        return node

    def _answer(self, name: str, value: Any, ok: bool, allowed: str) -> Any:
        if not ok:
            raise OutsideSpace(name, f"{value!r} is not among the space's values ({allowed})")
        self.params[name] = value
        return value

    def suggest_categorical(self, name, choices):
        value = self._lookup(name)
        ok = any(type(value) is type(c) and value == c for c in choices)  # 1 is not True
        return self._answer(name, value, ok, ", ".join(map(repr, choices)))

    def suggest_int(self, name, low, high, step=1, log=False):
        value = self._lookup(name)
        ok = (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
              and (value - low) % step == 0)
        return self._answer(name, value, ok, f"{low}..{high} step {step}")

    def suggest_float(self, name, low, high, step=None, log=False):
        value = self._lookup(name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
        return self._answer(name, float(value) if ok else value, ok, f"{low}..{high}")


def params_for(space: Spec, arch: Spec) -> dict[str, Any]:
    """The params under which ``sample(space, ...)`` gives ``arch``'s model (input channels, classes and input
    size aside: the run decides those); raises :class:`OutsideSpace` when the architecture is not in the space."""
    suggester = ArchSuggester(arch)
    drawn = sample(space, suggester, check=False).model
    same_io = dataclasses.replace(arch.model, in_channels=drawn.in_channels, num_classes=drawn.num_classes,
                                  input_size=drawn.input_size)
    if drawn != same_io:
        raise OutsideSpace("model", "the architecture differs from every sample of the space in a fixed value")
    return suggester.params


def warm_starts(space: Spec) -> list[tuple[str, dict[str, Any] | None]]:
    """Each of ``search.warm_start``'s files with the params that reproduce it in ``space``, or ``None`` when it
    lies outside the space (it is then evaluated as written). ``search validate`` and both engines call this, so a
    file that is itself a search space, or not a valid spec, is refused before any training."""
    from .spec import load_spec

    out = []
    for i, path in enumerate(space.search.warm_start):
        where = f"search.warm_start.{i}"
        try:
            arch = load_spec(path)
        except SpecError as e:
            raise SpecError(where, f"{path}: {e.path}: {e.message}" if e.path else e.message) from None
        if not arch.is_fixed():
            raise SpecError(where, f"{path} is a search space; a warm start must be a fixed architecture "
                                   f"(search compile SPACE --sample --seed N -o ARCH.yaml writes one)")
        try:
            out.append((path, params_for(space, arch)))
        except OutsideSpace:
            out.append((path, None))
    return out
