"""Where a benchmark's raw record came from: the commit measured and the machine it ran on.

Every script that writes a raw record (``--json``/``--record``, kept under ``docs/results/``) stamps it with
these, so a figure on the docs' benchmark pages can name its command, machine, date and commit. Read the commit
at the start of a run: it is the code measured, whatever is committed while the run goes on.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def head_commit() -> str:
    """The checked-out commit (full hash), or "unknown" outside a git checkout."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def machine() -> dict:
    """Cores, CPU, Python, torch, memory, GPU and the load average at the start (a busy machine shows there)."""
    info = {"cores": len(os.sched_getaffinity(0)), "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(), "load_average_at_start": os.getloadavg(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1), "gpu": None}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info
