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
import inspect
import logging
import sys
import textwrap
import types
from pathlib import Path

from .schema import SpecError

FORMATS = ("torchscript", "onnx", "yaml", "python")
PROJECT_PACKAGES = ("search_space", "runners")
SKIPPED_METHODS = {"__init__", "_init_weights", "init_weights"}  # init only: the weights come from the file


# ----------------------------------------------------------------------------------------------------------------
# Which architecture and weights
# ----------------------------------------------------------------------------------------------------------------


def resolve_source(source: str, weights: str | None):
    """(spec, weights path or None) for a run directory (its best trial) or an architecture file."""
    from .api import resolve_run
    from .spec import choices_in, load_spec

    path = Path(source)
    if path.is_dir():
        arch, run_weights = resolve_run(path)
        weights = weights if weights is not None else (str(run_weights) if run_weights else None)
        path = arch
    spec = load_spec(path)
    if not spec.is_fixed():
        raise SpecError(choices_in(spec)[0], f"{source} is a search space (this is a choice); export an "
                                             f"architecture: `search sample {source} -o arch.yaml`")
    return spec, weights


def infer_io(state: dict) -> tuple[int, int]:
    """(in_channels, num_classes) a state_dict was trained with: the stem's first conv and the classifier."""
    convs = [v for k, v in state.items() if k.startswith("stem.") and k.endswith("weight") and v.dim() == 4]
    if not convs or "fc.weight" not in state:
        raise SpecError("--weights", "not a state_dict of this project's networks (no stem conv or fc)")
    return int(convs[0].shape[1]), int(state["fc.weight"].shape[0])


def load_model(spec, weights: str | None):
    """The compiled network in eval mode, with the weights when given (their shapes set the input channels and
    classes the architecture file leaves to the dataset)."""
    from .api import create_model

    if weights is None:
        return create_model(spec).eval()
    import torch

    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SpecError("--weights", f"{weights!r}: no such file") from None
    except Exception as e:  # noqa: BLE001 - an unreadable file is bad input
        raise SpecError("--weights", f"{weights!r} is not a readable state_dict ({type(e).__name__})") from None
    ci, nc = infer_io(state)
    return create_model(spec, weights=weights, in_channels=ci, num_classes=nc).eval()


def example_input(model, spec, batch: int = 2, seed: int = 0):
    import torch

    from torch import nn

    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    size = spec.model.input_size
    return torch.randn(batch, first.in_channels, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------------
# TorchScript and ONNX
# ----------------------------------------------------------------------------------------------------------------


def export_torchscript(model, x, out: Path) -> None:
    """Traced (the networks have no data-dependent control flow); the batch size stays free."""
    import torch

    with torch.no_grad():
        traced = torch.jit.trace(model, x)
    traced.save(str(out))


def export_onnx(model, x, out: Path, rtol: float = 1e-3, atol: float = 1e-4) -> float:
    """Write ONNX with a free batch dimension and check onnxruntime against PyTorch; returns the max abs error."""
    import numpy as np
    import onnxruntime as ort
    import torch

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" and such chatter
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"], output_names=["logits"],
                                    dynamic_shapes=({0: batch},), verbose=False)
    program.save(str(out))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    check = torch.randn(3, *x.shape[1:], generator=torch.Generator().manual_seed(1))
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

Needs only torch. `build_model()` returns the network in eval mode, with the weights in {weights_name} (beside
this file) loaded when that file exists; input {ci}x{size}x{size} images, {nc} classes, {params:,} parameters.

    python {file_name}            # builds it, loads the weights, runs a random batch
"""

'''

FOOTER = '''

WEIGHTS = Path(__file__).with_name({weights_name!r})


def build_model(weights=WEIGHTS):
    """The network; loads ``weights`` (a state_dict file) when it exists."""
    model = {expr}
    if weights is not None and Path(weights).exists():
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


if __name__ == "__main__":
    net = build_model()
    x = torch.randn(2, {ci}, {size}, {size})
    with torch.no_grad():
        print("output", tuple(net(x).shape), "from", sum(p.numel() for p in net.parameters()), "parameters")
'''


def python_source(model, spec, weights_name: str, x) -> str:
    """The text of a standalone ``.py`` file that rebuilds ``model``."""
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
    parts = [HEADER.format(name=spec.name, weights_name=weights_name, ci=x.shape[1],
                           size=x.shape[2], nc=model.fc.out_features, file_name=f"{Path(weights_name).stem}.py",
                           params=sum(p.numel() for p in model.parameters()))]
    parts.append("\n".join(imports) + "\n")
    for text in writer.functions.values():
        parts.append("\n" + text)
    for text in writer.classes.values():
        parts.append("\n\n" + text)
    parts.append(FOOTER.format(weights_name=weights_name, expr=expr, ci=x.shape[1], size=x.shape[2]))
    return "".join(parts).replace("\n\n\n\n", "\n\n\n")


def export_python(model, spec, x, out: Path, has_weights: bool) -> list[Path]:
    import torch

    weights_name = out.with_suffix(".pt").name
    out.write_text(python_source(model, spec, weights_name, x), encoding="utf-8")
    written = [out]
    if has_weights:
        torch.save(model.state_dict(), out.with_suffix(".pt"))
        written.append(out.with_suffix(".pt"))
    return written


# ----------------------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------------------


def export(source: str, fmt: str, out: str | Path, weights: str | None = None) -> list[Path]:
    """Export ``source`` (a run directory or an architecture file) as ``fmt`` to ``out``; returns the files."""
    if fmt not in FORMATS:
        raise SpecError("--format", f"{fmt!r} is not allowed; expected one of {', '.join(FORMATS)}")
    spec, weights = resolve_source(source, weights)
    out = Path(out)
    if out.is_dir():
        raise SpecError("-o", f"{str(out)!r} is a directory; give a file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return _write(spec, weights, fmt, out)
    except OSError as e:  # an unwritable or full destination is bad input, not a crash
        raise SpecError("-o", f"cannot write {str(out)!r}: {e.strerror or e}") from None


def _write(spec, weights, fmt: str, out: Path) -> list[Path]:
    from .spec import dump_spec

    if fmt == "yaml":
        out.write_text(dump_spec(spec), encoding="utf-8")
        return [out]
    model = load_model(spec, weights)
    x = example_input(model, spec)
    if fmt == "torchscript":
        export_torchscript(model, x, out)
        return [out]
    if fmt == "onnx":
        export_onnx(model, x, out)
        return [out]
    return export_python(model, spec, x, out, weights is not None)


def cmd_export(args) -> int:
    import warnings

    if args.format != "yaml" and resolve_source(args.source, args.weights)[1] is None:
        print("note: no weights (--weights W, or a run's final/weights.pt from --final-epochs): exporting the "
              "untrained initialisation", file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and exporter chatter; the result is checked instead
        written = export(args.source, args.format, args.output, args.weights)
    for path in written:
        print(f"wrote {path}")
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="export an architecture (and weights) as TorchScript, ONNX, YAML or PyTorch",
                       description="Export a run's best trial (with final/weights.pt when it exists) or an "
                                   "architecture file: torchscript and onnx load without this package (onnx is "
                                   "checked with onnxruntime), yaml is the fixed architecture, python a plain "
                                   "PyTorch file defining the network (weights beside it as OUT.pt).")
    p.add_argument("source", metavar="RUN|ARCH.yaml", help="run directory or architecture file")
    p.add_argument("--weights", metavar="W", help="state_dict file (default for a run: final/weights.pt if any)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file")
    p.set_defaults(func=cmd_export)
    return p
