"""Make a prepared dataset (:mod:`runners.training.prepared`): decode once, in parallel, resize, write one map.

Images are decoded by a pool of processes (``jobs``, default all cores), each taking chunks of files and
returning them decoded at the target size; the parent writes the chunks in order into ``images.npy``, so memory
stays bounded by a few chunks whatever the folder's size. The array file is allocated in full before the first
write (``posix_fallocate``), so a disk too small fails at once rather than after an hour.

Decoding: ``Image.open`` reads only the header, so the declared size is checked before any pixel is decoded (an
image declaring more than :data:`MAX_IMAGE_PIXELS` is refused: a decompression bomb allocates nothing). JPEGs
are decoded at a reduced scale when that still leaves at least the target size (PIL's ``draft``: the decoder
skips most of the inverse DCT work; ``benchmarks/prepare_speed.py`` measures it). The resize is PIL's
antialiased filter applied to just the kept region: ``crop`` takes the centred square (the shorter side becomes
the size), ``squash`` resizes the whole image to a square (ImageNet16-120's way).

Bad images (truncated, unreadable, too large) are counted and the first few named; unless ``skip_bad`` the
prepare then fails with one line and keeps nothing. With ``skip_bad`` their rows are dropped and the JSON
records how many and which.

Nothing half-written is ever used: everything goes to a temporary directory beside the output, ``meta.json``
last, and one ``rename`` publishes it. An interrupted prepare leaves only the temporary directory, which the
next prepare of the same output removes before starting over.
"""

from __future__ import annotations

import errno
import itertools
import math
import multiprocessing
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from search_space.schema import SpecError

from runners.common.signals import pid_alive

from .prepared import IMAGES, LABELS, ROWS, SPLITS, write_meta

MAX_IMAGE_PIXELS = 100_000_000  # 100 megapixels (10,000 x 10,000): above any camera's photo; PIL's own default
# (89.5M, error at twice that) is set to this too, deliberately, in every decode worker
CHUNK = 64  # images per task of a decode worker
AUTO_PER_PROCESS = 512  # without --jobs, one more process per this many images (small folders decode in-process)
RESIZE_MODES = ("crop", "squash")
FILTERS = ("box", "bilinear", "bicubic", "lanczos")
SHOW_BAD = 3  # bad files named in the error line


@dataclass(frozen=True)
class DecodeOptions:
    size: int
    resize: str = "crop"
    filter: str = "bilinear"
    channels: int = 3
    draft: bool = True
    max_pixels: int = MAX_IMAGE_PIXELS


class PrepareError(SpecError):
    """Bad input found while preparing (bad images, a full disk): one line, exit 2."""


# ----------------------------------------------------------------------------------------------------------------
# Decoding one image (in a worker process)
# ----------------------------------------------------------------------------------------------------------------


def decode(path: str, opt: DecodeOptions) -> np.ndarray:
    """One image as a C x S x S uint8 array; raises ValueError with a short reason for a bad image."""
    from PIL import Image, UnidentifiedImageError

    mode = "RGB" if opt.channels == 3 else "L"
    try:
        with Image.open(path) as img:  # reads the header only (PIL's own limit is off: see _decode_chunk)
            w, h = img.size
            if w * h > opt.max_pixels:
                raise ValueError(f"declares {w}x{h} pixels, more than the limit of {opt.max_pixels:,} (a "
                                 f"decompression bomb?)")
            if w < 1 or h < 1:
                raise ValueError(f"declares {w}x{h} pixels")
            box = _box(w, h, opt)
            if opt.draft and img.format == "JPEG":
                # decode at 1/2, 1/4 or 1/8 scale when the kept region still has at least the target size
                bw, bh = box[2] - box[0], box[3] - box[1]
                want = (math.ceil(w * opt.size / bw), math.ceil(h * opt.size / bh))
                got = img.draft(mode, want)
                if got is not None and got[1][2] < w:
                    f = got[1][2] / w  # the draft decodes at this fraction of the declared size
                    box = tuple(v * f for v in box)
            img = img.convert(mode)
            out = img.resize((opt.size, opt.size), _filter(opt.filter), box=box)
            arr = np.asarray(out, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"{str(e).split('.')[0]} (a decompression bomb?)") from None
    except UnidentifiedImageError:
        raise ValueError("not an image PIL can read") from None
    except (OSError, SyntaxError, EOFError, MemoryError) as e:
        raise ValueError(str(e).splitlines()[0][:120] if str(e) else type(e).__name__) from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _box(w: int, h: int, opt: DecodeOptions) -> tuple[float, float, float, float]:
    if opt.resize == "squash":
        return (0.0, 0.0, float(w), float(h))
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    return (left, top, left + side, top + side)


def _filter(name: str):
    from PIL import Image

    return {"box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}[name]


def _decode_chunk(task) -> tuple[int, np.ndarray, list[tuple[int, str]]]:
    import warnings

    from PIL import Image

    start, paths, opt = task
    out = np.zeros((len(paths), opt.channels, opt.size, opt.size), dtype=np.uint8)
    bad = []
    # The pixel limit is set deliberately: decode() refuses any image declaring more than opt.max_pixels from its
    # header, before a pixel is decoded, and says the declared size. PIL's own check (a warning above its limit,
    # an error at twice it, raised inside Image.open with no size in hand) is turned off meanwhile so that ours
    # is the one that speaks; it is restored after, as this may run in the caller's process.
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            for k, path in enumerate(paths):
                try:
                    out[k] = decode(path, opt)
                except ValueError as e:
                    bad.append((start + k, str(e)))
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return start, out, bad


# ----------------------------------------------------------------------------------------------------------------
# Writing a prepared dataset
# ----------------------------------------------------------------------------------------------------------------


ProgressFn = Callable[[int, int, float], None]  # (done, total, seconds)


def prepare_images(out: Path, paths: list[str], labels: np.ndarray, splits: dict[str, int], opt: DecodeOptions,
                   meta: dict, *, jobs: Optional[int] = None, skip_bad: bool = False,
                   progress: Optional[ProgressFn] = None, flag: str = "SRC",
                   hint: Optional[str] = None) -> dict:
    """Decode ``paths`` (already in output order: the train rows, then val, then test; ``splits`` gives each
    split's row count) into the prepared dataset ``out``. Returns the meta written. Raises :class:`PrepareError`
    for bad images (unless ``skip_bad``) and for a full disk, leaving nothing at ``out``."""
    n = len(paths)

    def fill(f, tmp: Path) -> list[tuple[int, str]]:
        bad: list[tuple[int, str]] = []
        chunks = [(s, paths[s:s + CHUNK], opt) for s in range(0, n, CHUNK)]
        auto = min(available_cores(), max(1, n // AUTO_PER_PROCESS))  # a process costs ~0.5 s to start
        workers = max(1, min(jobs or auto, len(chunks)))
        t0 = time.perf_counter()
        done = 0
        if workers == 1:
            results = map(_decode_chunk, chunks)
            pool = None
        else:
            pool = multiprocessing.get_context("spawn").Pool(workers)
            results = _in_order(pool, chunks, window=4 * workers)
        try:
            for start, arr, chunk_bad in results:
                f.write(arr.tobytes())
                bad += chunk_bad
                done += len(arr)
                if progress is not None:
                    progress(done, n, time.perf_counter() - t0)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        return bad

    return _publish(out, n, opt, labels, splits, meta, fill, skip_bad, paths, flag, hint)


def _in_order(pool, chunks: list, window: int):
    """The pool's results in submission order, with at most ``window`` chunks in flight or waiting, so memory
    stays bounded even when one slow chunk holds up the ones after it (``Pool.imap`` would queue them all)."""
    pending: deque = deque()
    upcoming = iter(chunks)
    for chunk in itertools.islice(upcoming, window):
        pending.append(pool.apply_async(_decode_chunk, (chunk,)))
    while pending:
        result = pending.popleft().get()
        chunk = next(upcoming, None)
        if chunk is not None:
            pending.append(pool.apply_async(_decode_chunk, (chunk,)))
        yield result


def prepare_arrays(out: Path, images: np.ndarray, labels: np.ndarray, splits: dict[str, int], meta: dict,
                   flag: str = "SRC") -> dict:
    """Write already-decoded N x C x S x S uint8 ``images`` (in output order) as the prepared dataset ``out``."""
    n, c, s, _ = images.shape
    opt = DecodeOptions(size=s, channels=c)

    def fill(f, tmp: Path) -> list:
        for start in range(0, n, 4096):
            f.write(np.ascontiguousarray(images[start:start + 4096]).tobytes())
        return []

    return _publish(out, n, opt, labels, splits, meta, fill, False, [], flag, None)


def _publish(out: Path, n: int, opt: DecodeOptions, labels: np.ndarray, splits: dict[str, int], meta: dict,
             fill, skip_bad: bool, paths: list[str], flag: str, hint: Optional[str]) -> dict:
    out = Path(out)
    meta = dict(meta)
    source_rows = meta.pop("source_rows", None)
    source_rows = None if source_rows is None else np.asarray(source_rows, dtype=np.int64)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    remove_stale(out)
    try:
        tmp.mkdir(parents=True)
        shape = (n, opt.channels, opt.size, opt.size)
        with open(tmp / IMAGES, "wb") as f:
            _header(f, shape, "|u1")
            _allocate(f, f.tell() + n * opt.channels * opt.size * opt.size)
            bad = fill(f, tmp)
            f.flush()
            os.fsync(f.fileno())
        counts = dict(splits)
        skipped = []
        if bad:
            if not skip_bad:
                first = "; ".join(f"{paths[i]} ({why})" for i, why in bad[:SHOW_BAD])
                more = f" and {len(bad) - SHOW_BAD} more" if len(bad) > SHOW_BAD else ""
                raise PrepareError(flag, f"{len(bad):,} of {n:,} images cannot be used: {first}{more}; "
                                         f"{hint or 'fix or remove them, or pass --skip-bad to leave them out'}")
            keep = np.ones(n, dtype=bool)
            keep[[i for i, _ in bad]] = False
            _compact(tmp, shape, keep)
            bounds = np.cumsum([0] + [counts[s] for s in SPLITS])
            for k, name in enumerate(SPLITS):
                counts[name] = int(keep[bounds[k]:bounds[k + 1]].sum())
            labels = labels[keep]
            skipped = [(paths[i], why) for i, why in bad]
            source_rows = None if source_rows is None else source_rows[keep]
            n = int(keep.sum())
            if counts["train"] == 0:
                raise PrepareError(flag, f"every training image was bad ({len(bad):,} skipped); nothing to train on")
        with open(tmp / LABELS, "wb") as f:
            np.save(f, np.ascontiguousarray(labels, dtype=np.int64))
        if source_rows is not None:
            with open(tmp / ROWS, "wb") as f:
                np.save(f, np.ascontiguousarray(source_rows, dtype=np.int64))
        images = np.load(tmp / IMAGES, mmap_mode="r")
        mean, std = channel_stats(images[:counts["train"]])
        del images
        ranges, start = {}, 0
        for name in SPLITS:
            ranges[name] = [start, start + counts[name]]
            start += counts[name]
        full = {**meta, "count": n, "size": opt.size, "channels": opt.channels, "splits": ranges,
                "mean": mean, "std": std, "resize": opt.resize, "filter": opt.filter, "draft": opt.draft,
                "max_image_pixels": opt.max_pixels,
                "skipped": {"count": len(skipped), "files": [{"file": p, "reason": r} for p, r in skipped[:1000]]}}
        write_meta(tmp, full)
        _replace(tmp, out)
        return full
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise PrepareError(flag, f"{out}: {e.strerror} while writing the prepared dataset; nothing was kept "
                                     f"(free space or choose another output, then prepare again)") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale(out: Path) -> None:
    """Remove temporary directories that earlier, interrupted prepares of ``out`` left (their process is gone)."""
    for old in out.parent.glob(f".{out.name}.tmp-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
            continue
        shutil.rmtree(old, ignore_errors=True)


def _replace(tmp: Path, out: Path) -> None:
    """Publish ``tmp`` as ``out`` with one rename; an older ``out`` is moved aside first and removed after."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
    os.rename(tmp, out)
    _fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _header(f, shape: tuple, descr: str) -> None:
    np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})


def _allocate(f, size: int) -> None:
    """Reserve the whole file now, so a disk that cannot hold it fails before any decoding."""
    try:
        os.posix_fallocate(f.fileno(), 0, size)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate: writes will tell
            return
        raise


def _compact(tmp: Path, shape: tuple, keep: np.ndarray) -> None:
    """Rewrite images.npy without the rows not kept (in chunks; the file is never all in memory)."""
    src = np.load(tmp / IMAGES, mmap_mode="r")
    new_shape = (int(keep.sum()),) + tuple(shape[1:])
    rows = np.flatnonzero(keep)
    with open(tmp / (IMAGES + ".new"), "wb") as f:
        _header(f, new_shape, "|u1")
        for start in range(0, len(rows), 4096):
            f.write(np.ascontiguousarray(src[rows[start:start + 4096]]).tobytes())
        f.flush()
        os.fsync(f.fileno())
    del src
    os.replace(tmp / (IMAGES + ".new"), tmp / IMAGES)


def channel_stats(images: np.ndarray, chunk: int = 2048) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on the 0..1 scale, over chunks of the map (never all as floats)."""
    c = images.shape[1]
    total = np.zeros(c)
    total_sq = np.zeros(c)
    count = 0
    for start in range(0, len(images), chunk):
        part = np.asarray(images[start:start + chunk], dtype=np.float64) / 255.0
        total += part.sum(axis=(0, 2, 3))
        total_sq += np.square(part).sum(axis=(0, 2, 3))
        count += part.shape[0] * part.shape[2] * part.shape[3]
    if count == 0:
        return [0.5] * c, [0.25] * c
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 1e-12)).clip(min=1e-3)
    return mean.tolist(), std.tolist()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1
