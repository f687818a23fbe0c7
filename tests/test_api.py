"""create_model: one call from a spec, YAML text, dict, zoo name or run directory to a module; the docs'
example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import search_space
from search_space.api import create_model
from search_space.compiler import build_model
from search_space.spec import dump_spec, load_spec

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "spaces" / "zoo" / "resnet18_small.yaml"


def docs_python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "docs" / page).read_text(), re.S)


def test_docs_example_runs_as_written(monkeypatch, capsys):
    """The first example of docs/python-api.md (the README's `From Python` points there)."""
    block = docs_python_blocks("python-api.md")[0]
    monkeypatch.chdir(ROOT)
    exec(compile(block, "docs/python-api.md", "exec"), {"__name__": "__docs__"})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "torch.Size([2, 10])" and out[1] == "['resnest50d', 'resnest50d_4s2x40d']" and int(out[2]) > 0
    assert out[3].startswith("model.stages.0.block.type: 'resnext'")


def test_every_source_form_gives_the_same_network(tmp_path):
    spec = load_spec(SMALL)
    want = sum(p.numel() for p in build_model(spec.model, in_channels=1, num_classes=10).parameters())
    text = dump_spec(spec)
    import yaml

    for source in (str(SMALL), SMALL, "resnet18_small", text, yaml.safe_load(text), spec, spec.model):
        net = create_model(source, in_channels=1, num_classes=10)
        assert sum(p.numel() for p in net.parameters()) == want
        assert net(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    assert search_space.create_model is create_model


def test_run_directory_and_weights(tmp_path):
    spec = load_spec(SMALL)
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "best.yaml").write_text(dump_spec(spec))
    with pytest.warns(UserWarning, match="no trained weights"):
        assert create_model(run=run).fc.out_features == 1000  # no final/: the architecture, untrained
    trained = build_model(spec.model, in_channels=1, num_classes=10)
    torch.save(trained.state_dict(), run / "final" / "weights.pt")
    (run / "final" / "arch.yaml").write_text(dump_spec(spec))
    x = torch.randn(2, 1, 16, 16)
    for net in (create_model(run=run, in_channels=1, num_classes=10), create_model(str(run), in_channels=1,
                                                                                   num_classes=10)):
        assert not net.training
        with torch.no_grad():
            assert torch.equal(net(x), trained.eval()(x))


@pytest.mark.parametrize("kwargs, says", [
    ({"model": "nonesuch"}, "zoo: "),
    ({"model": str(ROOT / "spaces" / "resnest.yaml")}, "search space"),
    ({"model": "resnet18_small", "num_classes": 0}, "num_classes"),
    ({"model": "resnet18_small", "weights": "missing.pt"}, "no such file"),
    ({"model": {"model": {"stages": [{"width": -1}]}}}, "model.stages.0.width"),
    ({}, "exactly one"),
])
def test_errors_are_one_line_spec_errors(kwargs, says):
    with pytest.raises(search_space.SpecError) as e:
        model = kwargs.pop("model", None)
        create_model(model, **kwargs)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_weights_that_do_not_fit_are_named(tmp_path):
    torch.save(build_model(load_spec(SMALL).model, in_channels=1, num_classes=10).state_dict(), tmp_path / "w.pt")
    with pytest.raises(search_space.SpecError, match="does not fit"):
        create_model("resnet18_small", weights=tmp_path / "w.pt")  # 3 channels, 1000 classes by default
    net = create_model("resnet18_small", weights=tmp_path / "w.pt", in_channels=1, num_classes=10)
    assert net.fc.out_features == 10


def test_space_with_sample_seed():
    a = create_model(ROOT / "spaces" / "resnest.yaml", sample_seed=3, num_classes=10, in_channels=1)
    b = create_model(ROOT / "spaces" / "resnest.yaml", sample_seed=3, num_classes=10, in_channels=1)
    assert [k for k in a.state_dict()] == [k for k in b.state_dict()]


def test_pareto_run_gives_the_member_best_on_the_first_objective(tmp_path):
    import json

    run = tmp_path / "run"
    (run / "pareto").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"name": "x", "objectives": ["val_accuracy", "params"]}))
    small = load_spec(SMALL)
    for n, acc, width in ((3, 0.6, 16), (7, 0.9, 8)):
        spec = load_spec(SMALL)
        spec.model.stem.width = width
        (run / "pareto" / f"trial_{n}.yaml").write_text(dump_spec(spec))
        (run / "trials" / str(n)).mkdir(parents=True)
        (run / "trials" / str(n) / "metrics.json").write_text(json.dumps({"values": {"val_accuracy": acc,
                                                                                     "params": 1}}))
    with pytest.warns(UserWarning, match="no trained weights"):
        assert create_model(run=run).stem[0][0].out_channels == 8 != small.model.stem.width
