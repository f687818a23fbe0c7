"""Does the default search pay? Two comparisons, each over several sampler seeds.

1. **One objective** (issue 11, item 3): the space's default search (its sampler + pruner) against random search
   without pruning, at the same compute: each keeps starting trials until it has trained ``--budget-epochs``
   epochs (a pruned trial costs only the epochs it ran; the trial that crosses the budget finishes, so the spend
   is reported). Each search returns its best trial trained to the full epoch count; that architecture (with its
   sampled recipe) is then trained ``--factor`` times longer, a complete schedule, and *that* accuracy judges
   the search, not its own proxy score. The per-seed pairs are compared with the Wilcoxon signed-rank test
   (scipy), whose p-value is printed.
2. **Several objectives** (``--multi-objective``; item 4): val_accuracy x params, the same number of trials with
   and without pruning by non-dominated rank (``runners.mo_pruning``): the hypervolume of each search's Pareto
   front (error and params / max params, reference point (1, 1)) and the epochs each spent.

    python benchmarks/search_efficiency.py --seeds 10 --budget-epochs 48 --factor 4
    # the same, split over two processes (one per core), resumable; either prints the summary of what is recorded
    python benchmarks/search_efficiency.py --seeds 5 --threads 1 --record so.jsonl &
    python benchmarks/search_efficiency.py --seeds 5 --first-seed 5 --threads 1 --record so.jsonl
    python benchmarks/search_efficiency.py --multi-objective --seeds 5 --trials 16
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

from runners.optuna_engine import SearchRun
from runners.progress import Progress
from runners.train import cpu_threads
from search_space.spec import dump_spec, load_spec


def epochs_spent(study) -> int:
    return sum(t.user_attrs.get("epochs", 0) for t in study.get_trials(deepcopy=False))


def open_search(spec, sampler: str, pruner: str, seed: int, out: Path, verbose: bool, **search_changes):
    search = dataclasses.replace(spec.search, sampler=sampler, pruner=pruner, seed=seed, storage=None,
                                 warm_start=[], workers=1, final_epochs=None, **search_changes)
    run = SearchRun(dataclasses.replace(spec, search=search), out,
                    progress=Progress() if verbose else Progress(stream=io.StringIO(), tty=False))
    return run, run.open()


def search_once(spec, sampler: str, pruner: str, seed: int, budget: int, out: Path, verbose: bool) -> dict:
    """One single-objective search at an epoch budget; returns its best full-length trial's architecture."""
    from runners.optuna_engine import startup_trials

    # trials are started until the budget is spent; the sampler's random start is the one the space's trials give
    run, study = open_search(spec, sampler, pruner, seed, out, verbose, trials=10**6,
                             startup_trials=startup_trials(spec.search))
    start = time.perf_counter()
    while epochs_spent(study) < budget:
        run.run_one()
    full = spec.train.epochs
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("epochs") == full]
    best = max(done, key=lambda t: (t.values[0], -t.number)) if done else None
    arch = load_spec(out / "trials" / str(best.number) / "arch.yaml") if best else None
    return {"proxy": best.values[0] if best else float("nan"), "arch": arch, "epochs": epochs_spent(study),
            "trials": len(study.trials), "full": len(done), "seconds": time.perf_counter() - start}


class Judge:
    """Trains a returned architecture with a complete schedule ``factor`` times longer; cached, since two searches
    often return the same architecture."""

    def __init__(self, factor: int, seed: int = 0):
        from runners.trial import DataCache

        self.factor, self.seed, self.data, self.cache = factor, seed, DataCache(), {}

    def __call__(self, arch) -> float:
        from runners.train import train

        if arch is None:
            return float("nan")
        config = dataclasses.replace(arch.train, epochs=arch.train.epochs * self.factor, seed=self.seed)
        key = dump_spec(dataclasses.replace(arch, name="judged", train=config))
        if key not in self.cache:
            size = config.image_size or arch.model.input_size
            result = train(arch.model, config, data=self.data.get(config, size), image_size=size)
            self.cache[key] = result.val_accuracy if result.ok else 0.0
        return self.cache[key]


def single_objective(spec, args, tmp: Path) -> None:
    methods = {f"default ({spec.search.sampler}+{spec.search.pruner})": (spec.search.sampler, spec.search.pruner),
               "random, no pruning": ("random", "none")}
    judge = Judge(args.factor)
    done = read_record(args.record)
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for i, (method, (sampler, pruner)) in enumerate(methods.items()):
            if (method, seed) in done:
                continue  # recorded by an earlier or a parallel run of this script
            r = search_once(spec, sampler, pruner, seed, args.budget_epochs, tmp / f"so-{i}-{seed}", args.verbose)
            r["judged"] = judge(r["arch"])
            row = {"method": method, "seed": seed, **{k: r[k] for k in ("proxy", "judged", "epochs", "trials",
                                                                          "full", "seconds")}}
            done[(method, seed)] = row
            append_record(args.record, row)
            print(f"seed {seed:>2}  {method:<26} proxy {r['proxy']:.4f}  {args.factor}x-trained {r['judged']:.4f}  "
                  f"epochs {r['epochs']:>3}  trials {r['trials']:>3} ({r['full']} full)  {r['seconds']:.0f}s",
                  flush=True)
    print_single_objective(list(methods), done, args.factor)


def read_record(path) -> dict:
    """Rows of earlier runs (``--record``): one JSON object per line, keyed by (method, seed)."""
    import json

    if not path or not Path(path).exists():
        return {}
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return {(r["method"], r["seed"]): r for r in rows}


def append_record(path, row: dict) -> None:
    import json

    if path:
        with open(path, "a", encoding="utf-8") as f:  # one short line per append: parallel runs do not mix
            f.write(json.dumps(row) + "\n")


def print_single_objective(methods: list[str], done: dict, factor: int) -> None:
    """Seeds that both methods finished, compared pair by pair."""
    seeds = sorted({s for (_, s) in done if all((m, s) in done for m in methods)})
    rows = {m: [done[(m, s)] for s in seeds] for m in methods}
    if not seeds:
        print("no seed has results for both methods yet")
        return
    print(f"\n{factor}x-trained accuracy of the architecture each search returns ({len(seeds)} seeds):")
    print(f"{'method':<27} {'mean +- sd':<20}proxy   epochs  trials")
    for method, rs in rows.items():
        judged = [r["judged"] for r in rs]
        sd = statistics.stdev(judged) if len(judged) > 1 else 0.0
        print(f"{method:<27} {statistics.mean(judged):.4f} +- {sd:.4f}    "
              f"{statistics.mean(r['proxy'] for r in rs):.4f}  {statistics.mean(r['epochs'] for r in rs):>6.1f}  "
              f"{statistics.mean(r['trials'] for r in rs):>6.1f}")
    a, b = ([r["judged"] for r in rs] for rs in rows.values())
    diffs = [x - y for x, y in zip(a, b)]
    print(f"default - random: mean {statistics.mean(diffs):+.4f} over {len(diffs)} seeds, "
          f"wins {sum(d > 0 for d in diffs)}, ties {sum(d == 0 for d in diffs)}, losses {sum(d < 0 for d in diffs)}")
    if any(diffs) and len(diffs) >= 2:
        from scipy.stats import wilcoxon

        two = wilcoxon(a, b, zero_method="zsplit").pvalue
        one = wilcoxon(a, b, zero_method="zsplit", alternative="greater").pvalue
        print(f"Wilcoxon signed-rank (paired by seed): two-sided p = {two:.4f}, one-sided (default better) p = "
              f"{one:.4f}")


def hypervolume_2d(points: list[tuple[float, float]], reference: tuple[float, float] = (1.0, 1.0)) -> float:
    """Area dominated by ``points`` (both coordinates minimised) up to ``reference``."""
    area, best_y = 0.0, reference[1]
    for x, y in sorted(p for p in points if p[0] < reference[0] and p[1] < reference[1]):
        if y < best_y:  # a point of the front: the strip between its y and the previous front point's y
            area += (reference[0] - x) * (best_y - y)
            best_y = y
    return area


def multi_objective_once(spec, pruner: str, seed: int, trials: int, out: Path, verbose: bool) -> dict:
    run, study = open_search(spec, spec.search.sampler, pruner, seed, out, verbose, trials=trials,
                             objectives=["val_accuracy", "params"])
    start = time.perf_counter()
    run.run_trials()
    limit = spec.search.max_params or max((t.values[1] for t in study.best_trials), default=1.0)
    front = [(1.0 - t.values[0], t.values[1] / limit) for t in study.best_trials]
    return {"hypervolume": hypervolume_2d(front), "epochs": epochs_spent(study), "front": len(front),
            "seconds": time.perf_counter() - start}


def multi_objective(spec, args, tmp: Path) -> None:
    methods = {"no pruning": "none", "non-dominated-rank pruning": "successive_halving"}
    done = read_record(args.record)
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for i, (method, pruner) in enumerate(methods.items()):
            if (method, seed) in done:
                continue
            r = multi_objective_once(spec, pruner, seed, args.trials, tmp / f"mo-{i}-{seed}", args.verbose)
            row = {"method": method, "seed": seed, **r}
            done[(method, seed)] = row
            append_record(args.record, row)
            print(f"seed {seed:>2}  {method:<28} hypervolume {r['hypervolume']:.4f}  epochs {r['epochs']:>3}  "
                  f"front {r['front']:>2}  {r['seconds']:.0f}s", flush=True)
    seeds = sorted({s for (_, s) in done if all((m, s) in done for m in methods)})
    if not seeds:
        print("no seed has results for both methods yet")
        return
    print(f"\n{spec.search.sampler}, {args.trials} trials, val_accuracy x params, {len(seeds)} seeds:")
    print(f"{'method':<30} {'hypervolume (mean +- sd)':<27}{'epochs (mean)':<15}hypervolume per 100 epochs")
    for method in methods:
        rs = [done[(method, s)] for s in seeds]
        hv = [r["hypervolume"] for r in rs]
        sd = statistics.stdev(hv) if len(hv) > 1 else 0.0
        epochs = statistics.mean(r["epochs"] for r in rs)
        print(f"{method:<30} {statistics.mean(hv):.4f} +- {sd:.4f}{'':<10}{epochs:<15.1f}"
              f"{100 * statistics.mean(hv) / epochs:.4f}")
    a, b = ([done[(m, s)]["hypervolume"] for s in seeds] for m in methods)
    diffs = [y - x for x, y in zip(a, b)]
    spent = [sum(done[(m, s)]["epochs"] for s in seeds) for m in methods]
    print(f"pruned - unpruned hypervolume: mean {statistics.mean(diffs):+.4f}; epochs saved {1 - spent[1] / spent[0]:.0%}")
    if any(diffs) and len(diffs) >= 2:
        from scipy.stats import wilcoxon

        print(f"Wilcoxon signed-rank on hypervolume (paired by seed): two-sided p = "
              f"{wilcoxon(a, b, zero_method='zsplit').pvalue:.4f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default=str(Path(__file__).resolve().parents[1] / "spaces" / "resnest.yaml"))
    p.add_argument("--seeds", type=int, default=10, help="sampler seeds per method (default 10)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds run from this one (default 0); with --record, "
                                                            "several processes can split the seeds")
    p.add_argument("--record", help="append each finished search to this JSON-lines file and skip what it holds: "
                                    "a rerun resumes, and the summary covers every recorded seed")
    p.add_argument("--budget-epochs", type=int, default=48, help="training epochs each search may spend")
    p.add_argument("--factor", type=int, default=4, help="the returned architecture is judged after a complete "
                                                        "schedule this many times the proxy's (default 4)")
    p.add_argument("--multi-objective", action="store_true", help="compare pruning by non-dominated rank against "
                                                                  "none on val_accuracy x params instead")
    p.add_argument("--trials", type=int, default=16, help="--multi-objective: trials per search (default 16)")
    p.add_argument("--epochs", type=int, help="epochs per full trial (default: the space's train.epochs)")
    p.add_argument("--dataset", help="dataset (default: the space's train.dataset)")
    p.add_argument("--threads", type=int, help="torch threads (default: the idle cores, as search run does)")
    p.add_argument("--verbose", action="store_true", help="print every trial")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads or cpu_threads(1))
    spec = load_spec(args.space)
    changes = {k: v for k, v in (("epochs", args.epochs), ("dataset", args.dataset)) if v}
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, **changes))
    what = f"{args.trials} trials per search" if args.multi_objective else \
        f"{args.budget_epochs} epochs per search, judged after {args.factor}x"
    print(f"{spec.name} on {spec.train.dataset}: {what}, {spec.train.epochs} epochs per full trial, {args.seeds} "
          f"seeds, {torch.get_num_threads()} thread(s)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        (multi_objective if args.multi_objective else single_objective)(spec, args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
