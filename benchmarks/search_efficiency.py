"""Does pruning pay? TPE + Hyperband against random search without pruning, at the same compute.

Both methods search the same space on the same data with the same proxy recipe; each keeps starting trials
until it has trained ``--budget-epochs`` epochs in total (a pruned trial costs only the epochs it ran; the
trial that crosses the budget finishes, so the spend is reported). The score is the best validation accuracy
among trials trained to the full epoch count (a pruned trial's partial accuracy does not count), over a few
sampler seeds.

    python benchmarks/search_efficiency.py --seeds 3 --budget-epochs 48
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

from optuna.trial import TrialState

from runners.progress import Progress
from runners.optuna_engine import SearchRun
from runners.train import cpu_threads
from search_space.spec import load_spec

METHODS = {"tpe+hyperband": ("tpe", "hyperband"), "random, no pruning": ("random", "none")}


def epochs_spent(study) -> int:
    return sum(t.user_attrs.get("epochs", 0) for t in study.get_trials(deepcopy=False))


def search_once(spec, sampler: str, pruner: str, seed: int, budget: int, out: Path, verbose: bool) -> dict:
    search = dataclasses.replace(spec.search, sampler=sampler, pruner=pruner, seed=seed, storage=None,
                                 trials=max(spec.search.trials, 1), warm_start=[])
    run = SearchRun(dataclasses.replace(spec, search=search), out,
                    progress=Progress() if verbose else Progress(stream=io.StringIO(), tty=False))
    study = run.open()
    start = time.perf_counter()
    while epochs_spent(study) < budget:
        run.run_one()
    full = spec.train.epochs
    scores = [t.values[0] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if t.user_attrs.get("epochs") == full]
    return {"best": max(scores) if scores else float("nan"), "epochs": epochs_spent(study),
            "trials": len(study.trials), "full": len(scores), "seconds": time.perf_counter() - start}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default=str(Path(__file__).resolve().parents[1] / "spaces" / "resnest.yaml"))
    p.add_argument("--seeds", type=int, default=3, help="sampler seeds per method")
    p.add_argument("--budget-epochs", type=int, default=48, help="training epochs each search may spend")
    p.add_argument("--epochs", type=int, help="epochs per full trial (default: the space's train.epochs)")
    p.add_argument("--threads", type=int, help="torch threads (default: the idle cores, as search run does)")
    p.add_argument("--verbose", action="store_true", help="print every trial")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads or cpu_threads(1))

    spec = load_spec(args.space)
    if args.epochs:
        spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, epochs=args.epochs))
    print(f"{spec.name}: {args.budget_epochs} epochs per search, {spec.train.epochs} per full trial, "
          f"{args.seeds} seeds, {torch.get_num_threads()} thread(s)", flush=True)
    rows = {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for method, (sampler, pruner) in METHODS.items():
                r = search_once(spec, sampler, pruner, seed, args.budget_epochs, Path(tmp) / f"{sampler}-{seed}",
                                args.verbose)
                rows[method].append(r)
                print(f"seed {seed}  {method:<20} best val {r['best']:.4f}  epochs {r['epochs']:>3}  trials "
                      f"{r['trials']:>2} ({r['full']} full)  {r['seconds']:.0f}s", flush=True)
    print("\nmethod                 best val (mean +- sd)   per seed                 epochs  trials  seconds")
    for method, rs in rows.items():
        best = [r["best"] for r in rs]
        sd = statistics.stdev(best) if len(best) > 1 else 0.0
        print(f"{method:<22} {statistics.mean(best):.4f} +- {sd:.4f}       "
              f"{' '.join(f'{b:.3f}' for b in best):<24} {statistics.mean(r['epochs'] for r in rs):>6.1f}  "
              f"{statistics.mean(r['trials'] for r in rs):>6.1f}  {statistics.mean(r['seconds'] for r in rs):>7.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
