"""Block-type registry: every module in this package that defines a ``@register_block`` class is a block type.

Adding a block type is one new file here; it is discovered on import and becomes a value of ``block.type``.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from .layers import Counter

_REGISTRY: dict[str, "BlockType"] = {}
_LOADED = False


@dataclass(frozen=True)
class BlockContext:
    """Model-level settings a block needs besides its own spec."""

    downsample: str = "conv"      # shortcut style when the shape changes: conv | avg
    zero_init_last: bool = True   # zero-init the last BN gamma of the residual branch
    index: int = 0                # position in the network (0-based over all blocks)
    total: int = 1                # blocks in the network


class BlockType:
    """What a block type provides: which spec fields it reads, a module, its cost, and its feasibility rules.

    Every block is built with the same signature, ``build(in_channels, out_channels, stride, spec, ctx)``.
    """

    name: ClassVar[str]
    uses: ClassVar[tuple[str, ...]] = ()
    # Fields whose values decide which other fields matter (``relevant``): while one is still a choice, the
    # loader cannot tell an ignored key from a used one, and sampling draws them before the fields they gate.
    deciders: ClassVar[tuple[str, ...]] = ("bottleneck", "attention")

    def build(self, ci: int, co: int, stride: int, spec, ctx: BlockContext) -> nn.Module:
        raise NotImplementedError

    def cost(self, c: Counter, ci: int, co: int, stride: int, spec, ctx: BlockContext, h: int, w: int):
        """Add the block's params and MACs to ``c``; return the output (h, w)."""
        raise NotImplementedError

    def memory(self, t, x, co: int, stride: int, spec, ctx: BlockContext):
        """Replay the block's forward on shapes in ``t`` (a :class:`~.saved.Saved`), recording what autograd
        saves; ``x`` is the input :class:`~.saved.Act`; return the output Act."""
        raise NotImplementedError

    def check(self, ci: int, co: int, stride: int, spec, ctx: BlockContext) -> tuple[str, str] | None:
        """(field, reason) when this block cannot be built with these settings, else None."""
        return None

    def relevant(self, spec) -> set[str]:
        """The spec fields this block reads given the values it has (conditional fields drop out)."""
        fields = {"type", *self.uses}
        if "bottleneck" in fields and spec.bottleneck is False:
            fields.discard("bottleneck_ratio")
        if "attention" in fields and spec.attention == "none":
            fields.discard("se_ratio")
        return fields


def register_block(cls):
    _REGISTRY[cls.name] = cls()
    return cls


def _load() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for mod in pkgutil.iter_modules(__path__):
            if mod.name not in ("layers", "residual", "saved"):
                importlib.import_module(f"{__name__}.{mod.name}")


def block_type_names() -> list[str]:
    _load()
    return sorted(_REGISTRY)  # not import order, which depends on who imported a block module first


def get_block_type(name: str) -> BlockType:
    _load()
    return _REGISTRY[name]


def relevant_fields(spec) -> set[str]:
    return get_block_type(spec.type).relevant(spec)
