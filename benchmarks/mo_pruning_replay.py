"""Where should pruning for several objectives cut? Replays successive halving by non-dominated rank on the
training curves a fidelity audit recorded, with no new training.

``search fidelity`` trains a random sample of a space's architectures with a long schedule and keeps each run's
validation accuracy after every epoch (``models/<i>/long-e<E>-s<seed>.json``). Drawing those architectures in a
random order and applying ``runners.search.mo_pruning.should_stop`` at chosen rungs gives, in milliseconds, what a
val_accuracy x params search would have done: its Pareto front and hypervolume at an epoch budget, with and
without pruning. It decides rungs and reduction factors; ``search_efficiency.py --multi-objective`` then checks
the choice with real searches, whose architectures (TPE's, not the audit's) are new to it.

    search fidelity spaces/resnest.yaml --out runs/audit       # first: the curves (long work; resumable)
    python benchmarks/mo_pruning_replay.py runs/audit --budget-epochs 96 144

Caveat: the pool is the audit's n architectures (24 by default), drawn without replacement, so a budget that lets a
search see most of the pool says little.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_efficiency import hypervolume_2d  # noqa: E402
from provenance import new_record, write_record  # noqa: E402

from runners.search.mo_pruning import should_stop

CONFIGS = (((2,), 2), ((2,), 3), ((2,), 4), ((3,), 3), ((2, 6), 2), ((2, 6), 3), ((2, 4, 8), 2))


def load_curves(audit: Path) -> list[dict]:
    """Per architecture: params (from fidelity.json) and every long run's per-epoch validation accuracy."""
    path = audit / "fidelity.json"
    if not path.is_file():
        print(f"error: {audit}: no fidelity.json there; give a `search fidelity` run directory (the audits kept "
              f"in the repository are docs/results/audit-*/)", file=sys.stderr)
        raise SystemExit(2)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        report["models"], report["long_epochs"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: {path}: not a fidelity report ({type(e).__name__}: {e})", file=sys.stderr)
        raise SystemExit(2)
    models = []
    for m in report["models"]:
        runs = [json.loads(p.read_text(encoding="utf-8"))
                for p in sorted((audit / "models" / str(m["model"])).glob(f"long-e{report['long_epochs']}-s*.json"))]
        curves = [r["history"] for r in runs  # a diverged or cut-short run has no full curve to replay
                  if r.get("status") == "ok" and len(r.get("history") or []) == report["long_epochs"]
                  and all(v is not None for v in r["history"])]
        if curves and m.get("params"):
            models.append({"params": m["params"], "curves": curves})
    if not models:
        print(f"error: {audit}: no complete long runs with params; run `search fidelity` into it first",
              file=sys.stderr)
        raise SystemExit(2)
    return models


def replay(models: list[dict], rungs: tuple[int, ...], eta: int, budget: int, prune: bool, order: list[int],
           seed: int, limit: float) -> tuple[float, int, int]:
    """One search: architectures in ``order`` until ``budget`` epochs are spent. Returns (hypervolume, epochs,
    trials)."""
    at: dict[int, list] = {k: [] for k in rungs}
    front, epochs, trials = [], 0, 0
    for i in order:
        if epochs >= budget:
            break
        m = models[i]
        curve = m["curves"][seed % len(m["curves"])]
        trials += 1
        stopped_at = None
        for k in rungs if prune else ():
            point = (-curve[k - 1], m["params"] / limit)
            stop = should_stop(point, at[k], eta)
            at[k].append(point)
            if stop:
                stopped_at = k
                break
        if stopped_at is None:
            epochs += len(curve)
            front.append((1.0 - curve[-1], m["params"] / limit))
        else:
            epochs += stopped_at
    return hypervolume_2d(front), epochs, trials


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("audit", type=Path, help="a `search fidelity` run directory")
    p.add_argument("--budget-epochs", type=int, nargs="+", default=[96], help="epochs per search (default 96)")
    p.add_argument("--reps", type=int, default=2000, help="random search orders per setting (default 2000)")
    p.add_argument("--max-params", type=float, default=1e6, help="params are divided by this (default 1e6)")
    p.add_argument("--json", help="write the raw record (every row's figures, the audit, the commit) here")
    args = p.parse_args(argv)
    models = load_curves(args.audit)
    epochs = len(models[0]["curves"][0])
    print(f"{len(models)} architectures from {args.audit}, {epochs}-epoch curves, {args.reps} orders per row")
    record = new_record(__file__, argv, with_machine=False, audit=str(args.audit), architectures=len(models),
                        epochs=epochs, reps=args.reps, max_params=args.max_params, rows=[])
    for budget in args.budget_epochs:
        print(f"\nbudget {budget} epochs: hypervolume (mean), pruned against unpruned in the same order")
        print(f"{'rungs':<12}{'eta':<5}{'unpruned':<10}{'pruned':<9}{'trials':<8}{'pruned higher':<15}equal")
        for rungs, eta in CONFIGS:
            if max(rungs) >= epochs:
                continue
            rng = random.Random(0)
            rows = []
            for _ in range(args.reps):
                order, seed = rng.sample(range(len(models)), len(models)), rng.randrange(1000)
                rows.append([replay(models, rungs, eta, budget, prune, order, seed, args.max_params)
                             for prune in (False, True)])
            higher = sum(b[0] > a[0] + 1e-12 for a, b in rows) / len(rows)
            equal = sum(abs(b[0] - a[0]) <= 1e-12 for a, b in rows) / len(rows)
            print(f"{','.join(map(str, rungs)):<12}{eta:<5}{statistics.mean(a[0] for a, _ in rows):<10.4f}"
                  f"{statistics.mean(b[0] for _, b in rows):<9.4f}{statistics.mean(b[2] for _, b in rows):<8.1f}"
                  f"{higher:<15.0%}{equal:.0%}")
            record["rows"].append({"budget_epochs": budget, "rungs": list(rungs), "eta": eta,
                                   "unpruned": statistics.mean(a[0] for a, _ in rows),
                                   "pruned": statistics.mean(b[0] for _, b in rows),
                                   "trials": statistics.mean(b[2] for _, b in rows),
                                   "pruned_higher": higher, "equal": equal})
    if args.json:
        write_record(args.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
