"""Does a restarted schedule give a pruner a better rung, at no cost to the long run? Compares two audits of the
same architectures: one with a plain long schedule, one with ``train.restart_epochs: [R]`` (from the kept curves,
no training).

A pruner reading a long cosine schedule after epoch R sees a high-lr snapshot; with a restart at R the first R
epochs are a complete short schedule, so the rung reads what the proxy would have given. This script reads

* the plain audit (``search fidelity SPACE --out PLAIN``): the truth (mean final accuracy over its seeds) and the
  plain schedule's accuracy after epoch R;
* the restarted audit (``search fidelity SPACE_WITH_RESTART --seeds 1 --out RESTARTED``, with the proxy runs of
  PLAIN copied in, since the proxy recipe is the same): the restarted schedule's accuracy after epoch R and at
  its end;

and prints how each rung ranks the plain truth, how many restarted runs after epoch R equal their proxy run
bitwise, and how the restarted long runs compare with the plain ones (rank agreement, mean and paired sd).

    python benchmarks/restart_rung.py PLAIN RESTARTED --at 3 --json docs/results/restart-rung-DATE.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))
from provenance import new_record, write_record  # noqa: E402

from runners.audit.stats import agreement, bootstrap_interval, spearman  # noqa: E402


def runs_of(audit: Path, kind: str) -> dict[int, list[dict]]:
    """Every finished run of ``kind`` ("proxy" or "long") per model, from ``models/<i>/<kind>-e*-s*.json``."""
    out: dict[int, list[dict]] = {}
    for path in sorted(audit.glob(f"models/*/{kind}-e*-s*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("status") == "ok":
            out.setdefault(int(path.parent.name), []).append(record)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("plain", type=Path, help="the audit with the plain long schedule (2 or more seeds)")
    p.add_argument("restarted", type=Path, help="the audit of the same architectures with train.restart_epochs")
    p.add_argument("--at", type=int, default=3, help="the restart epoch, where the rung is read (default 3)")
    p.add_argument("--json", help="write the raw record here")
    args = p.parse_args(argv)
    for audit in (args.plain, args.restarted):
        if not (audit / "models").is_dir():
            print(f"error: {audit}: no models/ folder; give a `search fidelity` run directory", file=sys.stderr)
            return 2
    plain, restarted = runs_of(args.plain, "long"), runs_of(args.restarted, "long")
    proxies = runs_of(args.restarted, "proxy")
    models = sorted(i for i in plain if i in restarted and i in proxies)
    if len(models) < 3:
        print(f"error: {len(models)} architectures have runs in both audits; at least 3 are needed", file=sys.stderr)
        return 2
    k = args.at - 1
    truth = [statistics.mean(r["val_accuracy"] for r in plain[i]) for i in models]
    plain_first = [min(plain[i], key=lambda r: r["seed"]) for i in models]
    restart_run = [min(restarted[i], key=lambda r: r["seed"]) for i in models]
    rows = {f"plain schedule after epoch {args.at}": [r["history"][k] for r in plain_first],
            f"restarted schedule after epoch {args.at}": [r["history"][k] for r in restart_run]}
    record = new_record(__file__, argv, with_machine=False, plain=str(args.plain), restarted=str(args.restarted),
                        at=args.at, n=len(models), rungs={})
    print(f"{len(models)} architectures; the truth: the plain {len(plain_first[0]['history'])}-epoch runs' mean "
          f"final accuracy over {min(len(plain[i]) for i in models)} seed(s)")
    print(f"{'what a pruner reads, against the truth':<40} {'Spearman [95% CI]':<22} {'Kendall':<8} top-5")
    for name, values in rows.items():
        a = agreement(values, truth, 5)
        record["rungs"][name] = a
        print(f"{name:<40} {a['spearman']:.2f} [{a['spearman_ci'][0]:.2f}, {a['spearman_ci'][1]:.2f}]"
              f"{'':<6} {a['kendall']:<8.2f} {a['top_k_overlap']}/{a['top_k']}")
    same = sum(r["history"][k] == proxies[i][0]["val_accuracy"] for r, i in zip(restart_run, models))
    record["bitwise_equal_to_proxy"] = same
    print(f"restarted runs whose accuracy after epoch {args.at} equals their proxy run's bitwise: {same} of "
          f"{len(models)}")
    final_restart = [r["val_accuracy"] for r in restart_run]
    final_plain = [r["val_accuracy"] for r in plain_first]
    lo, hi = bootstrap_interval(final_restart, truth)
    diffs = [a - b for a, b in zip(final_restart, final_plain)]
    long = record["long_runs"] = {
        "spearman_vs_truth": spearman(final_restart, truth), "spearman_ci": [lo, hi],
        "mean_restarted": statistics.mean(final_restart), "mean_plain_same_seed": statistics.mean(final_plain),
        "mean_plain_truth": statistics.mean(truth), "mean_difference": statistics.mean(diffs),
        "paired_sd": statistics.stdev(diffs)}
    print(f"restarted long runs against the truth: Spearman {long['spearman_vs_truth']:.2f} [{lo:.2f}, {hi:.2f}]; "
          f"mean final accuracy {long['mean_restarted']:.3f} against {long['mean_plain_same_seed']:.3f} for the "
          f"plain run of the same seed (difference {long['mean_difference']:+.3f}, paired sd "
          f"{long['paired_sd']:.3f})")
    if args.json:
        write_record(args.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
