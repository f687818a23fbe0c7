"""The path from a search to a deployed model, as a user types it, on a folder of their own PNG images.

Makes a folder of images (5 classes of shapes in random colours, sizes and positions; ``train/`` and ``test/``),
then runs, in that folder, the commands of ``docs/export.md``:

    search run shapes.yaml                                  # the search (keeps its best trials' weights)
    search export runs/shapes --format onnx -o shapes.onnx  # the best trial, trained
    python classify.py shapes.onnx shapes/test              # onnxruntime alone, no resnet-nas
    search train runs/shapes/best.yaml --epochs 30          # the winner, trained longer
    search export runs/train-shapes_best --format onnx -o shapes30.onnx
    python classify.py shapes30.onnx shapes/test
    search export runs/train-shapes_best --format onnx --no-normalize -o guessed.onnx   # the contrast:
    python classify.py guessed.onnx shapes/test             # x / 255 without the training statistics

``classify.py`` is the code block of ``docs/export.md``, run as written in a process that cannot import this
project. Everything printed, the accuracies and the timings go to a JSON record (``--record``), which the docs
quote.

    python benchmarks/take_away.py --record docs/results/take_away-2026-12-07.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ("circle", "cross", "hbar", "square", "vbar")

SPEC = """\
name: shapes
model:
  input_size: 32
  stem: {type: cifar, width: {choice: [16, 32]}}
  stages:
    - depth: {int: [1, 2]}
      width: {choice: [32, 64]}
      block: {type: {choice: [plain, se, split_attention]}, bottleneck_ratio: 0.5, radix: 2}
    - {depth: 1, width: 64, stride: 2, block: {type: plain, bottleneck_ratio: 0.5}}
train: {dataset: imagefolder, data_dir: shapes, epochs: 6, batch_size: 32, lr: {float: [0.05, 0.3], log: true}}
search: {trials: 8, sampler: tpe, pruner: none}
"""


def draw(shape: str, rng: np.random.Generator, sides=(32, 97), shift: float = 4.0,
         radius=(0.22, 0.35)) -> np.ndarray:
    """A shape in a random colour on a noisy background, at a random size and aspect (each side in ``sides``,
    end excluded), up to ``shift`` pixels off centre: the shorter-side resize and centre crop decide what the
    network sees. The test suite draws its smaller images with this too."""
    w, h = int(rng.integers(*sides)), int(rng.integers(*sides))
    img = rng.normal(60, 25, (h, w, 3))
    cy, cx = h / 2 + rng.uniform(-shift, shift), w / 2 + rng.uniform(-shift, shift)
    r = min(h, w) * rng.uniform(*radius)
    yy, xx = np.mgrid[:h, :w]
    dy, dx = np.abs(yy - cy), np.abs(xx - cx)
    mask = {"circle": dy ** 2 + dx ** 2 <= r ** 2, "square": (dy <= r * 0.8) & (dx <= r * 0.8),
            "hbar": (dy <= r * 0.3) & (dx <= r * 1.2), "vbar": (dx <= r * 0.3) & (dy <= r * 1.2),
            "cross": ((dy <= r * 0.25) | (dx <= r * 0.25)) & (dy <= r) & (dx <= r)}[shape]
    img[mask] = rng.uniform(120, 255, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def image_folder(root: Path, train: int, test: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("test", test)):
        for shape in SHAPES:
            (root / split / shape).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(draw(shape, rng)).save(root / split / shape / f"{i:03d}.png")


def classify_script() -> str:
    text = (ROOT / "docs" / "export.md").read_text()
    blocks = re.findall(r"```python\n# classify\.py\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "docs/export.md must hold one ```python block starting with '# classify.py'"
    return "# classify.py\n" + blocks[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", type=Path, help="write the JSON record here")
    parser.add_argument("--work", type=Path, help="working folder (default: a new temporary one)")
    parser.add_argument("--train-images", type=int, default=100, help="training images per class")
    parser.add_argument("--test-images", type=int, default=20, help="test images per class")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="take_away-"))
    work.mkdir(parents=True, exist_ok=True)
    image_folder(work / "shapes", args.train_images, args.test_images)
    (work / "shapes.yaml").write_text(SPEC)
    (work / "classify.py").write_text(classify_script())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    search = [sys.executable, "-m", "search_space.cli"]
    steps = [
        ("search run shapes.yaml", search + ["run", "shapes.yaml"]),
        ("search export runs/shapes --format onnx -o shapes.onnx",
         search + ["export", "runs/shapes", "--format", "onnx", "-o", "shapes.onnx"]),
        ("python classify.py shapes.onnx shapes/test", [sys.executable, "-I", "classify.py", "shapes.onnx",
                                                        "shapes/test"]),
        ("search train runs/shapes/best.yaml --epochs 30", search + ["train", "runs/shapes/best.yaml", "--epochs",
                                                                     "30"]),
        ("search export runs/train-shapes_best --format onnx -o shapes30.onnx",
         search + ["export", "runs/train-shapes_best", "--format", "onnx", "-o", "shapes30.onnx"]),
        ("python classify.py shapes30.onnx shapes/test", [sys.executable, "-I", "classify.py", "shapes30.onnx",
                                                          "shapes/test"]),
        # the contrast: a model that does not normalise inside, fed x / 255 as a user guessing would
        ("search export runs/train-shapes_best --format onnx --no-normalize -o guessed.onnx",
         search + ["export", "runs/train-shapes_best", "--format", "onnx", "--no-normalize", "-o", "guessed.onnx"]),
        ("python classify.py guessed.onnx shapes/test", [sys.executable, "-I", "classify.py", "guessed.onnx",
                                                         "shapes/test"]),
    ]
    record = {"what": "search -> export -> onnxruntime, then search train -> export -> onnxruntime",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True).stdout.strip(),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
              "images": {"classes": list(SHAPES), "train_per_class": args.train_images,
                         "test_per_class": args.test_images},
              "spec": SPEC, "steps": []}
    for shown, argv in steps:
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=work, env=env if argv[1] == "-m" else {"PATH": os.environ["PATH"]},
                              capture_output=True, text=True)
        step = {"command": shown, "exit": proc.returncode, "seconds": round(time.perf_counter() - t0, 1),
                "stdout": proc.stdout, "stderr": proc.stderr}
        record["steps"].append(step)
        print(f"$ {shown}  ({step['seconds']} s, exit {proc.returncode})", file=sys.stderr)
        print(proc.stdout + proc.stderr, file=sys.stderr)
        if proc.returncode != 0:
            break
    best = json.loads((work / "runs" / "shapes" / "best.json").read_text())
    trained = json.loads((work / "runs" / "train-shapes_best" / "metrics.json").read_text())
    record["search_best"] = {"trial": best["trial"], "val_accuracy": best["value"]}
    record["search_train"] = {"val_accuracy": trained["val_accuracy"], "test_accuracy": trained["test_accuracy"],
                              "epochs": trained["epochs"]}
    record["onnxruntime_test_accuracy"] = [float(re.search(r"accuracy ([0-9.]+)", s["stdout"]).group(1))
                                           for s in record["steps"] if s["command"].startswith("python")]
    record["kept_weights_bytes"] = sum(p.stat().st_size for p in (work / "runs" / "shapes").glob("trials/*/weights.pt"))
    if args.record:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("search_best", "search_train", "onnxruntime_test_accuracy",
                                             "kept_weights_bytes")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
