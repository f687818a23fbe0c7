"""Training-step speed of the compiled zoo models against a plain reference implementation, on the CPU.

For every zoo spec (``spaces/zoo/<name>.yaml``) this builds our model with ``build_model`` and the same network
from timm (``timm.create_model(name, pretrained=False)``) or, without timm, from torchvision (resnet18, resnet50,
resnext50_32x4d). Both run in train mode (BatchNorm in training) on the same seeded input, and one iteration is
a full training step without the optimiser: zero the grads, forward, cross-entropy, backward. Warmup iterations
are not timed; then the two implementations alternate over several rounds (the order flips every round, so
neither always runs on a cache the other warmed) and each side's time is the median over the rounds. By default
torch runs one thread and the clock is the process's CPU time: on a small machine that other processes share,
elapsed time with two OpenMP threads swings by tens of percent from round to round (ratios of 0.76 and 1.54 for
the same model in two runs), while one thread's CPU time repeats within about 3 %.

Per model it prints our ms/iter, the reference ms/iter, ``ratio = reference / ours`` (>= 1.0: we are as fast or
faster) and whether the two have the same parameter count. The goal is that compiling a spec costs nothing: every
ratio should be about 1.0 (within the noise, a few percent), and a ratio clearly below 1.0 points at a block's
forward worth profiling.

Exit status: 0 when every model built and, where a reference exists, has the reference's parameter count (a
missing timm/torchvision only prints how to install it); 1 when a model failed to build or run, or the parameter
counts differ; 2 for an unknown model name. Setup (a venv with timm) and sample output: docs/benchmarks/scripts.md.

    python benchmarks/zoo_speed.py                                  # every zoo spec, batch 8 at 3x128x128
    python benchmarks/zoo_speed.py --threads 0 --clock wall         # all cores, elapsed time (idle machine only)
    python benchmarks/zoo_speed.py --models resnet50 seresnet50 --rounds 15 --channels-last
    python benchmarks/zoo_speed.py --json docs/results/zoo-speed-DATE.json    # and the raw record
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "spaces" / "zoo"
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from search_space import build_model, load_spec  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from provenance import new_record, write_record  # noqa: E402

TORCHVISION_MODELS = ("resnet18", "resnet50", "resnext50_32x4d")
INSTALL_HINT = ("no reference implementation: install timm (every zoo model) or torchvision (resnet18, resnet50, "
                "resnext50_32x4d), e.g. in a separate venv, see docs/benchmarks/scripts.md:\n"
                "    python3 -m venv /work/venv-bench && /work/venv-bench/bin/pip install torch==2.14.1 "
                "torchvision==0.29.1 timm pyyaml numpy\n"
                "    /work/venv-bench/bin/pip install -e . --no-deps")


def reference_factory():
    """(library name, callable name -> module or None), or (None, None) when neither timm nor torchvision imports."""
    try:
        import timm
    except Exception:  # noqa: BLE001 - a broken install counts as missing
        timm = None
    if timm is not None:
        names = set(timm.list_models())
        return f"timm {timm.__version__}", lambda n: timm.create_model(n, pretrained=False) if n in names else None
    try:
        import torchvision
        from torchvision import models
    except Exception:  # noqa: BLE001
        return None, None
    return (f"torchvision {torchvision.__version__}",
            lambda n: getattr(models, n)(weights=None) if n in TORCHVISION_MODELS else None)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def make_step(model, x, target):
    def step():
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), target)
        loss.backward()
    return step


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_iters(step, iters: int, clock=time.perf_counter) -> float:
    """Milliseconds per iteration over ``iters`` back-to-back iterations."""
    t0 = clock()
    for _ in range(iters):
        step()
    return (clock() - t0) * 1000.0 / iters


def bench_pair(steps: dict, warmup: int, iters: int, rounds: int, clock=time.perf_counter) -> dict:
    """Median ms/iter of each step; the steps alternate and their order flips every round."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {k: [] for k in steps}
    order = list(steps)
    for r in range(rounds):
        for k in (order if r % 2 == 0 else order[::-1]):
            times[k].append(time_iters(steps[k], iters, clock))
    return {k: statistics.median(v) for k, v in times.items()}


def zoo_names() -> list[str]:
    return sorted(p.stem for p in ZOO.glob("*.yaml"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=None, metavar="NAME",
                   help="zoo spec names (spaces/zoo/NAME.yaml; commas also separate); default: every zoo spec")
    p.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--size", type=int, default=128, help="input height = width (default 128)")
    p.add_argument("--iters", type=int, default=1, help="timed iterations per round (default 1)")
    p.add_argument("--rounds", type=int, default=9, help="alternating rounds; the median is reported (default 9)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations per model before timing (default 1)")
    p.add_argument("--channels-last", action="store_true", help="models and input in channels_last memory format")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (default 1; 0: torch's own default, all cores)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                   help="cpu (default): this process's CPU time, summed over its threads, which other processes "
                   "competing for the cores disturb much less; wall: elapsed time (on an idle machine, with "
                   "--threads 0, to time multi-threaded runs)")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed for weights, input and targets")
    p.add_argument("--json", help="write the raw record (every model's times, versions, machine, commit) here")
    args = p.parse_args(argv)
    if args.models:
        args.models = [n for m in args.models for n in m.split(",") if n]
    for name in ("batch", "size", "iters", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or args.threads < 0:
        p.error("--warmup and --threads must be at least 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.models or zoo_names()
    unknown = [n for n in names if not (ZOO / f"{n}.yaml").is_file()]
    if unknown:
        print(f"unknown zoo model(s): {', '.join(unknown)}; known: {', '.join(zoo_names())}", file=sys.stderr)
        return 2
    lib, make_reference = reference_factory()
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, reference: {lib or 'none'}; "
          f"train step (forward + cross-entropy + backward, train-mode BN) on CPU, batch {args.batch} at "
          f"3x{args.size}x{args.size}{', channels_last' if args.channels_last else ''}; "
          f"{args.warmup} warmup + median of {args.rounds} alternating rounds x {args.iters} iters, "
          f"{args.clock} clock")
    if lib is None:
        print(INSTALL_HINT)

    record = new_record(__file__, argv, reference=lib, threads=torch.get_num_threads(), models=[],
                        settings={k: getattr(args, k) for k in ("batch", "size", "iters", "rounds", "warmup",
                                                                "channels_last", "clock", "seed")})
    header = f"{'model':<20} {'ours ms':>9} {'ref ms':>9} {'ratio':>6}  {'params ours':>12} {'params ref':>12}  check"
    print(header)
    print("-" * len(header))
    failed, rows = False, []
    for name in names:
        try:
            arch = load_spec(ZOO / f"{name}.yaml").model
            torch.manual_seed(args.seed)
            ours = build_model(arch)
            torch.manual_seed(args.seed)
            ref = make_reference(name) if make_reference else None
            models = {"ours": ours} if ref is None else {"ours": ours, "ref": ref}
            torch.manual_seed(args.seed)
            x = torch.randn(args.batch, arch.in_channels or 3, args.size, args.size).contiguous(memory_format=fmt)
            target = torch.randint(0, arch.num_classes or 1000, (args.batch,))
            steps = {k: make_step(m.train().to(memory_format=fmt), x, target) for k, m in models.items()}
            ms = bench_pair(steps, args.warmup, args.iters, args.rounds, CLOCKS[args.clock])
        except Exception as e:  # noqa: BLE001 - report and go on with the next model
            print(f"{name:<20} FAILED: {type(e).__name__}: {e}")
            record["models"].append({"model": name, "result": f"FAILED: {type(e).__name__}: {e}"})
            failed = True
            continue
        p_ours = n_params(ours)
        if ref is None:
            why = ("no reference: no timm model of this name" if lib and lib.startswith("timm")
                   else "no reference (install timm)" if lib else "no reference")
            print(f"{name:<20} {ms['ours']:9.1f} {'-':>9} {'-':>6}  {p_ours:>12,} {'-':>12}  {why}")
            record["models"].append({"model": name, "ours_ms": ms["ours"], "params": p_ours, "result": why})
        else:
            p_ref = n_params(ref)
            same = p_ours == p_ref
            failed |= not same
            ratio = ms["ref"] / ms["ours"]
            rows.append(ratio)
            check = "params match" if same else f"PARAMS DIFFER by {p_ours - p_ref:+,}"
            print(f"{name:<20} {ms['ours']:9.1f} {ms['ref']:9.1f} {ratio:6.2f}  {p_ours:>12,} {p_ref:>12,}  {check}")
            record["models"].append({"model": name, "ours_ms": ms["ours"], "ref_ms": ms["ref"], "ratio": ratio,
                                     "params": p_ours, "params_ref": p_ref, "result": check})
        sys.stdout.flush()
        del ours, ref, models, steps
        gc.collect()
    if rows:
        geo = statistics.geometric_mean(rows)
        print(f"geometric mean ratio (reference / ours) over {len(rows)} models: {geo:.2f}")
        record["geometric_mean_ratio"] = geo
    if args.json:
        write_record(args.json, record)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
