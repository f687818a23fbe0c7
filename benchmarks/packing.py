"""Packing trials onto one device by the memory model: does the number in flight follow the model, and what does it
buy?

For each setting it runs the real command, ``search run SPACE --trials-per-gpu N ...`` (the Optuna engine, its
worker processes sharing one ledger), in a fresh run directory and a private ledger directory, and samples the
ledger every ``--every`` seconds while it runs: how many trials hold memory and how many MiB they hold. Per
setting it prints trials per hour, the most and the mean trials in flight, the most MiB reserved against the
card, and, from the trials' records, each trial's reservation (the model) and, on a GPU, its peak
``torch.cuda.max_memory_allocated`` against it.

* ``--device cpu`` (default; no GPU needed): the ledger is given made-up card sizes (``--cards``, MiB), the same
  processes and trials for each, so the only thing that changes is how much the ledger may hand out. The number
  in flight must never need more than the card, and must grow with the card.
* ``--device cuda``: one trial at a time (``--trials-per-gpu 1``) against ``--trials-per-gpu auto`` (and any
  ``--counts``), the card's own memory; adds the GPU's utilisation (sampled through pynvml when installed).

The raw JSON (every sample, every trial) goes to ``--out``.

    python benchmarks/packing.py --out docs/results/packing_cpu.json                    # CPU, made-up cards
    python benchmarks/packing.py --device cuda --trials 64 --out docs/results/packing_h100.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from provenance import head_commit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runners.search.packing import MIB, Ledger  # noqa: E402


def sample_ledger(path: Path, every: float, stop: threading.Event, samples: list, gpu=None) -> None:
    ledger = Ledger(path, capacity=0)
    t0 = time.time()
    while not stop.is_set():
        entries = ledger.entries() if path.exists() else {}
        row = {"t": round(time.time() - t0, 2), "in_flight": len(entries),
               "reserved_mb": round(sum(e["bytes"] for e in entries.values()) / MIB, 1)}
        if gpu is not None:
            import pynvml

            row["gpu_util"] = pynvml.nvmlDeviceGetUtilizationRates(gpu).gpu
            row["gpu_used_mb"] = round(pynvml.nvmlDeviceGetMemoryInfo(gpu).used / MIB)
        samples.append(row)
        stop.wait(every)


def nvml_handle():
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:  # noqa: BLE001 - utilisation is then not sampled
        return None


def run_setting(args, label: str, per_gpu: str, card_mb: float | None, work: Path) -> dict:
    out, ledger_dir = work / f"run-{label}", work / f"ledger-{label}"
    env = {**os.environ, "SEARCH_LEDGER_DIR": str(ledger_dir), "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "search_space.cli", "run", args.space, "--out", str(out), "--trials",
           str(args.trials), "--device", args.device, "--trials-per-gpu", per_gpu, "--sampler", "random",
           "--pruner", "none", "--storage", f"journal:{out / 'study.log'}"]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    if args.device == "cpu":
        cmd += ["--threads", str(args.threads)]
    if card_mb is not None:
        cmd += ["--device-memory-mb", str(card_mb)]
    samples: list = []
    stop = threading.Event()
    device_key = "cpu" if args.device == "cpu" else None
    if device_key is None:
        from runners.search.packing import device_key as key_of
        import torch

        device_key = key_of(torch.device("cuda"))
    sampler = threading.Thread(target=sample_ledger, args=(ledger_dir / f"{device_key}.json", args.every, stop,
                                                           samples, nvml_handle() if args.device == "cuda" else None))
    print(f"{label}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    t0 = time.time()
    sampler.start()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.time() - t0
    stop.set()
    sampler.join()
    if proc.returncode not in (0, 1):
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{label}: search run exited {proc.returncode}")
    trials = []
    for p in sorted((out / "trials").glob("*/metrics.json"), key=lambda p: int(p.parent.name)):
        m = json.loads(p.read_text())
        peak = max((h.get("peak_memory_mb") or 0 for h in m.get("history") or []), default=None)
        trials.append({"trial": m["trial"], "status": m["status"], "seconds": m.get("seconds"),
                       "params": m.get("params"), **(m.get("memory") or {}), "peak_memory_mb": peak or None})
    done = [t for t in trials if t["status"] == "ok"]
    busy = [s for s in samples if s["in_flight"]]
    result = {"label": label, "trials_per_gpu": per_gpu, "card_mb": card_mb, "seconds": round(seconds, 1),
              "trials_done": len(done), "trials_oom": sum(t["status"] == "oom" for t in trials),
              "retried_alone": sum(bool(t.get("retried_alone")) for t in trials),
              "trials_per_hour": round(3600 * len(done) / seconds, 1),
              "max_in_flight": max((s["in_flight"] for s in samples), default=0),
              "mean_in_flight": round(statistics.mean(s["in_flight"] for s in busy), 2) if busy else 0.0,
              "max_reserved_mb": max((s["reserved_mb"] for s in samples), default=0.0),
              "reserved_mb_per_trial": [t.get("reserved_mb") for t in trials],
              "samples": samples, "trials": trials, "command": " ".join(cmd[1:])}
    if card_mb is not None:
        result["never_over_card"] = all(s["reserved_mb"] <= card_mb for s in samples)
    peaks = [(t["peak_memory_mb"], t["reserved_mb"]) for t in trials if t.get("peak_memory_mb") and t.get("reserved_mb")]
    if peaks:
        result["peak_over_reserved"] = {"max": round(max(p / r for p, r in peaks), 3),
                                        "median": round(statistics.median(p / r for p, r in peaks), 3)}
    if args.device == "cuda" and busy and "gpu_util" in busy[0]:
        result["mean_gpu_util"] = round(statistics.mean(s["gpu_util"] for s in busy), 1)
    return result


COMMIT = ""


def main() -> int:
    global COMMIT
    COMMIT = head_commit()  # the code measured: read at the start, not when the run ends
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="spaces/resnest.yaml")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=1, help="epochs per trial (0: the space's)")
    p.add_argument("--processes", default="4", help="CPU: --trials-per-gpu for every card")
    p.add_argument("--cards", default="160,320,640", help="CPU: made-up card sizes in MiB")
    p.add_argument("--counts", default="auto", help="GPU: --trials-per-gpu settings to compare with 1")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--every", type=float, default=0.2, help="seconds between ledger samples")
    p.add_argument("--out", help="write the raw JSON here")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="packing-bench-"))
    settings = []
    try:
        if args.device == "cpu":
            for card in [float(c) for c in args.cards.split(",")]:
                settings.append(run_setting(args, f"card{card:g}", args.processes, card, work))
        else:
            for count in ["1", *args.counts.split(",")]:
                settings.append(run_setting(args, f"per_gpu_{count}", count, None, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for s in settings:
        extra = (f", never over the card: {s['never_over_card']}" if "never_over_card" in s else "") + \
                (f", peak/reserved max {s['peak_over_reserved']['max']}" if "peak_over_reserved" in s else "") + \
                (f", GPU util {s['mean_gpu_util']}%" if "mean_gpu_util" in s else "")
        print(f"{s['label']:12s} {s['trials_done']}/{len(s['trials'])} ok, {s['trials_oom']} oom, "
              f"{s['trials_per_hour']:.0f} trials/h, in flight max {s['max_in_flight']} mean {s['mean_in_flight']}, "
              f"reserved max {s['max_reserved_mb']} MiB" + extra)
    if args.device == "cuda" and len(settings) > 1 and settings[0]["trials_per_hour"]:
        for s in settings[1:]:
            print(f"throughput {s['label']} / one at a time: {s['trials_per_hour'] / settings[0]['trials_per_hour']:.2f}x")
    if args.out:
        import torch

        result = {"benchmark": "packing", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                  "commit": COMMIT,
                  "machine": (torch.cuda.get_device_name(0) if args.device == "cuda" else
                              f"{platform.machine()}, {os.cpu_count()} cores, no GPU (made-up card sizes)"),
                  "command": "python " + " ".join(sys.argv), "settings": settings}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    ok = all(s.get("never_over_card", True) for s in settings) and all(s["trials_oom"] == 0 for s in settings)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
