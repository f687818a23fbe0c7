"""``search export``: take an architecture (and its weights) away from this project.

Formats: ``torchscript`` and ``onnx`` (load with torch alone / onnxruntime; the ONNX output is checked against
PyTorch on a random input when it is written), ``yaml`` (the fixed architecture) and ``python``: a plain PyTorch
file that defines the network with torch alone and loads the weights.

The ``python`` file is generated from the built module, not from templates: every torch layer becomes its
constructor call (``nn.Conv2d(64, 64, 3, padding=1, bias=False)``) and every class of this project used in the
network is written out with its own ``forward`` source (and the helper functions it calls), taking its layers
and settings as constructor arguments. So a new block type or option exports without touching this module,
and the file has the same ``state_dict`` keys as the compiled network.
"""

from __future__ import annotations

import argparse
import builtins
import dis
import hashlib
import inspect
import json
import logging
import sys
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .preprocess import Preprocess, beside
from .schema import SpecError

FORMATS = ("torchscript", "onnx", "yaml", "python")
PROJECT_PACKAGES = ("search_space", "runners")
SKIPPED_METHODS = {"__init__", "_init_weights", "init_weights"}  # init only: the weights come from the file


# ----------------------------------------------------------------------------------------------------------------
# Which architecture and weights
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Source:
    """What an export takes away: the fixed spec, the weights file (None: an untrained, seeded network), the
    preprocessing record (None when nothing recorded it) and a few words on where they came from."""

    spec: object
    weights: Optional[str]
    preprocess: Optional[Preprocess]
    origin: str


def resolve_source(source: str, weights: str | None) -> Source:
    """The spec, weights and preprocessing a run directory (its trained winner) or an architecture file (or zoo
    name) stands for; ``weights`` (``--weights``) overrides the run's, and its own ``preprocess.json`` (beside it)
    comes with it."""
    from .api import run_model
    from .spec import choices_in, load_spec

    path = Path(source)
    origin = str(source)
    if path.is_dir():
        found = run_model(path)
        origin = f"{source} ({found.source})"
        if weights is None and found.weights is not None:
            weights = str(found.weights)
        path = found.arch
    spec = load_spec(path if path.exists() else source)
    if not spec.is_fixed():
        raise SpecError(choices_in(spec)[0], f"{source} is a search space (this is a choice); export an "
                                             f"architecture: `search sample {source} -o arch.yaml`")
    return Source(spec, weights, beside(weights), origin)


def infer_io(state: dict) -> tuple[int, int]:
    from .api import infer_io as infer

    return infer(state)


def load_model(spec, weights: str | None):
    """The compiled network in eval mode, with the weights when given (their shapes set the input channels and
    classes the architecture file leaves to the dataset); without weights, the initialisation is seeded, so two
    exports of the same architecture are the same file."""
    from .api import create_model

    try:
        if weights is None:
            return create_model(spec, seed=0)
        from .weights import budget_for, load_state_dict

        # bounded by the architecture as the file names it (1000 classes where it leaves them to the data)
        ci, nc = infer_io(load_state_dict(weights, "weights", budget_for(spec.model)))
        return create_model(spec, weights=weights, in_channels=ci, num_classes=nc)
    except SpecError as e:
        if e.path == "weights":
            raise SpecError("--weights", e.message) from None
        raise


def example_input(model, spec, batch: int = 2, seed: int = 0, pre: Optional[Preprocess] = None):
    """A seeded example batch: images in [0, 1] at the trained size for a network that normalises inside its
    graph (``pre``), else standard-normal values at the architecture's input size."""
    import torch

    from torch import nn

    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    gen = torch.Generator().manual_seed(seed)
    if pre is not None:
        return torch.rand(batch, first.in_channels, pre.size, pre.size, generator=gen)
    size = spec.model.input_size
    return torch.randn(batch, first.in_channels, size, size, generator=gen)


# ----------------------------------------------------------------------------------------------------------------
# What travels with every file: the input convention and the class names
# ----------------------------------------------------------------------------------------------------------------


def sidecar_path(out: Path) -> Path:
    """``best.onnx`` -> ``best.onnx.json``: named after the export, so two exports never share one."""
    return out.with_name(out.name + ".json")


def python_weights_path(out: Path) -> Path:
    """``best.py`` -> ``best.weights.pt``: named after the ``.py`` file (never a plain ``best.pt``, which a
    TorchScript export could be)."""
    return out.with_name(out.stem + ".weights.pt")


def description(fmt: str, out: Path, src: Source, normalize: bool, x) -> dict:
    """The record an export carries in its metadata and sidecar: input convention, preprocessing, classes."""
    pre = src.preprocess
    inside = bool(normalize and pre is not None)
    if pre is None:
        convention = ("no preprocessing record (an untrained network, or weights trained elsewhere): the input goes "
                      "to the first convolution as given")
    elif inside:
        convention = (f"{pre.color} images as float32 in [0, 1] (pixel values / {pre.scale:g}), NCHW, "
                      f"{pre.size}x{pre.size}; per-channel normalisation is inside the graph")
    else:
        convention = f"normalised float32, NCHW: {pre.describe()}"
    return {
        "format": fmt, "made_by": "resnet-nas search export", "source": src.origin,
        "weights": "trained" if src.weights is not None else "untrained (seeded initialisation)",
        "input": {"name": "input", "dtype": "float32", "layout": "NCHW",
                  "shape": ["batch", int(x.shape[1]), int(x.shape[2]), int(x.shape[3])],
                  "normalized_inside": inside, "convention": convention},
        "output": {"name": "logits", "meaning": "one score per class, in the order of 'classes'"},
        "classes": list(pre.classes) if pre is not None else None,
        "preprocess": pre.to_json() if pre is not None else None,
    }


def write_sidecar(out: Path, info: dict) -> Path:
    path = sidecar_path(out)
    path.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------------------
# TorchScript and ONNX
# ----------------------------------------------------------------------------------------------------------------


def export_torchscript(model, x, out: Path, info: Optional[dict] = None) -> None:
    """Traced (the networks have no data-dependent control flow); the batch size stays free. ``info`` travels as
    the extra file ``resnet_nas.json`` (``torch.jit.load(path, _extra_files={"resnet_nas.json": ""})``)."""
    import torch

    with torch.no_grad():
        traced = torch.jit.trace(model, x)
    extra = {"resnet_nas.json": json.dumps(info)} if info is not None else {}
    torch.jit.save(traced, str(out), _extra_files=extra)


def export_onnx(model, x, out: Path, rtol: float = 1e-3, atol: float = 1e-4, info: Optional[dict] = None) -> float:
    """Write ONNX with a free batch dimension and check onnxruntime against PyTorch; returns the max abs error.
    ``info`` goes into the model's ``metadata_props``: ``resnet_nas`` (all of it, JSON), ``classes`` (JSON list)
    and ``input`` (the convention in words), which ``session.get_modelmeta().custom_metadata_map`` reads."""
    import numpy as np
    import onnxruntime as ort
    import torch

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" and such chatter
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"], output_names=["logits"],
                                    dynamic_shapes=({0: batch},), verbose=False)
    program.save(str(out))
    if info is not None:
        import onnx

        proto = onnx.load(str(out))
        for key, value in (("resnet_nas", json.dumps(info)), ("classes", json.dumps(info.get("classes"))),
                           ("input", info["input"]["convention"])):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(out))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(1)
    check = torch.rand(3, *x.shape[1:], generator=gen) if float(x.min()) >= 0 else \
        torch.randn(3, *x.shape[1:], generator=gen)
    with torch.no_grad():
        want = model(check).numpy()
    got = session.run(None, {"input": check.numpy()})[0]
    err = float(np.abs(got - want).max())
    if not np.allclose(got, want, rtol=rtol, atol=atol):
        raise RuntimeError(f"ONNX output differs from PyTorch by up to {err:.3g} on a random input")
    return err


# ----------------------------------------------------------------------------------------------------------------
# Plain PyTorch source
# ----------------------------------------------------------------------------------------------------------------


def _is_project(obj) -> bool:
    return (getattr(obj, "__module__", "") or "").split(".")[0] in PROJECT_PACKAGES


def _torch_layer(m) -> str:
    """Constructor call of a torch layer, with only the arguments that differ from the defaults."""
    from torch import nn

    def kw(**pairs):
        return ", ".join(f"{k}={v!r}" for k, v in pairs.items())

    name = type(m).__name__
    if isinstance(m, nn.Conv2d):
        args = [m.in_channels, m.out_channels, m.kernel_size[0] if len(set(m.kernel_size)) == 1 else m.kernel_size]
        extra = {}
        for attr, default in (("stride", (1, 1)), ("padding", (0, 0)), ("dilation", (1, 1))):
            v = getattr(m, attr)
            if v != default:
                extra[attr] = v[0] if isinstance(v, tuple) and len(set(v)) == 1 else v
        if m.groups != 1:
            extra["groups"] = m.groups
        if m.bias is None:
            extra["bias"] = False
        return f"nn.Conv2d({', '.join(map(repr, args))}{', ' + kw(**extra) if extra else ''})"
    if isinstance(m, nn.BatchNorm2d):
        extra = {k: getattr(m, k) for k, d in (("eps", 1e-5), ("momentum", 0.1)) if getattr(m, k) != d}
        return f"nn.BatchNorm2d({m.num_features}{', ' + kw(**extra) if extra else ''})"
    if isinstance(m, nn.Linear):
        return f"nn.Linear({m.in_features}, {m.out_features}{'' if m.bias is not None else ', bias=False'})"
    if isinstance(m, (nn.ReLU, nn.ReLU6, nn.SiLU)):
        return f"nn.{name}({'inplace=True' if m.inplace else ''})"
    if isinstance(m, (nn.Identity, nn.Sigmoid)):
        return f"nn.{name}()"
    if isinstance(m, nn.Dropout):
        return f"nn.Dropout({m.p!r})"
    if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)):
        extra = {"stride": m.stride, "padding": m.padding}
        if m.ceil_mode:
            extra["ceil_mode"] = True
        if isinstance(m, nn.AvgPool2d) and not m.count_include_pad:
            extra["count_include_pad"] = False
        if isinstance(m, nn.MaxPool2d) and m.dilation != 1:
            extra["dilation"] = m.dilation
        return f"nn.{name}({m.kernel_size!r}, {kw(**extra)})"
    raise SpecError("--format", f"python export does not know the torch layer {name}; use torchscript or onnx")


class SourceWriter:
    """Collects the project classes and helper functions a network uses and writes each once."""

    def __init__(self):
        self.classes: dict[str, str] = {}
        self.functions: dict[str, str] = {}
        self.imports: set[str] = set()

    def _globals_of(self, fn, namespace: dict) -> None:
        """Helper functions and modules a function's code refers to by global name."""
        names, codes = set(), [fn.__code__]
        while codes:  # the function and the code nested in it (lambdas, comprehensions)
            code = codes.pop()
            names |= {i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
            codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
        for name in sorted(names):
            if name not in namespace or hasattr(builtins, name):
                continue
            obj = namespace[name]
            if isinstance(obj, types.ModuleType):
                self.imports.add(self._import_line(name, obj))
            elif isinstance(obj, types.FunctionType) and _is_project(obj) and name not in self.functions:
                self.functions[name] = ""  # placeholder against recursion
                self._globals_of(obj, obj.__globals__)
                self.functions[name] = textwrap.dedent(inspect.getsource(obj))
            elif isinstance(obj, (int, float, str, tuple)) and not isinstance(obj, bool):
                self.functions.setdefault(name, f"{name} = {obj!r}\n")
            elif _is_project(obj) or not isinstance(obj, type):
                raise SpecError("--format", f"python export: {fn.__qualname__} uses {name!r}, which it cannot "
                                            f"write out; use torchscript or onnx")

    @staticmethod
    def _import_line(name: str, mod: types.ModuleType) -> str:
        if mod.__name__ == name:
            return f"import {name}"
        if "." in mod.__name__:
            parent, child = mod.__name__.rsplit(".", 1)
            if child == name:
                return f"from {parent} import {name}"
        return f"import {mod.__name__} as {name}"

    def add_class(self, cls) -> None:
        if cls.__name__ in self.classes:
            return
        methods = {}
        for base in reversed([c for c in cls.__mro__ if _is_project(c)]):
            for name, fn in vars(base).items():
                if isinstance(fn, types.FunctionType) and name not in SKIPPED_METHODS:
                    methods[name] = fn
        body = []
        doc = inspect.getdoc(cls)
        if doc and cls.__doc__ is not None and "__doc__" in vars(cls):
            body.append(f'"""{doc}"""\n')
        body.append("def __init__(self, **parts):\n"
                    "    super().__init__()\n"
                    "    for name, value in parts.items():  # layers become submodules, settings attributes\n"
                    "        setattr(self, name, value)\n")
        for name, fn in methods.items():
            self._globals_of(fn, fn.__globals__)
            body.append(textwrap.dedent(inspect.getsource(fn)))
        text = f"class {cls.__name__}(nn.Module):\n" + textwrap.indent("\n".join(body), "    ")
        self.classes[cls.__name__] = text

    def expr(self, m, indent: int = 0, comments: dict | None = None, prefix: str = "") -> str:
        """Python expression that builds module ``m`` (nested, one layer per line where it has children)."""
        from torch import nn

        comments = comments or {}
        pad = " " * indent
        inner = " " * (indent + 4)
        children = list(m.named_children())

        def child(name, sub):
            path = f"{prefix}.{name}" if prefix else name
            return self.expr(sub, indent + 4, comments, path)

        if isinstance(m, (nn.Sequential, nn.ModuleList)):
            cls = type(m).__name__
            if not children:
                return f"nn.{cls}()"
            items = []
            for name, sub in children:
                note = comments.get(f"{prefix}.{name}" if prefix else name, "")
                items.append(f"{inner}# {note}\n{inner}{child(name, sub)}," if note else f"{inner}{child(name, sub)},")
            open_, close = ("nn.Sequential(", ")") if cls == "Sequential" else ("nn.ModuleList([", "])")
            return f"{open_}\n" + "\n".join(items) + f"\n{pad}{close}"
        if not _is_project(type(m)):
            if children:
                raise SpecError("--format", f"python export does not know the torch module {type(m).__name__}")
            return _torch_layer(m)
        if m._parameters or m._buffers:
            raise SpecError("--format", f"python export: {type(m).__name__} holds its own tensors; use torchscript")
        self.add_class(type(m))
        settings = {k: v for k, v in vars(m).items()
                    if not k.startswith("_") and k != "training" and isinstance(v, (bool, int, float, str, tuple,
                                                                                    list, type(None)))}
        args = [f"{inner}{k}={v!r}," for k, v in settings.items()]
        args += [f"{inner}{name}={child(name, sub)}," for name, sub in children]
        return f"{type(m).__name__}(\n" + "\n".join(args) + f"\n{pad})"


HEADER = '''"""{name}: a resnet-nas architecture as plain PyTorch (made by `search export --format python`).

Needs only torch (and Pillow for preprocess()/predict()). `build_model()` returns the network in eval mode with
{weights_line}; input {ci}x{size}x{size} images, {nc} classes, {params:,} parameters.

{pre_line}

    python {file_name} [IMAGE ...]     # builds it, loads the weights, classifies the images (or a random batch)
"""

'''

FOOTER = '''

WEIGHTS = {weights_expr}
WEIGHTS_SHA256 = {sha!r}  # the weights exported with this file: a different file of that name is refused

# How the training images were made (size, resize rule, mean and std, class names): apply the same to yours.
PREPROCESS = {pre!r}
CLASSES = PREPROCESS["classes"] if PREPROCESS else None


def build_model(weights=WEIGHTS):
    """The network in eval mode; loads ``weights`` (a state_dict file) when given. The file exported beside this
    one is checked against its SHA-256, so a stale file of the same name is never loaded by accident."""
    model = {expr}
    if weights is not None:
        weights = Path(weights)
        if weights == WEIGHTS and WEIGHTS_SHA256 is not None:
            import hashlib

            digest = hashlib.sha256(weights.read_bytes()).hexdigest()
            if digest != WEIGHTS_SHA256:
                raise RuntimeError(f"{{weights}} is not the file exported with {{Path(__file__).name}} "
                                   f"(SHA-256 differs); export again")
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


def preprocess(image):
    \"\"\"A PIL image -> a 1 x C x H x W float tensor, exactly as the training images were made.\"\"\"
    from PIL import Image

    if PREPROCESS is None:
        raise RuntimeError("this export has no preprocessing record (untrained, or trained elsewhere)")
    size = PREPROCESS["prepared_size"] or PREPROCESS["size"]
    mode = "RGB" if PREPROCESS["channels"] == 3 else "L"
    filters = {{"box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
               "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}}
    w, h = image.size
    if PREPROCESS["resize"] == "crop":  # the centred square, fractional offsets
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w - side) / 2 + side, (h - side) / 2 + side)
    else:  # squash (and images made in memory: the whole image)
        box = (0.0, 0.0, float(w), float(h))
    if PREPROCESS["draft"] and image.format == "JPEG":
        bw, bh = box[2] - box[0], box[3] - box[1]
        got = image.draft(mode, (int(-(-w * size // bw)), int(-(-h * size // bh))))
        if got is not None and got[1][2] < w:
            box = tuple(v * got[1][2] / w for v in box)
    image = image.convert(mode).resize((size, size), filters[PREPROCESS["filter"]], box=box)
    channels = PREPROCESS["channels"]
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, channels)
    x = x.permute(2, 0, 1).float().unsqueeze(0)
    if size != PREPROCESS["size"]:  # prepared at one size, trained at another
        x = torch.nn.functional.interpolate(x, size=(PREPROCESS["size"],) * 2, mode="bilinear", align_corners=False,
                                            antialias=PREPROCESS["size"] < size).round().clamp(0, 255)
    x = x / PREPROCESS["scale"]
    mean = torch.tensor(PREPROCESS["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(PREPROCESS["std"]).view(1, -1, 1, 1)
    return (x - mean) / std


def predict(image, model=None):
    """(class name, probability) of a PIL image."""
    model = model if model is not None else build_model()
    with torch.no_grad():
        probs = model(preprocess(image)).softmax(1)[0]
    i = int(probs.argmax())
    return CLASSES[i], float(probs[i])


if __name__ == "__main__":
    import sys

    net = build_model()
    if len(sys.argv) > 1:
        from PIL import Image

        for path in sys.argv[1:]:
            with Image.open(path) as img:
                name, p = predict(img, net)
            print(f"{{path}}: {{name}} ({{p:.1%}})")
    else:
        x = torch.randn(2, {ci}, {size}, {size})
        with torch.no_grad():
            print("output", tuple(net(x).shape), "from", sum(p.numel() for p in net.parameters()), "parameters")
'''


def python_source(model, spec, weights_name: Optional[str], x, pre: Optional[Preprocess] = None,
                  sha: Optional[str] = None, file_name: str = "model.py") -> str:
    """The text of a standalone ``.py`` file that rebuilds ``model`` (weights: ``weights_name`` beside it, with
    SHA-256 ``sha``; None: no weights) and holds ``pre``'s numbers with ``preprocess()``/``predict()``."""
    from .cost import stage_blocks

    comments = {}
    for i, stage in enumerate(spec.model.stages):
        comments[f"stages.{i}"] = f"stage {i}: stride {stage.stride}"
        for j, block in enumerate(stage_blocks(stage)):
            comments[f"stages.{i}.{j}"] = f"block {i}.{j}: {block.type}"
    writer = SourceWriter()
    expr = writer.expr(model, 4, comments=comments)
    imports = sorted(writer.imports | {"import torch", "from torch import nn"})
    imports = ["from __future__ import annotations", "", "from pathlib import Path", ""] + imports
    weights_line = (f"the weights in {weights_name} (beside this file)" if weights_name
                    else "untrained weights (no weights were exported)")
    pre_line = (f"Inputs: {pre.describe()}. `predict(PIL_image)` does all of it and names the class; "
                f"`preprocess(PIL_image)` gives the tensor." if pre is not None else
                "No preprocessing record: the network was not trained by this project's recorded runs.")
    parts = [HEADER.format(name=spec.name, weights_line=weights_line, ci=x.shape[1], size=x.shape[2],
                           nc=model.fc.out_features, file_name=file_name,
                           params=sum(p.numel() for p in model.parameters()),
                           pre_line=textwrap.fill(pre_line, 116))]
    parts.append("\n".join(imports) + "\n")
    for text in writer.functions.values():
        parts.append("\n" + text)
    for text in writer.classes.values():
        parts.append("\n\n" + text)
    pre_data = None
    if pre is not None:
        pre_data = {k: getattr(pre, k) for k in ("channels", "size", "prepared_size", "resize", "filter", "draft",
                                                 "scale", "mean", "std", "classes")}
    weights_expr = f"Path(__file__).with_name({weights_name!r})" if weights_name else "None"
    parts.append(FOOTER.format(weights_expr=weights_expr, sha=sha, pre=pre_data, expr=expr, ci=x.shape[1],
                               size=x.shape[2]))
    return "".join(parts).replace("\n\n\n\n", "\n\n\n")


def export_python(model, spec, x, out: Path, has_weights: bool, pre: Optional[Preprocess] = None) -> list[Path]:
    """``out`` (the source) and, with weights, ``<stem>.weights.pt`` beside it, whose SHA-256 the source holds."""
    import io

    import torch

    weights_path = python_weights_path(out)
    written = [out]
    sha = None
    if has_weights:
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        data = buffer.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        weights_path.write_bytes(data)
        written.append(weights_path)
    out.write_text(python_source(model, spec, weights_path.name if has_weights else None, x, pre, sha, out.name),
                   encoding="utf-8")
    return written


# ----------------------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------------------


def export(source: str, fmt: str, out: str | Path, weights: str | None = None, normalize: bool = True
           ) -> list[Path]:
    """Export ``source`` (a run directory, an architecture file or a zoo name) as ``fmt`` to ``out``; returns the
    files written (the export, its JSON sidecar, the ``.py`` export's weights). ``normalize``: a network with a
    preprocessing record takes [0, 1] images and normalises inside its graph (ONNX, TorchScript)."""
    if fmt not in FORMATS:
        raise SpecError("--format", f"{fmt!r} is not allowed; expected one of {', '.join(FORMATS)}")
    src = resolve_source(source, weights)
    out = Path(out)
    if out.is_dir():
        raise SpecError("-o", f"{str(out)!r} is a directory; give a file name")
    if fmt == "python" and out.suffix != ".py":
        raise SpecError("-o", f"{str(out)!r}: a python export is a .py file (its weights go beside it as "
                              f"NAME.weights.pt)")
    if weights is not None and Path(weights).absolute() in (out.absolute(), sidecar_path(out).absolute(),
                                                           python_weights_path(out).absolute()):
        raise SpecError("-o", f"{str(out)!r} would overwrite the weights it exports ({weights}); choose another name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return _write(src, fmt, out, normalize)
    except OSError as e:  # an unwritable or full destination is bad input, not a crash
        raise SpecError("-o", f"cannot write {str(out)!r}: {e.strerror or e}") from None


def _write(src: Source, fmt: str, out: Path, normalize: bool) -> list[Path]:
    from .spec import dump_spec

    if fmt == "yaml":
        out.write_text(dump_spec(src.spec), encoding="utf-8")
        return [out]
    model = load_model(src.spec, src.weights)
    pre = src.preprocess
    if pre is not None:
        ci = next(m for m in model.modules() if isinstance(m, __import__("torch").nn.Conv2d)).in_channels
        if pre.channels != ci or len(pre.classes) != model.fc.out_features:
            raise SpecError("preprocess.json", f"records {pre.channels} channels and {len(pre.classes)} classes; "
                                               f"the weights have {ci} and {model.fc.out_features}")
    if fmt == "python":
        x = example_input(model, src.spec, pre=pre)  # its shape names the input size in the file
        written = export_python(model, src.spec, x, out, src.weights is not None, pre)
        info = description(fmt, out, src, False, x)
        return written + [write_sidecar(out, info)]
    inside = normalize and pre is not None
    if inside:
        from .preprocess import normalized

        model = normalized(model, pre)
    x = example_input(model, src.spec, pre=pre if inside else None)
    if pre is not None and not inside:
        import torch

        x = torch.randn(x.shape[0], x.shape[1], pre.size, pre.size, generator=torch.Generator().manual_seed(0))
    info = description(fmt, out, src, normalize, x)
    if fmt == "torchscript":
        export_torchscript(model, x, out, info)
    else:
        export_onnx(model, x, out, info=info)
    return [out, write_sidecar(out, info)]


def cmd_export(args) -> int:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and exporter chatter; the result is checked instead
        written = export(args.source, args.format, args.output, args.weights, normalize=not args.no_normalize)
    for path in written:
        print(f"wrote {path}")
    src = resolve_source(args.source, args.weights) if args.format != "yaml" else None
    if src is not None and src.weights is None:
        from .api import WEIGHTLESS

        print(f"note: {args.source}: {WEIGHTLESS}; exported the untrained, seeded initialisation", file=sys.stderr)
    elif src is not None and src.preprocess is None:
        print(f"note: no preprocessing record beside {src.weights} (preprocess.json): the input convention is "
              f"unknown, so the export takes inputs as given", file=sys.stderr)
    if src is not None and src.preprocess is not None:
        pre = src.preprocess
        if args.format == "python":
            how = "preprocess()/predict() in the file apply it"
        elif args.no_normalize:
            how = f"normalise it yourself: {pre.describe()}"
        else:
            how = f"input: {pre.color} float32 in [0, 1] (pixels / {pre.scale:g}), NCHW, {pre.size}x{pre.size}"
        names = ", ".join(pre.classes[:8]) + (" ..." if len(pre.classes) > 8 else "")
        print(f"{how}; {len(pre.classes)} classes: {names}")
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="export an architecture (and weights) as TorchScript, ONNX, YAML or PyTorch",
                       description="Export a run's trained winner (final/ from --final-epochs, else the best "
                                   "trial's kept weights), an architecture file or a zoo model: torchscript and "
                                   "onnx load without this package (onnx is checked with onnxruntime) and take "
                                   "[0, 1] images, normalising inside the graph; yaml is the fixed architecture; "
                                   "python a plain PyTorch file with preprocess()/predict() (weights beside it as "
                                   "NAME.weights.pt). Every export but yaml states its input convention and class "
                                   "names in its metadata and in OUT.json beside it.")
    p.add_argument("source", metavar="RUN|ARCH.yaml|ZOO_NAME", help="run directory, architecture file or zoo name")
    p.add_argument("--weights", metavar="W", help="state_dict file (default for a run: its trained winner); a "
                                                  "preprocess.json beside it is used")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--no-normalize", action="store_true",
                   help="onnx/torchscript: take inputs already normalised (mean/std in the metadata) instead of "
                        "[0, 1] images")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file")
    p.set_defaults(func=cmd_export)
    return p
