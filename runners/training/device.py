"""Where training runs and what it may take there: the device (``auto`` = cuda, mps, cpu), torch threads per
worker, seeding, peak memory and how an out-of-memory error is recognised.

Split from the training loop so the data module (which retries a device copy on OOM) and the search can use
these without importing the loop.
"""

from __future__ import annotations

import gc
import os
import random
import sys
from typing import Optional

import numpy as np
import torch

from search_space.schema import SpecError


def cpu_threads(workers: int = 1) -> int:
    """Torch threads per worker on the CPU: the cores other processes leave idle (by the 1-minute load average),
    at least one.

    Proxy models are small, so extra threads gain little on an idle machine (about 1.6x from 2 cores) while on a
    busy one OpenMP's spinning threads stall each other: 2 threads on 2 loaded cores measured 5-10x slower
    than 1. The load average lags: a run started just after another one ended gets fewer threads, and processes
    started together on an idle machine each take every core (pass ``--threads``, or use ``--workers N``, which
    divides the cores). A CPU-time sample taken at start was tried and is no better: it oversubscribes whenever
    processes start together, which the load average at least avoids on a machine already busy.
    """
    cores = os.cpu_count() or 1
    share = max(1, cores // workers)
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        return share
    return max(1, min(share, int(cores - busy + 0.5) // workers))


def resolve_device(choice: torch.device | str | None = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; naming an unavailable device is a SpecError (bad input)."""
    if isinstance(choice, torch.device):
        return choice
    if choice in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(choice)
    except RuntimeError as e:
        raise SpecError("train.device", f"{choice!r} is not a device ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpecError("train.device", "cuda was asked for but torch sees no CUDA device "
                        "(a CPU-only torch build, or no driver); use auto or cpu")
    if device.type == "mps" and not _mps_available():
        raise SpecError("train.device", "mps was asked for but is not available here; use auto or cpu")
    return device


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_memory_mb(device: torch.device) -> Optional[float]:
    """Peak CUDA memory allocated by tensors, else the process's peak resident set size (whole process)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def is_oom(error: BaseException) -> bool:
    """Out of memory on any device: CUDA's error, Python's MemoryError, or the CPU allocator's RuntimeError
    ("DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def check_threads(threads) -> None:
    """Torch threads per process (a --threads flag): at least 1, at most this machine's cores (more only make
    torch slower)."""
    from search_space.schema import SpecError

    cores = os.cpu_count() or 1
    if threads is not None and not 1 <= threads <= cores:
        raise SpecError("--threads", f"{threads} threads per process; allowed: 1 to this machine's {cores} cores")
