"""What does an engine cost per trial? The Optuna and Ray Tune engines on the same space and budget.

Both engines run the same tiny space for ``--trials`` one-epoch trials on synthetic data, one trial at a time, so
each trial's training is short and the rest of its wall time is the engine's: sampling, bookkeeping, writing
``trials/<n>/``, and for Ray the trial's actor and result reporting. The overhead per trial is

    (wall time of the search - the trials' own training seconds) / trials

measured after the engine is up (Ray's start-up is reported separately, as is the whole search's wall time).

    python benchmarks/engine_overhead.py --trials 20 --json docs/results/engine-overhead-DATE.json
    python benchmarks/engine_overhead.py --trials 20 --no-reuse-actors    # what the engine's reuse_actors saves

``--no-reuse-actors`` turns Ray Tune's actor reuse off for this run only (each trial in a new worker process,
which imports torch and builds its data again), to measure what the engine's ``reuse_actors=True`` saves.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from provenance import new_record, write_record

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SPACE = """
name: overhead
model:
  input_size: 8
  stem: {type: cifar, width: 8}
  stages:
    - depth: {int: [1, 2]}
      width: {choice: [8, 16]}
      block: {type: {choice: [plain, se, split_attention]}, bottleneck_ratio: 0.5, radix: 2}
train: {dataset: synthetic, synthetic_samples: 256, synthetic_classes: 4, synthetic_channels: 1, epochs: 1,
        batch_size: 64, warmup_epochs: 0, lr: {float: [0.05, 0.3], log: true}}
search: {trials: 20, sampler: tpe, pruner: none}
"""


def trained_seconds(out: Path) -> float:
    return sum(json.loads(p.read_text()).get("train_seconds") or 0.0 for p in (out / "trials").glob("*/metrics.json"))


def main() -> int:
    import dataclasses

    import torch

    from runners.search.optuna_engine import run_search
    from runners.common.progress import Progress
    from runners.search.ray_engine import connect, run_ray_search
    from search_space.spec import parse_spec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--json", help="write the raw record (every time, the machine, the commit) here")
    ap.add_argument("--no-reuse-actors", action="store_true",
                    help="Ray Tune without actor reuse (a new worker process per trial), to measure what reuse saves")
    args = ap.parse_args()
    if args.no_reuse_actors:
        from ray import tune

        config = tune.TuneConfig
        tune.TuneConfig = lambda **kw: config(**{**kw, "reuse_actors": False})  # this process's searches only
    record = new_record(__file__, trials=args.trials, threads=1, ray_reuse_actors=not args.no_reuse_actors)
    torch.set_num_threads(1)
    import yaml

    spec = parse_spec(yaml.safe_load(textwrap.dedent(SPACE)))
    spec = dataclasses.replace(spec, search=dataclasses.replace(spec.search, trials=args.trials))
    quiet = Progress(stream=io.StringIO(), tty=False)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "optuna"
        t0 = time.perf_counter()
        run_search(spec, out, progress=quiet, threads=1)
        wall = time.perf_counter() - t0
        rows["optuna"] = (wall, trained_seconds(out), 0.0)

        t0 = time.perf_counter()
        connect(None, 2)
        startup = time.perf_counter() - t0
        out = Path(tmp) / "ray"
        t0 = time.perf_counter()
        run_ray_search(dataclasses.replace(spec, search=dataclasses.replace(spec.search, backend="ray")), out,
                       progress=quiet, max_concurrent=1)
        wall = time.perf_counter() - t0
        rows["ray"] = (wall, trained_seconds(out), startup)

    print(f"{args.trials} one-epoch trials, one at a time, 1 torch thread"
          f"{'; Ray without actor reuse' if args.no_reuse_actors else ''}")
    print(f"{'engine':<8} {'wall s':>8} {'trained s':>10} {'overhead s/trial':>17} {'start-up s':>11}")
    per = {}
    for name, (wall, trained, startup) in rows.items():
        per[name] = (wall - trained) / args.trials
        print(f"{name:<8} {wall:>8.1f} {trained:>10.1f} {per[name]:>17.3f} {startup:>11.1f}")
    ratio = per['ray'] / max(per['optuna'], 1e-9)
    print(f"ratio ray / optuna overhead per trial: {ratio:.1f}x")
    if args.json:
        record["engines"] = {name: {"wall_seconds": round(wall, 3), "trained_seconds": round(trained, 3),
                                    "overhead_seconds_per_trial": round(per[name], 4),
                                    "startup_seconds": round(startup, 3)}
                             for name, (wall, trained, startup) in rows.items()}
        record["ray_over_optuna"] = round(ratio, 3)
        write_record(args.json, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
