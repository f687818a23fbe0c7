"""The winner works outside the project (issue 26): a search on a folder of real PNG files keeps its best trials'
weights; `search export` of the run gives the trained winner (the final retraining when there is one) with its
preprocessing and class names in every format; and each format, run in a process that cannot import this project,
scores the project's own test accuracy on the test images, read from their files with only the recorded rule."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from search_space.api import create_model
from search_space.spec import load_spec

SHAPES = ("circle", "cross", "hbar", "square", "vbar")


_spec = importlib.util.spec_from_file_location("take_away", Path(__file__).resolve().parents[1] / "benchmarks" /
                                               "take_away.py")
_BENCHMARK = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_BENCHMARK)


def draw(shape: str, rng: np.random.Generator) -> np.ndarray:
    """One RGB image of ``shape``, smaller than the benchmark's (24-48 px a side, up to 3 px off centre)."""
    return _BENCHMARK.draw(shape, rng, sides=(24, 49), shift=3.0, radius=(0.25, 0.35))


def image_folder(root: Path, train: int = 30, test: int = 12, seed: int = 0) -> Path:
    """``root/train/<class>/*.png`` and ``root/test/<class>/*.png``: real files, decoded by PIL like a user's."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("test", test)):
        for shape in SHAPES:
            folder = root / split / shape
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(draw(shape, rng)).save(folder / f"{i}.png")
    return root


SPACE = """
name: shapes
model:
  input_size: 16
  stem: {type: cifar, width: 16}
  stages:
    - depth: 1
      width: {choice: [16, 24]}
      block: {type: {choice: [plain, se]}, bottleneck_ratio: 0.5}
    - {depth: 1, width: 32, stride: 2, block: {type: plain, bottleneck_ratio: 0.5}}
train: {dataset: imagefolder, data_dir: DATA, epochs: 4, batch_size: 32, warmup_epochs: 0, lr: 0.1}
search: {trials: 3, sampler: random, pruner: none, keep_weights: 2}
"""

# Runs with `python -I` in a scratch directory: the project cannot be imported (checked), only torch, PIL, numpy
# and onnxruntime. It reads the input convention from each file's own metadata, never from this project.
OUTSIDE = textwrap.dedent('''
    import importlib.abc, importlib.util, json, sys
    from pathlib import Path

    class Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("search_space", "runners"):
                raise ImportError(f"{name} must not be importable here")
    sys.meta_path.insert(0, Blocked())
    try:
        import search_space  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("search_space is importable")

    import numpy as np
    import onnxruntime
    import torch
    from PIL import Image

    folder, exports = Path(sys.argv[1]), Path(sys.argv[2])
    files = sorted(folder.glob("*/*.png"))

    def pixels(path, pre):
        """The recorded rule, written from its description: the centred square resized with PIL's filter, [0, 1]."""
        assert pre["resize"] == "crop" and pre["filter"] == "bilinear" and not pre["prepared_size"], pre
        size = pre["size"]
        with Image.open(path) as img:
            w, h = img.size
            side = min(w, h)
            box = ((w - side) / 2, (h - side) / 2, (w - side) / 2 + side, (h - side) / 2 + side)
            img = img.convert("RGB" if pre["channels"] == 3 else "L")
            img = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
            x = np.asarray(img, dtype=np.float32).reshape(size, size, pre["channels"])
        return x.transpose(2, 0, 1) / pre["scale"]

    def score(predict):
        return sum(predict(p) == p.parent.name for p in files) / len(files)

    results = {}
    # ONNX: metadata_props
    session = onnxruntime.InferenceSession(str(exports / "best.onnx"), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["resnet_nas"])
    assert meta["input"]["normalized_inside"] and meta == json.loads((exports / "best.onnx.json").read_text())
    classes, pre = meta["classes"], meta["preprocess"]
    results["onnx"] = score(lambda p: classes[int(session.run(None, {"input": pixels(p, pre)[None]})[0].argmax())])
    # TorchScript: extra files
    extra = {"resnet_nas.json": ""}
    ts = torch.jit.load(str(exports / "best.ts"), _extra_files=extra)
    meta = json.loads(extra["resnet_nas.json"])
    classes, pre = meta["classes"], meta["preprocess"]
    with torch.no_grad():
        results["torchscript"] = score(lambda p: classes[int(ts(torch.from_numpy(pixels(p, pre)[None])).argmax())])
    # ONNX without normalisation in the graph: the user normalises with the recorded mean and std
    raw = onnxruntime.InferenceSession(str(exports / "raw.onnx"), providers=["CPUExecutionProvider"])
    meta = json.loads(raw.get_modelmeta().custom_metadata_map["resnet_nas"])
    assert not meta["input"]["normalized_inside"]
    pre = meta["preprocess"]
    mean, std = (np.array(pre[k], dtype=np.float32).reshape(-1, 1, 1) for k in ("mean", "std"))
    results["onnx_raw"] = score(lambda p: meta["classes"][int(raw.run(None, {"input": ((pixels(p, pre) - mean)
                                                                                        / std)[None]})[0].argmax())])
    # the .py export: its own preprocess()/predict() on a PIL image
    spec = importlib.util.spec_from_file_location("exported", exports / "best.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.build_model()

    def py_predict(p):
        with Image.open(p) as img:
            return mod.predict(img, net)[0]

    results["python"] = score(py_predict)
    # and what a user who guesses gets: x / 255 without the training statistics
    results["guessed_onnx_raw"] = score(lambda p: meta["classes"][int(raw.run(None, {"input": pixels(p, pre)[None]})[0]
                                                                         .argmax())])
    assert "search_space" not in sys.modules and "runners" not in sys.modules
    print(json.dumps({"n": len(files), **results}))
''')


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A finished search (3 trials, best 2 kept) on a generated folder of PNGs, then its winner retrained."""
    from search_space.cli import main

    tmp = tmp_path_factory.mktemp("takeaway")
    data = image_folder(tmp / "shapes")
    space = tmp / "space.yaml"
    space.write_text(SPACE.replace("DATA", str(data)))
    run = tmp / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["run", str(space), "--out", str(run)]) == 0
        kept = sorted(int(p.parent.name) for p in run.glob("trials/*/weights.pt"))
        without_final = create_model(run=run)
        assert main(["run", str(space), "--out", str(run), "--final-epochs", "12"]) == 0  # resumes: trains final/
    finally:
        torch.set_num_threads(before)
    return {"tmp": tmp, "data": data, "run": run, "kept": kept, "without_final": without_final}


def test_a_search_keeps_the_best_k_trials_weights_and_their_preprocessing(searched):
    run = searched["run"]
    metrics = {int(p.parent.name): json.loads(p.read_text()) for p in run.glob("trials/*/metrics.json")}
    assert len(metrics) == 3
    ranked = sorted(metrics, key=lambda n: (-metrics[n]["values"]["val_accuracy"], metrics[n]["params"], n))
    assert searched["kept"] == sorted(ranked[:2])  # search.keep_weights: 2, the best two
    best = json.loads((run / "best.json").read_text())
    assert best["trial"] == ranked[0] and best["weights"] == f"trials/{ranked[0]}/weights.pt"
    for n in metrics:  # every complete trial records its preprocessing, kept weights or not
        pre = json.loads((run / "trials" / str(n) / "preprocess.json").read_text())
        assert pre["classes"] == list(SHAPES) and pre["size"] == 16 and pre["channels"] == 3
        assert pre["resize"] == "crop" and pre["filter"] == "bilinear" and len(pre["mean"]) == 3
        assert metrics[n]["preprocess"]["mean"] == pre["mean"]
    # create_model(run=...) before --final-epochs gave the best trial's trained weights: they score its accuracy
    from runners.training.data import load_dataset
    from runners.training.loop import evaluate

    arch = load_spec(run / "trials" / str(ranked[0]) / "arch.yaml")
    model = searched["without_final"]
    assert not model.training and model.preprocess.classes == list(SHAPES)
    acc = evaluate(model, load_dataset(arch.train, 16), "val")["accuracy"]
    assert abs(acc - metrics[ranked[0]]["values"]["val_accuracy"]) <= 1 / 30


def test_every_export_format_scores_the_projects_accuracy_outside_the_project(searched, cli):
    run, tmp = searched["run"], searched["tmp"]
    final = json.loads((run / "final" / "metrics.json").read_text())
    assert final["preprocess"]["classes"] == list(SHAPES) and (run / "final" / "preprocess.json").exists()
    out = tmp / "exports"
    for fmt, name, extra in (("onnx", "best.onnx", ()), ("torchscript", "best.ts", ()), ("python", "best.py", ()),
                             ("onnx", "raw.onnx", ("--no-normalize",))):
        r = cli("export", run, "--format", fmt, "-o", out / name, *extra)
        assert r.code == 0, r.err
        assert "untrained" not in r.err and "circle, cross, hbar, square, vbar" in r.out
    assert json.loads((out / "best.onnx.json").read_text())["source"].endswith("(final)")  # --final-epochs wins
    script = tmp / "outside.py"
    script.write_text(OUTSIDE)
    proc = subprocess.run([sys.executable, "-I", str(script), str(searched["data"] / "test"), str(out)],
                          cwd=tmp, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    want = final["test_accuracy"]
    assert got["n"] == 60 and want > 0.5  # the winner learned something (chance is 0.2)
    for fmt in ("onnx", "torchscript", "python", "onnx_raw"):
        assert abs(got[fmt] - want) <= 1 / got["n"] + 1e-9, (fmt, got, want)  # at most one near-tie flips
    assert got["guessed_onnx_raw"] < want - 0.1, got  # the numbers matter: guessing x/255 loses accuracy


def test_exports_of_a_run_are_reproducible_and_named_after_themselves(searched, cli):
    run, tmp = searched["run"], searched["tmp"]
    a, b = tmp / "again" / "a" / "m.onnx", tmp / "again" / "b" / "m.onnx"
    for out in (a, b):
        assert cli("export", run, "--format", "onnx", "-o", out).code == 0
    assert a.read_bytes() == b.read_bytes()
    # an untrained architecture is exported from a seeded initialisation: the same file every time
    arch = run / "best.yaml"
    for out in (a, b):
        r = cli("export", arch, "--format", "torchscript", "-o", out.with_suffix(".ts"))
        assert r.code == 0 and "untrained" in r.err
    ta, tb = (torch.jit.load(str(p.with_suffix(".ts"))) for p in (a, b))
    assert all(torch.equal(x, y) for x, y in zip(ta.state_dict().values(), tb.state_dict().values()))
    with pytest.warns(UserWarning, match="no trained weights"):
        n1 = create_model(run=_weightless_copy(run, tmp / "weightless"))
    with pytest.warns(UserWarning):
        n2 = create_model(run=tmp / "weightless")
    assert all(torch.equal(x, y) for x, y in zip(n1.state_dict().values(), n2.state_dict().values()))


def _weightless_copy(run: Path, dest: Path) -> Path:
    dest.mkdir()
    (dest / "best.yaml").write_text((run / "best.yaml").read_text())
    return dest


def test_python_export_never_loads_a_stale_weights_file(searched, cli):
    tmp = searched["tmp"] / "stale"
    out = tmp / "net.py"
    assert cli("export", searched["run"], "--format", "python", "-o", out).code == 0
    assert (tmp / "net.weights.pt").exists() and not (tmp / "net.pt").exists()
    namespace = {"__name__": "exported", "__file__": str(out)}
    exec(compile(out.read_text(), str(out), "exec"), namespace)
    namespace["build_model"]()  # the file exported with it loads
    state = torch.load(tmp / "net.weights.pt", weights_only=True)
    state["fc.bias"] += 1
    torch.save(state, tmp / "net.weights.pt")  # a later, different file under the same name
    with pytest.raises(RuntimeError, match="not the file exported with net.py"):
        namespace["build_model"]()


README_DRIVER = """
import contextlib, io, json, sys
from pathlib import Path

snippet, folder = Path(sys.argv[1]).read_text(), Path(sys.argv[2])
right = n = 0
for path in sorted(folder.rglob("*.png")):
    sys.argv = ["classify.py", str(path)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(snippet, "README.md", "exec"), {"__name__": "__main__"})
    right += out.getvalue().strip() == path.parent.name
    n += 1
print(json.dumps({"n": n, "accuracy": right / n}))
"""


def test_the_readmes_onnxruntime_snippet_scores_the_projects_accuracy(searched, cli):
    """The README's "take the winner away" code, as written, in a process that cannot import the project."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Take the winner away", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    run, tmp = searched["run"], searched["tmp"] / "readme"
    tmp.mkdir()
    assert cli("export", run, "--format", "onnx", "-o", tmp / "best.onnx").code == 0
    (tmp / "snippet.py").write_text(snippet)
    (tmp / "driver.py").write_text(README_DRIVER)
    proc = subprocess.run([sys.executable, "-I", "driver.py", "snippet.py", str(searched["data"] / "test")],
                          cwd=tmp, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    want = json.loads((run / "final" / "metrics.json").read_text())["test_accuracy"]
    assert got["n"] == 60 and abs(got["accuracy"] - want) <= 1 / got["n"] + 1e-9, (got, want)
