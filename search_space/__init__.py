"""A declarative neural-architecture-search space for the ResNet family.

YAML spec -> :class:`Spec` (a space, or an architecture when no choice is left) -> :func:`sample` ->
:func:`architecture_cost` (params, MACs, no build) and :func:`build_model` (``torch.nn.Module``);
:func:`create_model` does it all in one call, like ``timm.create_model`` (eval mode; :func:`list_models` names the
zoo).
"""

from .config import SearchConfig, TrainConfig
from .schema import SpecError
from .spec import Architecture, BlockSpec, ModelSpec, Spec, StageSpec, dump_spec, load_spec, parse_spec

__all__ = [
    "Architecture", "BlockSpec", "ModelSpec", "SearchConfig", "Spec", "SpecError", "StageSpec", "TrainConfig",
    "architecture_cost", "build_model", "create_model", "dump_spec", "list_models", "load_spec", "parse_spec", "sample",
    "RandomSuggester",
]


def __getattr__(name):  # torch-heavy parts load on first use, so `search validate` stays quick
    if name == "build_model":
        from .compiler import build_model
        return build_model
    if name == "architecture_cost":
        from .cost import architecture_cost
        return architecture_cost
    if name in ("create_model", "list_models"):
        from . import api
        return getattr(api, name)
    if name in ("sample", "RandomSuggester"):
        from . import sampling
        return getattr(sampling, name)
    raise AttributeError(name)
