"""split_attention: split-attention conv (ResNeSt, Zhang et al. 2020), radix-major, without loops over R or K.

One 3x3 conv from ci to co*R with K*R groups + BN + ReLU gives R splits (radix-major channels); their sum is
pooled, squeezed by a K-group 1x1 (bias) to a = make_divisible(co*R/4, 8, min 32) + BN + ReLU, expanded by a K-group
1x1 (bias) to co*R, softmaxed over R inside each cardinal group (sigmoid when R = 1), and the splits are summed
with those weights. With ``avd`` the stride moves to a 3x3 avgpool after the attention (ResNeSt-D), or with
``avd_first`` too, before the 3x3 conv (timm's ``avd_first``: the conv and the attention then run on the pooled map).
"""

from __future__ import annotations

import torch
from torch import nn

from . import register_block
from .layers import channels_last_like, conv, conv_bn, conv_bn_cost, make_divisible, pool_out
from .residual import MixerBlockType


def splat_attn_channels(co: int, radix: int) -> int:
    return make_divisible(co * radix / 4, 8, min_value=32)


class SplitAttention(nn.Module):
    def __init__(self, ci: int, co: int, stride: int, radix: int, cardinality: int, avd: bool,
                 avd_first: bool = False):
        super().__init__()
        self.radix, self.cardinality = radix, cardinality
        conv_stride = 1 if avd else stride
        pool = avd and stride > 1
        self.pool_first = nn.AvgPool2d(3, stride, padding=1) if pool and avd_first else nn.Identity()
        self.conv = conv_bn(ci, co * radix, 3, conv_stride, groups=cardinality * radix)
        a = splat_attn_channels(co, radix)
        self.fc1 = nn.Sequential(conv(co, a, 1, groups=cardinality, bias=True), nn.BatchNorm2d(a),
                                 nn.ReLU(inplace=True))
        self.fc2 = conv(a, co * radix, 1, groups=cardinality, bias=True)
        self.pool = nn.AvgPool2d(3, stride, padding=1) if pool and not avd_first else nn.Identity()

    def forward(self, x):
        x = self.conv(self.pool_first(x))
        b, rc, h, w = x.shape
        r, k = self.radix, self.cardinality
        splits = x.view(b, r, rc // r, h, w)              # radix-major channels
        logits = self.fc2(self.fc1(splits.sum(1).mean((2, 3), keepdim=True)))
        if r > 1:
            # fc2's channels are cardinal-major (K, R, C/K): lay them out radix-major, then softmax over R (in
            # this order, as timm's RadixSoftmax does: the softmax kernel then sees the same strides and rounds alike).
            attn = torch.softmax(logits.view(b, k, r, -1).transpose(1, 2), dim=1).reshape(b, r, rc // r, 1, 1)
        else:
            attn = logits.sigmoid().view(b, r, rc // r, 1, 1)
        return self.pool(channels_last_like((splits * attn).sum(1), x))  # the sum over R drops channels_last


@register_block
class SplitAttn(MixerBlockType):
    name = "split_attention"
    uses = MixerBlockType.uses + ("cardinality", "radix", "avd", "avd_first")
    deciders = MixerBlockType.deciders + ("avd",)

    def relevant(self, spec):
        fields = super().relevant(spec)
        if spec.avd is False:
            fields.discard("avd_first")
        return fields

    def mixer(self, ci, co, stride, spec, reshapes):
        return SplitAttention(ci, co, stride, spec.radix, spec.cardinality, spec.avd, spec.avd and spec.avd_first)

    def mixer_cost(self, c, ci, co, stride, spec, reshapes, h, w):
        r, k = spec.radix, spec.cardinality
        if spec.avd and spec.avd_first and stride > 1:
            h, w = pool_out(h, stride), pool_out(w, stride)
        ho, wo = conv_bn_cost(c, ci, co * r, 3, h, w, 1 if spec.avd else stride, groups=k * r)
        a = splat_attn_channels(co, r)
        c.conv(co, a, 1, 1, 1, groups=k, bias=True)
        c.bn(a)
        c.conv(a, co * r, 1, 1, 1, groups=k, bias=True)
        if spec.avd and not spec.avd_first and stride > 1:
            ho, wo = pool_out(h, stride), pool_out(w, stride)
        return ho, wo

    def mixer_memory(self, t, x, co, stride, spec, reshapes):
        r, k = spec.radix, spec.cardinality
        pool = spec.avd and stride > 1
        if pool and spec.avd_first:
            x = t.avgpool(x, stride)
        y = t.conv_bn(x, co * r, 3, 1 if spec.avd else stride, groups=k * r)
        a = t.act_(t.bn(t.conv(t.mean(t.sum_splits(y, co)), splat_attn_channels(co, r), groups=k, bias=True)))
        logits = t.conv(a, co * r, groups=k, bias=True)
        # softmax over R of the transposed (K, R) view (its output is contiguous, so the reshape is a view)
        attn = t.softmax(logits) if r > 1 else t.sigmoid(logits)
        out = t.sum_splits(t.mul(y, attn), co)
        return t.avgpool(out, stride) if pool and not spec.avd_first else out

    def mixer_check(self, ci, co, spec):
        r, k = spec.radix, spec.cardinality
        if ci % (k * r):
            return "radix", f"K*R = {k}*{r} = {k * r} does not divide the split-attention input width {ci}"
        if co % k:
            return "cardinality", f"{k} does not divide the split-attention width {co}"
        if splat_attn_channels(co, r) % k:
            return "cardinality", f"{k} does not divide the attention width {splat_attn_channels(co, r)}"
        return None
