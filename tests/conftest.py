"""Shared helpers: repository paths, the tiny search space most search tests run, an in-process CLI runner and a
MACs counter."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
# raw datasets prepare themselves into a cache (runners.training.cache): the tests' own, never the user's
DATA_CACHE = tempfile.mkdtemp(prefix="search-test-data-cache-")
os.environ["SEARCH_DATA_CACHE"] = DATA_CACHE
# what subprocesses of the tests import: this checkout first, then whatever an existing PYTHONPATH holds
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1",
                  "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
SPACES = sorted((ROOT / "spaces").glob("*.yaml"))
ZOO = sorted((ROOT / "spaces" / "zoo").glob("*.yaml"))

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# A search space that trains in a second or two per trial on digits: tests change its train/search fields.
TINY = """
name: tiny
model:
  input_size: 8
  stem: {type: cifar, width: 8}
  stages:
    - depth: {int: [1, 2]}
      width: {choice: [8, 16]}
      block: {type: {choice: [plain, se, split_attention]}, bottleneck_ratio: 0.5, radix: 2}
train: {dataset: digits, epochs: 2, batch_size: 64, warmup_epochs: 0, lr: {float: [0.1, 0.3], log: true}}
search: {trials: 4, sampler: random, pruner: none}
"""


def write_image_folder(root: Path, classes=("ant", "bee", "cow"), per_class=6, seed=0, start=0) -> Path:
    """Class folders of JPEGs and PNGs (RGB and grayscale) of assorted sizes, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            w, h = (40, 30) if i % 2 else (28, 44)
            pixels = (rng.integers(0, 120, (h, w, 3)) + 60 * c).astype(np.uint8)
            img = Image.fromarray(pixels) if i % 3 else Image.fromarray(pixels[..., 0], mode="L")
            img.save(root / name / (f"{i}.jpg" if i % 2 else f"{i}.png"), quality=95)
    return root


def write_space(tmp_path: Path, text: str = TINY, **changes) -> Path:
    """``tmp_path/space.yaml``: ``text`` with ``section__field=value`` changes (``train__epochs=1``)."""
    data = yaml.safe_load(textwrap.dedent(text))
    for key, value in changes.items():
        section, name = key.split("__")
        data[section][name] = value
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path



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


@pytest.fixture(scope="session", autouse=True)
def _remove_data_cache():
    yield
    shutil.rmtree(DATA_CACHE, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# The suite leaves nothing in the checkout (issue 26 item 5): files that appear in it during the session (runs/,
# exports, builds) fail the session, named. Caches are allowed.
# ----------------------------------------------------------------------------------------------------------------

ALLOWED_LEFTOVERS = ("__pycache__", ".pytest_cache", ".egg-info")


def _checkout_extras() -> set[str] | None:
    import subprocess

    try:
        proc = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--ignored", "--untracked-files=all"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    paths = {line[3:] for line in proc.stdout.splitlines() if line[:2] in ("??", "!!")}
    return {p for p in paths if not any(a in p for a in ALLOWED_LEFTOVERS)}


def pytest_sessionstart(session):
    session.config._checkout_before = _checkout_extras()


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_checkout_before", None)
    after = _checkout_extras()
    if before is None or after is None:
        return
    left = sorted(after - before)
    if left:
        print(f"\nerror: the tests left {len(left)} file(s) in the checkout {ROOT}: {', '.join(left[:10])}; "
              f"write under tmp_path instead", file=sys.stderr)
        session.exitstatus = 1
