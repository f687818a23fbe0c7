"""Prepared datasets: `search data prepare`, training from the map, the self-preparing cache (its lock, the
fingerprint, damaged entries) and every bad input of a data folder (issue 24 item 5, issue 27 item 3)."""

from __future__ import annotations

import fcntl
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from runners.training import cache
from runners.training.data import _open_prepared, cache_entry, clear_cache, load_dataset
from runners.training.prepared import open_prepared
from runners.training.sources import list_imagefolder
from search_space.config import TrainConfig
from search_space.schema import SpecError
from tests.conftest import ROOT, SUBPROCESS_ENV
from tests.conftest import write_image_folder as write_folder

ARCH = """\
name: tiny
model:
  input_size: 8
  stem: {type: cifar, width: 8}
  stages:
    - {depth: 1, width: 8, stride: 1, block: {type: plain, bottleneck: false}}
train: {epochs: 1, batch_size: 8, lr: 0.05, warmup_epochs: 0}
"""


@pytest.fixture(autouse=True)
def _fresh(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))  # each test its own cache
    clear_cache()
    yield
    clear_cache()


def one_error(err: str) -> bool:
    """Bad input's stderr: progress lines, then one ``error:`` line, last, and no traceback."""
    lines = err.splitlines()
    return bool(lines) and lines[-1].startswith("error: ") and sum(x.startswith("error") for x in lines) == 1 \
        and "Traceback" not in err


def bomb_png(path: Path, w=100_000, h=100_000) -> None:
    """A 60-byte PNG whose header declares ``w`` x ``h`` pixels (decoding it would need 30 GB)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------------------------------------------
# search data prepare
# ----------------------------------------------------------------------------------------------------------------


def test_prepare_a_flat_folder_then_train_from_the_map(tmp_path, cli):
    src = write_folder(tmp_path / "photos")
    out = tmp_path / "prepared"
    r = cli("data", "prepare", src, "-o", out, "--size", "8")
    assert r.code == 0, r.err
    assert "18 images" in r.err and "3 classes" in r.err and "--dataset prepared" in r.err
    p = open_prepared(out)
    assert p.images.shape == (18, 3, 8, 8) and p.images.dtype == np.uint8 and isinstance(p.images, np.memmap)
    assert p.classes == ["ant", "bee", "cow"] and p.meta["skipped"]["count"] == 0
    assert p.meta["source"]["fingerprint"] and len(p.meta["mean"]) == 3
    # the class shows in the pixels (class c is 60*c brighter), so labels were kept with their images
    brightness = [p.images[p.labels == c].mean() for c in range(3)]
    assert brightness[0] < brightness[1] < brightness[2]
    rows = np.concatenate([p.rows(s) for s in ("train", "val", "test")])
    assert sorted(rows.tolist()) == list(range(18))  # every image once, in exactly one split

    d = load_dataset(TrainConfig(dataset="prepared", data_dir=str(out)))
    mapped = _open_prepared(str(out.resolve())).images  # the map this process opened (cached per process)
    assert isinstance(mapped, np.memmap)
    assert mapped.ctypes.data <= d.train_x.data_ptr() < mapped.ctypes.data + mapped.nbytes  # a view, not a copy
    assert len(d.train_y) + len(d.val_y) + len(d.test_y) == 18 and d.image_size == 8

    (tmp_path / "arch.yaml").write_text(ARCH)
    r = cli("train", tmp_path / "arch.yaml", "--dataset", "prepared", "--data-dir", out, "--device", "cpu",
            "--out", tmp_path / "run")
    assert r.code == 0, r.err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["history"][0]["epoch"] == 1

    again = cli("data", "prepare", src, "-o", out, "--size", "8")
    assert again.code == 0 and "up to date" in again.err


def test_nested_train_test_folders_keep_the_test_folder_as_the_test_split(tmp_path, cli):
    src = tmp_path / "photos"
    write_folder(src / "train", per_class=5)
    write_folder(src / "test", per_class=2, seed=1, start=10)
    out = tmp_path / "p"
    assert cli("data", "prepare", src, "-o", out, "--size", "6", "--grayscale").code == 0
    p = open_prepared(out)
    a, b = p.meta["splits"]["test"]
    assert b - a == 6 and p.images.shape[1:] == (1, 6, 6)
    files = np.array(list_imagefolder(src).files)
    assert all(f.startswith("test/") for f in files[p.rows("test")])
    assert not any(f.startswith("test/") for f in files[np.concatenate([p.rows("train"), p.rows("val")])])


def test_classes_per_class_and_squash(tmp_path, cli):
    src = write_folder(tmp_path / "photos", classes=("a", "b", "c", "d"), per_class=8)
    out = tmp_path / "p"
    r = cli("data", "prepare", src, "-o", out, "--size", "4", "--classes", "2", "--classes-seed", "3",
            "--per-class", "5", "--resize", "squash", "--filter", "box")
    assert r.code == 0, r.err
    p = open_prepared(out)
    assert len(p.classes) == 2 and p.meta["count"] == 10 and set(p.labels.tolist()) == {0, 1}
    first = cli("data", "prepare", src, "-o", tmp_path / "q", "--size", "4", "--classes", "2")
    assert first.code == 0 and open_prepared(tmp_path / "q").classes == ["a", "b"]


def test_parallel_decode_gives_the_same_bytes_and_draft_mode_stays_close(tmp_path, cli):
    src = write_folder(tmp_path / "photos", per_class=10)
    assert cli("data", "prepare", src, "-o", tmp_path / "one", "--size", "8", "--jobs", "1").code == 0
    assert cli("data", "prepare", src, "-o", tmp_path / "two", "--size", "8", "--jobs", "2").code == 0
    assert cli("data", "prepare", src, "-o", tmp_path / "full", "--size", "8", "--no-draft").code == 0
    one, two, full = (open_prepared(tmp_path / n).images for n in ("one", "two", "full"))
    assert np.array_equal(one, two)
    diff = np.abs(one.astype(int) - full.astype(int))
    assert diff.mean() < 3 and not np.array_equal(one, full)  # the JPEGs took the draft path


def test_streamed_batches_train_exactly_as_resident_ones(tmp_path, cli):
    """The GPU's streaming path (images stay on the host, each batch is sent on its own) run on the CPU: the same
    draws index the same images, so the run is the same."""
    import torch

    from runners.training.loop import train
    from search_space.spec import load_spec

    src = write_folder(tmp_path / "photos", per_class=8)
    assert cli("data", "prepare", src, "-o", tmp_path / "p", "--size", "8").code == 0
    (tmp_path / "arch.yaml").write_text(ARCH)
    spec = load_spec(tmp_path / "arch.yaml")
    data = load_dataset(TrainConfig(dataset="prepared", data_dir=str(tmp_path / "p")))
    streamed = data.to("cpu", stream=True)
    assert streamed.streamed is not None and streamed.to("cpu") is streamed
    torch.set_num_threads(1)
    runs = [train(spec.model, spec.train, data=d, device="cpu") for d in (data, streamed)]
    assert [h["train_loss"] for h in runs[0].history] == [h["train_loss"] for h in runs[1].history]
    assert runs[0].val_accuracy == runs[1].val_accuracy


def test_prepare_cifar_batches_at_another_size(tmp_path, cli):
    from tests.test_data import make_cifar10

    _, test = make_cifar10(tmp_path / "src" / "cifar-10-batches-py")
    r = cli("data", "prepare", tmp_path / "src", "-o", tmp_path / "p", "--size", "16", "--classes", "4")
    assert r.code == 0, r.err
    p = open_prepared(tmp_path / "p")
    a, b = p.meta["splits"]["test"]
    assert p.meta["source"]["kind"] == "cifar10" and p.classes == ["c0", "c1", "c2", "c3"]
    assert p.images.shape[1:] == (3, 16, 16) and b - a == int((np.array(test[b"labels"]) < 4).sum())  # the test batch
    assert cli("data", "prepare", tmp_path / "src", "-o", tmp_path / "q", "--size", "16", "--grayscale").code == 2


@pytest.mark.parametrize("bad", ["flag", "out_not_prepared", "out_inside_src"])
def test_bad_arguments_are_one_line(tmp_path, cli, bad):
    src = write_folder(tmp_path / "photos", per_class=3)
    args = ["data", "prepare", src, "-o", tmp_path / "p", "--size", "8"]
    if bad == "flag":
        args += ["--val-fraction", "nan"]
    elif bad == "out_not_prepared":
        (tmp_path / "p").mkdir()
        (tmp_path / "p" / "mine.txt").write_text("keep me")
    else:
        args[4] = src / "p"
    r = cli(*args)
    assert r.code == 2 and one_error(r.err) and "Traceback" not in r.err
    if bad == "out_not_prepared":
        assert (tmp_path / "p" / "mine.txt").read_text() == "keep me"


# ----------------------------------------------------------------------------------------------------------------
# Bad input: one line naming the file, exit 2, nothing kept
# ----------------------------------------------------------------------------------------------------------------


def test_bad_images_are_counted_and_named_and_skip_bad_records_them(tmp_path, cli):
    src = write_folder(tmp_path / "photos")
    good = (src / "ant" / "1.jpg").read_bytes()
    (src / "ant" / "trunc.jpg").write_bytes(good[: len(good) // 2])  # truncated
    for i in range(4):
        (src / "bee" / f"junk{i}.png").write_bytes(b"not an image at all")
    out = tmp_path / "p"
    r = cli("data", "prepare", src, "-o", out, "--size", "8")
    assert r.code == 2 and one_error(r.err)
    assert "5 of 23 images cannot be used" in r.err and "junk0.png" in r.err and "and 2 more" in r.err
    assert "--skip-bad" in r.err and not out.exists() and not list(tmp_path.glob(".p.tmp-*"))

    r = cli("data", "prepare", src, "-o", out, "--size", "8", "--skip-bad")
    assert r.code == 0 and "5 bad images skipped" in r.err
    p = open_prepared(out)
    assert p.meta["count"] == 18 and p.meta["skipped"]["count"] == 5
    assert {Path(f["file"]).name for f in p.meta["skipped"]["files"]} == {"trunc.jpg"} | {
        f"junk{i}.png" for i in range(4)}


@pytest.mark.parametrize("how", ["prepare", "imagefolder"])
def test_a_decompression_bomb_is_refused_without_allocating(tmp_path, cli, how):
    src = write_folder(tmp_path / "photos", per_class=3)
    bomb_png(src / "cow" / "bomb.png")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if how == "prepare":
        r = cli("data", "prepare", src, "-o", tmp_path / "p", "--size", "8")
        assert r.code == 2 and one_error(r.err)
        message = r.err
    else:
        with pytest.raises(SpecError) as e:
            load_dataset(TrainConfig(dataset="imagefolder", data_dir=str(src)), image_size=8)
        message = str(e.value)
    assert "bomb.png" in message and "100000x100000" in message and "100,000,000" in message
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KiB: nothing near 30 GB


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_device_in_a_class_folder_is_refused_before_opening(tmp_path, kind):
    src = write_folder(tmp_path / "photos", per_class=3)
    if kind == "fifo":
        os.mkfifo(src / "ant" / "pipe.jpg")  # opening it would block forever
    else:
        os.symlink("/dev/zero", src / "ant" / "zero.png")  # reading it would never end

    def hang(*_):
        raise TimeoutError("opened the special file")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(20)
    try:
        with pytest.raises(SpecError) as e:
            load_dataset(TrainConfig(dataset="imagefolder", data_dir=str(src)), image_size=8)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert ("pipe.jpg" in str(e.value) and "FIFO" in str(e.value)) if kind == "fifo" else \
        ("zero.png" in str(e.value) and "character device" in str(e.value))


@pytest.mark.parametrize("where", ["data_dir", "class"])
def test_a_symlink_loop_is_one_line(tmp_path, cli, where):
    if where == "data_dir":
        loop = tmp_path / "loop"
        os.symlink(loop, loop)
    else:
        loop = write_folder(tmp_path / "photos", per_class=3)
        os.symlink(loop / "dog", loop / "dog")
    with pytest.raises(SpecError) as e:
        load_dataset(TrainConfig(dataset="imagefolder", data_dir=str(loop)), image_size=8)
    assert e.value.path == "train.data_dir" and "symbolic link loop" in str(e.value)
    r = cli("data", "prepare", loop, "-o", tmp_path / "p", "--size", "8")
    assert r.code == 2 and "symbolic link loop" in r.err


@pytest.mark.parametrize("layout", ["empty_class", "one_class"])
def test_class_folders_must_hold_images_and_be_two(tmp_path, cli, layout):
    src = write_folder(tmp_path / "photos", classes=("only",) if layout == "one_class" else ("a", "b"))
    if layout == "empty_class":
        (src / "c").mkdir()
        (src / "c" / "notes.txt").write_text("no images here")
    r = cli("data", "prepare", src, "-o", tmp_path / "p", "--size", "8")
    assert r.code == 2 and one_error(r.err)
    assert (f"{src / 'c'} holds no images" if layout == "empty_class" else "holds 1 class folder") in r.err


def test_a_disk_that_fills_keeps_nothing(tmp_path):
    """RLIMIT_FSIZE stands in for a full disk: the array file cannot be allocated (EFBIG, as ENOSPC would be)."""
    src = write_folder(tmp_path / "photos", per_class=10)
    out = tmp_path / "p"
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
            "from search_space.cli import main\n"
            f"sys.exit(main(['data', 'prepare', {str(src)!r}, '-o', {str(out)!r}, '--size', '32']))\n")
    r = subprocess.run([sys.executable, "-c", code], env=SUBPROCESS_ENV, cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert one_error(r.stderr) and "nothing was kept" in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".p.*"))


def test_a_prepared_directory_whose_json_and_array_disagree_is_refused(tmp_path, cli):
    src = write_folder(tmp_path / "photos", per_class=4)
    out = tmp_path / "p"
    assert cli("data", "prepare", src, "-o", out, "--size", "8").code == 0
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "size": 16}))
    (tmp_path / "arch.yaml").write_text(ARCH)
    r = cli("train", tmp_path / "arch.yaml", "--dataset", "prepared", "--data-dir", out, "--out", tmp_path / "run")
    assert r.code == 2 and one_error(r.err) and "images.npy" in r.err and "disagree" in r.err
    (out / "meta.json").write_text(json.dumps(meta))
    with open(out / "images.npy", "r+b") as f:
        f.truncate(os.path.getsize(out / "images.npy") - 10)
    clear_cache()
    with pytest.raises(SpecError, match="truncated"):
        load_dataset(TrainConfig(dataset="prepared", data_dir=str(out)))


# ----------------------------------------------------------------------------------------------------------------
# The cache imagefolder and cifar prepare themselves into
# ----------------------------------------------------------------------------------------------------------------


def _entries(tmp_path):
    return sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir())


def test_the_cache_follows_the_source_and_rebuilds_damaged_entries(tmp_path, capsys):
    src = write_folder(tmp_path / "photos")
    config = TrainConfig(dataset="imagefolder", data_dir=str(src))
    first = load_dataset(config, image_size=8)
    assert "prepared" in capsys.readouterr().err and len(_entries(tmp_path)) == 1
    clear_cache()
    load_dataset(config, image_size=8)
    assert capsys.readouterr().err == ""  # mapped, not prepared again

    write_folder(src, per_class=1, seed=5, start=50)  # the source changes: another fingerprint
    clear_cache()
    changed = load_dataset(config, image_size=8)
    assert len(_entries(tmp_path)) == 2
    assert sum(map(len, (changed.train_y, changed.val_y, changed.test_y))) == \
        sum(map(len, (first.train_y, first.val_y, first.test_y))) + 3

    _, name, _ = cache_entry("imagefolder", str(src), 8, config.val_fraction, config.test_fraction, config.seed)
    entry = tmp_path / "cache" / name
    with open(entry / "images.npy", "r+b") as f:  # truncated
        f.truncate(os.path.getsize(entry / "images.npy") - 100)
    clear_cache()
    load_dataset(config, image_size=8)
    err = capsys.readouterr().err
    assert "unusable" in err and "truncated" in err and "preparing it again" in err
    meta = json.loads((entry / "meta.json").read_text())
    (entry / "meta.json").write_text(json.dumps({**meta, "version": 99}))  # another format version
    clear_cache()
    again = load_dataset(config, image_size=8)
    assert "format version 99" in capsys.readouterr().err
    assert json.loads((entry / "meta.json").read_text())["version"] == 1 and len(again.train_y) == len(changed.train_y)


def test_search_run_on_a_raw_folder_prepares_it_at_the_image_size(tmp_path, cli):
    from tests.conftest import write_space

    src = write_folder(tmp_path / "photos", per_class=6)
    space = write_space(tmp_path, train__epochs=1, search__trials=1)
    r = cli("run", space, "--dataset", "imagefolder", "--data-dir", src, "--image-size", "12", "--device", "cpu",
            "--out", tmp_path / "run")
    assert r.code == 0, r.err
    assert [n.split("-")[-2] for n in _entries(tmp_path)] == ["12px"]
    assert json.loads((tmp_path / "run" / "trials" / "0" / "metrics.json").read_text())["status"] == "ok"


def test_two_processes_starting_together_prepare_once(tmp_path):
    src = write_folder(tmp_path / "photos", per_class=4)
    config = TrainConfig(dataset="imagefolder", data_dir=str(src))
    _, name, _ = cache_entry("imagefolder", str(src), 8, config.val_fraction, config.test_fraction, config.seed)
    (tmp_path / "cache").mkdir()
    code = ("import sys\nfrom runners.training.data import load_dataset\nfrom search_space.config import TrainConfig\n"
            f"d = load_dataset(TrainConfig(dataset='imagefolder', data_dir={str(src)!r}), image_size=8)\n"
            "print(len(d.train_y), int(d.train_x.sum()))\n")
    env = {**SUBPROCESS_ENV, cache.CACHE_ENV: str(tmp_path / "cache")}
    logs = [tmp_path / f"err{i}.txt" for i in range(2)]
    with open(tmp_path / "cache" / f"{name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # both start while "another process" prepares
        procs = [subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=open(log, "w"), text=True) for log in logs]
        deadline = time.time() + 120
        while not all("waiting for another process" in log.read_text() for log in logs):
            assert time.time() < deadline and all(p.poll() is None for p in procs), [l.read_text() for l in logs]
            time.sleep(0.2)
        fcntl.flock(lock, fcntl.LOCK_UN)
    outs = [p.communicate(timeout=120)[0] for p in procs]
    errs = [log.read_text() for log in logs]
    assert all(p.returncode == 0 for p in procs), errs
    assert outs[0] == outs[1]
    assert sum(e.count("prepared ") for e in errs) == 1  # one prepared it, the other mapped it
    assert _entries(tmp_path) == [name]


def test_the_audit_trains_at_the_runs_image_size_from_the_same_cache(tmp_path, cli):
    """`search fidelity --image-size` as `search run --image-size`: an audit of a run on raw images maps the cache
    entry the run prepared (same size, same key) instead of preparing the folder again at the spec's size."""
    from tests.conftest import write_space

    src = write_folder(tmp_path / "photos", per_class=8)
    space = write_space(tmp_path, search__trials=1, train__epochs=1, train__dataset="imagefolder",
                        train__data_dir=str(src))
    assert cli("run", space, "--image-size", "6", "--out", tmp_path / "run").code == 0
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir())
    assert len(entries) == 1 and "-6px-" in entries[0], entries
    done = cli("fidelity", space, "--image-size", "6", "--n", "3", "--factor", "2", "--seeds", "1", "--epochs", "1",
               "--out", tmp_path / "audit")
    assert done.code == 0, done.err[-2000:]
    assert "preparing" not in done.err  # the run's entry, mapped
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()) == entries
    sizes = {json.loads(p.read_text())["preprocess"]["size"] for p in (tmp_path / "audit" / "models").rglob("*.json")}
    assert sizes == {6}
