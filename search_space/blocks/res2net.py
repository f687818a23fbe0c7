"""res2net: hierarchical multi-scale 3x3 (Res2Net, Gao et al. 2021).

The mid width splits into s scales of w channels; each of the first s-1 gets its own 3x3 (K groups) + BN + ReLU
after adding the previous scale's output; the last scale passes through. In a block that changes shape there is
no adding, every 3x3 is strided, and the last scale goes through a 3x3 avgpool. The loop is over scales, which
depend on each other; there is none over K.
"""

from __future__ import annotations

import torch
from torch import nn

from . import register_block
from .layers import conv, conv_bn_cost
from .saved import Act
from .residual import MixerBlockType


class Res2NetConv(nn.Module):
    """The s-1 convs are registered before their BNs (``convs``, then ``bns``), as in the reference code and timm,
    so a state dict in registration order pairs with theirs tensor by tensor."""

    def __init__(self, channels: int, stride: int, scales: int, cardinality: int, reshapes: bool):
        super().__init__()
        self.width = channels // scales
        self.reshapes = reshapes
        self.convs = nn.ModuleList(conv(self.width, self.width, 3, stride, cardinality) for _ in range(scales - 1))
        self.bns = nn.ModuleList(nn.BatchNorm2d(self.width) for _ in range(scales - 1))
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.AvgPool2d(3, stride, padding=1) if reshapes else nn.Identity()

    def branch(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Scale i's 3x3 conv + BN + ReLU."""
        return self.act(self.bns[i](self.convs[i](x)))

    def forward(self, x):
        parts = torch.split(x, self.width, dim=1)
        outs = []
        sp = parts[0]
        for i in range(len(self.convs)):
            sp = self.branch(i, parts[i] if i == 0 or self.reshapes else sp + parts[i])
            outs.append(sp)
        outs.append(self.pool(parts[-1]))
        return torch.cat(outs, 1)


@register_block
class Res2Net(MixerBlockType):
    name = "res2net"
    uses = ("bottleneck_ratio", "cardinality", "scales", "attention", "se_ratio")  # always a bottleneck
    supports_basic = False

    def mixer(self, ci, co, stride, spec, reshapes):
        return Res2NetConv(co, stride, spec.scales, spec.cardinality, reshapes)

    def mixer_cost(self, c, ci, co, stride, spec, reshapes, h, w):
        width = co // spec.scales
        ho, wo = h, w
        for _ in range(spec.scales - 1):
            ho, wo = conv_bn_cost(c, width, width, 3, h, w, stride, spec.cardinality)
        return ho, wo

    def mixer_memory(self, t, x, co, stride, spec, reshapes):
        width = co // spec.scales
        part = Act(width, x.h, x.w, x.nbytes, x.sid)  # torch.split gives views of x
        sp = None
        for i in range(spec.scales - 1):             # over scales, which depend on each other
            inp = part if i == 0 or reshapes else t.add(sp, part)
            sp = t.conv_bn(inp, width, 3, stride, spec.cardinality, ci=width if inp is part else None)
        last = t.avgpool(part, stride) if reshapes else part
        return t.copy(Act(co, last.h, last.w, x.nbytes, -1))  # torch.cat: a new storage, nothing saved

    def mixer_check(self, ci, co, spec):
        if co % spec.scales:
            return "scales", f"{spec.scales} does not divide the mid width {co}"
        if (co // spec.scales) % spec.cardinality:
            return "cardinality", f"{spec.cardinality} does not divide the scale width {co // spec.scales}"
        return None
