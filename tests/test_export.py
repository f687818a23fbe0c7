"""search export: every format loads in a fresh process that cannot import this project and matches PyTorch.

The architectures below cover every block type and option (basic/bottleneck plain, grouped, se, scse and se
attention, sk with and without the split input, split-attention with radix 1 and 2, avd and avd_first,
res2net with cardinality, rexnet with and without expansion, SE and divisor), every stem and both shortcut
styles, the max-pool head and the head conv. Weights are randomised (BN statistics included) so a missing or
misplaced tensor shows in the output.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from search_space.api import create_model
from search_space.cli import main
from search_space.export import export
from search_space.spec import dump_spec, parse_spec

def resnet_family(stem="deep", downsample="avg"):
    return {"name": "every_block", "model": {
        "in_channels": 3, "num_classes": 7, "input_size": 32, "stem": {"type": stem, "width": 32},
        "downsample": downsample, "head": {"pool": "max", "conv_width": 96, "act": "silu"},
        "stages": [
            {"width": 32, "stride": 1, "blocks": [
                {"type": "plain", "bottleneck": False},
                {"type": "plain", "attention": "scse"},
                {"type": "grouped", "cardinality": 2, "attention": "se"},
                {"type": "se"}]},
            {"width": 64, "stride": 2, "blocks": [
                {"type": "sk", "cardinality": 2},
                {"type": "sk", "sk_split": True},
                {"type": "split_attention", "radix": 1, "cardinality": 2},
                {"type": "split_attention", "radix": 2}]},
            {"width": 64, "stride": 2, "blocks": [
                {"type": "split_attention", "radix": 2, "avd": True, "avd_first": True},
                {"type": "split_attention", "radix": 4, "bottleneck_ratio": 0.5}]},
            {"width": 128, "stride": 2, "blocks": [
                {"type": "split_attention", "radix": 2, "avd": True},
                {"type": "res2net"},
                {"type": "res2net", "cardinality": 2, "attention": "se"}]},
            {"width": 128, "stride": 1, "blocks": [
                {"type": "rexnet", "expansion": 1, "se_rexnet": False},
                {"type": "rexnet", "expansion": 4, "rexnet_divisor": 8}]},
        ]}}


def rexnet():
    return {"name": "rexnet_small", "model": {
        "in_channels": 1, "num_classes": 5, "input_size": 16, "stem": {"type": "rexnet", "width": 16},
        "widths": {"schedule": "linear", "start": 16, "growth": 40, "multiplier": 1.0},
        "head": {"conv_width": 64, "act": "silu"},
        "stages": [
            {"depth": 1, "stride": 1, "block": {"type": "rexnet", "expansion": 1, "se_rexnet": False}},
            {"depth": 2, "stride": 2, "block": {"type": "rexnet", "expansion": 6}},
            {"depth": 2, "stride": 1, "block": {"type": "rexnet", "expansion": 4, "rexnet_divisor": 8}},
        ]}}


def randomised(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name else torch.randn_like(t) * 0.2)
    return model.eval()


@pytest.fixture
def arch_with_weights(tmp_path, request):
    data = request.param() if callable(request.param) else request.param
    spec = parse_spec(data)
    arch = tmp_path / "arch.yaml"
    arch.write_text(dump_spec(spec))
    model = randomised(create_model(spec))
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    x = torch.randn(3, model.stem[0][0].in_channels if hasattr(model.stem[0], "__getitem__")
                    else model.stem[0].in_channels, spec.model.input_size, spec.model.input_size)
    with torch.no_grad():
        want = model(x)
    torch.save({"x": x, "want": want}, tmp_path / "io.pt")
    return arch, weights, tmp_path


CHECK = textwrap.dedent("""
    import importlib.util, json, sys
    sys.modules["search_space"] = None  # importing this project now fails
    sys.modules["runners"] = None
    try:
        import search_space  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("search_space is importable")
    import torch
    kind, path, io = sys.argv[1:4]
    data = torch.load(io, weights_only=True)
    x, want = data["x"], data["want"]
    if kind == "torchscript":
        got = torch.jit.load(path)(x)
    elif kind == "onnx":
        import onnxruntime
        sess = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    else:
        spec = importlib.util.spec_from_file_location("exported", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        with torch.no_grad():
            got = mod.build_model()(x)
    print(json.dumps({"max_err": float((got - want).abs().max()), "scale": float(want.abs().max())}))
""")


def run_isolated(kind, path, io, cwd):
    script = cwd / "check.py"
    script.write_text(CHECK)
    proc = subprocess.run([sys.executable, "-I", str(script), kind, str(path), str(io)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("arch_with_weights", [resnet_family, rexnet], indirect=True, ids=["every_block", "rexnet"])
def test_python_export_is_standalone_and_equal(arch_with_weights, single_thread):
    arch, weights, tmp = arch_with_weights
    out = tmp / "out" / "net.py"
    written = export(str(arch), "python", out, str(weights))
    assert written == [out, out.with_name("net.weights.pt"), out.with_name("net.py.json")]
    text = out.read_text()
    assert "search_space" not in text and "runners" not in text
    result = run_isolated("python", out, tmp / "io.pt", tmp / "out")
    assert result["max_err"] <= 1e-5 * max(1.0, result["scale"])


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
@pytest.mark.parametrize("arch_with_weights", [resnet_family], indirect=True, ids=["every_block"])
def test_torchscript_and_onnx_load_without_the_project(arch_with_weights, kind, single_thread):
    arch, weights, tmp = arch_with_weights
    out = tmp / f"net.{kind}"
    assert main(["export", str(arch), "--weights", str(weights), "--format", kind, "-o", str(out)]) == 0
    result = run_isolated(kind, out, tmp / "io.pt", tmp)
    assert result["max_err"] <= 1e-4 * max(1.0, result["scale"])


def test_yaml_export_and_run_default(tmp_path, capsys):
    """A run directory exports its best trial; the YAML is the architecture itself."""
    run = tmp_path / "run"
    run.mkdir()
    spec = parse_spec(rexnet())
    (run / "best.yaml").write_text(dump_spec(spec))
    assert main(["export", str(run), "--format", "yaml", "-o", str(tmp_path / "a.yaml")]) == 0
    assert parse_spec(__import__("yaml").safe_load((tmp_path / "a.yaml").read_text())) == spec
    # with final/weights.pt the run's trained weights are the default (and set in_channels/classes)
    (run / "final").mkdir()
    model = randomised(create_model(spec, in_channels=1, num_classes=10))
    torch.save(model.state_dict(), run / "final" / "weights.pt")
    (run / "final" / "arch.yaml").write_text(dump_spec(spec))
    assert main(["export", str(run), "--format", "python", "-o", str(tmp_path / "n.py")]) == 0
    assert torch.equal(torch.load(tmp_path / "n.weights.pt", weights_only=True)["fc.weight"], model.fc.weight)


@pytest.mark.parametrize("argv, says", [
    (["export", "spaces/resnest.yaml", "--format", "onnx", "-o", "x.onnx"], "search space"),
    (["export", "nope.yaml", "--format", "onnx", "-o", "x.onnx"], "no such file"),
    (["export", "spaces/zoo/resnet18_small.yaml", "--format", "onnx", "-o", "x", "--weights", "missing.pt"],
     "--weights"),
    (["export", "spaces/zoo/resnet18_small.yaml", "--format", "tflite", "-o", "x"], "invalid choice"),
    (["export", "spaces/zoo/resnet18_small.yaml", "--format", "yaml", "-o", "/proc/none/a.yaml"], "cannot write"),
])
def test_bad_export_input_exits_2_with_one_line(argv, says, tmp_path, monkeypatch, capsys):
    from tests.conftest import ROOT

    monkeypatch.chdir(ROOT)
    argv = [a if a not in ("x", "x.onnx") else str(tmp_path / a) for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert len(lines) == 1 and says in lines[0], lines
    assert not list(tmp_path.iterdir())  # nothing written


ZOO = sorted((Path(__file__).resolve().parents[1] / "spaces" / "zoo").glob("*.yaml"))


STEMS = [resnet_family("conv7", "conv"), resnet_family("cifar", "conv"), resnet_family("deep_tiered", "avg")]


@pytest.mark.parametrize("source", ZOO + STEMS, ids=[p.stem for p in ZOO] + ["conv7", "cifar", "deep_tiered"])
def test_python_export_of_every_zoo_model_and_stem_rebuilds_it(source, single_thread):
    """The generated source (exec'd here, in-process for speed) has the network's exact state_dict and output."""
    from search_space.export import example_input, python_source
    from search_space.spec import load_spec

    spec = load_spec(source) if isinstance(source, Path) else parse_spec(source)
    model = randomised(create_model(spec, num_classes=10))
    x = example_input(model, spec, batch=1)[..., :64, :64]
    text = python_source(model, spec, "w.pt", x)
    namespace = {"__name__": "exported", "__file__": "/nonexistent/net.py"}
    exec(compile(text, f"{spec.name}.py", "exec"), namespace)
    rebuilt = namespace["build_model"](weights=None)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), model(x), atol=1e-5, rtol=1e-4)
