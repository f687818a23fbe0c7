"""The package behaves as timm users expect and ships what it needs (issue 26 items 3 and 4): eval mode by default,
`pretrained=` refused in one line, `list_models()`, zoo names accepted wherever a spec file is, and a wheel that
carries the zoo and the schema, installed into a fresh virtualenv, builds `create_model('resnest50d')`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import search_space
from search_space.api import create_model
from search_space.schema import SpecError

ROOT = Path(__file__).resolve().parents[1]


def test_models_come_back_in_eval_mode_unless_asked():
    assert not create_model("resnet18_small").training
    net = create_model("resnet18_small", training=True)
    assert net.training and all(m.training for m in net.modules())


def test_pretrained_is_one_clear_line():
    with pytest.raises(SpecError) as e:
        create_model("resnest50d", pretrained=True)
    assert "no hub weights" in str(e.value) and "weights=" in str(e.value) and "run=" in str(e.value)
    assert "\n" not in str(e.value)


def test_list_models_lists_the_zoo():
    names = search_space.list_models()
    assert "resnest50d" in names and "resnet18_small" in names and names == sorted(names)
    assert search_space.list_models("resnest*") == ["resnest50d", "resnest50d_4s2x40d"]
    assert set(names) == {p.stem for p in (ROOT / "spaces" / "zoo").glob("*.yaml")}


@pytest.mark.parametrize("argv", [["validate", "resnest50d"], ["compile", "resnest50d"],
                                  ["compile", "resnet18_small", "--num-classes", "10"]])
def test_zoo_names_work_wherever_a_spec_file_does(cli, argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no such file here: the zoo's
    r = cli(*argv)
    assert r.code == 0, r.err
    assert argv[1] in r.out


def test_a_file_of_that_name_wins_over_the_zoo(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "resnest50d").write_text("name: mine\nmodel: {stages: [{width: 8}]}\n")
    r = cli("validate", "resnest50d")
    assert r.code == 0 and "'mine'" in r.out
    r = cli("validate", "nonesuch")
    assert r.code == 2 and "no such file (nor a zoo model name)" in r.err


def test_wheel_in_a_fresh_virtualenv_has_the_zoo_and_the_schema(tmp_path):
    """Built from a copy of the sources (nothing is written into the checkout), installed without dependencies
    into a virtualenv that sees the system's torch, and used from a directory that holds no spec."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("search_space", "runners"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(wheels.glob("*.whl"))
    env = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env)
    python = env / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                              "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    check = ("import json, search_space, search_space.zoo as z; from pathlib import Path; "
             "m = search_space.create_model('resnest50d'); "
             "print(json.dumps({'file': search_space.__file__, 'params': sum(p.numel() for p in m.parameters()), "
             "'zoo': len(search_space.list_models()), "
             "'schema': (Path(search_space.__file__).parent / 'spec.schema.json').is_file()}))")
    run = tmp_path / "elsewhere"
    run.mkdir()
    proc = subprocess.run([str(python), "-c", check], cwd=run, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["file"].startswith(str(env)), got  # the wheel's copy, not this checkout
    assert got["params"] == 27_483_240 and got["zoo"] == len(search_space.list_models()) and got["schema"]
