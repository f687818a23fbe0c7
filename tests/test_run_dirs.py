"""Files never collide or vanish silently (issue 26 item 5): `search train` writes a fresh directory per run and
refuses an --out that holds one; a command that fails on bad input leaves no empty run directory behind; every
trained artefact records its preprocessing."""

from __future__ import annotations

import json

import pytest

from conftest import write_space


@pytest.fixture
def arch(tmp_path, cli, single_thread):
    space = write_space(tmp_path, train__epochs=1)
    path = tmp_path / "arch.yaml"
    assert cli("sample", space, "--seed", 1, "-o", path).code == 0
    return path


def test_train_never_overwrites_an_earlier_run(tmp_path, arch, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = cli("train", arch)
    assert first.code == 0, first.err
    weights = tmp_path / "runs" / "train-tiny" / "weights.pt"
    before = weights.read_bytes()
    second = cli("train", arch, "--seed", 3)
    assert second.code == 0 and "runs/train-tiny-2" in second.err
    assert weights.read_bytes() == before and (tmp_path / "runs" / "train-tiny-2" / "weights.pt").exists()
    # an --out that holds a run is refused with one line naming --out, and nothing in it changes
    third = cli("train", arch, "--out", tmp_path / "runs" / "train-tiny")
    assert third.code == 2 and third.err.count("\n") == 1 and "--out" in third.err and "already holds a run" in \
        third.err
    assert weights.read_bytes() == before
    # what search train wrote says how its inputs were made
    pre = json.loads((tmp_path / "runs" / "train-tiny" / "preprocess.json").read_text())
    assert pre["classes"] == [str(i) for i in range(10)] and pre["channels"] == 1 and pre["size"] == 8
    assert json.loads((tmp_path / "runs" / "train-tiny" / "metrics.json").read_text())["preprocess"] == pre


@pytest.mark.parametrize("command", ["train", "run", "fidelity"])
def test_a_command_failing_on_bad_input_leaves_no_run_directory(tmp_path, arch, cli, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, train__epochs=1)
    target = arch if command == "train" else space
    extra = ("--n", 3, "--factor", 2) if command == "fidelity" else ()
    r = cli(command, target, "--dataset", "imagefolder", "--data-dir", tmp_path / "missing", *extra)
    assert r.code == 2 and "train.data_dir" in r.err, r.err
    assert not (tmp_path / "runs").exists(), list((tmp_path / "runs").rglob("*"))
    # an --out the user named is not left behind either, nor the parents made for it
    r = cli(command, target, "--dataset", "imagefolder", "--data-dir", tmp_path / "missing", "--out",
            tmp_path / "new" / "place", *extra)
    assert r.code == 2 and not (tmp_path / "new").exists()
    # but a directory that was there before stays, with what it holds
    (tmp_path / "mine").mkdir()
    r = cli(command, target, "--dataset", "imagefolder", "--data-dir", tmp_path / "missing", "--out",
            tmp_path / "mine", *extra)
    assert r.code == 2 and (tmp_path / "mine").is_dir()
