"""The ``search`` command: validate, compile, sample, train, run, show.

Bad input (a spec, a path, an argument) exits 2 with one line on stderr and no traceback; an unexpected error
exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from .schema import SpecError, check_field, one_line

# Subcommands that live with their concept: module path -> (add_parser, run) by convention.
EXTERNAL_COMMANDS = ("runners.training.cli", "runners.search.cli", "runners.report.cli", "search_space.export",
                     "search_space.json_schema", "runners.audit.cli", "runners.training.prepare_cli")


def fmt_int(n: int) -> str:
    return f"{n:,}"


def fmt_macs(n: int) -> str:
    return f"{n / 1e9:.3f} G" if n >= 1e8 else f"{n / 1e6:.2f} M"


def fmt_bytes(n: int) -> str:
    """Binary units (MiB: what a GPU's memory is quoted in), one decimal."""
    for unit, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} "


def writable_dir(path: str | Path, flag: str = "--out") -> Path:
    """Create the output directory a command will write into, before any work, so an unwritable one is bad
    input (exit 2) now rather than a failure after training."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SpecError(flag, f"{path}: cannot create the directory ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise SpecError(flag, f"{path}: the directory is not writable")
    return path


def write_output(path: str, text: str, flag: str = "--output") -> None:
    """Write a file the user asked for; a path that cannot be written is bad input (exit 2), not a traceback."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise SpecError(flag, f"{path}: cannot write ({e.strerror or e})") from None


def sample_feasible(spec, seed: int, tries: int = 200):
    """Draw from a seeded random sampler until a sample can be built; deterministic for a seed."""
    from .sampling import InfeasibleSample, RandomSuggester, sample

    suggester = RandomSuggester(seed)
    last = None
    for _ in range(tries):
        try:
            return sample(spec, suggester)
        except InfeasibleSample as e:
            last = e
    raise SpecError(last.path, f"{tries} random samples were infeasible; the last: {last.message}")


def load_fixed(path: str, sample_seed: int | None = None):
    from .spec import load_spec

    spec = load_spec(path)
    if sample_seed is not None:
        return sample_feasible(spec, sample_seed) if not spec.is_fixed() else spec
    if not spec.is_fixed():
        from .spec import choices_in

        raise SpecError(choices_in(spec)[0], f"{path} is a search space (this is a choice); "
                                             f"use --sample --seed N, or `search sample {path} -o arch.yaml`")
    return spec


def cmd_validate(args) -> int:
    from .sampling import check_feasible, warm_starts
    from .spec import choices_in, load_spec

    spec = load_spec(args.spec)
    warm_starts(spec)  # as `search run` checks them: each a valid, fixed architecture
    check_feasible(spec)  # as `search run` does: a space none of whose samples can be built is refused
    left = choices_in(spec)
    if left:
        print(f"{args.spec}: valid search space '{spec.name}' with {len(left)} choice(s): "
              f"{', '.join(left[:8])}{' ...' if len(left) > 8 else ''}")
    else:
        from .cost import architecture_cost

        cost = architecture_cost(spec.model)
        print(f"{args.spec}: valid architecture '{spec.name}': {fmt_int(cost.params)} parameters, "
              f"{fmt_macs(cost.macs)}MACs at {spec.model.input_size}x{spec.model.input_size}")
    return 0


def cmd_compile(args) -> int:
    import torch

    from .compiler import build_model
    from .config import SearchConfig, TrainConfig
    from .cost import architecture_cost
    from .spec import ModelSpec, check_limits

    for name in ("input_size", "in_channels", "num_classes"):  # checked as the spec fields they override
        check_field(getattr(args, name), ModelSpec, name, "--" + name.replace("_", "-"))
    check_field(args.seed, SearchConfig, "seed", "--seed")
    check_field(args.batch, TrainConfig, "batch_size", "--batch")
    spec = load_fixed(args.spec, args.seed if args.sample else None)
    arch = spec.model
    size = args.input_size if args.input_size is not None else arch.input_size
    cost = architecture_cost(arch, input_size=size, in_channels=args.in_channels, num_classes=args.num_classes)
    check_limits(cost)
    model = build_model(arch, in_channels=args.in_channels, num_classes=args.num_classes)
    n_params = sum(p.numel() for p in model.parameters())
    ci, h, w = cost.input_shape
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, ci, h, w))
    if n_params != cost.params:  # the cost model and the module must agree; say so loudly if they do not
        print(f"warning: cost model counts {fmt_int(cost.params)} parameters", file=sys.stderr)
        return 1
    from .memory import saved_by_part, saved_tensors, train_memory_json

    batch = args.batch if args.batch is not None else spec.train.batch_size
    io = dict(input_size=size, in_channels=args.in_channels, num_classes=args.num_classes)
    memory = train_memory_json(arch, batch, optimizer=spec.train.optimizer, momentum=spec.train.momentum, **io)
    if args.json:
        print(json.dumps({"name": spec.name, "input_shape": list(cost.input_shape), "params": cost.params,
                          "macs": cost.macs, "output_shape": list(out.shape[1:]), "train_memory": memory}))
        return write_arch(spec, args)
    saved = saved_by_part(saved_tensors(arch, batch, **io)) if args.batch is not None else None
    rows = [("part", "blocks", "types", "width", "params", "MACs")
            + (("saved (fp32)",) if saved else ()) + ("output",)]
    for k, r in enumerate(cost.rows):
        types = ",".join(sorted(set(r.types), key=r.types.index))
        rows.append((r.name, str(r.depth), types, str(r.width), fmt_int(r.params), fmt_macs(r.macs))
                    + ((fmt_bytes(saved[k]),) if saved else ()) + ("x".join(map(str, r.out_shape)),))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"{spec.name}: input {ci}x{h}x{w}")
    for k, r in enumerate(rows):
        print("  ".join(c.ljust(wd) if i < 3 else c.rjust(wd) for i, (c, wd) in enumerate(zip(r, widths))))
        if k == 0:
            print("  ".join("-" * wd for wd in widths))
    print(f"total: {fmt_int(n_params)} parameters, {fmt_macs(cost.macs)}MACs, output {tuple(out.shape)}")
    if args.batch is not None:
        for label, m in (("fp32", memory), ("bf16 autocast", memory["bf16"])):
            print(f"train memory, batch {batch} at {size}x{size}, {label}, {m['optimizer']}: "
                  f"{fmt_bytes(m['total_bytes'])}B (saved for backward {fmt_bytes(m['activation_bytes'])}B, "
                  f"weights + grads {fmt_bytes(m['param_bytes'] + m['grad_bytes'])}B, "
                  f"optimizer {fmt_bytes(m['optimizer_bytes'])}B)")
    return write_arch(spec, args)


def write_arch(spec, args) -> int:
    if args.output:
        from .spec import dump_spec

        write_output(args.output, dump_spec(spec))
    return 0


def cmd_sample(args) -> int:
    from .config import SearchConfig
    from .spec import dump_spec, load_spec

    check_field(args.seed, SearchConfig, "seed", "--seed")
    spec = load_spec(args.space)
    text = dump_spec(sample_feasible(spec, args.seed))
    if args.output:
        write_output(args.output, text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


class Parser(argparse.ArgumentParser):
    """argparse with the project's exit code 2 and a one-line message."""

    def error(self, message):
        self.exit(2, f"error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="search", description="Declarative architecture search over the ResNet family.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("validate", help="check a spec and say what it is")
    p.add_argument("spec", help="a spec file (a search space or an architecture)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("compile", help="build an architecture and print its per-stage table")
    p.add_argument("spec", help="an architecture file (or a space, with --sample)")
    p.add_argument("--input-size", type=int, help="input height = width (default: the spec's input_size)")
    p.add_argument("--in-channels", type=int, help="input channels (default: the spec's, or 3)")
    p.add_argument("--num-classes", type=int, help="classes (default: the spec's, or 1000)")
    p.add_argument("--sample", action="store_true", help="sample a search space first (with --seed)")
    p.add_argument("--seed", type=int, default=0, help="seed for --sample")
    p.add_argument("-o", "--output", help="also write the (sampled) architecture YAML here")
    p.add_argument("--batch", type=int, help="print training memory at this batch size (a column of what autograd "
                   "saves per part, and totals for fp32 and bf16 autocast; default for --json: train.batch_size)")
    p.add_argument("--json", action="store_true", help="print one JSON object (params, macs, train_memory) instead "
                   "of the table")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("sample", help="draw one architecture from a search space")
    p.add_argument("space", help="a search space file")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed: one seed, one architecture")
    p.add_argument("-o", "--output", help="write the architecture YAML here (default: stdout)")
    p.set_defaults(func=cmd_sample)

    for module in EXTERNAL_COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        mod.add_parser(sub)
    return parser


def given_paths(args) -> list[Path]:
    """Every string argument of the command line, read as a path (spec files, --out, -o, --data-dir ...)."""
    values = [v for v in vars(args).values() if isinstance(v, (str, Path))]
    return [Path(v).absolute() for v in values if str(v)]


def user_path_error(e: OSError, args) -> str | None:
    """'PATH: reason' when ``e`` is about a path the user gave (or a file under it), else None."""
    for name in (e.filename, e.filename2):
        if name is None or not isinstance(name, (str, bytes, Path)):
            continue
        failed = Path(os.fsdecode(name)).absolute()
        if any(failed == p or p in failed.parents for p in given_paths(args)):
            return f"{os.fsdecode(name)}: {e.strerror or e}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:  # an unwritable --out, a full disk under it ...: the user's path, so bad input
        line = user_path_error(e, args)
        if line is None:
            raise
        print(f"error: {one_line(line)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
