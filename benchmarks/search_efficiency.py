"""Does the default search pay? Two comparisons, each over several sampler seeds.

1. **One objective** (issue 11, item 3): the space's default search (its sampler + pruner) against random search
   without pruning, at the same compute: each keeps starting trials until it has trained ``--budget-epochs``
   epochs (a pruned trial costs only the epochs it ran; the trial that crosses the budget finishes, so the spend
   is reported). Each search returns its best trial trained to the full epoch count; that architecture (with its
   sampled recipe) is then trained ``--factor`` times longer, a complete schedule, and *that* accuracy judges
   the search, not its own proxy score. The per-seed pairs are compared with the Wilcoxon signed-rank test
   (scipy), whose p-value is printed.
2. **Several objectives** (``--multi-objective``; item 4): val_accuracy x params, with and without pruning by
   non-dominated rank (``runners.search.mo_pruning``), each search at the same ``--budget-epochs`` (the pruned one
   starts more trials with the epochs it saves): the hypervolume of each search's Pareto front (error and
   params / max params, reference point (1, 1)) at that budget, and the epochs the pruned search needed to reach
   the unpruned search's final hypervolume. Pruning pays only when a pruned trial saves most of its epochs: use a
   recipe several times longer than the first rung (``--epochs 12``; the rung is the first epoch after warmup).

    python benchmarks/search_efficiency.py --seeds 10 --budget-epochs 48 --factor 4
    # the same with two processes (one per core) sharing a record; a rerun resumes from the record
    python benchmarks/search_efficiency.py --seeds 10 --workers 2 --record so.jsonl
    python benchmarks/search_efficiency.py --multi-objective --epochs 12 --budget-epochs 96 --seeds 8
    # a candidate default: a 12-epoch recipe that restarts at epoch 3, pruned there by successive halving
    python benchmarks/search_efficiency.py --epochs 12 --pruner successive_halving --rung 3 --restart-at-rung \
        --budget-epochs 120 --seeds 10 --judge-seeds 2
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from runners.audit.stats import seeds_needed
from runners.search.optuna_engine import SearchRun
from runners.common.progress import Progress
from runners.common.signals import die_with_parent, failed_processes, processes_beside
from runners.training.device import cpu_threads
from search_space.spec import dump_spec, load_spec  # noqa: E402

# How a sampler's startup trials are seeded (runners.search.rules.PerTrialSeed): since f329d1a they are the
# trials random search draws at the same seed. Rows recorded before drew them from another seed.
STARTUP = "shared with random search"


def epochs_spent(study) -> int:
    return sum(t.user_attrs.get("epochs", 0) for t in study.get_trials(deepcopy=False))


def open_search(spec, sampler: str, pruner: str, seed: int, out: Path, verbose: bool, **search_changes):
    """A search with no trial limit (:func:`spend` stops it at a budget), whose sampler starts randomly for as
    many trials as the space's own trial count gives it."""
    from runners.search.rules import startup_trials

    search = dataclasses.replace(spec.search, sampler=sampler, pruner=pruner, seed=seed, storage=None,
                                 warm_start=[], workers=1, final_epochs=None, trials=10**6,
                                 startup_trials=startup_trials(spec.search), **search_changes)
    run = SearchRun(dataclasses.replace(spec, search=search), out,
                    progress=Progress() if verbose else Progress(stream=io.StringIO(), tty=False))
    return run, run.open()


def spend(run, study, budget: int, after_trial=lambda: None) -> None:
    """Start trials until the search has trained ``budget`` epochs; the trial that crosses it finishes."""
    while epochs_spent(study) < budget:
        run.run_one()
        after_trial()


def search_once(spec, sampler: str, pruner: str, seed: int, budget: int, out: Path, verbose: bool) -> dict:
    """One single-objective search at an epoch budget; returns its best full-length trial's architecture."""
    run, study = open_search(spec, sampler, pruner, seed, out, verbose)
    start = time.perf_counter()
    spend(run, study, budget)
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

    def __init__(self, factor: int, seeds: int = 1):
        from runners.search.trial import DataCache

        self.factor, self.seeds, self.data, self.cache = factor, seeds, DataCache(), {}

    def __call__(self, arch) -> float:
        """Mean validation accuracy over ``seeds`` trainings (init and augmentation seeds 0, 1, ...; one
        validation split): each 12-epoch run alone is about 1 point noisy, most of the noise in a comparison."""
        if arch is None:
            return float("nan")
        return statistics.mean(self.one(arch, seed) for seed in range(self.seeds))

    def one(self, arch, k: int) -> float:
        from runners.training.loop import train

        # a plain complete schedule, as the audit's truth: a restart is a search device (for a rung), not the truth
        config = dataclasses.replace(arch.train, epochs=arch.train.epochs * self.factor, restart_epochs=[])
        key = (dump_spec(dataclasses.replace(arch, name="judged", train=config)), k)
        if key not in self.cache:
            size = config.image_size or arch.model.input_size
            data = self.data.get(config, size)  # the split follows the recipe's seed; others change init/augmentation
            result = train(arch.model, dataclasses.replace(config, seed=config.seed + k), data=data, image_size=size)
            self.cache[key] = result.val_accuracy if result.ok else 0.0
        return self.cache[key]


def candidate_spec(spec, pruner: str | None, rung: int | None, restart: bool):
    """The space with a candidate default search: ``pruner`` replaces its pruner, ``rung`` its first rung
    (search.pruner_min_epochs), and ``restart`` restarts the schedule there for both methods (a recipe setting,
    so random search trains the same schedule). The name says what changed."""
    from runners.search.rules import first_rung, warmup_end

    search = dataclasses.replace(spec.search, **{k: v for k, v in (("pruner", pruner), ("pruner_min_epochs", rung))
                                                 if v})
    spec, name = dataclasses.replace(spec, search=search), f"default ({search.sampler}+{search.pruner})"
    if restart:
        at = first_rung(search, spec.train.epochs, warmup_end(spec))
        if at >= spec.train.epochs:
            raise SystemExit(f"a restart at epoch {at} does not fit a {spec.train.epochs}-epoch trial; use a longer "
                             f"--epochs or a smaller --rung")
        spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, restart_epochs=[at]))
    return spec, name


def single_objective(spec, args, tmp: Path) -> None:
    spec, default = candidate_spec(spec, args.pruner, args.rung, args.restart_at_rung)
    methods = {default: (spec.search.sampler, spec.search.pruner), "random, no pruning": ("random", "none")}
    judge = Judge(args.factor, args.judge_seeds)
    restarts = list(spec.train.restart_epochs)
    settings = dict(judge_seeds=args.judge_seeds, budget=args.budget_epochs, epochs_per_trial=spec.train.epochs,
                    restart_epochs=restarts,
                    first_rung=spec.search.pruner_min_epochs if spec.search.pruner != "none" else None,
                    startup=STARTUP)
    done = read_record(args.record, **settings)
    if restarts and not args.worker_index:
        print(f"both methods train a schedule that restarts at epoch {restarts[0]}", flush=True)

    def one(i: int, method: str, seed: int) -> tuple[dict, str]:
        sampler, pruner = methods[method]
        r = search_once(spec, sampler, pruner, seed, args.budget_epochs, tmp / f"so-{i}-{seed}", args.verbose)
        r["judged"] = judge(r["arch"])
        return ({k: r[k] for k in ("proxy", "judged", "epochs", "trials", "full", "seconds")},
                f"proxy {r['proxy']:.4f}  {args.factor}x-trained {r['judged']:.4f}  epochs {r['epochs']:>3}  "
                f"trials {r['trials']:>3} ({r['full']} full)  {r['seconds']:.0f}s")

    done = run_shares(list(methods), args, done, settings, one)
    if done is not None:  # the first process prints the summary
        print_single_objective(list(methods), done, args.factor, args.judge_seeds)


def read_record(path, **settings) -> dict:
    """Rows of earlier runs (``--record``): one JSON object per line, keyed by (method, seed). Rows that name a
    different value for one of ``settings`` (judge seeds, budget, epochs per trial) are runs of another
    comparison and are skipped. A row without a key predates it: it judged once, without restarts or a
    pruner's rung, its sampler drew its startup trials from another seed than random search's, and it is kept
    for a budget or epoch count it did not record."""
    import json

    if not path or not Path(path).exists():
        return {}
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # blank, or a line another process is appending right now
    # what rows meant before the key existed
    before = {"judge_seeds": 1, "restart_epochs": [], "first_rung": None, "startup": "own seed"}
    return {(r["method"], r["seed"]): r for r in rows
            if all(r.get(k, before.get(k, v)) == v for k, v in settings.items())}


def append_record(path, row: dict) -> None:
    import json

    import fcntl

    if path:
        with open(path, "a", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # processes sharing the record append whole lines, one at a time
            f.write(json.dumps(row) + "\n")


def worker_prefix(args) -> str:
    return f"[worker {args.worker_index}] " if args.worker_index else ""


def run_shares(methods: list[str], args, done: dict, settings: dict, one) -> dict | None:
    """Run ``one(method index, method, seed)`` for every search this process takes (:func:`my_share`), and
    record and print each result (``one`` returns the row's figures and the line's text). With ``--workers N``,
    N - 1 more processes of this script do the same beside the first (:func:`runners.common.signals.processes_beside`);
    the first waits for them, runs what a worker that failed left, and returns every recorded row of this
    comparison, for its summary (None in a worker)."""
    import torch

    width = max(map(len, methods))

    def my_searches() -> None:
        with contextlib.closing(my_share(methods, args, done, settings)) as share:  # a lock is let go on error
            for i, method, seed in share:
                figures, line = one(i, method, seed)
                row = {"method": method, "seed": seed, **settings, **figures,
                       "commit": getattr(args, "commit", None), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                done[(method, seed)] = row
                append_record(args.record, row)
                print(f"{worker_prefix(args)}seed {seed:>2}  {method:<{width}}  {line}", flush=True)

    seeds = range(args.first_seed, args.first_seed + args.seeds)
    pending = any((m, s) not in done for m in methods for s in seeds)
    others = args.workers - 1 if not args.worker_index and pending else 0
    threads = torch.get_num_threads()
    with processes_beside(worker_main, lambda i: (argparse.Namespace(**{**vars(args), "worker_index": i,
                                                                          "threads": threads}), os.getpid()),
                          others) as children:
        my_searches()
    failed = failed_processes(children)
    for i, code in failed:
        print(f"[worker {i}] stopped with exit code {code}; the searches it had not finished run here", flush=True)
    if failed:
        done.update(read_record(args.record, **settings))
        my_searches()
    return None if args.worker_index else {**done, **read_record(args.record, **settings)}


def worker_main(args, parent_pid: int) -> None:
    """One worker of ``--workers N``: the comparison, without the header and the summary."""
    try:
        die_with_parent(parent_pid)
        run(args)
    except KeyboardInterrupt:
        pass
    except Exception as e:  # noqa: BLE001 - one line; the first process runs what this worker left
        print(f"[worker {args.worker_index}] error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


def my_share(methods: list[str], args, done: dict, settings: dict):
    """(method index, method, seed) of each search this process runs: not in the record, and of a seed no other
    process sharing the record works on. A process takes a seed's searches together (an ``flock`` on a file of
    ``<record>.locks/`` while it runs them), so both methods' picks are judged by one process's cache, as with
    one process. The lock dies with its process: a killed worker's searches run again on a rerun."""
    import fcntl
    import hashlib
    import json

    locks = Path(f"{args.record}.locks") if args.record else None
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        todo = [(i, method) for i, method in enumerate(methods) if (method, seed) not in done]
        if not todo:
            continue  # recorded by an earlier or a parallel run of this script
        if locks is None:
            yield from ((i, method, seed) for i, method in todo)
            continue
        locks.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha1(json.dumps([seed, settings], sort_keys=True).encode()).hexdigest()[:16]
        fd = os.open(locks / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # another process works on this seed now
        try:
            for i, method in todo:
                if (method, seed) not in read_record(args.record, **settings):  # not finished meanwhile
                    yield i, method, seed
        finally:
            os.close(fd)


def print_single_objective(methods: list[str], done: dict, factor: int, judge_seeds: int = 1) -> None:
    """Seeds that both methods finished, compared pair by pair."""
    seeds = sorted({s for (_, s) in done if all((m, s) in done for m in methods)})
    rows = {m: [done[(m, s)] for s in seeds] for m in methods}
    if not seeds:
        print("no seed has results for both methods yet")
        return
    each = f", mean of {judge_seeds} trainings" if judge_seeds > 1 else ""
    print(f"\n{factor}x-trained accuracy of the architecture each search returns ({len(seeds)} seeds{each}):")
    w = max(27, max(map(len, methods)) + 1)
    print(f"{'method':<{w}} {'mean +- sd':<20}proxy   epochs  trials")
    for method, rs in rows.items():
        judged = [r["judged"] for r in rs]
        sd = statistics.stdev(judged) if len(judged) > 1 else 0.0
        print(f"{method:<{w}} {statistics.mean(judged):.4f} +- {sd:.4f}    "
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
        sd = statistics.stdev(diffs)
        need = [(d, seeds_needed(sd, d)) for d in (0.005, 0.01, 0.02)]
        print(f"sd of the paired differences {sd:.4f}: seeds needed to detect a true difference of "
              + ", ".join(f"{d:.3f} ({n})" for d, n in need) + " (80% power, 5% two-sided, normal approximation)")
    else:  # e.g. a budget no larger than the startup trials, which both searches share (common random numbers)
        print("Wilcoxon signed-rank (paired by seed): no test, "
              + ("every pair tied" if len(diffs) >= 2 else "one seed"))


def hypervolume_2d(points: list[tuple[float, float]], reference: tuple[float, float] = (1.0, 1.0)) -> float:
    """Area dominated by ``points`` (both coordinates minimised) up to ``reference``."""
    area, best_y = 0.0, reference[1]
    for x, y in sorted(p for p in points if p[0] < reference[0] and p[1] < reference[1]):
        if y < best_y:  # a point of the front: the strip between its y and the previous front point's y
            area += (reference[0] - x) * (best_y - y)
            best_y = y
    return area


def front_hypervolume(study, limit: float) -> float:
    """Hypervolume of the completed trials' Pareto front: (error, params / limit), reference point (1, 1)."""
    return hypervolume_2d([(1.0 - t.values[0], t.values[1] / limit) for t in study.best_trials])


def multi_objective_once(spec, pruner: str, seed: int, budget: int, out: Path, verbose: bool) -> dict:
    """One val_accuracy x params search at an epoch budget; the hypervolume after every trial is kept, so the
    epochs a search needed to reach a given hypervolume can be read off."""
    run, study = open_search(spec, spec.search.sampler, pruner, seed, out, verbose,
                             objectives=["val_accuracy", "params"])
    limit = spec.search.max_params or 1e6
    start, trajectory = time.perf_counter(), []
    spend(run, study, budget, lambda: trajectory.append((epochs_spent(study), front_hypervolume(study, limit))))
    return {"hypervolume": trajectory[-1][1], "epochs": trajectory[-1][0], "trials": len(study.trials),
            "front": len(study.best_trials), "trajectory": trajectory, "seconds": time.perf_counter() - start}


def epochs_to_reach(trajectory: list, target: float) -> float | None:
    """Epochs a search had spent when its hypervolume first reached ``target`` (None: never)."""
    return next((epochs for epochs, hv in trajectory if hv >= target - 1e-12), None)


def hypervolume_at(trajectory: list, epochs: float) -> float:
    """A search's hypervolume once it had spent ``epochs`` (0 before its first trial ended): its anytime value."""
    return max((hv for spent, hv in trajectory if spent <= epochs), default=0.0)


def pruned_spec(spec, rung: int | None, restart: bool):
    """The pruned arm's spec and name: ``rung`` moves the cut (search.pruner_min_epochs); ``restart`` makes the
    schedule restart there (train.restart_epochs), so the cut reads a complete short run. The unpruned arm keeps
    the space's recipe: without a cut a restart buys nothing."""
    from runners.search.rules import max_epochs, mo_rungs, warmup_end

    if rung:
        spec = dataclasses.replace(spec, search=dataclasses.replace(spec.search, pruner_min_epochs=rung))
    at = mo_rungs(dataclasses.replace(spec.search, pruner="successive_halving"), max_epochs(spec),
                  ["val_accuracy", "params"], warmup_end(spec))
    if not at:
        raise SystemExit(f"no cut fits a {max_epochs(spec)}-epoch trial (the cut must come after warmup and "
                         f"before the last epoch); use a longer --epochs or a smaller --rung")
    name = "non-dominated-rank pruning" + (f", rung {at[0]}" if rung else "")
    if restart:
        spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, restart_epochs=at))
        name += f", restart at {at[0]}"
    return spec, name


def multi_objective(spec, args, tmp: Path) -> None:
    pruned, name = pruned_spec(spec, args.rung, args.restart_at_rung)
    unpruned, plain = spec, "no pruning"
    if args.restart_unpruned:  # the same schedule without the cut: what the restart alone is worth
        unpruned = dataclasses.replace(spec, train=dataclasses.replace(spec.train,
                                                                       restart_epochs=pruned.train.restart_epochs))
        plain += f", restart at {','.join(map(str, pruned.train.restart_epochs))}"
    methods = {plain: ("none", unpruned), name: ("successive_halving", pruned)}
    settings = dict(budget=args.budget_epochs, epochs_per_trial=spec.train.epochs, startup=STARTUP)
    done = read_record(args.record, **settings)

    def one(i: int, method: str, seed: int) -> tuple[dict, str]:
        pruner, arm = methods[method]
        r = multi_objective_once(arm, pruner, seed, args.budget_epochs, tmp / f"mo-{i}-{seed}", args.verbose)
        return r, (f"hypervolume {r['hypervolume']:.4f}  epochs {r['epochs']:>3}  trials {r['trials']:>3}  front "
                   f"{r['front']:>2}  {r['seconds']:.0f}s")

    done = run_shares(list(methods), args, done, settings, one)
    if done is not None:
        print_multi_objective(list(methods), done, spec, args.budget_epochs)


def print_multi_objective(methods: list[str], done: dict, spec, budget: int) -> None:
    """Seeds that both arms finished. The hypervolume is read at exactly ``budget`` epochs from each search's
    trajectory: the trial that crosses the budget finishes, so a pruned search ends a few epochs over it, and
    its final value would flatter it."""
    seeds = sorted({s for (_, s) in done if all((m, s) in done for m in methods)})
    if not seeds:
        print("no seed has results for both methods yet")
        return

    def at(method: str, seed: int, epochs: float = budget) -> float:
        r = done[(method, seed)]
        return hypervolume_at(r["trajectory"], epochs) if "trajectory" in r else r["hypervolume"]

    print(f"\n{spec.search.sampler}, val_accuracy x params, {budget} epochs per search, {spec.train.epochs} epochs "
          f"per full trial, {len(seeds)} seeds:")
    w = max(30, max(map(len, methods)) + 2)
    print(f"{'method':<{w}} {f'hypervolume at {budget} epochs':<29}{'epochs run':<12}trials")
    for method in methods:
        hv = [at(method, s) for s in seeds]
        sd = statistics.stdev(hv) if len(hv) > 1 else 0.0
        rs = [done[(method, s)] for s in seeds]
        print(f"{method:<{w}} {statistics.mean(hv):.4f} +- {sd:<20.4f}{statistics.mean(r['epochs'] for r in rs):<12.1f}"
              f"{statistics.mean(r.get('trials', math.nan) for r in rs):.1f}")
    a, b = ([at(m, s) for s in seeds] for m in methods)
    diffs = [y - x for x, y in zip(a, b)]
    wins = sum(d > 1e-12 for d in diffs)
    print(f"pruned - unpruned hypervolume at {budget} epochs: mean {statistics.mean(diffs):+.4f}; pruned higher in "
          f"{wins} of {len(seeds)} seeds, equal in {sum(abs(d) <= 1e-12 for d in diffs)}")
    if any(diffs) and len(diffs) >= 2:
        from scipy.stats import wilcoxon

        print(f"Wilcoxon signed-rank on hypervolume (paired by seed): two-sided p = "
              f"{wilcoxon(a, b, zero_method='zsplit').pvalue:.4f}")
    if not all("trajectory" in done[(m, s)] for m in methods for s in seeds):
        return  # records from before trajectories were kept
    # anytime: the mean hypervolume after each quarter of the budget; the same hypervolume with fewer epochs means
    # the pruned row reaching the unpruned row's last value early
    quarters = [budget * q / 4 for q in (1, 2, 3, 4)]
    print("mean hypervolume after " + ", ".join(f"{q:g}" for q in quarters) + " epochs:")
    for method in methods:
        print(f"  {method:<{w}}" + "  ".join(f"{statistics.mean(at(method, s, q) for s in seeds):.4f}"
                                            for q in quarters))
    # against the epochs the unpruned search itself needed for that value (often fewer than the budget)
    pairs = [(epochs_to_reach(done[(methods[1], s)]["trajectory"], a[i]),
              epochs_to_reach(done[(methods[0], s)]["trajectory"], a[i])) for i, s in enumerate(seeds)]
    line = ", ".join(f"{p}/{u}" if p is not None and p <= budget else f"-/{u}" for p, u in pairs)
    ratios = [p / u for p, u in pairs if p is not None and p <= budget]
    print(f"epochs the pruned / unpruned search needed to reach the unpruned search's hypervolume at {budget} "
          f"(per seed; -: not within the budget): {line}")
    fewer = sum(r < 1 for r in ratios)
    if ratios:
        print(f"pruned reached it in {len(ratios)} of {len(seeds)} seeds, with fewer epochs in {fewer}; pruned / "
              f"unpruned epochs {statistics.mean(ratios):.0%} on average (median {statistics.median(ratios):.0%})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default=str(Path(__file__).resolve().parents[1] / "spaces" / "resnest.yaml"))
    p.add_argument("--seeds", type=int, default=10, help="sampler seeds per method (default 10)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds run from this one (default 0)")
    p.add_argument("--record", help="append each finished search to this JSON-lines file and skip what it holds: "
                                    "a rerun resumes, and the summary covers every recorded seed")
    p.add_argument("--budget-epochs", type=int, default=48, help="training epochs each search may spend")
    p.add_argument("--factor", type=int, default=4, help="the returned architecture is judged after a complete "
                                                        "schedule this many times the proxy's (default 4)")
    p.add_argument("--judge-seeds", type=int, default=1, help="trainings (init and augmentation seeds) averaged to "
                                                               "judge a returned architecture (default 1)")
    p.add_argument("--multi-objective", action="store_true", help="compare pruning by non-dominated rank against "
                                                                  "none on val_accuracy x params instead")
    p.add_argument("--rung", type=int, help="the pruned search's first rung (search.pruner_min_epochs; "
                                            "default: the space's, and never before the end of warmup)")
    p.add_argument("--restart-at-rung", action="store_true", help="the schedule restarts at the rung "
                                                                  "(train.restart_epochs): with --multi-objective "
                                                                  "the pruned search's; alone, both methods'")
    p.add_argument("--pruner", choices=("none", "median", "successive_halving", "hyperband"),
                   help="one objective: the default search's pruner (default: the space's), to measure a "
                        "candidate default; with --restart-at-rung, successive_halving (hyperband's later "
                        "brackets start past the restart)")
    p.add_argument("--restart-unpruned", action="store_true", help="--multi-objective with --restart-at-rung: the "
                                                                   "unpruned search restarts at the rung too")
    p.add_argument("--epochs", type=int, help="epochs per full trial (default: the space's train.epochs)")
    p.add_argument("--dataset", help="dataset (default: the space's train.dataset)")
    p.add_argument("--threads", type=int, help="torch threads per process (default: the idle cores, divided "
                                               "among the workers)")
    p.add_argument("--workers", type=int, default=1, help="processes running searches side by side, e.g. one per "
                                                           "core, or many sharing a GPU (default 1); they share "
                                                           "--record (a temporary one without it)")
    p.add_argument("--verbose", action="store_true", help="print every trial")
    args = p.parse_args(argv)
    if not getattr(args, "commit", None):  # the code measured, stamped on every recorded row (its provenance)
        import subprocess

        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                              capture_output=True, text=True)
        args.commit = done.stdout.strip() or "unknown"
    if min(args.budget_epochs, args.seeds, args.factor, args.judge_seeds, args.workers) < 1:
        p.error("--budget-epochs, --seeds, --factor, --judge-seeds and --workers must be at least 1")
    if args.multi_objective and args.pruner:
        p.error("--pruner is for one objective; --multi-objective compares non-dominated-rank pruning with none")
    args.worker_index = 0
    with tempfile.TemporaryDirectory() as tmp:
        if args.workers > 1 and not args.record:
            args.record = str(Path(tmp) / "record.jsonl")  # the workers share it
        run(args)
    return 0


def run(args) -> None:
    """The comparison ``args`` asks for, in this process (a worker's share of it when ``args.worker_index``)."""
    import torch

    torch.set_num_threads(args.threads or cpu_threads(args.workers))
    spec = load_spec(args.space)
    changes = {k: v for k, v in (("epochs", args.epochs), ("dataset", args.dataset)) if v}
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, **changes))
    what = f"{args.budget_epochs} epochs per search" + ("" if args.multi_objective
                                                         else f", judged after {args.factor}x")
    if not args.worker_index:
        workers = f", {args.workers} workers" if args.workers > 1 else ""
        e, n = spec.train.epochs, args.seeds
        print(f"{spec.name} on {spec.train.dataset}: {what}, {e} epoch{'s' * (e != 1)} per full trial, {n} "
              f"seed{'s' * (n != 1)}, {torch.get_num_threads()} thread(s){' each' if workers else ''}{workers}",
              flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        (multi_objective if args.multi_objective else single_objective)(spec, args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
