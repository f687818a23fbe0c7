"""Datasets: every source loads to uint8 NCHW splits, splits never share rows, bad directories are SpecErrors."""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from runners.training.data import clear_cache, load_dataset, resize, stratified_split
from search_space.config import TrainConfig
from search_space.schema import SpecError


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def check_shapes(d, channels, size, classes):
    for x, y in ((d.train_x, d.train_y), (d.val_x, d.val_y), (d.test_x, d.test_y)):
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        assert x.dim() == 4 and x.shape[1:] == (channels, size, size)
        assert len(x) == len(y) > 0
        assert 0 <= int(y.min()) and int(y.max()) < classes
    assert d.channels == channels and d.num_classes == classes and d.image_size == size
    assert len(d.mean) == len(d.std) == channels and all(s > 0 for s in d.std)


def hashes(x: torch.Tensor) -> set[str]:
    return {hashlib.sha1(row.numpy().tobytes()).hexdigest() for row in x}


# ----------------------------------------------------------------------------------------------------------------
# digits and splitting
# ----------------------------------------------------------------------------------------------------------------


def test_digits_splits_cover_the_data_without_overlap():
    d = load_dataset(TrainConfig())
    check_shapes(d, 1, 8, 10)
    assert d.name == "digits" and int(d.train_x.max()) == 255
    rows = {k: set(v.tolist()) for k, v in d.rows.items()}
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"] and not rows["val"] & rows["test"]
    assert len(rows["train"] | rows["val"] | rows["test"]) == 1797
    assert abs(len(rows["test"]) - 0.2 * 1797) <= 10
    assert abs(len(rows["val"]) - 0.15 * len(rows["train"] | rows["val"])) <= 10
    for split in ("train", "val", "test"):  # stratified: every class in every split
        assert set(getattr(d, f"{split}_y").tolist()) == set(range(10))


def test_the_test_split_is_fixed_and_the_validation_split_follows_the_seed():
    a, b = load_dataset(TrainConfig(seed=0)), load_dataset(TrainConfig(seed=1))
    assert torch.equal(a.rows["test"], b.rows["test"])
    assert not torch.equal(a.rows["val"], b.rows["val"])
    again = load_dataset(TrainConfig(seed=0))
    assert torch.equal(a.rows["val"], again.rows["val"]) and torch.equal(a.train_x, again.train_x)


def test_train_fraction_takes_a_seeded_stratified_subset_of_the_training_rows():
    full = load_dataset(TrainConfig())
    half = load_dataset(TrainConfig(train_fraction=0.5))
    assert abs(len(half.train_y) - len(full.train_y) / 2) <= 10
    assert set(half.rows["train"].tolist()) < set(full.rows["train"].tolist())
    assert torch.equal(half.rows["val"], full.rows["val"])  # fidelity never moves the validation split
    assert set(half.train_y.tolist()) == set(range(10))
    tiny = load_dataset(TrainConfig(train_fraction=0.01))
    assert set(tiny.train_y.tolist()) == set(range(10))  # at least one row of every class


def test_image_size_resizes_once_on_load():
    d = load_dataset(TrainConfig(), image_size=16)
    check_shapes(d, 1, 16, 10)
    assert load_dataset(TrainConfig(image_size=12)).image_size == 12
    assert d.resized(16) is d and d.resized(8).image_size == 8


def test_resize_is_bilinear_and_keeps_a_constant_image_constant():
    x = torch.full((3, 2, 5, 5), 77, dtype=torch.uint8)
    assert torch.equal(resize(x, 9), torch.full((3, 2, 9, 9), 77, dtype=torch.uint8))
    assert torch.equal(resize(x, 3), torch.full((3, 2, 3, 3), 77, dtype=torch.uint8))


def test_stratified_split_is_seeded_and_disjoint():
    y = torch.arange(100) % 4
    rest, taken = stratified_split(y, 0.25, seed=3)
    assert not set(rest.tolist()) & set(taken.tolist()) and len(rest) + len(taken) == 100
    assert torch.bincount(y[taken]).tolist() == [6, 6, 6, 6]  # round(25 * 0.25) of each class
    assert torch.equal(taken, stratified_split(y, 0.25, seed=3)[1])


# ----------------------------------------------------------------------------------------------------------------
# synthetic
# ----------------------------------------------------------------------------------------------------------------


def test_synthetic_images_are_unique_across_splits():
    cfg = TrainConfig(dataset="synthetic", synthetic_samples=300, synthetic_classes=3, synthetic_channels=2)
    d = load_dataset(cfg, image_size=12)
    check_shapes(d, 2, 12, 3)
    assert len(d.train_y) + len(d.val_y) + len(d.test_y) == 300
    tr, va, te = hashes(d.train_x), hashes(d.val_x), hashes(d.test_x)
    assert len(tr) == len(d.train_y) and not tr & va and not tr & te and not va & te
    assert load_dataset(replace(cfg, image_size=None)).image_size == 32  # default size


# ----------------------------------------------------------------------------------------------------------------
# CIFAR (real python-version pickle format)
# ----------------------------------------------------------------------------------------------------------------


def write_cifar_batch(path, n, label_key, classes, seed):
    rng = np.random.default_rng(seed)
    batch = {b"batch_label": b"x", label_key: rng.integers(0, classes, n).tolist(),
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"f.png"] * n}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    return batch


def make_cifar10(root, n=20):
    root.mkdir(parents=True, exist_ok=True)
    batches = [write_cifar_batch(root / f"data_batch_{i}", n, b"labels", 10, i) for i in range(1, 6)]
    test = write_cifar_batch(root / "test_batch", n, b"labels", 10, 9)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=2)
    return batches, test


def test_cifar10_reads_the_python_batches(tmp_path):
    batches, test = make_cifar10(tmp_path / "cifar-10-batches-py")
    # the parent of the extracted folder works too
    d = load_dataset(TrainConfig(dataset="cifar10", data_dir=str(tmp_path), val_fraction=0.2))
    check_shapes(d, 3, 32, 10)
    assert len(d.train_y) + len(d.val_y) == 100 and len(d.test_y) == 20
    assert d.classes[:2] == ["c0", "c1"]
    # the test split is test_batch, in order, with rows laid out as 3 planes of 32x32 (R, G, B)
    assert d.test_y.tolist() == test[b"labels"]
    assert torch.equal(d.test_x[0, 0].flatten(), torch.from_numpy(test[b"data"][0, :1024]))
    assert torch.equal(d.test_x[0, 2].flatten(), torch.from_numpy(test[b"data"][0, 2048:]))
    # train + val are exactly the five training batches
    pool = np.concatenate([b[b"data"] for b in batches])
    row = int(d.rows["val"][0])
    assert torch.equal(d.val_x[0].flatten(), torch.from_numpy(pool[row]))
    assert not set(d.rows["train"].tolist()) & set(d.rows["val"].tolist())


def test_cifar100_reads_fine_labels(tmp_path):
    write_cifar_batch(tmp_path / "train", 60, b"fine_labels", 100, 1)
    test = write_cifar_batch(tmp_path / "test", 10, b"fine_labels", 100, 2)
    d = load_dataset(TrainConfig(dataset="cifar100", data_dir=str(tmp_path)), image_size=16)
    check_shapes(d, 3, 16, 100)
    assert d.test_y.tolist() == test[b"fine_labels"]


def test_cifar_without_data_dir_is_a_spec_error():
    with pytest.raises(SpecError) as e:
        load_dataset(TrainConfig(dataset="cifar10"))
    assert e.value.path == "train.data_dir"


def test_missing_cifar_directory_names_the_expected_files(tmp_path):
    with pytest.raises(SpecError) as e:
        load_dataset(TrainConfig(dataset="cifar10", data_dir=str(tmp_path / "nope")))
    assert e.value.path == "train.data_dir" and "data_batch_1" in str(e.value) and "test_batch" in str(e.value)


def test_incomplete_cifar_directory_names_the_missing_file(tmp_path):
    make_cifar10(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(SpecError, match="lacks data_batch_3"):
        load_dataset(TrainConfig(dataset="cifar10", data_dir=str(tmp_path)))


@pytest.mark.parametrize("content", [b"not a pickle", pickle.dumps({b"data": [1, 2, 3]}, protocol=2),
                                     pickle.dumps([1, 2], protocol=2)])
def test_malformed_cifar_batch_is_a_spec_error(tmp_path, content):
    make_cifar10(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(content)
    with pytest.raises(SpecError) as e:
        load_dataset(TrainConfig(dataset="cifar10", data_dir=str(tmp_path)))
    assert e.value.path == "train.data_dir" and "data_batch_2" in str(e.value)


class _Evil:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pickle ran code')",))


def test_a_cifar_batch_cannot_run_code(tmp_path):
    make_cifar10(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2))
    with pytest.raises(SpecError, match="refusing to load"):
        load_dataset(TrainConfig(dataset="cifar10", data_dir=str(tmp_path)))


# ----------------------------------------------------------------------------------------------------------------
# imagefolder
# ----------------------------------------------------------------------------------------------------------------


def write_images(root, classes=("cat", "dog", "emu"), per_class=6, seed=0):
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = (12, 10) if i % 2 else (9, 14)
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            img = Image.fromarray(pixels) if i % 3 else Image.fromarray(pixels[..., 0], mode="L")
            img.save(root / name / f"{i}.png")


def test_imagefolder_reads_class_folders_and_holds_out_a_test_split(tmp_path):
    write_images(tmp_path)
    (tmp_path / "notes.txt").write_text("ignored")
    d = load_dataset(TrainConfig(dataset="imagefolder", data_dir=str(tmp_path), val_fraction=0.2), image_size=8)
    check_shapes(d, 3, 8, 3)  # grayscale images are converted to RGB
    assert d.classes == ["cat", "dog", "emu"]
    assert len(d.train_y) + len(d.val_y) + len(d.test_y) == 18
    assert not hashes(d.train_x) & hashes(d.test_x)


def test_imagefolder_with_train_and_test_folders(tmp_path):
    write_images(tmp_path / "train", per_class=5)
    write_images(tmp_path / "test", per_class=2, seed=1)
    d = load_dataset(TrainConfig(dataset="imagefolder", data_dir=str(tmp_path), val_fraction=0.2), image_size=6)
    check_shapes(d, 3, 6, 3)
    assert len(d.test_y) == 6 and len(d.train_y) + len(d.val_y) == 15


@pytest.mark.parametrize("layout", ["missing", "one_class", "empty_class", "bad_image"])
def test_bad_imagefolder_is_a_spec_error(tmp_path, layout):
    if layout == "one_class":
        write_images(tmp_path, classes=("only",))
    elif layout == "empty_class":
        write_images(tmp_path)
        (tmp_path / "zebra").mkdir()
    elif layout == "bad_image":
        write_images(tmp_path)
        (tmp_path / "cat" / "broken.png").write_bytes(b"not a png")
    root = tmp_path / "missing" if layout == "missing" else tmp_path
    with pytest.raises(SpecError) as e:
        load_dataset(TrainConfig(dataset="imagefolder", data_dir=str(root)))
    assert e.value.path == "train.data_dir"
