"""The residual block the ResNet family shares; a block type only supplies the op at the 3x3 position.

bottleneck: 1x1 (mid) -> mixer (mid, stride here, v1.5) -> 1x1 (out, BN zero-init) -> attention -> + shortcut -> ReLU
basic:      mixer (out, stride) -> 3x3 (out, BN zero-init) -> attention -> + shortcut -> ReLU
"""

from __future__ import annotations

from torch import nn

from . import BlockContext, BlockType
from .layers import (Counter, attention_cost, attention_module, conv_bn, conv_bn_cost, shortcut, shortcut_cost,
                     zero_init_)
from .saved import attention_memory, shortcut_memory


def mid_width(co: int, spec) -> int:
    return int(co * spec.bottleneck_ratio + 1e-6) if spec.bottleneck else co


class MixerBlockType(BlockType):
    """A block type defined by its mixer: the op (with its own BN + ReLU) at the 3x3 position."""

    uses = ("bottleneck", "bottleneck_ratio", "attention", "se_ratio")
    supports_basic = True
    zero_init_last = True

    def attention(self, spec) -> str:
        return spec.attention

    def mixer(self, ci, co, stride, spec, reshapes: bool) -> nn.Module:
        raise NotImplementedError

    def mixer_cost(self, c: Counter, ci, co, stride, spec, reshapes: bool, h, w):
        raise NotImplementedError

    def mixer_memory(self, t, x, co, stride, spec, reshapes: bool):
        """What the mixer saves (see :mod:`.saved`); returns its output Act."""
        raise NotImplementedError

    def mixer_check(self, ci, co, spec) -> tuple[str, str] | None:
        return None

    def build(self, ci, co, stride, spec, ctx):
        return ResidualBlock(ci, co, stride, spec, ctx, self)

    def check(self, ci, co, stride, spec, ctx):
        if not spec.bottleneck and not self.supports_basic:
            return "bottleneck", f"false is not available for type {self.name!r}; it needs bottleneck: true"
        mid = mid_width(co, spec)
        if mid < 1:
            return "bottleneck_ratio", f"{spec.bottleneck_ratio} gives a mid width of 0 for width {co}"
        return self.mixer_check(mid if spec.bottleneck else ci, mid, spec)

    def cost(self, c, ci, co, stride, spec, ctx, h, w):
        mid = mid_width(co, spec)
        reshapes = stride > 1 or ci != co
        h0, w0 = h, w
        if spec.bottleneck:
            conv_bn_cost(c, ci, mid, 1, h, w)
            h, w = self.mixer_cost(c, mid, mid, stride, spec, reshapes, h, w)
            conv_bn_cost(c, mid, co, 1, h, w)
        else:
            h, w = self.mixer_cost(c, ci, co, stride, spec, reshapes, h, w)
            conv_bn_cost(c, co, co, 3, h, w)
        attention_cost(c, self.attention(spec), co, spec.se_ratio, h, w)
        shortcut_cost(c, ci, co, stride, ctx.downsample, h0, w0)
        return h, w

    def memory(self, t, x, co, stride, spec, ctx):
        mid = mid_width(co, spec)
        reshapes = stride > 1 or x.c != co
        if spec.bottleneck:
            y = self.mixer_memory(t, t.conv_bn(x, mid, 1), mid, stride, spec, reshapes)
            y = t.conv_bn(y, co, 1, act=False)
        else:
            y = t.conv_bn(self.mixer_memory(t, x, co, stride, spec, reshapes), co, 3, act=False)
        y = attention_memory(t, self.attention(spec), y, spec.se_ratio)
        return t.act_(t.add(y, shortcut_memory(t, x, co, stride, ctx.downsample)))


class ResidualBlock(nn.Module):
    def __init__(self, ci: int, co: int, stride: int, spec, ctx: BlockContext, kind: MixerBlockType):
        super().__init__()
        mid = mid_width(co, spec)
        reshapes = stride > 1 or ci != co
        if spec.bottleneck:
            self.conv1 = conv_bn(ci, mid, 1)
            self.mixer = kind.mixer(mid, mid, stride, spec, reshapes)
            self.conv3 = conv_bn(mid, co, 1, act=False)
        else:
            self.conv1 = nn.Identity()
            self.mixer = kind.mixer(ci, co, stride, spec, reshapes)
            self.conv3 = conv_bn(co, co, 3, act=False)
        self.attn = attention_module(kind.attention(spec), co, spec.se_ratio) or nn.Identity()
        self.shortcut = shortcut(ci, co, stride, ctx.downsample)
        self.act = nn.ReLU(inplace=True)
        if ctx.zero_init_last and kind.zero_init_last:
            zero_init_(self.conv3[1])

    def forward(self, x):
        out = self.attn(self.conv3(self.mixer(self.conv1(x))))
        return self.act(out + self.shortcut(x))
