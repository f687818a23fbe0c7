"""Training memory of an architecture, from formulas, before any module exists (beside params and MACs in cost.py).

One training step holds:

- the parameters (fp32), their gradients (fp32, also under autocast) and the BatchNorm running statistics;
- the optimizer's state: SGD with momentum one buffer per parameter, AdamW two (plus a step count per tensor);
- what autograd saves for backward in the forward pass (:mod:`.blocks.saved`, exact: the same distinct storages
  ``torch.autograd.graph.saved_tensors_hooks`` sees, parameters left out); under bf16 autocast these are bf16 and
  include the bf16 copies of conv and linear weights;
- under autocast, the cached bf16 copies of the biases (made, not saved).

Left out: the allocator's rounding (the CUDA caching allocator rounds blocks up to 512 bytes and keeps freed
blocks cached), cuDNN workspaces, the transient tensors of the step (an output freed before backward, the
gradient of an activation while backward runs) and the CUDA context itself. A packer adds a margin for these
(runners' ledger; docs/gpus.md says how much and why).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

from .blocks import BlockContext, get_block_type
from .blocks.saved import FP32, Act, Saved
from .cost import architecture_cost, deep_stem_widths, model_widths, resolve_io, stage_blocks
from .spec import ModelSpec

OPTIMIZER_BUFFERS = {"sgd": 1, "adamw": 2}  # state tensors per parameter (SGD: momentum; AdamW: exp_avg, exp_avg_sq)


@dataclass
class TrainMemory:
    """Bytes one training step holds (see the module docstring for what is in and out)."""

    batch: int
    input_size: int
    amp: bool
    optimizer: str
    activation_bytes: int      # saved for backward (bf16 weight copies included under autocast)
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    buffer_bytes: int          # BatchNorm running statistics
    weight_copy_bytes: int     # autocast: the bf16 weight copies (saved, so inside activation_bytes)
    bias_copy_bytes: int       # autocast: the cached bf16 bias copies (not saved)
    total_bytes: int

    def to_json(self) -> dict:
        return asdict(self)


def stem_memory(t: Saved, stem, x: Act) -> Act:
    """compiler.build_stem on shapes."""
    if stem.type == "conv7":
        return t.maxpool(t.conv_bn(x, stem.width, 7, 2))
    if stem.type in ("deep", "deep_tiered"):
        w1, w2 = deep_stem_widths(stem.type, stem.width)
        return t.maxpool(t.conv_bn(t.conv_bn(t.conv_bn(x, w1, 3, 2), w2, 3), stem.width, 3))
    if stem.type == "cifar":
        return t.conv_bn(x, stem.width, 3)
    if stem.type == "rexnet":
        return t.act_clone_(t.conv_bn(x, stem.width, 3, 2, act=False))   # SiLU in place
    raise AssertionError(stem.type)


def saved_tensors(arch: ModelSpec, batch: int, input_size: int | None = None, in_channels: int | None = None,
                  num_classes: int | None = None, amp: bool = False, device: str = "cpu") -> Saved:
    """Replay the network's training-mode forward pass on shapes; the returned :class:`Saved` holds what autograd
    keeps for backward."""
    ci, nc = resolve_io(arch, in_channels, num_classes)
    size = input_size or arch.input_size
    stem_w, widths, head_w = model_widths(arch)
    t = Saved(batch, amp, device)
    x = stem_memory(t, dataclasses.replace(arch.stem, width=stem_w), t.input(ci, size, size))
    t.marks.append(t.saved_bytes)
    total = sum(len(stage_blocks(s)) for s in arch.stages)
    index = 0
    for i, stage in enumerate(arch.stages):
        for j, block in enumerate(stage_blocks(stage)):
            ctx = BlockContext(arch.downsample, arch.zero_init_last, index, total)
            x = get_block_type(block.type).memory(t, x, widths[i][j], stage.stride if j == 0 else 1, block, ctx)
            index += 1
        t.marks.append(t.saved_bytes)
    if head_w:
        x = t.conv_bn(x, head_w, 1, act=False)
        x = t.act_clone_(x) if arch.head.act == "silu" else t.act_(x)
    x = t.amax(x) if arch.head.pool == "max" else t.mean(x)
    t.linear(t.dropout(x, arch.head.dropout), nc)
    t.marks.append(t.saved_bytes)
    return t


def saved_by_part(t: Saved) -> list[int]:
    """Bytes first saved in the stem, each stage and the head (the rows of ``search compile``); they add up to
    ``t.saved_bytes`` (a storage saved again downstream counts where it was first saved)."""
    return [b - a for a, b in zip([0, *t.marks], t.marks)]


def architecture_memory(arch: ModelSpec, batch: int, input_size: int | None = None, in_channels: int | None = None,
                        num_classes: int | None = None, amp: bool = False, optimizer: str = "sgd",
                        momentum: float = 0.9, device: str = "cpu") -> TrainMemory:
    """Training memory of ``arch`` at ``batch`` images of ``input_size`` (default: the spec's), fp32 or under bf16
    autocast (``amp``), with ``optimizer`` sgd (momentum > 0 keeps a buffer) or adamw.

    Raises SpecError naming the field when the architecture cannot be built (as :func:`architecture_cost`).
    """
    cost = architecture_cost(arch, input_size, in_channels, num_classes)
    t = saved_tensors(arch, batch, input_size, in_channels, num_classes, amp, device)
    param_bytes = cost.params * FP32
    buffers = OPTIMIZER_BUFFERS[optimizer] if optimizer == "adamw" or momentum > 0 else 0
    optimizer_bytes = buffers * param_bytes
    activation = t.saved_bytes
    total = activation + 2 * param_bytes + optimizer_bytes + t.buffer_bytes + t.bias_copy_bytes
    return TrainMemory(batch, input_size or arch.input_size, amp, optimizer, activation, param_bytes, param_bytes,
                       optimizer_bytes, t.buffer_bytes, t.weight_copy_bytes, t.bias_copy_bytes, total)


def train_memory_json(arch: ModelSpec, batch: int, input_size: int | None = None, in_channels: int | None = None,
                      num_classes: int | None = None, optimizer: str = "sgd", momentum: float = 0.9) -> dict:
    """The ``train_memory`` object of ``search compile --json``: fp32 fields, and a ``bf16`` object beside them."""
    kw = dict(input_size=input_size, in_channels=in_channels, num_classes=num_classes, optimizer=optimizer,
              momentum=momentum)
    out = architecture_memory(arch, batch, amp=False, **kw).to_json()
    out["bf16"] = architecture_memory(arch, batch, amp=True, **kw).to_json()
    return out


def measured_saved_bytes(model, x, amp: bool = False) -> int:
    """The reference the model is held to: bytes of the distinct storages autograd saves in one training-mode
    forward pass of ``model`` on ``x`` (CPU autocast when ``amp``), parameters and buffers left out."""
    import torch

    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in own:
            seen[s.data_ptr()] = s.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
    del out  # the saved tensors are alive until here, so no storage address was reused while counting
    return sum(seen.values())
