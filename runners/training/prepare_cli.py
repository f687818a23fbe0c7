"""``search data prepare SRC -o OUT --size S``: make a prepared dataset (:mod:`runners.training.prepared`).

SRC is an image folder (class folders, or ``train/`` and ``test/`` each holding class folders) or CIFAR-10/100's
python batches. The result is a directory that ``--dataset prepared --data-dir OUT`` trains from, every process
mapping its one array. Options for proxy-sized copies, as NATS-Bench's ImageNet16-120 is made (the first 120
classes of ImageNet at 16x16, whole images box-filtered): ``--classes N`` (the first N classes, or a seeded
choice with ``--classes-seed``), ``--per-class M`` (a seeded, stratified subset), ``--resize squash --filter box``
and ``--grayscale``.

Rerunning the same command on an unchanged source says the output is up to date; after the source changed (or
with other options) it prepares again and replaces the output in one rename. An interrupted prepare leaves
nothing at OUT (only a hidden temporary directory, which the next run removes) and is started over.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from search_space.schema import SpecError

from .prepare import FILTERS, MAX_IMAGE_PIXELS, RESIZE_MODES, DecodeOptions, available_cores
from .prepared import is_prepared, open_prepared
from .sources import CIFAR_LAYOUT, Listing, list_source

KINDS = ("auto", "imagefolder", "cifar10", "cifar100")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("data", help="prepare a dataset once: decoded, resized, memory-mapped",
                              description="Datasets made once and mapped by every process that trains on them.")
    sub = p.add_subparsers(dest="data_command", required=True, parser_class=type(p))
    q = sub.add_parser("prepare", help="decode and resize an image folder or CIFAR batches into a prepared dataset",
                       description=__doc__.split("\n\n")[1])
    q.add_argument("src", metavar="SRC", help="image folder (class folders, or train/ and test/) or CIFAR batches")
    q.add_argument("-o", "--out", required=True, metavar="OUT", help="the prepared dataset's directory")
    q.add_argument("--size", type=int, required=True, metavar="PX", help="image side in pixels (e.g. 16, 32, 64)")
    q.add_argument("--from", dest="kind", choices=KINDS, default="auto",
                   help="what SRC holds (default: auto: CIFAR batches if found, else an image folder)")
    q.add_argument("--classes", type=int, metavar="N", help="keep N classes: the first N in sorted order (as "
                   "ImageNet16-120 keeps ImageNet's first 120), or a seeded choice with --classes-seed")
    q.add_argument("--classes-seed", type=int, metavar="SEED", help="choose the --classes at random, with this seed")
    q.add_argument("--per-class", type=int, metavar="M", help="keep at most M training images per class (a seeded, "
                   "stratified subset; a test/ folder or CIFAR test batch is kept whole)")
    q.add_argument("--val-fraction", type=float, default=0.15, metavar="F",
                   help="share of the training images held out for validation (default 0.15)")
    q.add_argument("--test-fraction", type=float, default=0.2, metavar="F",
                   help="share held out as test split where the source has none (default 0.2; fixed seed)")
    q.add_argument("--seed", type=int, default=0, help="seed of the validation split and the subsets (default 0)")
    q.add_argument("--resize", choices=RESIZE_MODES, default="crop", help="crop: shorter side to --size, centre "
                   "crop (default); squash: the whole image to a square (ImageNet16-120)")
    q.add_argument("--filter", choices=FILTERS, default="bilinear", help="resampling filter, antialiased "
                   "(default bilinear; ImageNet16-120 used box)")
    q.add_argument("--grayscale", action="store_true", help="one channel instead of RGB")
    q.add_argument("--no-draft", action="store_true", help="decode JPEGs at full scale (slower; see docs/data.md)")
    q.add_argument("--jobs", "-j", type=int, metavar="N", help=f"decode processes (default: all {available_cores()} "
                   f"cores)")
    q.add_argument("--skip-bad", action="store_true", help="leave out unreadable, truncated or oversized images "
                   "(the count and names are recorded in meta.json) instead of stopping")
    q.add_argument("--force", action="store_true", help="prepare again even when OUT is up to date")
    q.set_defaults(func=run)
    return p


def _check(args) -> None:
    def bad(flag, value, allowed):
        raise SpecError(flag, f"{value!r} is out of range; {allowed}")

    if not 1 <= args.size <= 1024:
        bad("--size", args.size, "use 1..1024 pixels")
    for flag, value in (("--classes", args.classes), ("--per-class", args.per_class)):
        if value is not None and value < 1:
            bad(flag, value, "use a positive number")
    if args.classes is not None and args.classes < 2:
        bad("--classes", args.classes, "keep at least 2 classes")
    for flag, value, low, high in (("--val-fraction", args.val_fraction, 0.01, 0.9),
                                   ("--test-fraction", args.test_fraction, 0.01, 0.9)):
        if not low <= value <= high:  # NaN fails too
            bad(flag, value, f"use {low}..{high}")
    if not 0 <= args.seed < 2**32 or (args.classes_seed is not None and not 0 <= args.classes_seed < 2**32):
        bad("--seed", args.seed, "use 0..2**32-1")
    if args.jobs is not None and not 1 <= args.jobs <= 4 * available_cores():
        bad("--jobs", args.jobs, f"use 1..{4 * available_cores()} (this machine has {available_cores()} cores)")
    if args.classes_seed is not None and args.classes is None:
        raise SpecError("--classes-seed", "chooses which --classes to keep; give --classes N too")


def detect(src: Path) -> str:
    """cifar10 or cifar100 when SRC holds their python batches (or the folder of an extracted archive), else
    imagefolder."""
    for kind, (folder, train_files, _, _, _) in CIFAR_LAYOUT.items():
        if (src / train_files[0]).is_file() or (src / folder / train_files[0]).is_file():
            return kind
    return "imagefolder"


def select_rows(labels: np.ndarray, is_test, num_classes: int, classes, classes_seed, per_class, seed: int):
    """The rows kept by ``--classes`` and ``--per-class`` (loops over classes, never over images)."""
    keep_classes = np.arange(num_classes)
    if classes is not None:
        if classes > num_classes:
            raise SpecError("--classes", f"{classes} is more than the source's {num_classes} classes")
        if classes_seed is None:
            keep_classes = keep_classes[:classes]
        else:
            keep_classes = np.sort(np.random.default_rng(classes_seed).choice(num_classes, classes, replace=False))
    rows = np.flatnonzero(np.isin(labels, keep_classes))
    if per_class is None:
        return rows
    rng = np.random.default_rng([seed, 1])
    test = np.zeros(len(labels), bool) if is_test is None else np.asarray(is_test, bool)
    kept = [rows[test[rows]]]
    train_rows = rows[~test[rows]]
    order = train_rows[rng.permutation(len(train_rows))]
    by_class = order[np.argsort(labels[order], kind="stable")]
    starts = np.searchsorted(labels[by_class], keep_classes)
    counts = np.bincount(labels[by_class], minlength=num_classes)[keep_classes]
    for start, count in zip(starts, counts):
        kept.append(by_class[start:start + min(count, per_class)])
    return np.sort(np.concatenate(kept))


def run(args: argparse.Namespace) -> int:
    from search_space.cli import writable_dir

    from .data import prepare_source
    from .sources import resolve_dir

    _check(args)
    src = resolve_dir(args.src, "give an image folder (class folders, or train/ and test/) or CIFAR batches", "SRC")
    kind = detect(src) if args.kind == "auto" else args.kind
    if kind != "imagefolder" and args.grayscale:
        raise SpecError("--grayscale", f"{kind} is prepared in colour; --grayscale is for image folders")
    listing = list_source(kind, src, "SRC")
    out = Path(args.out).expanduser().absolute()
    if out == src or src in out.parents:
        raise SpecError("--out", f"{out} is inside SRC {src}; write the prepared dataset elsewhere")
    writable_dir(out.parent, "--out")
    if out.exists() and not is_prepared(out) and (not out.is_dir() or any(out.iterdir())):
        raise SpecError("--out", f"{out} exists and is not a prepared dataset; choose a new directory (nothing there "
                                 f"is replaced)")
    opt = DecodeOptions(size=args.size, resize=args.resize, filter=args.filter,
                        channels=1 if args.grayscale else 3, draft=not args.no_draft, max_pixels=MAX_IMAGE_PIXELS)
    settings = {"kind": kind, "classes": args.classes, "classes_seed": args.classes_seed,
                "per_class": args.per_class, "resize": opt.resize, "filter": opt.filter, "channels": opt.channels,
                "draft": opt.draft, "skip_bad": args.skip_bad}
    if is_prepared(out) and not args.force and _up_to_date(out, listing, args, settings):
        print(f"{out} is up to date (same source and options); --force prepares it again", file=sys.stderr)
        return 0
    labels, is_test, num_classes = _labels(listing)
    rows = select_rows(labels, is_test, num_classes, args.classes, args.classes_seed, args.per_class, args.seed)
    meta = prepare_source(listing, out, args.size, args.val_fraction, args.test_fraction, args.seed, rows=rows,
                          relabel_classes=args.classes is not None, settings=settings, options=opt, jobs=args.jobs,
                          skip_bad=args.skip_bad, flag="SRC")
    counts = {k: b - a for k, (a, b) in meta["splits"].items()}
    skipped = meta["skipped"]["count"]
    print(f"prepared {out}: {meta['count']:,} images ({counts['train']:,} train / {counts['val']:,} val / "
          f"{counts['test']:,} test), {len(meta['classes'])} classes, {meta['channels']}x{meta['size']}x"
          f"{meta['size']}{f', {skipped:,} bad images skipped' if skipped else ''}; train with --dataset prepared "
          f"--data-dir {out}", file=sys.stderr)
    return 0


def _labels(listing: Listing):
    if listing.kind == "imagefolder":
        return listing.labels, listing.is_test, len(listing.classes)
    from .data import _cifar

    source = _cifar(listing.root, listing.kind)
    labels = np.concatenate([source.train_y.numpy(), source.test_y.numpy()])
    is_test = np.concatenate([np.zeros(len(source.train_y), bool), np.ones(len(source.test_y), bool)])
    return labels, is_test, source.num_classes


def _up_to_date(out: Path, listing: Listing, args, settings: dict) -> bool:
    try:
        meta = open_prepared(out, "--out").meta  # checked whole: a damaged OUT is prepared again
    except SpecError:
        return False
    want = {**settings, "val_fraction": args.val_fraction, "test_fraction": args.test_fraction, "seed": args.seed}
    return (meta.get("source", {}).get("fingerprint") == listing.fingerprint and meta.get("size") == args.size
            and meta.get("settings") == json.loads(json.dumps(want)))


if __name__ == "__main__":  # pragma: no cover
    from search_space.cli import main

    sys.exit(main(["data", *sys.argv[1:]]))
