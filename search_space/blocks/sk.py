"""sk: Selective Kernel (SKNet, Li et al. 2019).

Two paths on the full input, a 3x3 and a 3x3 dilated 2 (a 5x5 field), each K-group conv + BN + ReLU; their sum
is pooled and squeezed (1x1 to a = make_divisible(mid/16, 32), BN, ReLU), expanded to one logit per path and
channel, softmaxed over the two paths, and the paths are summed with those weights. SK keeps the last BN at 1.
"""

from __future__ import annotations

import torch
from torch import nn

from . import register_block
from .layers import conv, conv_bn, conv_bn_cost, make_divisible
from .residual import MixerBlockType


def sk_attn_channels(co: int) -> int:
    return make_divisible(co / 16, 32)


class SelectiveKernel(nn.Module):
    def __init__(self, ci: int, co: int, stride: int, groups: int):
        super().__init__()
        self.path3 = conv_bn(ci, co, 3, stride, groups)
        self.path5 = conv_bn(ci, co, 3, stride, groups, dilation=2)
        a = sk_attn_channels(co)
        self.reduce = nn.Sequential(conv(co, a, 1), nn.BatchNorm2d(a), nn.ReLU(inplace=True))
        self.select = conv(a, 2 * co, 1)

    def forward(self, x):
        p3, p5 = self.path3(x), self.path5(x)
        logits = self.select(self.reduce((p3 + p5).mean((2, 3), keepdim=True)))
        b, c = logits.shape[:2]
        w = torch.softmax(logits.view(b, 2, c // 2, 1, 1), dim=1)
        return p3 * w[:, 0] + p5 * w[:, 1]


@register_block
class SK(MixerBlockType):
    name = "sk"
    uses = MixerBlockType.uses + ("cardinality",)
    zero_init_last = False

    def mixer(self, ci, co, stride, spec, reshapes):
        return SelectiveKernel(ci, co, stride, spec.cardinality)

    def mixer_cost(self, c, ci, co, stride, spec, reshapes, h, w):
        ho, wo = conv_bn_cost(c, ci, co, 3, h, w, stride, spec.cardinality)
        conv_bn_cost(c, ci, co, 3, h, w, stride, spec.cardinality, dilation=2)
        a = sk_attn_channels(co)
        conv_bn_cost(c, co, a, 1, 1, 1)
        c.conv(a, 2 * co, 1, 1, 1)
        return ho, wo

    def mixer_check(self, ci, co, spec):
        k = spec.cardinality
        if ci % k or co % k:
            return "cardinality", f"{k} does not divide the SK convs' widths ({ci} in, {co} out)"
        return None
