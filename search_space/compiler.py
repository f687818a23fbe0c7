"""Compile an architecture (a ModelSpec with no choices) into a ``torch.nn.Module``."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .blocks import BlockContext, get_block_type
from .blocks.layers import conv_bn
from .cost import architecture_cost, deep_stem_widths, model_widths, resolve_io, stage_blocks
from .spec import ModelSpec


def build_stem(stem, ci: int) -> nn.Sequential:
    t, w = stem.type, stem.width
    if t == "conv7":
        return nn.Sequential(conv_bn(ci, w, 7, 2), nn.MaxPool2d(3, 2, 1))
    if t in ("deep", "deep_tiered"):
        w1, w2 = deep_stem_widths(t, w)
        return nn.Sequential(conv_bn(ci, w1, 3, 2), conv_bn(w1, w2, 3), conv_bn(w2, w, 3), nn.MaxPool2d(3, 2, 1))
    if t == "cifar":
        return nn.Sequential(conv_bn(ci, w, 3))
    if t == "rexnet":
        layers = conv_bn(ci, w, 3, 2, act=False)
        layers.append(nn.SiLU(inplace=True))
        return layers
    raise AssertionError(t)


class Network(nn.Module):
    """stem -> stages -> (1x1 head conv) -> global average pool -> dropout -> linear.

    The interface follows timm: ``forward_features``, ``forward_head``, ``num_features``, ``reset_classifier``.
    """

    def __init__(self, arch: ModelSpec, in_channels: int | None = None, num_classes: int | None = None):
        super().__init__()
        architecture_cost(arch, in_channels=in_channels, num_classes=num_classes)  # raises on impossible specs
        ci, nc = resolve_io(arch, in_channels, num_classes)
        stem_w, widths, head_w = model_widths(arch)
        self.stem = build_stem(dataclasses.replace(arch.stem, width=stem_w), ci)
        ch = stem_w
        blocks_total = sum(s.depth if s.blocks is None else len(s.blocks) for s in arch.stages)
        stages, index = [], 0
        for i, stage in enumerate(arch.stages):
            blocks = []
            for j, block in enumerate(stage_blocks(stage)):
                ctx = BlockContext(arch.downsample, arch.zero_init_last, index, blocks_total)
                co = widths[i][j]
                blocks.append(get_block_type(block.type).build(ch, co, stage.stride if j == 0 else 1, block, ctx))
                ch = co
                index += 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        head = dataclasses.replace(arch.head, conv_width=head_w)
        if head.conv_width:
            self.head_conv = conv_bn(ch, head.conv_width, 1, act=False)
            self.head_conv.append(nn.SiLU(inplace=True) if head.act == "silu" else nn.ReLU(inplace=True))
            ch = head.conv_width
        else:
            self.head_conv = nn.Identity()
        self.num_features = ch
        self.max_pool = head.pool == "max"
        self.drop = nn.Dropout(head.dropout)
        self.fc = nn.Linear(ch, nc)
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # a block with its own init (rexnet's depthwise convs) overrides the generic one
            if m is not self and callable(getattr(m, "init_weights", None)):
                m.init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_conv(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(x.amax((2, 3)) if self.max_pool else x.mean((2, 3)))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.num_features, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)


def build_model(arch: ModelSpec, in_channels: int | None = None, num_classes: int | None = None) -> Network:
    """Build the module; ``in_channels``/``num_classes`` override the spec (a dataset's shape, say)."""
    return Network(arch, in_channels, num_classes)
