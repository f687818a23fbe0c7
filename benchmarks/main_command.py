"""How long does the main command take? ``search run spaces/resnest.yaml`` as a new user runs it, timed.

    python benchmarks/main_command.py --runs 2 --json docs/results/main-command-DATE.json

Runs the command ``--runs`` times, each into a fresh output directory (the default ``runs/resnest`` would resume
the first run's study), and records each run's wall seconds, CPU seconds and peak resident memory (of the
processes the command waits for: a local Ray's workers are not counted), the trials' outcomes and the best trial,
beside the machine (with its load average: a busy machine is slower) and the commit.
Extra arguments after ``--`` go to ``search run`` (e.g. ``-- --device cuda``).

On the CPU ``search run`` takes the cores the 1-minute load average says are idle, so a run started right after
another one (or after any busy minute) uses fewer threads: ``--settle`` waits before each run until the load
average falls below 0.5 (at most 5 minutes), so every run starts as a new user's would on an idle machine. The
record keeps each run's header line, which names the device and its threads.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provenance import ROOT, new_record, write_record


def settle(limit_s: float = 300.0) -> float:
    """Wait until the 1-minute load average is below 0.5 (or ``limit_s`` passed); the load average it reached."""
    t0 = time.monotonic()
    while os.getloadavg()[0] >= 0.5 and time.monotonic() - t0 < limit_s:
        time.sleep(5)
    return os.getloadavg()[0]


def one_run(space: str, out: Path, extra: list[str]) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "search_space.cli", "run", space, "--out", str(out), *extra],
                          cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"search run failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    trials = [json.loads(p.read_text()) for p in sorted((out / "trials").glob("*/metrics.json"),
                                                           key=lambda p: int(p.parent.name))]
    statuses = [t.get("status") for t in trials]
    scored = [t for t in trials if t.get("val_accuracy") is not None]
    best = max(scored, key=lambda t: t["val_accuracy"]) if scored else None
    return {"wall_seconds": round(wall, 2), "cpu_seconds": round(after.ru_utime + after.ru_stime
                                                                  - before.ru_utime - before.ru_stime, 2),
            "peak_rss_mib": round(after.ru_maxrss / 1024, 1), "trials": len(trials),
            "statuses": {s: statuses.count(s) for s in sorted(set(map(str, statuses)))},
            "best": None if best is None else {k: best.get(k) for k in ("trial", "val_accuracy", "params", "blocks")},
            "header": next((line for line in done.stderr.splitlines() if " device " in line), None),
            "stdout": done.stdout}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="spaces/resnest.yaml")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--json", help="write the raw record here")
    p.add_argument("--settle", action="store_true", help="before each run, wait until the 1-minute load average is "
                                                         "below 0.5 (at most 5 minutes)")
    p.add_argument("extra", nargs="*", help="arguments for search run (after --)")
    args = p.parse_args()
    record = new_record(__file__, command=f"search run {args.space} " + " ".join(args.extra))
    with tempfile.TemporaryDirectory(prefix="main-command-") as tmp:
        record["runs"] = []
        for i in range(args.runs):
            load = settle() if args.settle else os.getloadavg()[0]
            run = {"load_average_at_start": round(load, 2), **one_run(args.space, Path(tmp) / f"run{i}", args.extra)}
            record["runs"].append(run)
            print(f"run {i + 1}/{args.runs}: {run['wall_seconds']:.0f} s wall, {run['cpu_seconds']:.0f} s CPU, "
                  f"{run['trials']} trials {run['statuses']}, best val {run['best'] and run['best']['val_accuracy']}",
                  flush=True)
    walls = [r["wall_seconds"] for r in record["runs"]]
    record["wall_seconds_median"] = statistics.median(walls)
    print(f"{record['command'].strip()}: median {record['wall_seconds_median']:.0f} s over {len(walls)} run(s)")
    if args.json:
        write_record(args.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
