"""Where a benchmark's raw record came from: the commit measured and the machine it ran on.

Every script that writes a raw record (``--json``/``--record``, kept under ``docs/results/``) stamps it with
these (``new_record`` at the start, ``write_record`` at the end), so a figure on the docs' benchmark pages can name
its command, machine, date and commit. Read the commit at the start of a run: it is the code measured, whatever
is committed while the run goes on.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
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


def new_record(script: str, argv=None, with_machine: bool = True, **fields) -> dict:
    """The head every raw record starts with: the script, the arguments it ran with (``argv`` as given to its
    ``main``, else the command line), the commit (read now, at the start), the date and, for a measurement that
    the machine affects, the machine; then ``fields``."""
    record = {"benchmark": f"benchmarks/{Path(script).name}", "argv": list(sys.argv[1:] if argv is None else argv),
              "commit": head_commit()[:7], "date": now()}
    if with_machine:
        record["machine"] = machine()
    record.update(fields)
    return record


def write_record(path, record: dict) -> None:
    """Write ``record`` as JSON to ``path`` (making its folder), with the load average at the end beside the one
    at the start, so a run that shared the machine shows it."""
    if "machine" in record:
        record["machine"]["load_average_at_end"] = os.getloadavg()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
