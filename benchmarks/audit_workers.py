"""Does ``search fidelity --workers N`` pay on the CPU? One audit, timed with N processes of one thread each
against one process of N threads.

    python benchmarks/audit_workers.py --json docs/results/audit-workers-DATE.json

Runs ``search fidelity SPACE --n 6 --factor 2 --seeds 1 --epochs 2`` (12 training runs: 6 proxies and 6 runs
twice as long) ``--repeats`` times each way, alternating, each into a fresh directory, and records the wall
seconds of each, their medians and the ratio, beside the machine (with its load average: run it on an idle
machine) and the commit. Both ways train the same runs with the same seeds; the record says whether the figures
they print agree (torch threads may change the order of a sum, and with it the last digits).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provenance import ROOT, new_record, write_record

AUDIT = ["--n", "6", "--factor", "2", "--seeds", "1", "--epochs", "2"]


def one_audit(space: str, out: Path, workers: int, threads: int) -> tuple[float, dict]:
    """Wall seconds of one audit into ``out``, and its proxy figure (to check both ways did the same work)."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "search_space.cli", "fidelity", space, *AUDIT, "--out", str(out),
                           "--workers", str(workers), "--threads", str(threads), "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"search fidelity failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    figures = json.loads((out / "fidelity.json").read_text())
    return wall, figures["predictors"]["proxy"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="spaces/resnest.yaml")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                   help="processes of one thread, against one process of this many threads (default: the cores)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", help="write the raw record here")
    args = p.parse_args(argv)
    record = new_record(__file__, argv, audit=["search", "fidelity", args.space, *AUDIT])
    walls = {"workers": [], "threads": []}
    proxies = []
    with tempfile.TemporaryDirectory(prefix="audit-workers-") as tmp:
        for i in range(args.repeats):
            for way, workers, threads in (("workers", args.workers, 1), ("threads", 1, args.workers)):
                wall, proxy = one_audit(args.space, Path(tmp) / f"{way}{i}", workers, threads)
                walls[way].append(round(wall, 1))
                proxies.append(proxy)
                print(f"{way}: {workers} process(es) of {threads} thread(s): {wall:.1f} s", flush=True)
    agree = all(json.dumps(q, sort_keys=True) == json.dumps(proxies[0], sort_keys=True) for q in proxies)
    med = {way: statistics.median(w) for way, w in walls.items()}
    record.update({"seconds": walls, "median_seconds": med, "threads_over_workers": round(med["threads"]
                                                                                           / med["workers"], 3),
                   "same_figures": agree})
    print(f"{args.workers} processes of 1 thread: {med['workers']:.1f} s; 1 process of {args.workers} threads: "
          f"{med['threads']:.1f} s (median of {args.repeats}); the processes are "
          f"{record['threads_over_workers']:.2f}x as fast; same figures: {agree}")
    if args.json:
        write_record(args.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
