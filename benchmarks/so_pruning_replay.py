"""Can a pruned search beat random search here, and how many seeds would show it? Replays Optuna's successive
halving and random search on the training curves a fidelity audit recorded, with no new training.

``search fidelity`` keeps every long run's validation accuracy after each epoch. A search is replayed by drawing
the audit's architectures in a random order until an epoch budget is spent: random search trains each to the end;
the pruned search stops one at a rung unless its accuracy there is in the top 1/eta of the accuracies every
earlier trial had at that rung, Optuna's ``SuccessiveHalvingPruner`` rule (the first 2 eta - 1 trials at a rung
go on only if best so far). The rungs are the pruner's: the first rung r, then r eta, r eta^2, ... before the
last epoch, with eta 3 as ``search run`` builds it. Each search returns its best trial by final accuracy, and that
architecture is judged by the final accuracy of its *other* long run (another seed: judging noise, as
``search_efficiency.py``'s one judging run has). The two searches draw independent orders, as the benchmark's
two samplers do. Printed per budget: the mean judged accuracy of each, the mean and sd of their difference, how
often the pruned search wins, and the seeds a paired test would need to detect that mean difference (80% power,
5% two-sided, normal approximation). The last row, ``oracle``, is the headroom: the pool's best architecture
(judged the same way) against random search's pick. No search, pruned or not, TPE or not, gains more on this
pool; when even the oracle needs more seeds than you can run, so does every default.

    search fidelity spaces/resnest.yaml --out runs/audit       # first: the curves (long work; resumable)
    python benchmarks/so_pruning_replay.py runs/audit --budget-epochs 36 60 120

What it leaves out, so read it as a bound on what pruning alone can give: the sampler (TPE learns from earlier
trials; the replay draws at random), ``train.rung_ema_epochs`` (the replay reads the plain per-epoch accuracy),
the benchmark's longer judging schedule (the replay judges at the curve's length), and a real space's size (the
pool is the audit's n architectures, drawn without replacement: a budget that lets the pruned search see most of
the pool flatters random search; the share of such searches is printed).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))
from mo_pruning_replay import load_curves  # noqa: E402
from provenance import new_record, write_record  # noqa: E402

from runners.audit.stats import seeds_needed

FIRST_RUNGS = (2, 3, 4)  # search.pruner_min_epochs
ETA = 3                  # runners.search.optuna_engine.make_pruner's reduction factor


def rungs_of(first: int, epochs: int, eta: int = ETA) -> tuple[int, ...]:
    """The epochs successive halving cuts at: ``first * eta**j`` before the last epoch (a trial is never pruned
    at its last epoch)."""
    out, k = [], first
    while k < epochs:
        out.append(k)
        k *= eta
    return tuple(out)


def promotable(value: float, competing: list[float], eta: int) -> bool:
    """Optuna's successive-halving rule for a maximised value; ``competing`` includes ``value``."""
    ranked = sorted(competing, reverse=True)
    return value >= ranked[max(len(ranked) // eta - 1, 0)]


def stop_epoch(curve: list[float], rungs: tuple[int, ...], eta: int, at: dict[int, list[float]]) -> int | None:
    """The epoch at which the pruner stops a trial with this ``curve`` (None: it trains to the end); ``at`` holds
    every earlier trial's accuracy at each rung and gets this trial's."""
    for k in rungs:
        at[k].append(curve[k - 1])  # the accuracy after epoch k
        if not promotable(curve[k - 1], at[k], eta):
            return k
    return None


def replay(models: list[dict], order: list[tuple[int, int]], budget: int, rungs: tuple[int, ...], eta: int,
           ) -> tuple[float, int, int, bool]:
    """One search over ``order`` ((architecture, curve) pairs) until ``budget`` epochs are spent; no ``rungs``:
    random search without pruning. Returns (judged accuracy of its pick, epochs, trials, pool ran out)."""
    at: dict[int, list[float]] = {k: [] for k in rungs}
    epochs, trials, best = 0, 0, None
    for i, c in order:
        if epochs >= budget:
            break
        curve = models[i]["curves"][c]
        trials += 1
        stopped = stop_epoch(curve, rungs, eta, at)
        if stopped is not None:
            epochs += stopped
            continue
        epochs += len(curve)
        if best is None or curve[-1] > best[0]:
            best = (curve[-1], i, c)
    if best is None:
        return math.nan, epochs, trials, epochs < budget
    _, i, c = best
    curves = models[i]["curves"]
    return curves[(c + 1) % len(curves)][-1], epochs, trials, epochs < budget


def paired(ours: list[float], random_: list[float]) -> dict:
    """Paired figures of two searches' judged accuracies, rep by rep."""
    diffs = [a - b for a, b in zip(ours, random_)]
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    return {"diff": mean, "sd": sd, "wins": sum(d > 0 for d in diffs) / len(diffs),
            "losses": sum(d < 0 for d in diffs) / len(diffs), "random": statistics.mean(random_),
            "seeds_needed": seeds_needed(sd, mean) if mean > 0 else None}


def random_order(models: list[dict], rng: random.Random) -> list[tuple[int, int]]:
    """The pool's architectures in a random order, each with one of its curves (seeds) at random."""
    return [(i, rng.randrange(len(models[i]["curves"]))) for i in rng.sample(range(len(models)), len(models))]


def compare(models: list[dict], budget: int, rungs: tuple[int, ...], eta: int, reps: int, seed: int = 0) -> dict:
    """``reps`` paired searches (pruned, random) at ``budget``; summary figures."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(reps):
        pruned = replay(models, random_order(models, rng), budget, rungs, eta)
        plain = replay(models, random_order(models, rng), budget, (), eta)
        if not (math.isnan(pruned[0]) or math.isnan(plain[0])):
            pairs.append((pruned, plain))
    return {**paired([p[0] for p, _ in pairs], [r[0] for _, r in pairs]),
            "pruned": statistics.mean(p[0] for p, _ in pairs), "trials": statistics.mean(p[2] for p, _ in pairs),
            "exhausted": sum(p[3] for p, _ in pairs) / len(pairs)}


def headroom(models: list[dict], budget: int, reps: int, seed: int = 0) -> dict:
    """What no search can beat: the pool's best architecture (by its mean final accuracy over its curves),
    judged on one of its curves at random, paired with random search at ``budget``. If this gap needs more seeds
    than can be run, so does any search's."""
    rng = random.Random(seed)
    best = max(range(len(models)), key=lambda i: statistics.mean(c[-1] for c in models[i]["curves"]))
    oracle, plain = [], []
    for _ in range(reps):
        judged = replay(models, random_order(models, rng), budget, (), ETA)[0]
        if not math.isnan(judged):
            plain.append(judged)
            oracle.append(rng.choice(models[best]["curves"])[-1])
    return {**paired(oracle, plain), "oracle": statistics.mean(oracle)}


def row(label: str, trials: str, ours: float, r: dict, ran_out: str) -> str:
    """One line of the table: a search (or the oracle) against random search."""
    need = r["seeds_needed"] if r["seeds_needed"] is not None else "never"
    return (f"{label:<7}{trials:<8}{ours:<8.4f}{r['random']:<8.4f}{r['diff']:<+11.4f}{r['sd']:<8.4f}"
            f"{r['wins']:<6.0%}{r['losses']:<8.0%}{need!s:<14}{ran_out}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("audit", type=Path, help="a `search fidelity` run directory")
    p.add_argument("--budget-epochs", type=int, nargs="+", default=[60, 120], help="epochs per search")
    p.add_argument("--reps", type=int, default=4000, help="paired searches per row (default 4000)")
    p.add_argument("--json", help="write the raw record (every row's figures, the audit, the commit) here")
    args = p.parse_args(argv)
    models = load_curves(args.audit)
    epochs = len(models[0]["curves"][0])
    seeds = min(len(m["curves"]) for m in models)
    print(f"{len(models)} architectures from {args.audit}, {epochs}-epoch curves, {seeds} per architecture "
          f"({'the pick is judged on another seed' if seeds > 1 else 'one seed: the pick is judged on its own curve'}"
          f"), {args.reps} paired searches per row")
    record = new_record(__file__, argv, with_machine=False, audit=str(args.audit), architectures=len(models),
                        epochs=epochs, seeds=seeds, reps=args.reps, eta=ETA, rows=[])
    for budget in args.budget_epochs:
        print(f"\nbudget {budget} epochs: judged accuracy of the pick, successive halving (eta {ETA}) against random "
              f"search ({math.ceil(budget / epochs)} trials)")
        print(f"{'rungs':<7}{'trials':<8}{'pruned':<8}{'random':<8}{'mean diff':<11}{'sd':<8}"
              f"{'wins':<6}{'losses':<8}{'seeds needed':<14}pool ran out")
        for first in FIRST_RUNGS:
            rungs = rungs_of(first, epochs)
            if not rungs:
                continue
            r = compare(models, budget, rungs, ETA, args.reps)
            print(row(",".join(map(str, rungs)), f"{r['trials']:.1f}", r["pruned"], r, f"{r['exhausted']:.0%}"))
            record["rows"].append({"budget_epochs": budget, "rungs": list(rungs), **r})
        h = headroom(models, budget, args.reps)
        print(row("oracle", "all", h["oracle"], h, "-"))
        record["rows"].append({"budget_epochs": budget, "rungs": "oracle", **h})
    if args.json:
        write_record(args.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
