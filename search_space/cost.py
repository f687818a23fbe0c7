"""Analytic cost: parameters and MACs of an architecture from formulas, before any module exists.

The same walk checks that the architecture can be built (widths divisible by groups, strides that would shrink a
1x1 map), so a budget or an impossible sample is rejected in microseconds and names the field at fault.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING
from dataclasses import dataclass, field

from .blocks import BlockContext, get_block_type
from .blocks.layers import Counter, conv_bn_cost, pool_out
from .schema import SpecError
from .schema import choices_in

if TYPE_CHECKING:  # annotations only: the spec module imports this one to check an architecture's size
    from .spec import ModelSpec, StageSpec


@dataclass
class StageCost:
    name: str
    depth: int
    width: int
    types: list[str]
    params: int
    macs: int
    out_shape: tuple[int, int, int]


@dataclass
class Cost:
    params: int
    macs: int
    input_shape: tuple[int, int, int]
    rows: list[StageCost] = field(default_factory=list)


def stage_blocks(stage: StageSpec) -> list:
    return list(stage.blocks) if stage.blocks is not None else [stage.block] * stage.depth


def block_path(i: int, stage: StageSpec, j: int) -> str:
    return f"model.stages.{i}.blocks.{j}" if stage.blocks is not None else f"model.stages.{i}.block"


def model_widths(arch: ModelSpec) -> tuple[int, list[list[int]], int]:
    """Stem width, the output width of every block (stage by stage) and the head conv width.

    With ``widths.schedule: stage`` these are ``stem.width``, each stage's ``width`` and ``head.conv_width`` as
    written; with ``linear`` they come from ReXNet's schedule over all blocks and its multiplier.
    """
    counts = [len(stage_blocks(s)) for s in arch.stages]
    ws = arch.widths
    if ws.schedule == "stage":
        return arch.stem.width, [[s.width] * n for s, n in zip(arch.stages, counts)], arch.head.conv_width
    flat, out = ws.block_widths(sum(counts)), []
    for n in counts:
        out.append(flat[:n])
        flat = flat[n:]
    return ws.stem_width(arch.stem.width), out, ws.head_width(arch.head.conv_width)


def resolve_io(arch: ModelSpec, in_channels: int | None, num_classes: int | None) -> tuple[int, int]:
    ci = in_channels if in_channels is not None else (arch.in_channels if arch.in_channels is not None else 3)
    nc = num_classes if num_classes is not None else (arch.num_classes if arch.num_classes is not None else 1000)
    return ci, nc


STEM_STRIDES = {"conv7": 4, "deep": 4, "deep_tiered": 4, "cifar": 1, "rexnet": 2}


def deep_stem_widths(stem_type: str, width: int) -> tuple[int, int]:
    """Widths of the first two 3x3 convs of a deep stem: width/2 twice, or tiered 3 * (width/2 // 4) then width/2
    (timm's ``deep_tiered``: 24-32-64 for width 64)."""
    half = width // 2
    return (3 * (half // 4), half) if stem_type == "deep_tiered" else (half, half)


def stem_cost(c: Counter, stem, ci: int, h: int, w: int):
    t, sw = stem.type, stem.width
    if t == "conv7":
        h, w = conv_bn_cost(c, ci, sw, 7, h, w, 2)
        return pool_out(h, 2), pool_out(w, 2)
    if t in ("deep", "deep_tiered"):
        w1, w2 = deep_stem_widths(t, sw)
        h, w = conv_bn_cost(c, ci, w1, 3, h, w, 2)
        h, w = conv_bn_cost(c, w1, w2, 3, h, w)
        h, w = conv_bn_cost(c, w2, sw, 3, h, w)
        return pool_out(h, 2), pool_out(w, 2)
    if t == "cifar":
        return conv_bn_cost(c, ci, sw, 3, h, w)
    if t == "rexnet":
        return conv_bn_cost(c, ci, sw, 3, h, w, 2)
    raise AssertionError(t)


def head_cost(c: Counter, head, ci: int, nc: int, h: int, w: int) -> int:
    if head.conv_width:
        conv_bn_cost(c, ci, head.conv_width, 1, h, w)
        ci = head.conv_width
    c.linear(ci, nc)
    return ci


def architecture_cost(arch: ModelSpec, input_size: int | None = None, in_channels: int | None = None,
                      num_classes: int | None = None) -> Cost:
    """Params and MACs (conv and linear multiply-adds, as torch's flop counter counts them, halved).

    Raises SpecError naming the field when the architecture cannot be built.
    """
    left = choices_in(arch)
    if left:
        raise SpecError(f"model.{left[0]}", "is still a choice; sample the space first (search sample)")
    ci, nc = resolve_io(arch, in_channels, num_classes)
    size = input_size or arch.input_size
    c = Counter()
    stem_w, widths, head_w = model_widths(arch)
    stem = dataclasses.replace(arch.stem, width=stem_w)
    if stem.type == "deep" and stem.width % 2:
        raise SpecError("model.stem.width", f"{stem.width} must be even for the deep stem (it uses width/2)")
    if stem.type == "deep_tiered" and (stem.width % 2 or stem.width < 8):
        raise SpecError("model.stem.width", f"{stem.width} must be even and at least 8 for the deep_tiered stem "
                                            f"(it uses width/2 and 3 * (width/2 // 4))")
    if size < STEM_STRIDES[stem.type]:
        raise SpecError("model.input_size", f"{size} is smaller than the {stem.type} stem's stride "
                                            f"{STEM_STRIDES[stem.type]}")
    h, w = stem_cost(c, stem, ci, size, size)
    rows = [StageCost("stem", 1, stem.width, [stem.type], c.params, c.macs, (stem.width, h, w))]
    ch = stem.width
    all_blocks = [b for s in arch.stages for b in stage_blocks(s)]
    index = 0
    for i, stage in enumerate(arch.stages):
        before = Counter(c.params, c.macs)
        if stage.stride > 1 and (h == 1 or w == 1):
            raise SpecError(f"model.stages.{i}.stride", f"{stage.stride} would shrink a 1x1 feature map "
                                                        f"(input_size {size} is already 1x1 here); use 1")
        blocks = stage_blocks(stage)
        for j, block in enumerate(blocks):
            stride = stage.stride if j == 0 else 1
            ctx = BlockContext(arch.downsample, arch.zero_init_last, index, len(all_blocks))
            kind = get_block_type(block.type)
            co = widths[i][j]
            problem = kind.check(ch, co, stride, block, ctx)
            if problem:
                key, reason = problem
                raise SpecError(f"{block_path(i, stage, j)}.{key}", reason)
            h, w = kind.cost(c, ch, co, stride, block, ctx, h, w)
            ch = co
            index += 1
        rows.append(StageCost(f"stage {i}", len(blocks), ch, [b.type for b in blocks],
                              c.params - before.params, c.macs - before.macs, (ch, h, w)))
    before = Counter(c.params, c.macs)
    head_cost(c, dataclasses.replace(arch.head, conv_width=head_w), ch, nc, h, w)
    rows.append(StageCost("head", 1, nc, ["linear"], c.params - before.params, c.macs - before.macs, (nc, 1, 1)))
    return Cost(c.params, c.macs, (ci, size, size), rows)

