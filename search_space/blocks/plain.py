"""plain (ResNet, He et al. 2016), grouped (ResNeXt, Xie et al. 2017) and se (SE-ResNet, Hu et al. 2018).

All three put a 3x3 conv + BN + ReLU at the mixer position; grouped makes it a K-group conv, se fixes the
attention to SE (SE-ResNeXt is ``type: grouped, attention: se``).
"""

from __future__ import annotations

from . import register_block
from .layers import conv_bn, conv_bn_cost
from .residual import MixerBlockType


class ConvMixer(MixerBlockType):
    def groups(self, spec) -> int:
        return 1

    def mixer(self, ci, co, stride, spec, reshapes):
        return conv_bn(ci, co, 3, stride, groups=self.groups(spec))

    def mixer_cost(self, c, ci, co, stride, spec, reshapes, h, w):
        return conv_bn_cost(c, ci, co, 3, h, w, stride, groups=self.groups(spec))

    def mixer_memory(self, t, x, co, stride, spec, reshapes):
        return t.conv_bn(x, co, 3, stride, groups=self.groups(spec))

    def mixer_check(self, ci, co, spec):
        k = self.groups(spec)
        if ci % k or co % k:
            return "cardinality", f"{k} does not divide the 3x3's widths ({ci} in, {co} out)"
        return None


@register_block
class Plain(ConvMixer):
    name = "plain"


@register_block
class Grouped(ConvMixer):
    name = "grouped"
    uses = ConvMixer.uses + ("cardinality",)

    def groups(self, spec):
        return spec.cardinality


@register_block
class SE(ConvMixer):
    name = "se"
    uses = ("bottleneck", "bottleneck_ratio", "se_ratio")

    def attention(self, spec):
        return "se"
