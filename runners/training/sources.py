"""What a raw dataset on disk holds, listed without decoding it: the files, their labels and a fingerprint.

A listing is the first step of preparing a dataset (:mod:`runners.training.prepare`): it says which images there
are, which class each belongs to, whether the source fixes a test split, and a fingerprint of the source (every
file's path, size and modification time) that tells a cache whether the source changed since it was prepared.

Listing is where hostile folders are refused, before any file is opened: a ``data_dir`` that is a symlink loop,
a FIFO, socket or device file named like an image (opening a FIFO blocks forever, reading ``/dev/zero`` never
ends), a class folder with no images, fewer than two classes. Each is a :class:`SpecError` naming the path.

No torch here: the decode workers import this module's neighbours and must start fast.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from search_space.schema import SpecError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

CIFAR_LAYOUT = {
    # dataset: (folder name inside an extracted archive, train files, test files, label key, classes)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}


@dataclass
class Listing:
    """A raw source: ``files`` (image paths, or for CIFAR the batch files), ``labels`` per image, ``is_test``
    per image where the source fixes a test split (``train/`` and ``test/`` folders, CIFAR's test batch) else
    None, the class names and the fingerprint of everything read."""

    kind: str  # "imagefolder", "cifar10" or "cifar100"
    root: Path
    classes: list[str]
    labels: np.ndarray
    is_test: Optional[np.ndarray]
    fingerprint: str
    files: list[str] = field(default_factory=list)  # imagefolder: one per image, relative to root

    def __len__(self) -> int:
        return len(self.labels)


def resolve_dir(path: str | Path, what: str, flag: str) -> Path:
    """``path`` made absolute with its links followed; a symlink loop or a missing folder is one line."""
    raw = Path(path).expanduser()
    try:
        resolved = raw.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 raises this for a loop
        raise SpecError(flag, f"{raw}: a symbolic link loop; point {flag} at the folder itself") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SpecError(flag, f"{raw}: a symbolic link loop; point {flag} at the folder itself") from None
        raise SpecError(flag, f"{raw}: {e.strerror or e}; {what}") from None
    if not resolved.is_dir():
        raise SpecError(flag, f"{raw} is not a directory; {what}")
    return resolved


def list_source(kind: str, root: str | Path, flag: str = "train.data_dir") -> Listing:
    """The listing of ``root`` as dataset ``kind`` (imagefolder, cifar10, cifar100)."""
    if kind == "imagefolder":
        return list_imagefolder(root, flag)
    if kind in CIFAR_LAYOUT:
        return list_cifar(root, kind, flag)
    raise SpecError(flag, f"{kind!r} cannot be prepared; use imagefolder, cifar10 or cifar100")


# ----------------------------------------------------------------------------------------------------------------
# Image folders
# ----------------------------------------------------------------------------------------------------------------

EXPECT_FOLDER = f"imagefolder expects one folder per class holding images ({', '.join(IMAGE_SUFFIXES)})"


def list_imagefolder(root: str | Path, flag: str = "train.data_dir") -> Listing:
    """Class folders of images (``root/<class>/*.jpg``), or ``root/train`` and ``root/test`` each holding the same
    class folders. Files are sorted by name; only files with an image suffix count; hidden entries are skipped."""
    root = resolve_dir(root, EXPECT_FOLDER, flag)
    nested = _is_dir(root / "train") and _is_dir(root / "test")
    parts = [root / "train", root / "test"] if nested else [root]
    classes = _class_names(parts[0], flag)
    if nested:
        test_classes = _class_names(parts[1], flag)
        if test_classes != classes:
            extra = sorted(set(test_classes) ^ set(classes))
            raise SpecError(flag, f"{root}: train/ and test/ hold different class folders ({', '.join(extra[:5])}"
                                  f"{' ...' if len(extra) > 5 else ''} in only one); give both the same classes")
    files: list[str] = []
    labels: list[int] = []
    tests: list[bool] = []
    lines: list[str] = []
    for part in parts:
        for label, name in enumerate(classes):
            found = _images_in(part / name, flag)
            prefix = f"{part.name}/{name}/" if nested else f"{name}/"  # paths relative to root, built once per folder
            files += [prefix + rel for rel, _, _ in found]
            lines += [f"{prefix}{rel}\0{size}\0{mtime}\n" for rel, size, mtime in found]
            labels += [label] * len(found)
            tests += [part.name == "test" and nested] * len(found)
    digest = hashlib.sha256("".join(lines).encode("utf-8", "surrogateescape"))
    digest.update(("\0".join(classes)).encode("utf-8", "surrogateescape"))
    return Listing("imagefolder", root, classes, np.asarray(labels, dtype=np.int64),
                   np.asarray(tests, dtype=bool) if nested else None, digest.hexdigest(), files)


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False


def _class_names(folder: Path, flag: str) -> list[str]:
    names = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise SpecError(flag, f"{folder}: {e.strerror or e}; {EXPECT_FOLDER}") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir()  # follows a link to a class folder
            os.stat(entry.path)  # raises ELOOP for a link loop, which is_dir() would hide
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise SpecError(flag, f"{entry.path}: a symbolic link loop; a class folder must be a folder") \
                    from None
            continue  # a dangling link is not a class folder
        if is_dir:
            names.append(entry.name)
    if len(names) < 2:
        raise SpecError(flag, f"{folder} holds {len(names)} class folder(s); {EXPECT_FOLDER} (at least two classes)")
    return names


def _images_in(folder: Path, flag: str) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of the image files of one class folder, sorted by name. A FIFO, socket or device
    named like an image is refused here, from ``stat`` alone: opening it could block or never end."""
    out = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise SpecError(flag, f"{folder}: {e.strerror or e}") from None
    for entry in entries:
        name = entry.name
        if name.startswith(".") or name[name.rfind("."):].lower() not in IMAGE_SUFFIXES:  # rfind -1: the last char
            continue
        try:
            st = os.stat(entry.path)  # follows links: what a reader would open
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise SpecError(flag, f"{entry.path}: a symbolic link loop, not an image file") from None
            st = None  # a dangling link: listed, and reported as unreadable when decoded (or skipped)
        if st is not None and not stat.S_ISREG(st.st_mode):
            if stat.S_ISDIR(st.st_mode):
                continue  # a folder named like an image is not an image; it is not opened either
            raise SpecError(flag, f"{entry.path} is {_kind_of(st.st_mode)}, not an image file; remove it from the "
                                  f"class folder (it is never opened: reading it could block or never end)")
        out.append((entry.name, st.st_size if st else -1, st.st_mtime_ns if st else -1))
    if not out:
        raise SpecError(flag, f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); remove the folder or add "
                              f"images to it")
    return out


def _kind_of(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


# ----------------------------------------------------------------------------------------------------------------
# CIFAR python batches
# ----------------------------------------------------------------------------------------------------------------


def cifar_root(root: str | Path, kind: str, flag: str) -> Path:
    folder, train_files, test_files, _, _ = CIFAR_LAYOUT[kind]
    expected = ", ".join(train_files + test_files)
    root = resolve_dir(root, f"{kind} expects the python-version batches ({expected}) there", flag)
    if (root / folder).is_dir() and not (root / train_files[0]).exists():
        root = root / folder
    missing = [f for f in train_files + test_files if not (root / f).is_file()]
    if missing:
        raise SpecError(flag, f"{root} lacks {', '.join(missing)}; {kind} expects the python-version batches "
                              f"({expected}), as extracted from {folder}.tar.gz")
    return root


def list_cifar(root: str | Path, kind: str, flag: str = "train.data_dir") -> Listing:
    """The batch files of CIFAR-10/100 (labels are read when the set is prepared; the listing only stats)."""
    folder, train_files, test_files, _, num_classes = CIFAR_LAYOUT[kind]
    root = cifar_root(root, kind, flag)
    digest = hashlib.sha256(kind.encode())
    for name in train_files + test_files:
        st = os.stat(root / name)
        if not stat.S_ISREG(st.st_mode):
            raise SpecError(flag, f"{root / name} is {_kind_of(st.st_mode)}, not a CIFAR batch file")
        digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return Listing(kind, root, [str(i) for i in range(num_classes)], np.zeros(0, dtype=np.int64), None,
                   digest.hexdigest(), train_files + test_files)
