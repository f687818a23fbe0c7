"""Datasets for proxy training, held whole as uint8 NCHW tensors: in memory, or as views of a memory map.

``imagefolder``, ``cifar10`` and ``cifar100`` are prepared once into a cache (:mod:`runners.training.cache`) and
``prepared`` reads a directory made by ``search data prepare``: their splits are slices of one read-only
memory map (:mod:`runners.training.prepared`) that every process on a machine shares through the page cache.
The embedded datasets (digits and its derived tasks, synthetic) are made in memory, as before.

Fast proxy training keeps the data resident on the device and augments it there in batch (DESIGN.md section 6),
so a dataset here is not a per-sample ``torch.utils.data.Dataset`` but a handful of tensors: train, validation
and test splits of uint8 images plus int64 labels. Scores for a search come from the validation split, which is
held out of the training data; the test split is only for the final check and never feeds a search.

Splits are stratified (every class keeps its share) and seeded:

* the test split of datasets that ship none (digits, imagefolder, synthetic) uses a fixed seed, so it is the
  same images whatever ``train.seed`` is and changing the seed never trains on another run's test images;
* the validation split and the ``train_fraction`` subset follow ``train.seed``.
"""

from __future__ import annotations

import functools
import os
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from search_space.config import TrainConfig
from search_space.schema import SpecError

from runners.common.progress import Progress, bar, duration

from .cache import ensure, entry_name
from .prepare import DecodeOptions, prepare_arrays, prepare_images
from .prepared import Prepared, open_prepared
from .sources import (CIFAR_LAYOUT, EXPECT_FOLDER, IMAGE_SUFFIXES, Listing, cifar_root, list_cifar,  # noqa: F401
                      list_imagefolder, resolve_dir)

TEST_SPLIT_SEED = 0  # fixed on purpose: see the module docstring
DEFAULT_SIZE = 32  # imagefolder and synthetic images when neither the caller nor the config names a size


@dataclass(eq=False)  # tensors do not compare to a bool
class Dataset:
    """Train / validation / test splits as uint8 ``N x C x H x W`` images and int64 labels.

    ``mean`` and ``std`` are per-channel statistics of the training split on the 0..1 scale, for normalising.
    ``rows`` maps each split to its row indices in the source data (train and val index the source's training
    pool, test its test pool), so a report or a test can show the splits never share an image.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str] = field(default_factory=list)
    rows: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    # how a file became an image here (prepared data: resize mode, filter, draft, prepared size), for the
    # preprocessing record exports carry (search_space.preprocess); empty for data made in memory
    transform: dict = field(default_factory=dict, repr=False)

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    streamed: Optional[torch.device] = field(default=None, repr=False)  # see to()

    @property
    def device(self) -> torch.device:
        """Where batches are computed: the device of the labels (images may stay on the host, streamed)."""
        return self.train_y.device

    @property
    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in (self.train_x, self.val_x, self.test_x))

    def to(self, device: torch.device | str, stream: Optional[bool] = None) -> "Dataset":
        """The same splits on ``device``; remembered, so the trials of a search move the data only once.

        Images larger than half of the device's free memory (``stream=None``) or any images (``stream=True``)
        stay on the host and are *streamed*: each batch is gathered there (from the memory map of a prepared
        dataset), copied through pinned memory and sent to the device while the previous one trains. Labels
        always move. On the CPU nothing moves: batches are read from the map where the images are.
        """
        device = torch.device(device)
        if stream is None:
            if self.device == device:
                return self  # already there, streamed or not
            stream = device.type == "cuda" and self.train_x.device.type == "cpu" and not _fits_device(self, device)
        if self.device == device and bool(self.streamed) == bool(stream):
            return self
        key = f"{device}{'-streamed' if stream else ''}"
        cache = self.__dict__.setdefault("_on_device", {})
        if key not in cache:
            splits = ("train_y", "val_y", "test_y") if stream else \
                ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
            moved = {k: getattr(self, k).to(device) for k in splits}
            cache[key] = replace(self, **moved, streamed=device if stream else None)
        return cache[key]

    def resized(self, size: int) -> "Dataset":
        """The same splits at ``size`` x ``size`` (bilinear); remembered, so trials of one size resize once."""
        if size == self.image_size:
            return self
        cache = self.__dict__.setdefault("_resized", {})
        if size not in cache:
            cache[size] = replace(self, train_x=resize(self.train_x, size), val_x=resize(self.val_x, size),
                                  test_x=resize(self.test_x, size))
        return cache[size]

    def summary(self) -> str:
        return (f"{self.name}: {len(self.train_y)} train / {len(self.val_y)} val / {len(self.test_y)} test, "
                f"{self.channels}x{self.image_size}x{self.image_size}, {self.num_classes} classes")


DEVICE_SHARE = 0.5  # images take at most this share of a GPU's free memory; larger data streams from the host


def _fits_device(data: Dataset, device: torch.device) -> bool:
    """Whether ``data``'s images fit in ``DEVICE_SHARE`` of ``device``'s free memory (the rest is for the model,
    its activations and other processes sharing the GPU). ``SEARCH_STREAM_DATA=1`` streams whatever the size."""
    if os.environ.get("SEARCH_STREAM_DATA") == "1":
        return False
    try:
        free, _ = torch.cuda.mem_get_info(device)
    except (RuntimeError, AssertionError, ValueError):
        return True  # cannot tell: copy, as before streaming existed
    return data.nbytes <= free * DEVICE_SHARE


# ----------------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------------


def load_dataset(config: TrainConfig, image_size: int | None = None) -> Dataset:
    """Load ``config.dataset`` and split it; images are resized once, here, when ``image_size`` is given.

    Raises :class:`SpecError` (path ``train.data_dir`` or ``train.dataset``) when the data is missing or
    malformed. Sources are cached per process at their native size, so the trials of a search read the files
    once, and only the rows kept are resized.
    """
    size = image_size if image_size is not None else config.image_size
    intrinsic = size if config.dataset in ("imagefolder", "synthetic") else None  # these are made at a size
    if config.dataset == "synthetic":
        check_fits(config.synthetic_samples, config.synthetic_channels, size or 32, "train.synthetic_samples")
    try:
        if config.dataset in MAPPED:
            return _mapped(config, size, intrinsic)
        return _split_and_resize(config, size, intrinsic)
    except (MemoryError, RuntimeError) as e:
        from runners.training.device import is_oom

        if not is_oom(e):
            raise
        raise SpecError("train.image_size", f"the {config.dataset} images at {size or 'native'} size do not fit in "
                                            f"memory ({str(e).splitlines()[0][:120]}); use a smaller image_size or "
                                            f"fewer images") from None


# ----------------------------------------------------------------------------------------------------------------
# Mapped datasets: a prepared directory, or raw images and CIFAR batches prepared once into the cache
# ----------------------------------------------------------------------------------------------------------------

MAPPED = ("prepared", "imagefolder", "cifar10", "cifar100")  # read through a memory map (runners.training.prepared)
CROP, FILTER = "crop", "bilinear"  # how the cache prepares an image folder (as imagefolder always resized)


def _mapped(config: TrainConfig, size: int | None, intrinsic: int | None) -> Dataset:
    """A dataset whose images are a read-only memory map: every split is a view of it, so the processes of a
    machine share one copy through the page cache and data larger than RAM still trains. Copies are made only
    for a ``train_fraction`` subset or a size other than the prepared one."""
    data_dir = _dir_key(config)
    if config.dataset == "prepared":
        prepared = _open_prepared(data_dir)
    else:
        prepared = _open_cached(config.dataset, data_dir, intrinsic or DEFAULT_SIZE if config.dataset == "imagefolder"
                                else None, config.val_fraction, config.test_fraction, config.seed)
    return dataset_from(prepared, config, size)


def dataset_from(prepared: Prepared, config: TrainConfig, size: int | None = None) -> Dataset:
    """The :class:`Dataset` of a prepared dataset's splits (views of its map), with ``config``'s
    ``train_fraction`` and an optional resize applied."""
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = (prepared.split(s) for s in ("train", "val", "test"))
    rows = {s: torch.from_numpy(np.array(prepared.rows(s))) for s in ("train", "val", "test")}
    train_x, val_x, test_x = (_tensor(x) for x in (train_x, val_x, test_x))
    train_y, val_y, test_y = (torch.from_numpy(np.array(y, dtype=np.int64)) for y in (train_y, val_y, test_y))
    mean, std = tuple(prepared.meta["mean"]), tuple(prepared.meta["std"])
    if config.train_fraction < 1.0 and len(train_y):
        _, subset = stratified_split(train_y, config.train_fraction, config.seed + 1)
        train_x, train_y, rows["train"] = train_x[subset], train_y[subset], rows["train"][subset]  # a copy
        mean, std = channel_stats(train_x)
    if len(train_y) == 0 or len(val_y) == 0:
        raise SpecError("train.dataset", f"{prepared.path} holds {len(train_y)} training and {len(val_y)} validation "
                        f"images (train_fraction {config.train_fraction}); both need at least one")
    if size and size != int(prepared.meta["size"]):  # a private, resized copy
        check_fits(len(train_y) + len(val_y) + len(test_y), int(prepared.meta["channels"]), size, "train.image_size")
        train_x, val_x, test_x = (resize(x, size) for x in (train_x, val_x, test_x))
        mean, std = channel_stats(train_x)
    transform = {"resize": prepared.meta.get("resize", CROP), "filter": prepared.meta.get("filter", FILTER),
                 "draft": bool(prepared.meta.get("draft", False)), "prepared_size": int(prepared.meta["size"])}
    return Dataset(name=config.dataset, train_x=train_x, train_y=train_y, val_x=val_x, val_y=val_y, test_x=test_x,
                   test_y=test_y, num_classes=len(prepared.classes), channels=int(prepared.meta["channels"]),
                   mean=mean, std=std, classes=prepared.classes, rows=rows, transform=transform)


def _tensor(x: np.ndarray) -> torch.Tensor:
    """A torch view of a read-only map (torch warns that it cannot be written to: nothing writes to it)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(x)


@functools.lru_cache(maxsize=4)
def _open_prepared(data_dir: str) -> Prepared:
    return open_prepared(data_dir, "train.data_dir")


@functools.lru_cache(maxsize=4)
def _open_cached(dataset: str, data_dir: str, size: int | None, val_fraction: float, test_fraction: float,
                 seed: int) -> Prepared:
    """The cache entry of a raw source (prepared now if missing; see :mod:`runners.training.cache`)."""
    listing, name, settings = cache_entry(dataset, data_dir, size, val_fraction, test_fraction, seed)
    return ensure(name, lambda path: prepare_source(listing, path, size, val_fraction, test_fraction, seed,
                                                    settings=settings, flag="train.data_dir",
                                                    hint=_SKIP_HINT.format(root=listing.root, size=size)))


def cache_entry(dataset: str, data_dir: str, size: int | None, val_fraction: float, test_fraction: float,
                seed: int) -> tuple[Listing, str, dict]:
    """The listing of a raw source, the name of its cache entry and the settings the name covers."""
    listing = list_imagefolder(data_dir) if dataset == "imagefolder" else list_cifar(data_dir, dataset)
    settings = {"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed}
    if dataset == "imagefolder":
        settings.update(resize=CROP, filter=FILTER)
    return listing, entry_name(dataset, listing.root, size or 32, settings, listing.fingerprint), settings


_SKIP_HINT = ("fix or remove them, or prepare the folder yourself leaving them out: `search data prepare {root} -o "
              "DIR --size {size} --skip-bad`, then train with --dataset prepared --data-dir DIR")


def plan_splits(labels: np.ndarray, is_test: Optional[np.ndarray], val_fraction: float, test_fraction: float,
                seed: int) -> tuple[np.ndarray, dict[str, int]]:
    """The rows of a source in prepared order (train, then validation, then test) and each split's size: the
    same splits :func:`load_dataset` makes from a source in memory (a fixed-seed test split where the source
    has none, a validation split seeded by ``seed``), so preparing a source changes which rows land where not
    at all."""
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    everything = torch.arange(len(y))
    if is_test is None:
        pool, test = grouped_split(y, None, test_fraction, TEST_SPLIT_SEED)
    else:
        mask = torch.from_numpy(np.asarray(is_test, dtype=bool))
        pool, test = everything[~mask], everything[mask]
    keep, val = grouped_split(y[pool], None, val_fraction, seed)
    train, val = pool[keep], pool[val]
    order = torch.cat([train, val, test]).numpy()
    return order, {"train": len(train), "val": len(val), "test": len(test)}


def prepare_source(listing: Listing, out: Path, size: int | None, val_fraction: float, test_fraction: float,
                   seed: int, *, rows: Optional[np.ndarray] = None, relabel_classes: bool = False,
                   settings: Optional[dict] = None,
                   options: Optional[DecodeOptions] = None, jobs: Optional[int] = None, skip_bad: bool = False,
                   flag: str = "SRC", hint: Optional[str] = None) -> dict:
    """Prepare ``listing`` (only ``rows`` of it, when given; ``relabel_classes``: only the classes those rows
    hold, numbered again from 0) into ``out``.

    The split is planned here (:func:`plan_splits`); image folders are decoded in parallel
    (:func:`~runners.training.prepare.prepare_images`), CIFAR batches are read and, at a size other than 32,
    resized. Progress goes to stderr."""
    classes = list(listing.classes)
    if listing.kind == "imagefolder":
        labels, is_test = listing.labels, listing.is_test
    else:
        source = _cifar(listing.root, listing.kind)
        classes = list(source.classes)
        labels = np.concatenate([source.train_y.numpy(), source.test_y.numpy()])
        is_test = np.concatenate([np.zeros(len(source.train_y), bool), np.ones(len(source.test_y), bool)])
    if rows is None:
        rows = np.arange(len(labels))
    kept = np.unique(labels[rows]) if relabel_classes else np.arange(len(classes))
    relabel = np.full(len(classes), -1, dtype=np.int64)
    relabel[kept] = np.arange(len(kept))
    sub_labels = relabel[labels[rows]]
    order, counts = plan_splits(sub_labels, None if is_test is None else is_test[rows], val_fraction, test_fraction,
                                seed)
    source_rows = rows[order]
    meta = {"name": listing.root.name, "classes": [classes[k] for k in kept],
            "source": {"kind": listing.kind, "path": str(listing.root), "fingerprint": listing.fingerprint,
                       "images": int(len(labels))},
            "settings": {**(settings or {}), "val_fraction": val_fraction, "test_fraction": test_fraction,
                         "seed": seed},
            "source_rows": source_rows}
    if listing.kind == "imagefolder":
        opt = options or DecodeOptions(size=size or DEFAULT_SIZE)
        paths = [str(listing.root / listing.files[i]) for i in source_rows]
        progress = Progress()
        what = f"preparing {listing.root}: {len(paths):,} images at {opt.size}px"
        progress.line(what)
        marks = [0]

        def tick(done: int, total: int, seconds: float) -> None:
            rate = done / max(seconds, 1e-9)
            text = (f"{what} {bar(done, total)} {done:,}/{total:,}, {rate:,.0f} images/s, "
                    f"{duration((total - done) / max(rate, 1e-9))} left")
            progress.status(text, force=done == total)
            if not progress.tty and done * 4 // total > marks[0]:  # logs get a line at each quarter
                marks[0] = done * 4 // total
                progress.line(text)

        with progress:
            meta = prepare_images(out, paths, sub_labels[order], counts, opt, meta, jobs=jobs, skip_bad=skip_bad,
                                  progress=tick, flag=flag, hint=hint)
        return meta
    x = torch.cat([source.train_x, source.test_x])[torch.from_numpy(source_rows)]
    if size and size != x.shape[-1]:
        x = resize(x, size)
    return prepare_arrays(out, x.numpy(), sub_labels[order], counts, meta, flag=flag)


def check_fits(images: int, channels: int, size: int, path: str) -> None:
    """Refuse data that cannot fit: ``images`` uint8 images of channels x size x size against half this
    machine's memory (the rest is for the model, its activations and a resized copy)."""
    need = images * channels * size * size
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return
    if need > memory // 2:
        raise SpecError(path, f"{images:,} images of {channels}x{size}x{size} need {need / 2**30:,.1f} GiB, more than "
                              f"half of this machine's {memory / 2**30:,.0f} GiB; use a smaller image_size or fewer "
                              f"images")


def _split_and_resize(config: TrainConfig, size: int | None, intrinsic: int | None) -> Dataset:
    source = _load_source(config.dataset, _dir_key(config), intrinsic, config.synthetic_samples,
                          config.synthetic_classes, config.synthetic_channels)
    pool_x, pool_y = source.train_x, source.train_y
    strata = pool_y if source.strata is None else source.strata
    pool_rows = torch.arange(len(pool_y))
    if source.test_x is None:  # hold out a fixed test split first
        pool_rows, test_rows = grouped_split(strata, source.groups, config.test_fraction, TEST_SPLIT_SEED)
        test_x, test_y = pool_x[test_rows], pool_y[test_rows]
    else:
        test_x, test_y = source.test_x, source.test_y
        test_rows = torch.arange(len(test_y))
    keep, val = grouped_split(strata[pool_rows], _rows_of(source.groups, pool_rows), config.val_fraction, config.seed)
    train_rows, val_rows = pool_rows[keep], pool_rows[val]
    if config.train_fraction < 1.0:
        _, subset = grouped_split(strata[train_rows], _rows_of(source.groups, train_rows), config.train_fraction,
                                  config.seed + 1)
        train_rows = train_rows[subset]
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise SpecError("train.dataset", f"{config.dataset} has {len(pool_y)} training images, too few to hold out a "
                        f"validation split of {config.val_fraction} and train on {config.train_fraction} of the rest")
    size = size or int(pool_x.shape[-1])
    check_fits(len(train_rows) + len(val_rows) + len(test_y), int(pool_x.shape[1]), size, "train.image_size")
    train_x, val_x, test_x = (resize(x, size) for x in (pool_x[train_rows], pool_x[val_rows], test_x))
    mean, std = channel_stats(train_x)
    return Dataset(
        name=config.dataset,
        train_x=train_x, train_y=pool_y[train_rows],
        val_x=val_x, val_y=pool_y[val_rows],
        test_x=test_x, test_y=test_y,
        num_classes=source.num_classes, channels=int(pool_x.shape[1]), mean=mean, std=std,
        classes=list(source.classes),
        rows={"train": train_rows, "val": val_rows, "test": test_rows},
    )


def clear_cache() -> None:
    """Forget cached sources (tests, or a long-lived process that changed files on disk)."""
    _load_source.cache_clear()
    _open_prepared.cache_clear()
    _open_cached.cache_clear()


# ----------------------------------------------------------------------------------------------------------------
# Helpers shared by every source
# ----------------------------------------------------------------------------------------------------------------


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split row indices into (rest, taken), taking ``fraction`` of every class (at least one row where a class
    has two or more), seeded. Loops over classes, never over samples."""
    gen = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    order = torch.randperm(len(labels), generator=gen)
    shuffled = labels[order]
    # stable sort by class keeps the random order within each class
    by_class = order[torch.sort(shuffled, stable=True).indices]
    counts = torch.bincount(labels)
    taken, rest, start = [], [], 0
    for count in counts.tolist():
        rows = by_class[start:start + count]
        start += count
        n = int(round(count * fraction))
        if count >= 2:
            n = min(max(n, 1), count - 1) if fraction < 1.0 else count
        taken.append(rows[:n])
        rest.append(rows[n:])
    return torch.cat(rest).sort().values, torch.cat(taken).sort().values


def grouped_split(labels: torch.Tensor, groups: torch.Tensor | None, fraction: float,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`stratified_split` of whole groups: rows sharing a group id (distorted copies of one source image)
    always land on the same side, so a validation or test image never has a twin in the training split."""
    if groups is None:
        return stratified_split(labels, fraction, seed)
    ids, inverse = torch.unique(groups, return_inverse=True)
    first = torch.full((len(ids),), len(groups), dtype=torch.int64).scatter_reduce(
        0, inverse, torch.arange(len(groups)), reduce="amin")
    _, taken_groups = stratified_split(labels[first], fraction, seed)
    taken = torch.isin(inverse, taken_groups)
    return torch.nonzero(~taken).flatten(), torch.nonzero(taken).flatten()


def _rows_of(groups: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    return None if groups is None else groups[rows]


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the 0..1 scale, in chunks so a large uint8 set is never all float."""
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for part in x.split(chunk):
        f = part.to(torch.float64).div_(255).transpose(0, 1).reshape(c, -1)
        total += f.sum(1)
        total_sq += (f * f).sum(1)
    n = x.numel() // c
    mean = total / n
    std = (total_sq / n - mean * mean).clamp_min(1e-12).sqrt().clamp_min(1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())


def resize(x: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    """Bilinear resize of uint8 NCHW images (antialiased when shrinking), chunked to bound float memory."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8, device=x.device)
    shrink = size < max(x.shape[-2:])
    for i, part in zip(range(0, len(x), chunk), x.split(chunk)):
        f = F.interpolate(part.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
        out[i:i + len(part)] = f.round_().clamp_(0, 255).to(torch.uint8)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Sources: the raw pools before splitting
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor | None
    test_y: torch.Tensor | None
    num_classes: int
    classes: tuple[str, ...] = ()
    groups: torch.Tensor | None = None  # per training row: rows of one group are split together
    strata: torch.Tensor | None = None  # per training row: what splits are stratified by (default: the label)


def _dir_key(config: TrainConfig) -> str | None:
    if config.dataset in ("digits", "digits_hard", "digits_pairs", "synthetic"):
        return None
    if not config.data_dir:
        raise SpecError("train.data_dir", f"dataset {config.dataset} reads its images from a directory; "
                        f"set train.data_dir (or --data-dir) to it")
    what = {"imagefolder": EXPECT_FOLDER, "prepared": "prepared expects a directory made by `search data prepare`"}
    if config.dataset in CIFAR_LAYOUT:
        _, train_files, test_files, _, _ = CIFAR_LAYOUT[config.dataset]
        what[config.dataset] = (f"{config.dataset} expects the python-version batches "
                                f"({', '.join(train_files + test_files)}) there")
    return str(resolve_dir(config.data_dir, what.get(config.dataset, ""), "train.data_dir"))


@functools.lru_cache(maxsize=4)
def _load_source(dataset: str, data_dir: str | None, size: int | None, samples: int, classes: int,
                 channels: int) -> _Source:
    if dataset == "digits":
        return _digits()
    if dataset == "digits_hard":
        return _digits_hard()
    if dataset == "digits_pairs":
        return _digits_pairs()
    if dataset in ("cifar10", "cifar100"):
        return _cifar(Path(data_dir), dataset)
    if dataset == "synthetic":
        return _synthetic(samples, classes, channels, size or DEFAULT_SIZE)
    raise SpecError("train.dataset", f"unknown dataset {dataset!r}")  # the schema rejects this first


def _digits() -> _Source:
    """scikit-learn's 1797 8x8 digits (values 0..16), scaled to 0..255; ships with the package, no download."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1).contiguous()
    y = torch.from_numpy(bunch.target.astype(np.int64))
    return _Source(x, y, None, None, 10, tuple(str(i) for i in range(10)))


def _digit_images() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as 1797 x 1 x 8 x 8 floats on 0..1, and their labels: what the derived tasks draw."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1),
            torch.from_numpy(bunch.target.astype(np.int64)))


DIGITS_HARD_SIZE = 32  # native size of digits_hard; a spec's input_size resizes it once, at load
DIGITS_HARD_COPIES = 2  # distorted copies of each of the 1,797 digits


def _digits_hard() -> _Source:
    """A harder zero-download task made deterministically from the real scikit-learn digits.

    Each 8x8 digit is upsampled to 32x32 and drawn ``DIGITS_HARD_COPIES`` times, each copy with its own seeded
    distortions, all label-preserving: a random affine warp (rotation +-25 degrees, scale 0.75-1.05, shear
    +-0.3, shift +-15% of the image), an elastic warp (a smooth random displacement field, 4x4 control points,
    up to 8% of the image), clutter (two 10x10 fragments cut from other digits, at half intensity, pasted at
    random places) and pixel noise (sd 20 of 255). The copies of one digit form a group that is never split
    across train, validation and test (:func:`grouped_split`).
    """
    base, labels = _digit_images()
    n, size, copies = len(base), DIGITS_HARD_SIZE, DIGITS_HARD_COPIES
    gen = torch.Generator().manual_seed(20261122)
    big = F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    x = big.repeat(copies, 1, 1, 1)
    m = len(x)

    def uniform(low, high, *shape):
        return torch.rand(*shape, generator=gen) * (high - low) + low

    angle = uniform(-25, 25, m) * (np.pi / 180)
    scale = uniform(0.75, 1.05, m)
    shear = uniform(-0.3, 0.3, m)
    shift = uniform(-0.3, 0.3, m, 2)  # affine_grid coordinates span -1..1, so 0.3 is 15% of the image
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin + shear, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1) / scale[:, None, None]
    theta[:, :, 2] *= scale[:, None]  # the shift is in output coordinates, not scaled
    grid = F.affine_grid(theta, (m, 1, size, size), align_corners=False)
    flow = F.interpolate(uniform(-0.16, 0.16, m, 2, 4, 4), size=(size, size), mode="bicubic", align_corners=False)
    x = F.grid_sample(x, grid + flow.permute(0, 2, 3, 1), mode="bilinear", padding_mode="zeros",
                      align_corners=False)

    frag = 10
    for _ in range(2):  # clutter: fragments of other digits
        donor = big[torch.randint(0, n, (m,), generator=gen)]
        sy, sx = torch.randint(0, size - frag, (2, m), generator=gen)
        ty, tx = torch.randint(0, size - frag, (2, m), generator=gen)
        ar = torch.arange(frag)
        rows = torch.arange(m)[:, None, None]
        piece = donor[rows, 0, (sy[:, None, None] + ar[None, :, None]), (sx[:, None, None] + ar[None, None, :])]
        region = (rows, 0, (ty[:, None, None] + ar[None, :, None]), (tx[:, None, None] + ar[None, None, :]))
        x[region] = torch.maximum(x[region], 0.5 * piece)
    x = x * 255 + torch.randn(x.shape, generator=gen) * 20
    x = x.round_().clamp_(0, 255).to(torch.uint8)
    groups = torch.arange(n).repeat(copies)
    return _Source(x, labels.repeat(copies), None, None, 10, tuple(str(i) for i in range(10)), groups=groups)


DIGITS_PAIRS_IMAGES = 4000  # two-digit images drawn from the 1,797 digits
DIGITS_PAIRS_BLOCKS = 200  # the digits are dealt into this many blocks; a pair takes both digits from one


def _digits_pairs() -> _Source:
    """A zero-download task on which architectures stay apart after long training, made deterministically
    from the real scikit-learn digits: each 32x32 image shows two digits side by side and its class is the
    two-digit number they read (100 classes, "00" to "99").

    Each digit is upsampled to 16x16, warped (rotation +-15 degrees, scale 0.8-1.1, shift +-7.5% of its half)
    and drawn at a random height in its half of the image; pixel noise (sd 10 of 255) is added. The classes
    share their parts (ten digits on each side), and a network must keep *where* a digit is until its global
    pooling. That makes the architecture matter: 24 random architectures of spaces/resnest.yaml span 6-97%
    after 12 epochs, a few far above the rest (README, the audit), where on digits_hard the good ones all end
    within a few points of each other.

    The digits are dealt into ``DIGITS_PAIRS_BLOCKS`` blocks and a pair takes both its digits from one block,
    the pair's group: no digit of a validation or test image appears in a training image. Splits are stratified
    by the left digit (``strata``), ten strata of twenty blocks, since a hundred classes over two hundred
    blocks are too few per class to stratify by.
    """
    base, labels = _digit_images()
    n, m, half = len(base), DIGITS_PAIRS_IMAGES, 16
    gen = torch.Generator().manual_seed(20261123)
    order = torch.randperm(n, generator=gen)  # block b holds order[b::blocks]
    block = torch.randint(0, DIGITS_PAIRS_BLOCKS, (m,), generator=gen)
    size_of = torch.bincount(torch.arange(n) % DIGITS_PAIRS_BLOCKS)  # digits per block

    def draw() -> torch.Tensor:  # one digit of each pair's block, uniformly
        k = (torch.rand(m, generator=gen) * size_of[block]).long()
        return order[block + k * DIGITS_PAIRS_BLOCKS]

    left, right = draw(), draw()
    digit = F.interpolate(base, size=(half, half), mode="bilinear", align_corners=False)

    def warped(rows: torch.Tensor) -> torch.Tensor:
        angle = (torch.rand(m, generator=gen) * 30 - 15) * (np.pi / 180)
        scale = torch.rand(m, generator=gen) * 0.3 + 0.8
        shift = torch.rand(m, 2, generator=gen) * 0.3 - 0.15  # affine_grid spans -1..1: 0.15 is 7.5%
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                             torch.stack([sin, cos, shift[:, 1]], 1)], 1) / scale[:, None, None]
        grid = F.affine_grid(theta, (m, 1, half, half), align_corners=False)
        return F.grid_sample(digit[rows], grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    columns = []
    for rows in (left, right):  # each half: a 32x16 column with the digit at a random height
        column = F.pad(warped(rows), (0, 0, 0, half))  # the digit at the top, 16 rows of zeros below
        drop = torch.randint(0, half + 1, (m,), generator=gen)
        index = (torch.arange(2 * half)[None, :] - drop[:, None]) % (2 * half)  # roll each image down by drop
        columns.append(column.gather(2, index[:, None, :, None].expand(-1, 1, -1, half)))
    x = torch.cat(columns, dim=3) * 255 + torch.randn(m, 1, 2 * half, 2 * half, generator=gen) * 10
    x = x.round_().clamp_(0, 255).to(torch.uint8)
    return _Source(x, labels[left] * 10 + labels[right], None, None, 100, tuple(f"{i:02d}" for i in range(100)),
                   groups=block, strata=labels[left])


def _cifar(root: Path, dataset: str) -> _Source:
    """The "python version" pickle batches of CIFAR-10/100 (``root`` may also be their parent folder)."""
    folder, train_files, test_files, label_key, num_classes = CIFAR_LAYOUT[dataset]
    root = cifar_root(root, dataset, "train.data_dir")

    def read(files):
        xs, ys = [], []
        for name in files:
            batch = _read_batch(root / name, label_key)
            xs.append(batch[0])
            ys.append(batch[1])
        return torch.cat(xs), torch.cat(ys)

    train_x, train_y = read(train_files)
    test_x, test_y = read(test_files)
    for y, name in ((train_y, "training"), (test_y, "test")):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise SpecError("train.data_dir", f"{root}: {name} labels outside 0..{num_classes - 1}; "
                            f"is this {dataset} data?")
    names = _cifar_names(root, dataset, num_classes)
    return _Source(train_x, train_y, test_x, test_y, num_classes, names)


def _read_batch(path: Path, label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with open(path, "rb") as f:
            batch = _NumpyUnpickler(f, encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any decoding failure is a malformed file
        raise SpecError("train.data_dir", f"{path} is not a CIFAR python batch ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise SpecError("train.data_dir", f"{path} is not a CIFAR python batch: expected keys b'data' and "
                        f"{label_key!r}, found {keys}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise SpecError("train.data_dir", f"{path}: b'data' must be uint8 N x 3072 with N labels, got "
                        f"{data.dtype} {data.shape} and {len(labels)} labels")
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return x, torch.from_numpy(labels.astype(np.int64))


def _cifar_names(root: Path, dataset: str, num_classes: int) -> tuple[str, ...]:
    meta, key = ("batches.meta", b"label_names") if dataset == "cifar10" else ("meta", b"fine_label_names")
    try:
        with open(root / meta, "rb") as f:
            names = _NumpyUnpickler(f, encoding="bytes").load()[key]
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
        if len(names) == num_classes:
            return names
    except Exception:  # noqa: BLE001 - names are a nicety; the meta file is optional
        pass
    return tuple(str(i) for i in range(num_classes))


class _NumpyUnpickler(pickle.Unpickler):
    """Pickle loader that only rebuilds numpy arrays: a data file must not be able to run code."""

    _ALLOWED = {"_reconstruct", "scalar", "ndarray", "dtype"}

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):  # how Python 3 writes bytes at protocol 2
            import codecs

            return codecs.encode
        if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray") and name in self._ALLOWED:
            if name in ("ndarray", "dtype"):
                return getattr(np, name)
            try:
                from numpy._core import multiarray  # numpy >= 2, where numpy.core is a deprecated alias
            except ImportError:  # pragma: no cover - numpy 1.x
                from numpy.core import multiarray
            return getattr(multiarray, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _synthetic(samples: int, classes: int, channels: int, size: int) -> _Source:
    """Random images that a model can still learn: each class is a smooth random template plus noise.

    Fixed seed, so the data is the same for every run; useful for smoke tests and throughput measurements.
    """
    gen = torch.Generator().manual_seed(1234)
    coarse = max(2, size // 4)
    templates = torch.rand(classes, channels, coarse, coarse, generator=gen) * 160 + 48
    templates = F.interpolate(templates, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.arange(samples) % classes
    y = y[torch.randperm(samples, generator=gen)]
    noise = torch.randn(samples, channels, size, size, generator=gen) * 40
    x = (templates[y] + noise).round_().clamp_(0, 255).to(torch.uint8)
    return _Source(x, y.to(torch.int64), None, None, classes, tuple(str(i) for i in range(classes)))
