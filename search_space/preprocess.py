"""How a trained network's inputs were made, so the network can be used on an image outside this project.

Training normalises each channel with the mean and std of its own training split, after its own resize rule;
a user who feeds ``x / 255`` or ImageNet statistics gets chance accuracy. So every trained artefact (a search
trial, ``search train``, a search's final training, an audit run) writes ``preprocess.json`` beside its
``weights.pt``, and every export carries the same record (ONNX ``metadata_props``, TorchScript extra files, a
JSON sidecar, the numbers inside the ``.py`` export).

The record (:class:`Preprocess`):

* ``channels``, ``size``: the input the network was trained on (``color`` ``RGB`` for 3 channels, ``L`` for 1);
* ``resize``, ``filter``, ``draft``: the rule that turned a file into a ``size`` x ``size`` image, as the prepared
  data decoded it (``crop``: the centred square of side min(w, h), resized with PIL's ``filter`` through
  ``Image.resize``'s ``box``; ``squash``: the whole image resized; ``draft``: JPEGs decoded at a reduced scale);
  ``bilinear`` for datasets made in memory (digits), whose images are no files;
* ``scale`` then ``mean``/``std``: pixel values are divided by ``scale`` (255) and each channel becomes
  ``(x - mean) / std``, with the exact float numbers training used;
* ``classes``: the class names in label order (output ``i`` of the network is ``classes[i]``).

The module has no dependency beyond the standard library (torch only for :class:`Normalized`), so the exported
``.py`` file copies the same few lines instead of importing this package.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from .schema import SpecError

FORMAT = "resnet-nas.preprocess/1"
FILE = "preprocess.json"
MAX_BYTES = 4 << 20  # a record names at most ~100k classes
RESIZE_RULES = {
    "crop": "convert to {color}{draft}, cut the centred square (side: the shorter side; fractional offsets) and resize "
            "it to {size}x{size} (PIL {filter}, Image.resize's box argument){again}",
    "squash": "convert to {color}{draft}, resize the whole image to {size}x{size} (PIL {filter}){again}",
    "bilinear": "the dataset's own images ({source}), resized to {size}x{size} (bilinear, antialiased when "
                "shrinking)",
}
@dataclass
class Preprocess:
    """The input convention of a trained network (see the module docstring)."""

    channels: int
    size: int
    mean: list[float]
    std: list[float]
    classes: list[str]
    resize: str = "crop"
    filter: str = "bilinear"
    draft: bool = False
    prepared_size: Optional[int] = None  # the size images were prepared at, when training resized them again
    scale: float = 255.0
    dataset: str = ""
    layout: str = "NCHW"
    format: str = field(default=FORMAT)

    @property
    def color(self) -> str:
        return "RGB" if self.channels == 3 else "L" if self.channels == 1 else f"{self.channels}-channel"

    def describe(self) -> str:
        """One sentence: what to do to an image before the network sees it."""
        first = self.prepared_size or self.size
        again = (f", then resized to {self.size}x{self.size} (bilinear, antialiased when shrinking)"
                 if self.prepared_size and self.prepared_size != self.size else "")
        rule = RESIZE_RULES.get(self.resize, self.resize).format(
            color=self.color, size=first, source=self.dataset or "in memory", filter=self.filter, again=again,
            draft=" (a JPEG decoded at a reduced scale by PIL's draft when that leaves at least the size)"
            if self.draft else "")
        mean = ", ".join(f"{v:.6g}" for v in self.mean)
        std = ", ".join(f"{v:.6g}" for v in self.std)
        return (f"{rule}; {self.layout} float32; divide by {self.scale:g}; then (x - mean) / std per channel with "
                f"mean [{mean}], std [{std}]")

    def to_json(self) -> dict:
        data = asdict(self)
        data["color"] = self.color
        data["rule"] = self.describe()
        return data

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1) + "\n"

    @classmethod
    def from_dataset(cls, data, size: Optional[int] = None) -> "Preprocess":
        """The record of a loaded dataset (``runners`` Dataset: ``channels``, ``image_size``, ``mean``, ``std``,
        ``classes``, ``name``), read only through those attributes."""
        classes = [str(c) for c in (getattr(data, "classes", None) or [])]
        if len(classes) != data.num_classes:
            classes = [str(i) for i in range(data.num_classes)]
        name = str(getattr(data, "name", ""))
        size = int(size or data.image_size)
        how = dict(getattr(data, "transform", None) or {})  # prepared data: how its files were decoded
        prepared = int(how["prepared_size"]) if how.get("prepared_size") else None
        return cls(channels=int(data.channels), size=size, mean=[float(v) for v in data.mean],
                   std=[float(v) for v in data.std], classes=classes, dataset=name,
                   resize=str(how.get("resize", "bilinear")), filter=str(how.get("filter", "bilinear")),
                   draft=bool(how.get("draft", False)), prepared_size=prepared if prepared != size else None)

    @classmethod
    def from_json(cls, data, where: str = FILE) -> "Preprocess":
        """Checked like a spec: a record written by this project, or one line naming what is wrong."""
        if not isinstance(data, dict):
            raise SpecError(where, f"holds a {type(data).__name__}, expected a preprocessing record (a mapping)")

        def number(v, key):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise SpecError(f"{where}: {key}", f"{str(v)[:40]!r} is not a finite number")
            return float(v)

        try:
            channels, size = data["channels"], data["size"]
            for key, v in (("channels", channels), ("size", size)):
                if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 100_000:
                    raise SpecError(f"{where}: {key}", f"{str(v)[:40]!r} is not an integer in 1..100000")
            mean, std, classes = data["mean"], data["std"], data["classes"]
            for key, v in (("mean", mean), ("std", std), ("classes", classes)):
                if not isinstance(v, list):
                    raise SpecError(f"{where}: {key}", f"expected a list, got {type(v).__name__}")
            if len(mean) != channels or len(std) != channels:
                raise SpecError(f"{where}: mean", f"{len(mean)} means and {len(std)} stds for {channels} channels")
            mean = [number(v, "mean") for v in mean]
            std = [number(v, "std") for v in std]
            if any(s <= 0 for s in std):
                raise SpecError(f"{where}: std", "every std must be > 0")
            if not all(isinstance(c, str) and len(c) <= 1000 for c in classes):
                raise SpecError(f"{where}: classes", "every class name must be a string")
            resize = str(data.get("resize", "crop"))[:200]
            scale = number(data.get("scale", 255.0), "scale")
            prepared = data.get("prepared_size")
            if prepared is not None and (isinstance(prepared, bool) or not isinstance(prepared, int) or prepared < 1):
                raise SpecError(f"{where}: prepared_size", f"{str(prepared)[:40]!r} is not a size")
            return cls(channels=channels, size=size, mean=mean, std=std, classes=list(classes), resize=resize,
                       filter=str(data.get("filter", "bilinear"))[:40], draft=data.get("draft") is True,
                       prepared_size=prepared, scale=scale, dataset=str(data.get("dataset", ""))[:200])
        except KeyError as e:
            raise SpecError(where, f"no {e.args[0]!r}; not a preprocessing record") from None

    @classmethod
    def read(cls, path: str | Path) -> "Preprocess":
        """A ``preprocess.json`` file, read with a size limit and without following it into a device or FIFO."""
        import os
        import stat

        path = Path(path)
        try:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):
                raise SpecError(str(path), "is not a regular file")
            if info.st_size > MAX_BYTES:
                raise SpecError(str(path), f"{info.st_size:,} bytes; a preprocessing record is far smaller")
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as f:
                text = f.read(MAX_BYTES + 1)
            data = json.loads(text)
        except OSError as e:
            raise SpecError(str(path), f"cannot read ({e.strerror or e})") from None
        except (ValueError, RecursionError) as e:
            raise SpecError(str(path), f"not JSON ({type(e).__name__})") from None
        return cls.from_json(data, str(path))

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / FILE
        path.write_text(self.dumps(), encoding="utf-8")
        return path


def beside(weights: str | Path | None) -> Optional[Preprocess]:
    """The record saved next to a weights file (``preprocess.json`` in its folder), or None when there is none."""
    if weights is None:
        return None
    path = Path(weights).parent / FILE
    return Preprocess.read(path) if path.exists() else None


def normalized(model, pre: Preprocess):
    """``model`` behind its normalisation: the result takes float images in [0, 1] (``x / scale`` of the pixel
    values) in NCHW at the trained size and applies ``(x - mean) / std`` inside the graph."""
    import torch
    from torch import nn

    class Normalized(nn.Module):
        """Per-channel normalisation with the training split's statistics, then the network."""

        def __init__(self, net, mean, std):
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

        def forward(self, x):
            return self.net((x - self.mean) * self.inv_std)

    return Normalized(model, pre.mean, pre.std).eval()
