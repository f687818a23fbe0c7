"""What autograd keeps for backward, layer by layer: the activation half of the training-memory model.

A training step holds the weights, their gradients, the optimizer's state and every tensor that the forward pass
saves for backward. The last part is most of it for a small CNN at a real batch size, and it is countable before
any module exists: each op saves known tensors (conv: its input; BatchNorm: its input and two per-channel
statistics; ReLU in place: its output, which *is* its input's storage; max pooling: its input and int64 indices;
a product: both factors), and in-place ops and views share a storage, so what matters is the set of distinct
storages. :class:`Saved` replays a block's forward on shapes only (:class:`Act`: channels, height, width, bytes
per element and a storage id) and records what each op saves, so the count is the one
``torch.autograd.graph.saved_tensors_hooks`` sees (distinct storages, parameters left out): exact, not an
estimate (tests/test_memory.py holds it equal for the zoo and samples of every shipped space).

Under bf16 autocast a conv or linear layer runs on bf16 copies of its input (when that is fp32) and of its weight;
autograd saves both copies, and every layer after a conv then runs in bf16. The rules here are CPU autocast's (the
ones the tests can check); ``device="cuda"`` applies CUDA autocast's differences that matter for these blocks
(softmax and sum give fp32, dropout keeps a 1-byte mask), which only a GPU can check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .layers import conv_out

FP32, BF16, INT64 = 4, 2, 8


@dataclass(frozen=True)
class Act:
    """A tensor of the forward pass, by shape: ``batch x c x h x w`` elements of ``nbytes`` each in storage ``sid``
    (a view or an in-place result keeps its base's ``sid``)."""

    c: int
    h: int
    w: int
    nbytes: int
    sid: int


@dataclass
class Saved:
    """Replays a forward pass on shapes and records the storages autograd saves.

    ``amp``: bf16 autocast. ``storages`` maps a storage id to its size in bytes; ``saved`` is the set of ids that
    some op saved; ``weight_copy_bytes`` the bf16 weight copies autocast makes for conv and linear layers (saved
    too, and counted in :attr:`saved_bytes`).
    """

    batch: int
    amp: bool = False
    device: str = "cpu"
    storages: dict[int, int] = field(default_factory=dict)
    saved: set[int] = field(default_factory=set)
    weight_copy_bytes: int = 0
    bias_copy_bytes: int = 0
    buffer_bytes: int = 0
    marks: list[int] = field(default_factory=list)  # saved_bytes after the stem, each stage and the head

    # -- bookkeeping ------------------------------------------------------------------------------------------

    @property
    def saved_bytes(self) -> int:
        return sum(self.storages[s] for s in self.saved)  # a set of at most a few thousand ids: one sum per call

    def new(self, c: int, h: int, w: int, nbytes: int, batch: int | None = None) -> Act:
        sid = len(self.storages)
        self.storages[sid] = (self.batch if batch is None else batch) * c * h * w * nbytes
        return Act(c, h, w, nbytes, sid)

    def save(self, *acts: Act) -> None:
        self.saved.update(a.sid for a in acts)

    def save_stat(self, n: int, nbytes: int = FP32) -> None:
        """Save a tensor of ``n`` elements that is not the batch's (BN's per-channel statistics, a weight copy)."""
        self.saved.add(self.new(n, 1, 1, nbytes, batch=1).sid)

    @property
    def low(self) -> int:
        """Bytes per element of what a conv or linear layer outputs."""
        return BF16 if self.amp else FP32

    def cast_in(self, x: Act) -> Act:
        """The input a conv or linear layer saves: under autocast a fresh bf16 copy of an fp32 input (autocast
        caches copies of weights only, so each use of an activation makes its own copy)."""
        if self.amp and x.nbytes != BF16:
            return self.new(x.c, x.h, x.w, BF16)
        return x

    def weight(self, n: int, bias: int = 0) -> None:
        """A conv or linear weight of ``n`` elements: under autocast its bf16 copy is saved for backward; the bias
        copy is made (and cached for the autocast region) but not saved."""
        if self.amp:
            self.save_stat(n, BF16)
            self.weight_copy_bytes += n * BF16
            self.bias_copy_bytes += bias * BF16

    # -- layers -----------------------------------------------------------------------------------------------

    def input(self, c: int, h: int, w: int) -> Act:
        return self.new(c, h, w, FP32)

    def conv(self, x: Act, co: int, k: int = 1, stride: int = 1, groups: int = 1, dilation: int = 1,
             bias: bool = False, ci: int | None = None) -> Act:
        """``ci``: the input channels the conv reads when ``x`` is a wider tensor it reads a slice of (a view:
        saved as its base's storage in bf16 or fp32 alike; a cast copies only the slice)."""
        ci = x.c if ci is None else ci
        padding = dilation * (k - 1) // 2
        ho, wo = conv_out(x.h, k, stride, padding, dilation), conv_out(x.w, k, stride, padding, dilation)
        src = x if ci == x.c else Act(ci, x.h, x.w, x.nbytes, x.sid)
        saved = self.cast_in(src)
        self.save(saved)
        self.weight(co * (ci // groups) * k * k, co if bias else 0)
        return self.new(co, ho, wo, self.low)

    def bn(self, x: Act) -> Act:
        """Training-mode BatchNorm saves its input and the batch mean and inverse std (fp32, per channel); it runs
        in its input's dtype under autocast. Its running statistics are buffers (counted apart)."""
        self.save(x)
        self.save_stat(x.c)
        self.save_stat(x.c)
        self.buffer_bytes += 2 * x.c * FP32 + INT64
        return self.new(x.c, x.h, x.w, x.nbytes)

    def act_(self, x: Act) -> Act:
        """ReLU in place: saves its result, the same storage as its input."""
        self.save(x)
        return x

    def act_clone_(self, x: Act) -> Act:
        """SiLU or ReLU6 in place: their backward needs the input the op overwrites, so autograd saves a clone of
        it (a new storage) and the result, in the input's storage, is not saved by this op."""
        self.save(self.new(x.c, x.h, x.w, x.nbytes))
        return x

    def conv_bn(self, x: Act, co: int, k: int = 1, stride: int = 1, groups: int = 1, dilation: int = 1,
                act: bool = True, ci: int | None = None) -> Act:
        out = self.bn(self.conv(x, co, k, stride, groups, dilation, ci=ci))
        return self.act_(out) if act else out

    def sigmoid(self, x: Act) -> Act:
        out = self.new(x.c, x.h, x.w, x.nbytes)
        self.save(out)
        return out

    def softmax(self, x: Act) -> Act:
        out = self.new(x.c, x.h, x.w, FP32 if (self.amp and self.device == "cuda") else x.nbytes)
        self.save(out)
        return out

    def mul(self, a: Act, b: Act) -> Act:
        """Both factors require grad, so both are saved; the result has ``a``'s shape (``b`` broadcasts to it) and
        the wider dtype."""
        self.save(a, b)
        return self.new(a.c, a.h, a.w, max(a.nbytes, b.nbytes))

    def add(self, a: Act, b: Act) -> Act:
        """Saves nothing; the result has ``a``'s shape."""
        return self.new(a.c, a.h, a.w, max(a.nbytes, b.nbytes))

    def mean(self, x: Act) -> Act:
        """Global mean over h and w (keepdim): saves nothing."""
        return self.new(x.c, 1, 1, x.nbytes)

    def sum_splits(self, x: Act, c: int) -> Act:
        """Sum over a split dimension (radix): saves nothing; fp32 under CUDA autocast."""
        return self.new(c, x.h, x.w, FP32 if (self.amp and self.device == "cuda") else x.nbytes)

    def copy(self, x: Act) -> Act:
        """A reshape that must copy (or a cat): a new storage, nothing saved."""
        return self.new(x.c, x.h, x.w, x.nbytes)

    def avgpool(self, x: Act, stride: int, k: int = 3, ceil: bool = False) -> Act:
        """Average pooling saves its input. k=3/pad 1 (or 2x2 ceil mode): the output is ceil(size / stride)."""
        self.save(x)
        return self.new(x.c, -(-x.h // stride), -(-x.w // stride), x.nbytes)

    def maxpool(self, x: Act, stride: int = 2) -> Act:
        """3x3/2/pad 1 max pooling saves its input and the int64 argmax indices."""
        self.save(x)
        out = self.new(x.c, -(-x.h // stride), -(-x.w // stride), x.nbytes)
        self.saved.add(self.new(out.c, out.h, out.w, INT64).sid)
        return out

    def amax(self, x: Act) -> Act:
        """Global max: saves its input and its result."""
        self.save(x)
        out = self.new(x.c, 1, 1, x.nbytes)
        self.save(out)
        return out

    def dropout(self, x: Act, p: float) -> Act:
        """Dropout in training saves its mask (p = 0 saves nothing): of the input's dtype on the CPU, bool on
        CUDA."""
        if p <= 0:
            return x
        mask = self.new(x.c, x.h, x.w, 1 if self.device == "cuda" else x.nbytes)
        self.save(mask)
        return self.new(x.c, x.h, x.w, x.nbytes)

    def linear(self, x: Act, out: int) -> Act:
        saved = self.cast_in(x)
        self.save(saved)
        self.weight(x.c * out, out)
        return self.new(out, 1, 1, self.low)


# ----------------------------------------------------------------------------------------------------------------
# The layers blocks share (beside their modules and costs in layers.py)
# ----------------------------------------------------------------------------------------------------------------


def attention_memory(t: Saved, kind: str, x: Act, ratio: float) -> Act:
    """SE / scSE on a block's output (layers.SqueezeExcite): the gate's small tensors, and ``x`` twice over
    (once per product, one storage)."""
    from .layers import se_channels

    if kind == "none":
        return x
    g = t.act_(t.conv(t.mean(x), se_channels(x.c, ratio), bias=True))
    out = t.mul(x, t.sigmoid(t.conv(g, x.c, bias=True)))
    if kind == "scse":
        out = t.add(out, t.mul(x, t.sigmoid(t.conv(x, 1, bias=True))))
    return out


def shortcut_memory(t: Saved, x: Act, co: int, stride: int, style: str) -> Act:
    """layers.shortcut: identity, 1x1 conv (stride) + BN, or 2x2 avgpool + 1x1 conv + BN."""
    if stride == 1 and x.c == co:
        return x
    if style == "avg":
        if stride > 1:
            x = t.avgpool(x, stride)
        return t.conv_bn(x, co, 1, act=False)
    return t.conv_bn(x, co, 1, stride, act=False)
