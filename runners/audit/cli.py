"""``search fidelity SPACE.yaml``: the command-line face of :mod:`runners.audit.fidelity`."""

from __future__ import annotations

import dataclasses
import sys

from search_space.config import TrainConfig
from search_space.schema import SpecError, check_value, hints


def cmd_fidelity(args) -> int:
    import torch

    from runners.audit.fidelity import run_fidelity
    from runners.training.device import check_threads, cpu_threads

    check_threads(args.threads)
    if args.workers < 1:
        raise SpecError("--workers", f"{args.workers} must be at least 1")
    torch.set_num_threads(args.threads or cpu_threads(args.workers))

    def overrides(spec):
        train = spec.train
        for flag, name in (("epochs", "epochs"), ("dataset", "dataset"), ("data_dir", "data_dir"),
                           ("device", "device"), ("image_size", "image_size")):
            value = getattr(args, flag)
            if value is not None:
                f = next(f for f in dataclasses.fields(train) if f.name == name)
                value = check_value(value, hints(TrainConfig)[name], "--" + flag.replace("_", "-"), dict(f.metadata))
                train = dataclasses.replace(train, **{name: value})
        return dataclasses.replace(spec, train=train)

    try:
        report = run_fidelity(args.space, out=args.out, n=args.n, factor=args.factor, seeds=args.seeds,
                              top_k=args.top_k, overrides=overrides, workers=args.workers, threads=args.threads)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume (finished training runs are kept)", file=sys.stderr)
        return 130
    return 0 if report.get("complete") else 1


def add_parser(sub) -> None:
    p = sub.add_parser("fidelity", help="audit a space's proxy: does a short run rank as a longer one does?",
                       description="Train a random sample of feasible, in-budget architectures of SPACE.yaml with "
                                   "the proxy recipe and with a complete schedule FACTOR times longer (twice, for "
                                   "the noise ceiling), and report rank agreement, top-k overlap, regret and the "
                                   "headroom a search has over random search. Rerunning the same command resumes.")
    p.add_argument("space", help="the search space (a spec YAML file)")
    p.add_argument("--n", type=int, default=24, help="architectures to sample (default 24)")
    p.add_argument("--factor", type=int, default=4, help="the long schedule is this many times the proxy's epochs "
                                                        "(default 4)")
    p.add_argument("--seeds", type=int, default=2, help="long runs per architecture with different seeds; 2 or more "
                                                       "give the noise ceiling (default 2)")
    p.add_argument("--top-k", type=int, default=5, help="k of the top-k overlap (default 5)")
    p.add_argument("--out", help="run directory (default: runs/<name>-fidelity/)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes training runs side by side in the run directory, e.g. one per core, or several "
                        "sharing a GPU (default 1)")
    p.add_argument("--threads", type=int, help="torch threads per process on the CPU (default: the idle cores, "
                                               "divided among the workers)")
    g = p.add_argument_group("proxy recipe (override the spec's train: section)")
    g.add_argument("--epochs", type=int, help="proxy epochs (the long runs train factor x this)")
    g.add_argument("--dataset", choices=hints(TrainConfig)["dataset"].__args__)
    g.add_argument("--data-dir", help="directory of the dataset files")
    g.add_argument("--device", choices=hints(TrainConfig)["device"].__args__)
    g.add_argument("--image-size", type=int, metavar="PX", help="train every run at this size, as search run "
                   "--image-size does (default: the spec's train.image_size, else each model's input_size)")
    p.set_defaults(func=cmd_fidelity)
