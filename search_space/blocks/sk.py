"""sk: Selective Kernel (SKNet, Li et al. 2019; timm's ``SelectiveKernel``).

Two paths, a 3x3 and a 3x3 dilated 2 (a 5x5 field), each K-group conv + BN + ReLU. By default both read the
full input (skresnext50_32x4d); with ``sk_split`` each reads its own half of the input channels (SKNet's split
variant, timm's skresnet18/34/50). Their sum is pooled and squeezed (1x1 to
a = make_divisible(mid * sk_ratio, sk_divisor), BN, ReLU), expanded to one logit per path and channel, softmaxed
over the two paths, and the paths are summed with those weights. SK keeps the last BN at 1.
"""

from __future__ import annotations

import torch
from torch import nn

from . import register_block
from .layers import conv, conv_bn, conv_bn_cost, make_divisible
from .residual import MixerBlockType
from .saved import Act


def sk_attn_channels(co: int, ratio: float = 1 / 16, divisor: int = 32) -> int:
    return make_divisible(co * ratio, divisor)


class SelectiveKernel(nn.Module):
    def __init__(self, ci: int, co: int, stride: int, groups: int, split: bool = False, ratio: float = 1 / 16,
                 divisor: int = 32):
        super().__init__()
        self.split = ci // 2 if split else 0
        path_in = self.split or ci
        self.path3 = conv_bn(path_in, co, 3, stride, groups)
        self.path5 = conv_bn(path_in, co, 3, stride, groups, dilation=2)
        a = sk_attn_channels(co, ratio, divisor)
        self.reduce = nn.Sequential(conv(co, a, 1), nn.BatchNorm2d(a), nn.ReLU(inplace=True))
        self.select = conv(a, 2 * co, 1)

    def forward(self, x):
        if self.split:
            p3, p5 = self.path3(x[:, :self.split]), self.path5(x[:, self.split:])
        else:
            p3, p5 = self.path3(x), self.path5(x)
        logits = self.select(self.reduce((p3 + p5).mean((2, 3), keepdim=True)))
        b, c = logits.shape[:2]
        w = torch.softmax(logits.view(b, 2, c // 2, 1, 1), dim=1)
        return p3 * w[:, 0] + p5 * w[:, 1]


@register_block
class SK(MixerBlockType):
    name = "sk"
    uses = MixerBlockType.uses + ("cardinality", "sk_split", "sk_ratio", "sk_divisor")
    zero_init_last = False

    def mixer(self, ci, co, stride, spec, reshapes):
        return SelectiveKernel(ci, co, stride, spec.cardinality, spec.sk_split, spec.sk_ratio, spec.sk_divisor)

    def mixer_cost(self, c, ci, co, stride, spec, reshapes, h, w):
        path_in = ci // 2 if spec.sk_split else ci
        ho, wo = conv_bn_cost(c, path_in, co, 3, h, w, stride, spec.cardinality)
        conv_bn_cost(c, path_in, co, 3, h, w, stride, spec.cardinality, dilation=2)
        a = sk_attn_channels(co, spec.sk_ratio, spec.sk_divisor)
        conv_bn_cost(c, co, a, 1, 1, 1)
        c.conv(a, 2 * co, 1, 1, 1)
        return ho, wo

    def mixer_memory(self, t, x, co, stride, spec, reshapes):
        k, split = spec.cardinality, (x.c // 2 if spec.sk_split else 0)
        p3 = t.conv_bn(x, co, 3, stride, k, ci=split or None)          # x[:, :split] is a view of x
        p5 = t.conv_bn(x, co, 3, stride, k, dilation=2, ci=(x.c - split) if split else None)
        logits = t.conv(t.conv_bn(t.mean(t.add(p3, p5)), sk_attn_channels(co, spec.sk_ratio, spec.sk_divisor)),
                        2 * co)
        w = t.softmax(logits)
        w = Act(co, 1, 1, w.nbytes, w.sid)                             # w[:, 0] and w[:, 1] are views of it
        return t.add(t.mul(p3, w), t.mul(p5, w))

    def mixer_check(self, ci, co, spec):
        k = spec.cardinality
        if spec.sk_split and ci % 2:
            return "sk_split", f"true needs an even SK input width; {ci} does not split in two halves"
        path_in = ci // 2 if spec.sk_split else ci
        if path_in % k or co % k:
            return "cardinality", f"{k} does not divide the SK convs' widths ({path_in} in, {co} out)"
        return None
