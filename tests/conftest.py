"""Shared helpers: repository paths, an in-process CLI runner and a MACs counter."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted((ROOT / "spaces").glob("*.yaml"))
ZOO = sorted((ROOT / "spaces" / "zoo").glob("*.yaml"))

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))



@pytest.fixture
def single_thread():
    """One intra-op thread for the test: these tests run many tiny models, where threads buy nothing, and on a
    busy 2-core machine OpenMP's spin-waiting threads made them ~8x slower in CPU time. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def counted_macs(model: torch.nn.Module, in_channels: int, size: int, device: str = "cpu") -> float:
    """MACs as torch's flop counter sees them: eval mode, no_grad, one image, FLOPs / 2."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(torch.randn(1, in_channels, size, size, device=device))
    assert out.shape[0] == 1 and out.dim() == 2
    return counter.get_total_flops() / 2


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class CLIResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def __repr__(self):
        return f"CLIResult(code={self.code}, out={self.out!r}, err={self.err!r})"


@pytest.fixture
def cli(capsys):
    """Run ``search ARGS`` in-process; argparse's SystemExit is turned into an exit code."""
    from search_space.cli import main

    def run(*args) -> CLIResult:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return CLIResult(code, out, err)

    return run
