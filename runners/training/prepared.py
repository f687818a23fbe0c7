"""The prepared-dataset format: one uint8 array that every process memory-maps, and a JSON that describes it.

A prepared dataset is a directory (DESIGN.md section 9)::

    images.npy   uint8, N x C x S x S (NCHW: a split is a contiguous slice, so a view of the map, never a copy)
    labels.npy   int64, N
    rows.npy     int64, N: each row's index in the source (which file it came from), for reports and tests
    meta.json    format and version, class names, the splits as [start, stop) row ranges (train, val, test),
                 per-channel mean and std of the train split, the source's fingerprint, the options it was
                 prepared with, how many images were skipped

Rows are stored split by split (train, then val, then test), so the splits are fixed when the data is prepared
and each is a slice of the one map. Every process opens ``images.npy`` with ``np.load(mmap_mode="r")``: the
page cache holds one copy for all the workers of a machine, and data larger than RAM still trains (pages are
read as batches need them, and dropped under memory pressure).

:func:`open_prepared` trusts nothing it reads: the version, the array's header against the JSON, the file's
length against the header (a truncated copy), the labels against the classes. A directory that fails is one
line naming the file (:class:`SpecError`), or for a cache, a reason to prepare again.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search_space.schema import SpecError

FORMAT = "search-space prepared dataset"
FORMAT_VERSION = 1
META = "meta.json"
IMAGES = "images.npy"
LABELS = "labels.npy"
ROWS = "rows.npy"  # each row's index in the source's listing (optional)
SPLITS = ("train", "val", "test")
MAX_META_BYTES = 64 * 2**20  # class names and skipped-file lists; a larger meta.json is not ours


@dataclass
class Prepared:
    """An opened prepared dataset: ``images`` is a read-only memory map, ``labels`` a small array in memory."""

    path: Path
    meta: dict
    images: np.ndarray
    labels: np.ndarray

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of one split: a view of the map and a view of the labels."""
        start, stop = self.meta["splits"][name]
        return self.images[start:stop], self.labels[start:stop]

    def rows(self, name: str) -> np.ndarray:
        """Each row's index in the source's listing (what the split holds, in the source's terms)."""
        start, stop = self.meta["splits"][name]
        if self.source_rows is not None:
            return np.asarray(self.source_rows[start:stop])
        return np.arange(start, stop)

    @property
    def source_rows(self):
        if "_rows" not in self.__dict__:
            path = self.path / ROWS
            self.__dict__["_rows"] = _map(path, (len(self.labels),), np.int64, str(path)) if path.exists() else None
        return self.__dict__["_rows"]


def is_prepared(path: str | Path) -> bool:
    """Whether ``path`` looks like a prepared dataset (has its meta.json); says nothing about its health."""
    return (Path(path) / META).is_file()


def open_prepared(path: str | Path, flag: str = "train.data_dir") -> Prepared:
    """Open and check a prepared dataset; any disagreement is a :class:`SpecError` naming the file."""
    path = Path(path)
    meta_path = path / META
    meta = read_meta(meta_path, flag)
    for key, kind in (("version", int), ("classes", list), ("splits", dict), ("count", int), ("size", int),
                      ("channels", int), ("mean", list), ("std", list)):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise SpecError(flag, f"{meta_path}: field {key!r} is missing or not {kind.__name__}; prepare the "
                                  f"data again with `search data prepare`")
    if meta["version"] != FORMAT_VERSION:
        raise SpecError(flag, f"{meta_path}: format version {meta['version']}, this program reads version "
                              f"{FORMAT_VERSION}; prepare the data again with `search data prepare`")
    n, c, s = meta["count"], meta["channels"], meta["size"]
    images = _map(path / IMAGES, (n, c, s, s), np.uint8, flag)
    labels = _map(path / LABELS, (n,), np.int64, flag)
    labels = np.array(labels)  # small: in memory, and checked once
    classes = meta["classes"]
    if len(classes) < 2 or (len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(classes))):
        raise SpecError(flag, f"{path / LABELS}: labels outside 0..{len(classes) - 1} (the {len(classes)} classes "
                              f"of {META}); the directory is damaged, prepare it again")
    end = 0
    for name in SPLITS:
        span = meta["splits"].get(name)
        if (not isinstance(span, list) or len(span) != 2 or not all(isinstance(v, int) for v in span)
                or span[0] != end or span[1] < span[0] or span[1] > n):
            raise SpecError(flag, f"{meta_path}: split {name!r} is {span!r}; the splits must be consecutive row "
                                  f"ranges [start, stop) covering 0..{n}; prepare the data again")
        end = span[1]
    if end != n:
        raise SpecError(flag, f"{meta_path}: the splits cover {end} of {n} rows; prepare the data again")
    for key in ("mean", "std"):
        if len(meta[key]) != c:
            raise SpecError(flag, f"{meta_path}: {key} has {len(meta[key])} values for {c} channels")
    return Prepared(path, meta, images, labels)


def read_meta(meta_path: Path, flag: str) -> dict:
    try:
        st = os.stat(meta_path)
        if not stat.S_ISREG(st.st_mode):
            raise SpecError(flag, f"{meta_path} is not a regular file")
        if st.st_size > MAX_META_BYTES:
            raise SpecError(flag, f"{meta_path} is {st.st_size:,} bytes, more than a prepared dataset's meta.json "
                                  f"can be ({MAX_META_BYTES:,})")
        with open(meta_path, "rb") as f:
            meta = json.loads(f.read(MAX_META_BYTES + 1))
    except FileNotFoundError:
        raise SpecError(flag, f"{meta_path.parent} is not a prepared dataset (no {META}); make one with "
                              f"`search data prepare SRC -o {meta_path.parent}`") from None
    except (OSError, ValueError, RecursionError) as e:
        raise SpecError(flag, f"{meta_path}: not a prepared dataset's {META} ({type(e).__name__}); prepare the "
                              f"data again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SpecError(flag, f"{meta_path}: not a prepared dataset's {META}; prepare the data again")
    return meta


def _map(path: Path, shape: tuple, dtype, flag: str) -> np.ndarray:
    """``np.load(path, mmap_mode="r")`` after checking the header against ``shape`` and the file's length
    against the header, so a truncated or foreign file is one line, never a crash or a short read later."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise SpecError(flag, f"{path} is not a regular file")
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                header = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                header = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"npy version {version}")
            offset = f.tell()
    except FileNotFoundError:
        raise SpecError(flag, f"{path}: missing; the prepared dataset is incomplete, prepare it again") from None
    except (OSError, ValueError) as e:
        raise SpecError(flag, f"{path}: not a numpy array file ({str(e).splitlines()[0][:80]}); prepare the data "
                              f"again") from None
    got_shape, fortran, got_dtype = header
    if tuple(got_shape) != tuple(shape) or got_dtype != np.dtype(dtype) or fortran:
        raise SpecError(flag, f"{path}: holds {got_dtype} {tuple(got_shape)}, {META} says {np.dtype(dtype)} "
                              f"{tuple(shape)}; the JSON and the array disagree, prepare the data again")
    need = offset + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if st.st_size != need:
        raise SpecError(flag, f"{path}: {st.st_size:,} bytes where {need:,} are needed (truncated or padded); "
                              f"prepare the data again")
    if 0 in shape:
        return np.zeros(shape, dtype=dtype)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def write_meta(path: Path, meta: dict) -> None:
    """Write meta.json and flush it to disk (it is the last file of a prepared dataset to be written)."""
    data = json.dumps({"format": FORMAT, "version": FORMAT_VERSION, **meta}, indent=1).encode()
    with open(path / META, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
