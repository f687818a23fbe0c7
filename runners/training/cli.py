"""``search train ARCH.yaml``: train one fixed architecture with its spec's recipe and save the result.

Flags override the spec's ``train:`` section and are validated by the same rules as the YAML. Everything the
run produces goes to one directory (default ``runs/train-<name>/``): ``weights.pt`` (a ``state_dict``;
``torch.load(path, weights_only=True)`` reads it), ``metrics.json`` and ``arch.yaml`` (the architecture with
the recipe actually used, so ``search train runs/train-x/arch.yaml`` repeats the run).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

from search_space.cli import writable_dir
from search_space.config import DATASETS, TrainConfig
from search_space.schema import SpecError, check_value

from runners.common.progress import Progress, bar, count, duration

# flag -> TrainConfig field it overrides
OVERRIDES = {"dataset": "dataset", "data_dir": "data_dir", "epochs": "epochs", "batch_size": "batch_size",
             "lr": "lr", "image_size": "image_size", "device": "device", "seed": "seed",
             "time_budget": "time_budget", "train_fraction": "train_fraction"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train one architecture (a spec with no choices left)",
                              description="Train one architecture with its spec's recipe (flags override it) and "
                              "save weights.pt, metrics.json and arch.yaml in one directory.")
    p.add_argument("arch", metavar="ARCH.yaml", help="architecture spec; draw one from a space with `search sample`")
    p.add_argument("--dataset", choices=DATASETS, help="dataset (default: the spec's train.dataset)")
    p.add_argument("--data-dir", metavar="DIR", help="directory of cifar10/cifar100 batches or of class folders")
    p.add_argument("--epochs", type=int, metavar="N", help="training epochs")
    p.add_argument("--batch-size", type=int, metavar="N", help="images per step")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--image-size", type=int, metavar="PX", help="train at this size (default: the model's input_size)")
    p.add_argument("--device", choices=("auto", "cuda", "mps", "cpu"), help="device (default: auto)")
    p.add_argument("--seed", type=int, metavar="N", help="seed for split, init and augmentation")
    p.add_argument("--time-budget", type=float, metavar="SECONDS", help="stop training after this long")
    p.add_argument("--train-fraction", type=float, metavar="F", help="train on this share of the training rows")
    p.add_argument("--out", metavar="DIR", help="output directory (default: runs/train-<name>/)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """0: trained; 1: training failed (diverged, out of memory, model error); 130: interrupted.
    Bad input raises :class:`SpecError`, which the ``search`` command turns into exit code 2."""
    from search_space.spec import choices_in, load_spec

    from runners.training.data import load_dataset
    from runners.training.device import cpu_threads, resolve_device
    from runners.training.loop import save_run, train
    from runners.search.trial import with_io

    spec = load_spec(args.arch)
    if not spec.is_fixed():
        raise SpecError(choices_in(spec)[0], f"{args.arch} is a search space (this is still a choice); draw one "
                        f"architecture first: `search sample {args.arch} -o arch.yaml`, then train arch.yaml")
    config = apply_overrides(spec.train, args)
    out = writable_dir(Path(args.out) if args.out else Path("runs") / f"train-{spec.name}")  # before training
    device = resolve_device(config.device)
    if device.type == "cpu":
        import torch

        torch.set_num_threads(cpu_threads())  # the cores other processes leave idle (see cpu_threads)
    data = load_dataset(config, config.image_size or spec.model.input_size)

    progress = Progress()
    progress.line(f"train {spec.name}: {data.summary()}; {config.epochs} epochs on {device}")

    def report(epoch: int, m: dict) -> None:
        progress.line(f"epoch {epoch}/{config.epochs}  train loss {m['train_loss']:.4f}  "
                      f"val acc {m['val_accuracy']:.2%}  {count(m['images_per_s'])} img/s  "
                      f"{duration(m['seconds'])}")

    def on_step(epoch: int, step: int, steps: int) -> None:
        progress.status(f"epoch {epoch}/{config.epochs} {bar(step, steps)} step {step}/{steps}")

    result = train(spec.model, config, report=report, data=data, device=device, evaluate_test=True,
                   on_step=on_step)
    progress.clear()

    trained = with_io(dataclasses.replace(spec, train=config), data.channels, data.num_classes)  # the data's shape
    saved = save_run(out, trained, result, name=spec.name, arch=str(args.arch),
                     dataset=data.summary(), image_size=data.image_size, config=dataclasses.asdict(config))

    where = f"saved {', '.join(saved)} in {out}"
    if result.status in ("ok", "stopped"):
        note = f" ({result.reason})" if result.reason else ""
        test = "n/a" if result.test_accuracy is None else f"{result.test_accuracy:.2%}"
        progress.line(f"done{note}: val acc {_pct(result.val_accuracy)} (best {_pct(result.best_val_accuracy)}), "
                      f"test acc {test}, {duration(result.seconds)}, {result.params:,} params")
        progress.line(where)
        return 0
    if result.status == "interrupted":
        progress.line(f"{result.reason}; {where}")
        return 130
    progress.line(f"training failed ({result.status}): {result.reason}")
    progress.line(where)
    return 1


def apply_overrides(config: TrainConfig, args: argparse.Namespace) -> TrainConfig:
    """The spec's recipe with the flags given, each checked like the YAML value it replaces."""
    hints = typing.get_type_hints(TrainConfig)
    meta = {f.name: dict(f.metadata) for f in dataclasses.fields(TrainConfig)}
    changes = {}
    for flag, name in OVERRIDES.items():
        value = getattr(args, flag, None)
        if value is not None:
            changes[name] = check_value(value, hints[name], "--" + flag.replace("_", "-"), meta[name])
    return dataclasses.replace(config, **changes)


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.2%}"
