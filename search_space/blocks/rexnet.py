"""rexnet: the inverted residual of ReXNet (Han et al. 2021, "Rethinking Channel Dimensions for Efficient Model
Design"), following the reference code (clovaai/rexnet; timm's ``LinearBottleneck``).

    [1x1 expand to dw = round(in * expansion) + BN + SiLU]   (no expansion conv when expansion is 1)
    depthwise 3x3 (stride here) + BN
    [SE: global mean, 1x1 (bias) to rd = max(1, int(dw / 12)), BN, ReLU, 1x1 (bias) back to dw, sigmoid gate]
    ReLU6
    1x1 linear projection to out + BN (no activation)
    partial residual when stride is 1 and in <= out: out[:, :in] += x

The output widths come from the model (``model.widths``: ReXNet's linear schedule, or the stage's width), so a
block only sees ``in`` and ``out``. ``rexnet_divisor`` rounds the depthwise and SE widths to its multiples
(``make_divisible``); ReXNet uses 1, the rounded ``rexnetr_*`` variants 8. Like timm's ReXNet, the last BN is
not zero-initialised: with a partial residual that would leave the new channels constant at the start.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import BlockContext, BlockType, register_block
from .layers import Counter, conv_bn, conv_bn_cost, make_divisible
from .saved import Act

SE_RATIO = 1 / 12.


def dw_channels(ci: int, expansion: float, divisor: int = 1) -> int:
    """Width of the depthwise conv: ``make_divisible(round(in * expansion), divisor)`` (Python round, half to
    even)."""
    return ci if expansion == 1.0 else make_divisible(round(ci * expansion), divisor)


def se_channels(dw: int, divisor: int = 1) -> int:
    """Squeeze width of ReXNet's SE: ``make_divisible(int(dw * (1 / 12)), divisor)``, at least ``divisor``."""
    return make_divisible(int(dw * SE_RATIO), divisor)


class SEWithNorm(nn.Module):
    """SE with a BN between the squeeze and the ReLU (ReXNet)."""

    def __init__(self, channels: int, divisor: int = 1):
        super().__init__()
        rd = se_channels(channels, divisor)
        self.fc1 = nn.Conv2d(channels, rd, 1, bias=True)
        self.bn = nn.BatchNorm2d(rd)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd, channels, 1, bias=True)

    def forward(self, x):
        return x * self.fc2(self.act(self.bn(self.fc1(x.mean((2, 3), keepdim=True))))).sigmoid()


class LinearBottleneck(nn.Module):
    def __init__(self, ci: int, co: int, stride: int, expansion: float, se: bool, divisor: int = 1):
        super().__init__()
        dw = dw_channels(ci, expansion, divisor)
        self.in_channels, self.out_channels = ci, co
        self.use_shortcut = stride == 1 and ci <= co
        if expansion != 1.0:
            self.conv_exp = conv_bn(ci, dw, 1, act=False)
            self.conv_exp.append(nn.SiLU(inplace=True))
        else:
            self.conv_exp = nn.Identity()
        self.conv_dw = conv_bn(dw, dw, 3, stride, groups=dw, act=False)
        self.se = SEWithNorm(dw, divisor) if se else nn.Identity()
        self.act_dw = nn.ReLU6(inplace=True)
        self.conv_pwl = conv_bn(dw, co, 1, act=False)

    def init_weights(self) -> None:
        """timm's EfficientNet/ReXNet init, called by the compiler after its generic init: normal with
        std sqrt(2 / fan_out), fan_out = k * k * out / groups. PyTorch's fan_out ignores groups, which gives a
        depthwise 3x3 weights sqrt(dw) times too small; behind BN that makes the effective learning rate so large
        that the BN running statistics cannot follow, and eval-mode accuracy of a short proxy run stays at chance."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        out = self.conv_pwl(self.act_dw(self.se(self.conv_dw(self.conv_exp(x)))))
        if not self.use_shortcut:
            return out
        ci = self.in_channels
        if ci == self.out_channels:
            return out + x
        # Partial residual: the shortcut joins the first `in` channels (slicing + cat keeps autograd and the
        # channels_last layout; no in-place write into a tensor autograd still needs).
        return torch.cat([out[:, :ci] + x, out[:, ci:]], dim=1)


@register_block
class ReXNet(BlockType):
    name = "rexnet"
    uses = ("expansion", "se_rexnet", "rexnet_divisor")
    deciders = ("expansion", "se_rexnet")

    def relevant(self, spec):
        fields = super().relevant(spec)
        if spec.expansion == 1.0 and spec.se_rexnet is False:
            fields.discard("rexnet_divisor")  # nothing left to round
        return fields

    def build(self, ci, co, stride, spec, ctx: BlockContext) -> nn.Module:
        return LinearBottleneck(ci, co, stride, spec.expansion, spec.se_rexnet, spec.rexnet_divisor)

    def cost(self, c: Counter, ci, co, stride, spec, ctx: BlockContext, h, w):
        dw = dw_channels(ci, spec.expansion, spec.rexnet_divisor)
        if spec.expansion != 1.0:
            conv_bn_cost(c, ci, dw, 1, h, w)
        h, w = conv_bn_cost(c, dw, dw, 3, h, w, stride, groups=dw)
        if spec.se_rexnet:
            rd = se_channels(dw, spec.rexnet_divisor)
            c.conv(dw, rd, 1, 1, 1, bias=True)
            c.bn(rd)
            c.conv(rd, dw, 1, 1, 1, bias=True)
        conv_bn_cost(c, dw, co, 1, h, w)
        return h, w

    def memory(self, t, x, co, stride, spec, ctx: BlockContext):
        ci = x.c
        dw = dw_channels(ci, spec.expansion, spec.rexnet_divisor)
        y = t.act_clone_(t.conv_bn(x, dw, 1, act=False)) if spec.expansion != 1.0 else x   # SiLU in place
        y = t.conv_bn(y, dw, 3, stride, groups=dw, act=False)
        if spec.se_rexnet:
            g = t.act_(t.bn(t.conv(t.mean(y), se_channels(dw, spec.rexnet_divisor), bias=True)))
            y = t.mul(y, t.sigmoid(t.conv(g, dw, bias=True)))
        y = t.conv_bn(t.act_clone_(y), co, 1, act=False)                               # ReLU6 in place
        if not (stride == 1 and ci <= co):
            return y
        if ci == co:
            return t.add(y, x)
        t.add(Act(ci, y.h, y.w, y.nbytes, y.sid), x)                                  # out[:, :in] + x
        return t.copy(y)                                                              # torch.cat

