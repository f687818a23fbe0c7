"""Make a benchmark image folder of photo-sized JPEGs from scikit-learn's digits (no download).

``python benchmarks/make_image_folder.py OUT`` writes 50,000 JPEGs in 100 class folders (``OUT/<class>/*.jpg``;
``--split`` writes ``OUT/train/`` and ``OUT/test/``), each 256-500 pixels a side, so that decoding one costs what
decoding a real photo of that size costs. The class is a two-digit number ("00" to "99"): the two digits, drawn
from scikit-learn's 1,797 real 8x8 digits, upsampled, coloured and placed side by side at a random height over a
smooth coloured background with film-grain noise (the noise makes the JPEGs as large and as slow to decode as
photos: a flat image would decode far faster than a real one).

Deterministic: image ``i`` depends only on ``i`` and ``--seed``, so a rerun rewrites the same files, and an
interrupted run is finished by running it again (files already there are kept). Images are made in parallel over
``--jobs`` processes (default: all cores). Prints images/s and the folder's size at the end.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np

_DIGITS = None


def _digits():
    global _DIGITS
    if _DIGITS is None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        _DIGITS = (bunch.images.astype(np.float32) / 16.0, bunch.target.astype(np.int64))
    return _DIGITS


def make_image(i: int, seed: int, classes: int) -> tuple[int, np.ndarray]:
    """(class, H x W x 3 uint8 image) of image ``i``: deterministic in (i, seed)."""
    from PIL import Image

    images, labels = _digits()
    rng = np.random.default_rng([seed, i])
    label = i % classes
    left, right = divmod(label, 10) if classes > 10 else (rng.integers(10), label)
    w, h = (int(v) for v in rng.integers(256, 501, size=2))
    # background: a smooth colour gradient with low-frequency blobs
    coarse = rng.uniform(30, 200, size=(4, 4, 3)).astype(np.float32)
    bg = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC), np.float32)
    canvas = bg.copy()
    half = w // 2
    for k, digit in enumerate((left, right)):
        choices = np.flatnonzero(labels == digit)
        glyph = images[rng.choice(choices)]
        side = int(min(half, h) * rng.uniform(0.6, 0.95))
        g = Image.fromarray((glyph * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BICUBIC)
        g = np.asarray(g, np.float32)[..., None] / 255.0
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        x0 = k * half + int(rng.integers(0, max(1, half - side + 1)))
        y0 = int(rng.integers(0, max(1, h - side + 1)))
        region = canvas[y0:y0 + side, x0:x0 + side]
        canvas[y0:y0 + side, x0:x0 + side] = region * (1 - g) + colour * g
    canvas += rng.normal(0, 12, size=canvas.shape).astype(np.float32)  # grain: photos are not flat
    return label, np.clip(canvas, 0, 255).astype(np.uint8)


def _path(out: Path, i: int, n: int, classes: int, split: bool, test_share: float) -> Path:
    label = i % classes
    name = f"{label:02d}" if classes <= 100 else str(label)
    if split:
        part = "test" if (i // classes) < int(round(n / classes * test_share)) else "train"
        return out / part / name / f"{i:06d}.jpg"
    return out / name / f"{i:06d}.jpg"


def _work(task) -> int:
    from PIL import Image

    out, start, stop, n, classes, seed, split, quality, test_share = task
    made = 0
    for i in range(start, stop):
        path = _path(Path(out), i, n, classes, split, test_share)
        if path.exists():
            continue
        _, image = make_image(i, seed, classes)
        tmp = path.with_suffix(".tmp")
        Image.fromarray(image).save(tmp, format="JPEG", quality=quality)
        os.replace(tmp, path)  # a killed run never leaves a half-written .jpg
        made += 1
    return stop - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="folder to write (created)")
    p.add_argument("--images", type=int, default=50_000, help="number of images (default 50,000)")
    p.add_argument("--classes", type=int, default=100, help="classes (default 100: two-digit numbers)")
    p.add_argument("--split", action="store_true", help="write train/ and test/ (1/6 of each class in test/)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)), help="processes (default: all cores)")
    args = p.parse_args(argv)
    if args.images < 2 * args.classes or not 2 <= args.classes <= 100:
        p.error("--classes must be 2..100 and --images at least twice --classes")
    out = Path(args.out)
    test_share = 1 / 6
    for i in range(args.classes):
        for part in (("train", "test") if args.split else ("",)):
            (out / part / f"{i:02d}").mkdir(parents=True, exist_ok=True)
    chunk = 250
    tasks = [(str(out), s, min(s + chunk, args.images), args.images, args.classes, args.seed, args.split,
              args.quality, test_share) for s in range(0, args.images, chunk)]
    t0 = time.perf_counter()
    done = 0
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        for k in pool.imap_unordered(_work, tasks):
            done += k
            rate = done / (time.perf_counter() - t0)
            print(f"\r{done:,}/{args.images:,} images, {rate:,.0f}/s, {(args.images - done) / rate:,.0f}s left ",
                  end="", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in out.rglob("*.jpg"))
    print(file=sys.stderr)
    print(json.dumps({"out": str(out), "images": args.images, "classes": args.classes, "seconds": round(seconds, 1),
                      "images_per_s": round(args.images / seconds, 1), "megabytes": round(size / 2**20, 1),
                      "jobs": args.jobs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
