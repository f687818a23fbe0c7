"""``search run SPACE.yaml`` and ``search show RUN``: the command line of the search engines.

``search run`` picks the engine (``--backend`` or ``search.backend``): :mod:`runners.search.optuna_engine` (local
processes, SQLite/journal/RDB storages) or :mod:`runners.search.ray_engine` (a Ray cluster); both evaluate candidates
with :mod:`runners.search.trial` and write results with :mod:`runners.search.results`.

Flags override the spec's ``train:`` and ``search:`` values and are checked by the same validator as the spec,
so ``--trials 0`` fails the way ``trials: 0`` would (exit 2, one line).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from search_space.config import SearchConfig, TrainConfig, check_search
from search_space.schema import SpecError, check_field, check_value, hints

# flag dest -> (section, field)
OVERRIDES = {
    "trials": ("search", "trials"), "timeout": ("search", "timeout"), "storage": ("search", "storage"),
    "study_name": ("search", "study_name"), "sampler": ("search", "sampler"), "pruner": ("search", "pruner"),
    "seed": ("search", "seed"), "final_epochs": ("search", "final_epochs"), "workers": ("search", "workers"),
    "keep_weights": ("search", "keep_weights"),
    "objectives": ("search", "objectives"), "backend": ("search", "backend"), "epochs": ("train", "epochs"),
    "dataset": ("train", "dataset"), "data_dir": ("train", "data_dir"), "device": ("train", "device"),
    "image_size": ("train", "image_size"),
    "trials_per_gpu": ("search", "trials_per_gpu"), "device_memory_mb": ("search", "device_memory_mb"),
}


def _number_or_word(text: str):
    """``--gpus-per-trial``: a number, or a word (auto) the engine judges."""
    try:
        return float(text)
    except ValueError:
        return text


def _count_or_word(text: str):
    """``--trials-per-gpu``: an integer, or a word (auto) the spec's validator judges."""
    try:
        return int(text)
    except ValueError:
        return text


def apply_overrides(spec, args):
    """The spec with the flags given on the command line written into its ``train``/``search`` sections."""
    sections = {"train": spec.train, "search": spec.search}
    for dest, (section, name) in OVERRIDES.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        obj = sections[section]
        f = next(f for f in dataclasses.fields(obj) if f.name == name)
        flag = "--" + dest.replace("_", "-")
        value = check_value(value, hints(type(obj))[name], flag, dict(f.metadata))
        sections[section] = dataclasses.replace(obj, **{name: value})
    check_search(sections["search"])  # the checks `search validate` ran, again with the flags applied
    return dataclasses.replace(spec, train=sections["train"], search=sections["search"])


def cmd_run(args) -> int:
    from search_space.spec import load_spec

    from search_space.sampling import check_feasible

    from runners.training.device import check_threads
    from runners.search.recipe import check_run_dir

    spec = apply_overrides(load_spec(args.space), args)
    check_feasible(spec)  # as `search validate` does: a space none of whose samples can be built is refused
    check_threads(args.threads)
    out = Path(args.out) if args.out else Path("runs") / spec.name
    note = check_run_dir(out, spec, continue_anyway=args.continue_anyway)  # one engine, one recipe per study
    if note:
        print(note, file=sys.stderr)
    ray_only = [flag for flag, value in (("--address", args.address), ("--gpus-per-trial", args.gpus_per_trial),
                                         ("--cpus-per-trial", args.cpus_per_trial),
                                         ("--max-concurrent", args.max_concurrent),
                                         ("--storage-path", args.storage_path)) if value is not None]
    if spec.search.backend != "ray" and ray_only:
        raise SpecError(ray_only[0], "is a Ray Tune option; add --backend ray (or search.backend: ray in the spec)")
    from runners.common.outdir import removed_if_failed

    try:
        with removed_if_failed(out):  # bad input found after the directory was made leaves none behind
            summary = _run(spec, out, args)
        if summary.get("interrupted"):
            from runners.common.signals import Interrupted

            raise Interrupted(summary["signal"]) if summary.get("signal") else KeyboardInterrupt
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP (runners.common.signals.Interrupted): 128 + the signal
        ignore_further_stops()
        print(f"interrupted{f' by {e}' if str(e).startswith('SIG') else ''}; rerun the same command to resume "
              f"(finished trials are kept in {out})", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    return 0 if summary.get("best_trial") is not None else 1


def _run(spec, out: Path, args) -> dict:
    if spec.search.backend == "ray":
        from runners.search.ray_engine import run_ray_search

        return run_ray_search(
            spec, out, spec_path=str(args.space), address=args.address,
            gpus_per_trial=args.gpus_per_trial if args.gpus_per_trial is not None else 0.0,
            cpus_per_trial=args.cpus_per_trial if args.cpus_per_trial is not None else 1.0,
            max_concurrent=args.max_concurrent, storage_path=args.storage_path)
    from runners.search.optuna_engine import run_search

    return run_search(spec, out, spec_path=str(args.space), threads=args.threads)


def ignore_further_stops() -> None:
    """The command is exiting after a stop: a late second Ctrl-C or SIGTERM is ignored from here on. Python resets
    its own handlers to the default while it shuts down, so such a signal would otherwise kill the process (exit
    -2) instead of letting it exit with 128 + the signal. CLI only: a library caller keeps its handlers."""
    import signal

    from runners.common.signals import HANDLED

    for s in HANDLED:
        try:
            signal.signal(s, signal.SIG_IGN)
        except (ValueError, OSError):  # not the main thread
            return


def cmd_show(args) -> int:
    from runners.search.results import show

    check_field(args.top, SearchConfig, "top", "--top")  # 0 or -1 would silently print another number of rows
    print(show(args.run, top=args.top))
    return 0


def _objectives(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run (or resume, or join) a search over a space (Optuna or Ray Tune)",
                       description="Run an Optuna study over SPACE.yaml. Rerunning the same command resumes it; "
                                   "the same command in several processes on a shared storage shares the trials.")
    p.add_argument("space", help="the search space (a spec YAML file)")
    g = p.add_argument_group("search (override the spec's search: section)")
    g.add_argument("--trials", type=int, help="trials in the study (completed, pruned and failed ones count)")
    g.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    g.add_argument("--sampler", choices=hints(SearchConfig)["sampler"].__args__)
    g.add_argument("--pruner", choices=hints(SearchConfig)["pruner"].__args__)
    g.add_argument("--objectives", type=_objectives, help="comma-separated: val_accuracy, params, macs, latency")
    g.add_argument("--seed", type=int, help="sampler seed")
    g.add_argument("--storage", help="Optuna storage URL: sqlite:///F.db, postgresql://..., journal:F.log, F.log "
                                     "(default: sqlite file study.db in the run directory)")
    g.add_argument("--study-name", help="study name (default: the spec's name)")
    g.add_argument("--workers", type=int, help="local worker processes sharing the study (not with SQLite)")
    g.add_argument("--final-epochs", type=int, help="train the best this many epochs at the end, scored on the test "
                                                     "split")
    g.add_argument("--keep-weights", type=int, metavar="K",
                   help="keep the trained weights of the best K complete trials (default 3; 0: none)")
    g.add_argument("--out", help="run directory (default: runs/<name>/)")
    g.add_argument("--threads", type=int, help="torch threads per worker on the CPU (default: the idle cores)")
    g.add_argument("--trials-per-gpu", type=_count_or_word, metavar="N|auto",
                   help="pack N trial processes onto the device, each admitted when its predicted training memory "
                        "fits (a ledger they share); auto: one per CPU core, at most 14 on a GPU (docs/gpus.md)")
    g.add_argument("--device-memory-mb", type=float, help="packing: MiB the ledger hands out (default: the GPU's "
                                                          "memory; needed on the CPU, where it is a made-up card)")
    g.add_argument("--backend", choices=hints(SearchConfig)["backend"].__args__,
                   help="search engine: optuna (default) or ray (Ray Tune)")
    g.add_argument("--continue-anyway", action="store_true",
                   help="resume a study although the recipe changed (epochs, dataset, image size, objectives, "
                        "budgets, the space): its old and new trials then do not compare")
    g = p.add_argument_group("Ray Tune (with --backend ray)")
    from runners.search.ray_cluster import CONNECT_TIMEOUT_S, GCS_TIMEOUT_S

    g.add_argument("--address", help=f"join a running Ray cluster: auto or HOST:PORT, refused after at most "
                                     f"{CONNECT_TIMEOUT_S + GCS_TIMEOUT_S:g} s when no Ray answers there (default: "
                                     f"start a local Ray, on loopback only)")
    g.add_argument("--gpus-per-trial", type=_number_or_word, metavar="G|auto",
                   help="GPUs per trial; fractions share a GPU (default 0); auto: the GPU memory each trial's "
                        "architecture needs, as the custom resource gpu_memory_mb (docs/gpus.md)")
    g.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (default 1)")
    g.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as the resources fit)")
    g.add_argument("--storage-path", help="where the Ray experiment lives (default: the run directory); on a "
                                          "multi-node cluster, storage every node mounts, or a cloud URI")
    g = p.add_argument_group("training (override the spec's train: section)")
    g.add_argument("--epochs", type=int, help="training epochs per trial")
    g.add_argument("--dataset", choices=hints(TrainConfig)["dataset"].__args__)
    g.add_argument("--data-dir", help="directory of the dataset files")
    g.add_argument("--device", choices=hints(TrainConfig)["device"].__args__)
    g.add_argument("--image-size", type=int, metavar="PX", help="train every trial at this size (default: the "
                   "spec's train.image_size, else each model's input_size)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("show", help="print the results table of a finished or running search")
    p.add_argument("run", help="run directory (runs/<name>/) or the spec that made it")
    p.add_argument("--top", type=int, help="rows (default: the run's search.top)")
    p.set_defaults(func=cmd_show)
