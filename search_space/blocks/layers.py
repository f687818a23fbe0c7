"""Layers the blocks share, each beside the formula that counts its parameters and MACs.

Keeping a layer's module and its cost side by side is what keeps the analytic cost model honest: tests hold
:class:`Counter` equal to ``sum(p.numel())`` and to ``torch.utils.flop_counter`` (which counts convolutions and
matrix products, without biases).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round ``v`` to a multiple of ``divisor`` the way the reference models do (never below ``round_limit * v``)."""
    min_value = min_value or divisor
    n = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if n < round_limit * v:
        n += divisor
    return n


def conv_out(size: int, k: int, stride: int, padding: int, dilation: int = 1) -> int:
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


@dataclass
class Counter:
    """Accumulates parameters and MACs of layers described by the same arguments that build them."""

    params: int = 0
    macs: int = 0

    def conv(self, ci, co, k, h, w, stride=1, groups=1, bias=False, dilation=1, padding=None):
        padding = dilation * (k - 1) // 2 if padding is None else padding
        ho, wo = conv_out(h, k, stride, padding, dilation), conv_out(w, k, stride, padding, dilation)
        self.params += co * (ci // groups) * k * k + (co if bias else 0)
        self.macs += co * (ci // groups) * k * k * ho * wo
        return ho, wo

    def bn(self, c):
        self.params += 2 * c

    def linear(self, i, o, bias=True):
        self.params += i * o + (o if bias else 0)
        self.macs += i * o


def conv(ci, co, k=1, stride=1, groups=1, bias=False, dilation=1) -> nn.Conv2d:
    return nn.Conv2d(ci, co, k, stride=stride, padding=dilation * (k - 1) // 2, dilation=dilation,
                     groups=groups, bias=bias)


def conv_bn(ci, co, k=1, stride=1, groups=1, dilation=1, act: bool = True) -> nn.Sequential:
    layers = [conv(ci, co, k, stride, groups, dilation=dilation), nn.BatchNorm2d(co)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def conv_bn_cost(c: Counter, ci, co, k, h, w, stride=1, groups=1, dilation=1):
    h, w = c.conv(ci, co, k, h, w, stride, groups, dilation=dilation)
    c.bn(co)
    return h, w


def pool_out(size: int, stride: int) -> int:
    """Spatial size after a stride-s 3x3/pad-1 pool or conv, or a 2x2 ceil-mode avgpool: ceil(size / s)."""
    return -(-size // stride)


# ----------------------------------------------------------------------------------------------------------------
# Attention on a block's output (SE, scSE)
# ----------------------------------------------------------------------------------------------------------------


def se_channels(channels: int, ratio: float) -> int:
    return make_divisible(channels * ratio, 8, round_limit=0.0)


class SqueezeExcite(nn.Module):
    """SE (Hu et al. 2018): global mean, 1x1 reduce (bias), ReLU, 1x1 expand (bias), sigmoid gate."""

    def __init__(self, channels: int, ratio: float = 1 / 16, spatial: bool = False):
        super().__init__()
        rd = se_channels(channels, ratio)
        self.fc1 = nn.Conv2d(channels, rd, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd, channels, 1, bias=True)
        # scSE (Roy et al. 2018) adds a spatial gate: 1x1 conv to one channel, sigmoid.
        self.spatial = nn.Conv2d(channels, 1, 1, bias=True) if spatial else None

    def forward(self, x):
        gate = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))).sigmoid()
        out = x * gate
        if self.spatial is not None:
            out = out + x * self.spatial(x).sigmoid()
        return out


def attention_module(kind: str, channels: int, ratio: float) -> nn.Module | None:
    if kind == "none":
        return None
    return SqueezeExcite(channels, ratio, spatial=(kind == "scse"))


def attention_cost(c: Counter, kind: str, channels: int, ratio: float, h: int, w: int):
    if kind == "none":
        return
    rd = se_channels(channels, ratio)
    c.conv(channels, rd, 1, 1, 1, bias=True)
    c.conv(rd, channels, 1, 1, 1, bias=True)
    if kind == "scse":
        c.conv(channels, 1, 1, h, w, bias=True)


# ----------------------------------------------------------------------------------------------------------------
# Shortcuts
# ----------------------------------------------------------------------------------------------------------------


def shortcut(ci: int, co: int, stride: int, style: str) -> nn.Module:
    """Identity when the shape is kept; else 1x1 conv + BN, or avgpool + 1x1 conv + BN (ResNet-D)."""
    if stride == 1 and ci == co:
        return nn.Identity()
    if style == "avg":
        pool = (nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1
                else nn.Identity())
        return nn.Sequential(pool, conv(ci, co, 1), nn.BatchNorm2d(co))
    return nn.Sequential(conv(ci, co, 1, stride), nn.BatchNorm2d(co))


def shortcut_cost(c: Counter, ci: int, co: int, stride: int, style: str, h: int, w: int):
    if stride == 1 and ci == co:
        return
    if style == "avg":
        h, w = pool_out(h, stride), pool_out(w, stride)
        stride = 1
    conv_bn_cost(c, ci, co, 1, h, w, stride)


def zero_init_(bn: nn.BatchNorm2d) -> None:
    nn.init.zeros_(bn.weight)


def channels_last_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Give ``x`` the memory format of ``ref`` (reshapes can lose channels_last)."""
    if ref.dim() == 4 and ref.is_contiguous(memory_format=torch.channels_last) and not ref.is_contiguous():
        return x.contiguous(memory_format=torch.channels_last)
    return x
