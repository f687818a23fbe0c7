"""A weights file is untrusted input (issue 27 item 3): a zip bomb, a file far larger than the architecture needs,
a FIFO or device, and files of tensors, lists or integer keys are refused with one line, before anything large is
read. Every case goes through both doors: ``create_model(weights=...)`` and ``search export --weights``."""

from __future__ import annotations

import os
import signal
import zipfile
from pathlib import Path

import pytest
import torch

from search_space.api import create_model
from search_space.compiler import build_model
from search_space.schema import SpecError
from search_space.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "spaces" / "zoo" / "resnet18_small.yaml"


@pytest.fixture
def no_torch_load(monkeypatch):
    """torch.load must not even be called for a file refused from its size or its archive's declared sizes."""
    def refuse(*a, **k):
        raise AssertionError("torch.load was called on a file that should have been refused unread")

    monkeypatch.setattr(torch, "load", refuse)


@pytest.fixture
def deadline():
    """A FIFO opened for reading blocks forever: fail the test in seconds instead of hanging."""
    def expired(*_):
        raise TimeoutError("reading the weights file hung")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def zip_bomb(path: Path, mib: int = 64) -> Path:
    """A torch.save-shaped archive whose data entry inflates to ``mib`` MiB of zeros from a few dozen KiB."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        with z.open("archive/data/0", "w", force_zip64=True) as f:
            chunk = bytes(1 << 20)
            for _ in range(mib):
                f.write(chunk)
    assert path.stat().st_size < 1 << 20
    return path


def refused(path, says: str, cli, **kwargs) -> None:
    with pytest.raises(SpecError) as e:
        create_model(SMALL, weights=path, in_channels=1, num_classes=10, **kwargs)
    assert says in str(e.value) and "\n" not in str(e.value), str(e.value)
    r = cli("export", SMALL, "--weights", path, "--format", "onnx", "-o", Path(path).with_name("x.onnx"))
    assert r.code == 2 and r.err.count("\n") == 1 and says in r.err and "Traceback" not in r.err, r.err
    assert not Path(path).with_name("x.onnx").exists()


def test_zip_bomb_is_refused_from_its_declared_sizes(tmp_path, no_torch_load, cli):
    refused(zip_bomb(tmp_path / "bomb.pt"), "compressed entries", cli)


def test_stored_archive_declaring_more_than_the_architecture_needs(tmp_path, no_torch_load, cli):
    """Uncompressed, as torch writes them, but declaring far more content than any state_dict of this network."""
    path = tmp_path / "big.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    # patch the central directory's declared uncompressed size of the entry to 4 GiB (the data stays tiny)
    data = bytearray(path.read_bytes())
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = (0xFFFFFFF0).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    refused(path, "declares", cli)


def test_file_far_larger_than_the_architecture_needs(tmp_path, no_torch_load, cli):
    path = tmp_path / "huge.pt"
    with open(path, "wb") as f:
        f.truncate(64 << 20)  # sparse: 64 MiB on paper, for a network of ~0.7M parameters
    refused(path, "far more than this architecture's weights need", cli)


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_fifo_device_or_directory_is_refused_before_opening(tmp_path, kind, deadline, cli):
    if kind == "fifo":
        path = tmp_path / "w.pt"
        os.mkfifo(path)
        says = "not a regular file"
    elif kind == "device":
        path, says = Path("/dev/zero"), "not a regular file"
    else:
        path, says = tmp_path, "is a directory"
    with pytest.raises(SpecError) as e:
        create_model(SMALL, weights=path, in_channels=1, num_classes=10)
    assert says in str(e.value)
    r = cli("export", SMALL, "--weights", path, "--format", "onnx", "-o", tmp_path / "x.onnx")
    assert r.code == 2 and r.err.count("\n") == 1 and says in r.err


@pytest.mark.parametrize("content, says", [
    (lambda sd: torch.zeros(3), "single tensor"),
    (lambda sd: list(sd.values()), "holds a list"),
    (lambda sd: {i: v for i, v in enumerate(sd.values())}, "key of type int"),
    (lambda sd: {"model": sd, "epoch": 3}, "not a tensor"),
    (lambda sd: {}, "empty mapping"),
    (lambda sd: 7, "holds a int"),
])
def test_not_a_state_dict_is_one_line(tmp_path, content, says, cli):
    sd = build_model(load_spec(SMALL).model, in_channels=1, num_classes=10).state_dict()
    path = tmp_path / "w.pt"
    torch.save(content(sd), path)
    refused(path, says, cli)


def test_not_a_torch_file_and_a_damaged_archive(tmp_path, cli):
    path = tmp_path / "w.pt"
    path.write_text("not weights at all")
    refused(path, "not a torch.save file", cli)
    sd = build_model(load_spec(SMALL).model, in_channels=1, num_classes=10).state_dict()
    torch.save(sd, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # cut in half: the directory is gone
    refused(path, "not a torch.save file", cli)


def test_a_real_state_dict_still_loads(tmp_path):
    model = build_model(load_spec(SMALL).model, in_channels=1, num_classes=10)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    net = create_model(SMALL, weights=tmp_path / "w.pt", in_channels=1, num_classes=10)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x), model.eval()(x))
